"""a decision recorded while no server ran is not acted on at the next start when
the run still has another step waiting (before is None, so 'a step stopped waiting' is never seen)."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from kernel_api import KernelAPI
from owned_harness import started, statuses, stop, until


def test_a_failed_decision_recorded_offline_fails_the_run_at_the_next_start(tmp_path):
    state = tmp_path / "state"

    async def first(api):
        service, _ = await started(state, params=[{"dead_url": api.url}])
        service.accept([{"name": "parallel"}], "test")
        await until(lambda: api.seen("POST"))
        await service.drain(timeout=0)  # the non-idempotent diagnose is cut off
        service.close()

    async def second(api):
        service, _ = await started(state, params=[{"dead_url": api.url}])
        await until(lambda: statuses(service)[0][1] == "paused")
        rows = service.store.conn.execute("SELECT step_id, status FROM steps").fetchall()
        run = statuses(service)[0][0]
        await stop(service)
        return run, rows

    async def third(api, run):
        service, counted = await started(state, params=[{"dead_url": api.url}])
        try:
            await asyncio.sleep(2)
            print("third server drives:", counted.drives, statuses(service))
            assert counted.drives, "the decision recorded while no server ran is ignored"
        finally:
            await stop(service)

    with KernelAPI() as api:
        asyncio.run(first(api))
        run, rows = asyncio.run(second(api))
        print("\nafter recovery:", rows)
        from opsdsl.runtime import runner

        rt = runner.Runtime(state)
        rt.decide(run, "diagnose", "dana", "failed")  # no server runs now
        rt.close()
        asyncio.run(third(api, run))
