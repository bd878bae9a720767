import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from owned_harness import started, statuses, stop, until


def test_an_approval_in_a_sub_run_continues_both(tmp_path):
    from opsdsl.runtime.people import Person

    async def main():
        service, counted = await started(tmp_path / "state")
        try:
            service.accept([{"name": "sub-approve"}], "test")
            assert await until(
                lambda: len(statuses(service)) == 2 and all(s == "paused" for _, s, _ in statuses(service))
            )
            child = next(r for r, _, parent in statuses(service) if parent)
            service.runtime.approve(child, "agree", "alice", person=Person("alice", "approver"))
            service.wake()
            ok = await until(lambda: all(s == "succeeded" for _, s, _ in statuses(service)), timeout=10)
            print("\n", statuses(service), counted.drives)
            await asyncio.sleep(1.0)
            print("drives after 1 s more:", counted.drives)
            assert ok
        finally:
            await stop(service)

    asyncio.run(main())
