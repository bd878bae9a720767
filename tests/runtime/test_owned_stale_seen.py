"""an approval recorded while its run is being driven is never acted on."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from kernel_api import KernelAPI
from owned_harness import started, statuses, stop, until


def test_an_approval_recorded_while_the_run_is_busy_still_continues_the_run(tmp_path):
    from opsdsl.runtime.people import Person

    async def main():
        service, counted = await started(tmp_path / "state", params=[{"dead_url": api.url}])
        try:
            service.accept([{"name": "parallel"}], "test")
            # agree asks for approval at once; diagnose sleeps 2 s in the server (not parked)
            assert await until(
                lambda: service.store.conn.execute(
                    "SELECT 1 FROM steps WHERE step_id='agree' AND status='awaiting_approval'"
                ).fetchone()
            )
            run = statuses(service)[0][0]
            assert statuses(service)[0][1] == "running"
            service.runtime.approve(run, "agree", "alice", person=Person("alice", "approver"))
            service.wake(run)  # what the API does after recording
            assert await until(lambda: statuses(service)[0][1] != "running", timeout=10)
            print("\nafter the busy drive:", statuses(service), counted.drives)
            await until(lambda: statuses(service)[0][1] == "succeeded", timeout=5)
            print("5 s later:", statuses(service), counted.drives)
            assert statuses(service)[0][1] == "succeeded", "approved, yet left paused for good"
        finally:
            await stop(service)

    with KernelAPI() as api:
        asyncio.run(main())
