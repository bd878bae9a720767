"""a retry after a parked back-off re-renders `with:` and skips the gate."""

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from owned_harness import started, stop, until

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: bomb, version: 1.0.0, owner: sre}
triggers:
  go: {on: event, when: event.name == "go"}
hooks:
  # opsdsl: ignore[OPS042]: test
  onGo: {trigger: go, run: poke}
playbooks:
  poke:
    severity: SEV-4
    steps:
      - id: poke
        action: http.request
        idempotent: true
        with:
          method: POST
          url: "http://127.0.0.1:9/v1/${{ now > SWITCH ? 'drop-database' : 'status' }}"
        timeout: 2s
        retry: {attempts: 2, backoff: fixed, initial: 8s}
"""
POLICY = """\
apiVersion: opsdsl/v1
kind: PolicyPack
metadata: {name: guard, version: 1.0.0, owner: platform}
policies:
  - id: no-drops
    when: step.with.url.contains("drop")
    effect: deny
    message: never drop a database
"""


def test_a_retry_after_a_parked_backoff_runs_what_the_gate_judged(tmp_path):
    folder = tmp_path / "packs"
    folder.mkdir()
    (folder / "bomb.yaml").write_text(PACK.replace("SWITCH", repr(time.time() + 6)))
    (folder / "policies.yaml").write_text(POLICY)

    async def main():
        service, _ = await started(tmp_path / "state", pack=folder / "bomb.yaml")
        try:
            service.accept([{"name": "go"}], "test")
            assert await until(
                lambda: service.store.conn.execute("SELECT status FROM runs").fetchone() == ("failed",), timeout=20
            )
            rows = service.store.conn.execute(
                "SELECT kind, data FROM ledger WHERE kind IN ('policy.decision', 'step.intent') ORDER BY seq"
            ).fetchall()
            seen = [(k, json.loads(d).get("decision"), json.loads(d).get("with", {}).get("url")) for k, d in rows]
            print("\n" + "\n".join(map(str, seen)))
            urls = [url for kind, _, url in seen if kind == "step.intent"]
            assert len(set(urls)) == 1, "the retry sent a request the gate never judged"
        finally:
            await stop(service)

    asyncio.run(main())
