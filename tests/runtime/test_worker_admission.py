"""Admission control of a worker's events path (runtime/worker.py), on both backends
(tests/runtime/conftest.py): a worker evaluates accepted events only while it has fewer
than `admit` young runs in flight, so that under overload runs wait as accepted events
(durable, in order) rather than pile up behind the writer lock; every event still reaches
its run.
"""

from __future__ import annotations

import asyncio

from test_lease import until, worker_service

from opsdsl.runtime import lease as L
from opsdsl.runtime import worker as W
from opsdsl.runtime.worker import Worker


def statuses(store) -> list[str]:
    return [status for (status,) in store.conn.execute("SELECT status FROM events ORDER BY id")]


def test_a_worker_bounds_its_runs_in_flight_and_every_event_still_reaches_a_run(tmp_path):
    intake = worker_service(tmp_path)
    intake.drives = False
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=5, poll=0.05, admit=2)
    L.ensure_schema(svc.store)
    # Runs of a 2 s wait: each stays in flight while the next events are looked at.
    intake.accept([{"name": "nap"}] * 6, "test")
    most = []

    async def main() -> None:
        await worker._evaluate_pending()
        most.append(worker.in_flight())
        assert statuses(svc.store).count("accepted") == 4  # two admitted, four wait
        while "accepted" in statuses(svc.store):
            await worker._evaluate_pending()
            most.append(worker.in_flight())
            await asyncio.sleep(0.05)
        await until(lambda: not svc.driving)

    try:
        asyncio.run(main())
        assert max(most) == 2
        runs = svc.store.runs()
        assert len(runs) == 6 and {run.status for run in runs} == {"succeeded"}
        assert sorted(run.event_id for run in runs) == [
            event_id for (event_id,) in svc.store.conn.execute("SELECT id FROM events")
        ]
        assert statuses(svc.store) == ["done"] * 6
    finally:
        svc.close()
        intake.close()


def test_a_full_worker_leaves_the_events_to_another(tmp_path):
    intake = worker_service(tmp_path)
    intake.drives = False
    first, second = worker_service(tmp_path), worker_service(tmp_path)
    one = Worker(first, "w1", ttl=5, poll=0.05, admit=1)
    two = Worker(second, "w2", ttl=5, poll=0.05, admit=1)
    L.ensure_schema(first.store)
    intake.accept([{"name": "nap"}] * 2, "test")

    async def main() -> None:
        assert await one._evaluate_pending()  # one run, then full: it gives the lease up
        assert one.events_fence is None
        one._events_yielded_until = 0.0
        assert await one._evaluate_pending()  # still full: it leaves the event accepted
        assert statuses(first.store) == ["done", "accepted"]
        await two._evaluate_pending()
        assert statuses(first.store) == ["done", "done"]
        assert len(first.driving) == len(second.driving) == 1  # each drives the run it admitted
        await until(lambda: not first.driving and not second.driving)

    try:
        asyncio.run(main())
        assert {run.status for run in first.store.runs()} == {"succeeded"}
    finally:
        first.close()
        second.close()
        intake.close()


def test_a_long_run_does_not_hold_the_intake_back(tmp_path, monkeypatch):
    """A run counts against `admit` only while young: one in a long step (here a 2 s wait,
    with ADMIT_AGE 0.3 s) leaves room for the next event."""
    monkeypatch.setattr(W, "ADMIT_AGE", 0.3)
    intake = worker_service(tmp_path)
    intake.drives = False
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=5, poll=0.05, admit=1)
    L.ensure_schema(svc.store)
    intake.accept([{"name": "nap"}] * 2, "test")

    async def main() -> None:
        await worker._evaluate_pending()
        assert statuses(svc.store) == ["done", "accepted"]
        await asyncio.sleep(0.4)
        worker._events_yielded_until = 0.0
        await worker._evaluate_pending()
        assert statuses(svc.store) == ["done", "done"]
        assert len(svc.driving) == 2  # the first run's wait is not over
        await until(lambda: not svc.driving)

    try:
        asyncio.run(main())
        assert {run.status for run in svc.store.runs()} == {"succeeded"}
    finally:
        svc.close()
        intake.close()


def test_a_stopping_worker_gives_the_events_lease_up_at_once(tmp_path, monkeypatch):
    """Mid-turn (the turn made long here), a stopping worker releases the `events` lease,
    so another worker takes the events at its next look, not once the lease lapsed."""
    monkeypatch.setattr(W, "EVENT_TURN", 60.0)
    intake = worker_service(tmp_path)
    intake.drives = False
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=30, poll=0.05)

    def lease() -> tuple:
        return tuple(
            svc.store.conn.execute("SELECT lease_owner, lease_until FROM leases WHERE name = 'events'").fetchone()
        )

    async def main() -> None:
        await worker.start()
        intake.accept([{"name": "go"}], "test")
        await until(lambda: statuses(svc.store) == ["done"])
        assert worker.events_fence is not None and lease()[1] is not None  # its turn goes on
        await worker.stop(5)

    try:
        asyncio.run(main())
        assert lease() == ("w1", None)
    finally:
        svc.close()
        intake.close()
