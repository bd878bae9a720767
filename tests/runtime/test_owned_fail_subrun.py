import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from owned_harness import started, statuses, stop, until


def test_a_failed_run_leaves_no_sub_run_paused(tmp_path):
    async def main():
        service, _counted = await started(
            tmp_path / "state",
            pack=(Path(__file__).resolve().parents[1] / "fixtures" / "runtime" / "owned" / "failsub.yaml"),
        )
        try:
            service.accept([{"name": "go"}], "test")
            await until(lambda: statuses(service) and statuses(service)[0][1] == "failed", timeout=10)
            await asyncio.sleep(1)
            print("\n", statuses(service))
            assert all(s in ("failed", "cancelled", "succeeded") for _, s, _ in statuses(service))
        finally:
            await stop(service)

    asyncio.run(main())
