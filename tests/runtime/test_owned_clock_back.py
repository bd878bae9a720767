"""a timer the driver dropped is lost for good when the drive finds it not due
(the clock stepped back between the look and the drive): the run stays paused forever."""

import asyncio

from owned_harness import ManualClock as Clock

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: napper, version: 1.0.0, owner: sre}
triggers:
  go: {on: event, when: event.name == "go"}
hooks:
  # opsdsl: ignore[OPS042]: test
  onGo: {trigger: go, run: nap}
playbooks:
  nap:
    severity: SEV-4
    steps:
      - id: nap
        action: wait
        with: {duration: 30s}
      - id: done
        action: assert
        with: {that: "true"}
"""


async def settle(svc):
    for _ in range(300):
        if not svc.driving:
            return
        await asyncio.sleep(0.01)


def test_a_wait_whose_timer_fired_a_moment_early_is_not_lost(tmp_path):
    clock = Clock()
    pack = tmp_path / "napper.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    svc = Service(
        state, [runner.plan_from_pack(pack, [], state)], clock=clock, runtime=runner.Runtime(state, clock=clock)
    )

    async def main():
        await svc.start("serve", own_runs=True)
        svc.driver.poll = 3600  # only our looks
        svc.accept([{"name": "go"}], "test")
        await svc.queue.join()
        await settle(svc)
        (run,) = svc.store.runs()
        assert run.status == "paused"
        clock.now += 30.001
        assert svc.driver.look() == [run.id]  # the timer is due: dropped, the run driven...
        clock.now -= 5  # ...and the clock steps back five seconds (NTP) before the drive runs
        await settle(svc)
        print(
            "\nafter the drive:",
            svc.store.run(run.id).status,
            svc.store.conn.execute("SELECT kind FROM timers WHERE run_id = ?", (run.id,)).fetchall(),
        )
        clock.now += 3600
        svc.driver.look()
        await settle(svc)
        status = svc.store.run(run.id).status
        print("an hour later:", status)
        await svc.drain()
        assert status == "succeeded", "the wait's timer is gone: the run sleeps forever"

    try:
        asyncio.run(main())
    finally:
        svc.close()
