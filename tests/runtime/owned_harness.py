"""Harness of the test_owned_* attacks on a server owning its runs: an in-process `serve` (Service with own_runs) over a temp state dir."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from opsdsl.runtime import service as svc
from opsdsl.runtime import store as S

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "runtime" / "owned"
PACK = FIXTURES / "pack.yaml"


class Counted:
    def __init__(self, service):
        self.service = service
        self.looks = 0
        self.drives: list[tuple[str, str]] = []
        driver = service.driver
        original_look, original_drive = driver.look, driver.drive

        def look():
            self.looks += 1
            return original_look()

        def drive(run_id, reason):
            self.drives.append((run_id, reason))
            return original_drive(run_id, reason)

        driver.look, driver.drive = look, drive


async def started(state: Path, pack: Path = PACK, **kw):
    plans = svc.load_plans([pack], [], None, None, "dev", state)
    service = svc.Service(state, plans, **kw)
    await service.start("serve", own_runs=True)
    return service, Counted(service)


async def stop(service):
    with contextlib.suppress(Exception):
        await service.drain(timeout=5)
    service.close()


def statuses(service):
    return service.store.conn.execute("SELECT id, status, parent_run FROM runs ORDER BY created_at").fetchall()


def timers(service):
    return service.store.conn.execute("SELECT run_id, step_id, kind, due_at FROM timers").fetchall()


async def until(predicate, timeout=15.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return False


class ManualClock:
    """A clock that moves only when a test moves it (`clock.now += 60`)."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def bare_run(run_id: str) -> S.RunRow:
    """A run row with nothing behind it (no plan, no steps): for leases and dispatches."""
    return S.RunRow(
        id=run_id,
        incident_id="INC-1",
        pack="p",
        playbook="b",
        severity="SEV-3",
        status=S.INTERRUPTED,  # live (a claim may take it), and no process left it running
        phase="steps",
        created_at=1.0,
        updated_at=1.0,
        finished_at=None,
        envelope=b"{}",
        plan_digest="d",
        trust="dev",
        params={},
        inputs={},
        event={},
        hook=None,
        trig=None,
        escalate=None,
        parent_run=None,
        parent_step=None,
        incident_dir="/nonexistent",
        error=None,
        owner_pid=None,
    )
