"""a SEV-1 a person cancelled keeps escalating to L2 and L3."""

import asyncio

from owned_harness import ManualClock as Clock

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: outage, version: 1.0.0, owner: sre}
triggers:
  go: {on: event, when: event.name == "go"}
hooks:
  # opsdsl: ignore[OPS042]: test
  onGo: {trigger: go, run: outage}
playbooks:
  outage:
    severity: SEV-1
    steps:
      - id: failover
        action: approval
        with: {message: "Fail over?"}
        timeout: 2h
"""


async def settle(svc):
    for _ in range(300):
        if not svc.driving:
            return
        await asyncio.sleep(0.01)


def test_a_cancelled_incident_does_not_escalate(tmp_path):
    clock = Clock()
    pack = tmp_path / "outage.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    svc = Service(
        state, [runner.plan_from_pack(pack, [], state)], clock=clock, runtime=runner.Runtime(state, clock=clock)
    )

    async def main():
        await svc.start("serve", own_runs=True)
        svc.accept([{"name": "go"}], "test")
        await svc.queue.join()
        await settle(svc)
        (run,) = svc.store.runs()
        svc.runtime.cancel(run.id, "local:carol", reason="false alarm")
        svc.driver.look()
        await settle(svc)
        assert svc.store.run(run.id).status == "cancelled"
        for minutes in (6, 12, 18):
            clock.now = 1_900_000_000.0 + minutes * 60
            svc.driver.look()
        levels = [e.data["level"] for e in svc.store.ledger.entries(run=run.id) if e.kind == "incident.escalated"]
        print("\nescalations:", levels)
        await svc.drain()
        assert levels == ["L1"], "a cancelled incident paged L2 and L3"

    try:
        asyncio.run(main())
    finally:
        svc.close()
