"""timers the driver never deletes make `serve` spin (a look per event-loop turn)."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from owned_harness import started, statuses, stop, timers, until


async def _settled_looks(service, counted, seconds=2.0):
    before = counted.looks
    await asyncio.sleep(seconds)
    return counted.looks - before


def _check(service, counted, looks):
    left = [t for t in timers(service) if t[2] != "escalate"]
    print("\nstatuses", statuses(service), "timers left", left, "looks in 2 s:", looks)
    assert left == [], "a timer outlives its finished run"
    assert looks <= 6, f"{looks} looks in 2 s (POLL is 0.5 s): the driver spins"


def test_a_short_wait_leaves_its_timer_and_the_driver_spins(tmp_path):
    async def main():
        service, counted = await started(tmp_path / "state")
        try:
            service.accept([{"name": "short-wait"}], "test")
            assert await until(lambda: statuses(service) and statuses(service)[0][1] == "succeeded")
            _check(service, counted, await _settled_looks(service, counted))
        finally:
            await stop(service)

    asyncio.run(main())


def test_an_approval_deadline_after_the_approval_leaves_its_timer_and_the_driver_spins(tmp_path):
    from opsdsl.runtime.people import Person

    async def main():
        service, counted = await started(tmp_path / "state")
        try:
            service.accept([{"name": "approve"}], "test")
            assert await until(lambda: statuses(service) and statuses(service)[0][1] == "paused")
            run = statuses(service)[0][0]
            service.runtime.approve(run, "agree", "alice", person=Person("alice", "approver"))
            service.wake(run)
            assert await until(lambda: statuses(service)[0][1] == "succeeded")
            await asyncio.sleep(3.2)  # the 3 s deadline passes after the run ended
            _check(service, counted, await _settled_looks(service, counted))
        finally:
            await stop(service)

    asyncio.run(main())


def test_a_parked_wait_in_a_sub_run_leaves_its_timer_and_the_driver_spins(tmp_path):
    async def main():
        service, counted = await started(tmp_path / "state")
        try:
            service.accept([{"name": "sub-wait"}], "test")
            assert await until(lambda: len(statuses(service)) == 2 and statuses(service)[0][1] == "paused")
            assert await until(lambda: statuses(service)[0][1] == "succeeded", timeout=10)
            print("drives:", counted.drives)
            _check(service, counted, await _settled_looks(service, counted))
        finally:
            await stop(service)

    asyncio.run(main())
