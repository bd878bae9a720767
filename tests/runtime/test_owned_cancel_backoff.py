import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from owned_harness import started, statuses, stop, until


def test_cancel_in_backoff_and_twice(tmp_path):
    async def main():
        service, counted = await started(tmp_path / "state")
        try:
            service.accept([{"name": "backoff"}], "test")
            assert await until(lambda: statuses(service) and statuses(service)[0][1] == "paused", timeout=10)
            run = statuses(service)[0][0]
            service.runtime.cancel(run, "local:a")
            service.runtime.cancel(run, "local:b")
            service.wake()
            ok = await until(lambda: statuses(service)[0][1] == "cancelled", timeout=10)
            rows = service.store.conn.execute("SELECT step_id, status, attempts FROM steps").fetchall()
            kinds = [
                k for (k,) in service.store.conn.execute("SELECT kind FROM ledger WHERE run = ? ORDER BY seq", (run,))
            ]
            print("\n", statuses(service), rows, counted.drives, kinds)
            assert ok
        finally:
            await stop(service)

    asyncio.run(main())
