"""cancelling a run whose sub-run (playbook.call) is paused leaves the sub-run
paused for good, and what the sub-run did is never compensated."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from kernel_api import KernelAPI

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: nested, version: 1.0.0, owner: sre}
params:
  kernel_url: {type: string, default: "http://127.0.0.1:9"}
triggers:
  go: {on: event, when: event.name == "go"}
hooks:
  # opsdsl: ignore[OPS042]: test
  onGo: {trigger: go, run: outer}
playbooks:
  outer:
    severity: SEV-4
    steps:
      - id: call
        action: playbook.call
        with: {playbook: inner}
        timeout: 1h
  inner:
    severity: SEV-4
    steps:
      - id: drain
        action: http.request
        with: {method: POST, url: "${{ params.kernel_url }}/v1/drain/primary"}
        timeout: 5s
        compensate:
          action: http.request
          with: {method: POST, url: "${{ params.kernel_url }}/v1/undo/drain_primary"}
          timeout: 5s
      - id: agree
        action: approval
        with: {message: "Switch traffic?"}
      - id: switch
        action: http.request
        with: {method: POST, url: "${{ params.kernel_url }}/v1/switch"}
        timeout: 5s
"""


async def settle(svc):
    for _ in range(500):
        if not svc.driving:
            return
        await asyncio.sleep(0.01)


def test_cancelling_a_run_ends_and_compensates_its_paused_sub_run(tmp_path):
    pack = tmp_path / "nested.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    with KernelAPI() as api:
        plan = runner.plan_from_pack(pack, [], state)
        svc = Service(state, [plan], params=[{"kernel_url": api.url}])

        async def main():
            await svc.start("serve", own_runs=True)
            svc.accept([{"name": "go"}], "test")
            await svc.queue.join()
            await asyncio.sleep(0.2)
            await settle(svc)
            runs = {r.playbook: r for r in svc.store.runs()}
            assert {p: r.status for p, r in runs.items()} == {"outer": "paused", "inner": "paused"}
            svc.runtime.cancel(runs["inner"].id, "local:carol", reason="false alarm")  # the sub-run's id
            svc.wake()
            await asyncio.sleep(1.5)
            await settle(svc)
            after = {r.playbook: r.status for r in svc.store.runs()}
            print("\nafter cancel:", after, "posts:", [r.path for r in api.seen("POST")])
            await svc.drain()
            assert after == {"outer": "cancelled", "inner": "cancelled"}
            assert "/v1/undo/drain_primary" in [r.path for r in api.seen("POST")]

        try:
            asyncio.run(main())
        finally:
            svc.close()
