"""an approval given in a sub-run does not count as the incident's acknowledgement."""

import asyncio

from owned_harness import ManualClock as Clock

from opsdsl.runtime import runner
from opsdsl.runtime.people import Person
from opsdsl.runtime.service import Service

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: nested, version: 1.0.0, owner: sre}
triggers:
  go: {on: event, when: event.name == "go"}
hooks:
  # opsdsl: ignore[OPS042]: test
  onGo: {trigger: go, run: outer}
playbooks:
  outer:
    severity: SEV-2
    steps:
      - id: call
        action: playbook.call
        with: {playbook: inner}
        timeout: 1h
  inner:
    severity: SEV-2
    steps:
      - id: agree
        action: approval
        with: {message: "Drain?"}
      - id: second
        action: approval
        with: {message: "Switch?"}
"""


async def settle(svc):
    for _ in range(300):
        if not svc.driving:
            return
        await asyncio.sleep(0.01)


def test_an_approval_in_a_sub_run_stops_the_escalation(tmp_path):
    clock = Clock()
    pack = tmp_path / "nested.yaml"
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
        runs = {r.playbook: r for r in svc.store.runs()}
        clock.now += 60
        svc.runtime.approve(runs["inner"].id, "agree", "alice", person=Person("alice", "approver"))
        svc.driver.look()
        await settle(svc)
        clock.now = 1_900_000_000.0 + 16 * 60
        svc.driver.look()
        levels = [
            e.data["level"] for e in svc.store.ledger.entries(run=runs["outer"].id) if e.kind == "incident.escalated"
        ]
        print("\nescalations:", levels, {r.playbook: r.status for r in svc.store.runs()})
        await svc.drain()
        assert levels == ["L1"], "alice approved a minute in, yet the incident escalated to L2"

    try:
        asyncio.run(main())
    finally:
        svc.close()
