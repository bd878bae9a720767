"""A webhook announcement signed with `hmac_secret` is accepted by a real `opsdsl serve`
(docs/serve.md says one opsdsl server can receive another's announcements at /v1/events)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import test_serve
from test_serve import SECRET

from opsdsl.runtime import runner
from opsdsl.runtime.announce import Announcer
from opsdsl.runtime.secrets import Secrets

start = test_serve.start  # the fixture: start(*args) → a running Server, stopped at the end

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: asks, version: 1.0.0, owner: sre}
playbooks:
  ask:
    severity: SEV-3
    steps:
      - id: go
        action: approval
        with: {message: "Go on?"}
        timeout: 10m
"""


def test_a_signed_webhook_announcement_is_accepted_by_opsdsl_serve(start, tmp_path: Path) -> None:
    secret_file = tmp_path / "hmac.secret"
    secret_file.write_bytes(SECRET + b"\n")
    server = start("--hmac-secret-file", str(secret_file), env={"OPSDSL_TOKEN": None})

    pack = tmp_path / "asks.yaml"
    pack.write_text(PACK)
    state = tmp_path / "announcing"
    runtime = runner.Runtime(state)
    try:
        secrets = Secrets(state)
        run = runtime.create_run(runner.plan_from_pack(pack, [], state), runner.Selection("ask"), {}, {}, {}, secrets)
        assert asyncio.run(runtime.drive(run, secrets)).status == "paused"
        spec = {"kind": "webhook", "url": f"{server.url}/v1/events", "hmac_secret": "serve_hmac"}
        announcer = Announcer(runtime.store, [spec], None, secrets={"serve_hmac": SECRET.decode()})
        asyncio.run(announcer.tick())
        (entry,) = [e.data for e in runtime.store.ledger.entries() if e.kind == "approval.announced"]
    finally:
        runtime.close()
    assert (entry["delivered"], entry["detail"]) == (True, "HTTP 202")
    (event_id,) = server.event_ids()
    assert event_id == 1
    assert json.dumps(entry).find(SECRET.decode()) == -1
