import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from owned_harness import started, statuses, stop, until


def test_waits_in_compensation_and_finally_park_and_fire(tmp_path):
    async def main():
        service, counted = await started(
            tmp_path / "state",
            pack=(Path(__file__).resolve().parents[1] / "fixtures" / "runtime" / "owned" / "comp.yaml"),
        )
        try:
            service.accept([{"name": "go"}], "test")
            ok = await until(lambda: statuses(service) and statuses(service)[0][1] == "failed", timeout=15)
            rows = service.store.conn.execute("SELECT step_id, status FROM steps ORDER BY step_id").fetchall()
            kinds = [
                k for (k,) in service.store.conn.execute("SELECT kind FROM ledger WHERE kind LIKE 'run.%' ORDER BY seq")
            ]
            print("\n", statuses(service), rows, counted.drives, kinds)
            assert ok
        finally:
            await stop(service)

    asyncio.run(main())
