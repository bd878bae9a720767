"""Fixes from a review of workers and leases, each reproduction kept (both backends,
tests/runtime/conftest.py):

1. a database that is unavailable for a moment (a PostgreSQL restart, SQLite's lock) does
   not turn an accepted event into a failed one: it stays `accepted` and is tried again,
   and window/count triggers do not count it twice;
2. `opsdsl resume` never drives a run beside the worker that holds its lease, and leaves a
   run workers drive to them;
3. a replayed event whose run exists is not recorded as suppressed by that very run;
4. a worker counts a run it claimed in a creating transaction only once that committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from owned_harness import bare_run
from test_lease import PACK, until, worker_service

from opsdsl.cli.main import cli
from opsdsl.errors import UsageError
from opsdsl.runtime import lease as L
from opsdsl.runtime import runner
from opsdsl.runtime import store as S
from opsdsl.runtime.database import PgError, PgIntegrityError
from opsdsl.runtime.service import Service, database_unavailable
from opsdsl.runtime.worker import Worker

DROPPED = "consuming input failed: server closed the connection unexpectedly"


def events(store: S.Store) -> list[tuple]:
    return [tuple(r) for r in store.conn.execute("SELECT status, note FROM events ORDER BY id")]


def kinds(store: S.Store) -> list[str]:
    return [kind for (kind,) in store.conn.execute("SELECT kind FROM ledger ORDER BY seq")]


def fail_once(target: object, name: str, error: Exception) -> list[int]:
    """`target.name` raises `error` on its first call only; the calls made."""
    real, calls = getattr(target, name), []

    def once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    setattr(target, name, once)
    return calls


# ---- 1. the database unavailable for a moment --------------------------------------------


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (PgError(DROPPED, "08006"), True),
        (PgError(DROPPED), True),  # psycopg's client-side error carries no SQLSTATE
        (PgError("cannot connect to postgresql://db/opsdsl: connection refused"), True),
        (PgError("terminating connection due to administrator command", "57P01"), True),
        (PgError("could not serialize access", "40001"), True),
        (PgError("deadlock detected", "40P01"), True),
        (PgError("too many connections", "53300"), True),
        (sqlite3.OperationalError("database is locked"), True),
        (PgError("relation does not exist", "42P01"), False),
        (PgIntegrityError("duplicate key", "23505"), False),
        (sqlite3.OperationalError("no such table: runs"), False),
        (ValueError("bad event"), False),
    ],
)
def test_which_errors_say_the_database_is_unavailable(error, unavailable):
    assert database_unavailable(error) is unavailable


def test_a_worker_leaves_an_event_accepted_through_a_database_blip_and_starts_its_run_later(tmp_path):
    intake = worker_service(tmp_path)
    intake.drives = False
    svc = worker_service(tmp_path)
    svc.drives = False
    worker = Worker(svc, "w1", ttl=5, poll=0.05)
    L.ensure_schema(svc.store)
    intake.accept([{"name": "go"}], "test")
    calls = fail_once(svc.runtime, "create_run", PgError(DROPPED, "08006"))

    async def main() -> None:
        with pytest.raises(PgError):
            await worker._evaluate_pending()
        assert events(svc.store) == [("accepted", None)]
        assert svc.store.runs() == []
        assert "event.error" not in kinds(svc.store)
        assert worker.events_fence is not None  # kept: no wait for it to lapse once the database is back
        assert svc._triggers_stale  # the triggers' state is read again before the next event
        await worker._evaluate_pending()  # a later pass
        await until(lambda: not svc.driving)

    try:
        asyncio.run(main())
        assert len(calls) == 2
        (run,) = svc.store.runs()
        assert run.playbook == "quick" and run.status == "succeeded"
        assert events(svc.store) == [("done", "1 firing(s), 1 run(s)")]
        assert "event.error" not in kinds(svc.store)
    finally:
        svc.close()
        intake.close()


def test_a_bad_event_is_still_recorded_as_failed_and_the_next_one_handled(tmp_path):
    intake = worker_service(tmp_path)
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=5, poll=0.05)
    L.ensure_schema(svc.store)
    intake.accept([{"name": "go"}, {"name": "go"}], "test")
    fail_once(svc.runtime, "create_run", RuntimeError("a bug"))

    async def main() -> None:
        await worker._evaluate_pending()
        await until(lambda: not svc.driving)

    try:
        asyncio.run(main())
        assert events(svc.store)[0] == ("done", "error: RuntimeError: a bug")
        assert events(svc.store)[1] == ("done", "1 firing(s), 1 run(s)")
    finally:
        svc.close()
        intake.close()


COUNTING = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: counting, version: 1.0.0, owner: sre}
triggers:
  burst:
    on: event
    when: event.name == "hit"
    threshold: {count: 2, within: 1h}
hooks:
  onBurst: {trigger: burst, run: quick}
playbooks:
  quick:
    severity: SEV-3
    steps:
      - id: check
        action: assert
        with: {that: "true"}
"""


def counting_service(tmp_path: Path) -> Service:
    pack = tmp_path / "counting.yaml"
    pack.write_text(COUNTING)
    state = tmp_path / "state"
    return Service(state, [runner.plan_from_pack(pack, [], state)])


def test_an_event_tried_again_is_counted_once_by_a_count_trigger(tmp_path):
    """Count 2: one `hit` handled twice (its first try lost at the last commit) fires nothing."""
    intake = counting_service(tmp_path)
    svc = counting_service(tmp_path)
    worker = Worker(svc, "w1", ttl=5, poll=0.05)
    L.ensure_schema(svc.store)
    intake.accept([{"name": "hit"}], "test")
    fail_once(svc.store, "finish_event", PgError(DROPPED, "08006"))

    async def main() -> None:
        with pytest.raises(PgError):
            await worker._evaluate_pending()
        assert events(svc.store) == [("accepted", None)]
        await worker._evaluate_pending()

    try:
        asyncio.run(main())
        assert events(svc.store) == [("done", "0 firing(s), 0 run(s)")]
        assert svc.store.runs() == []
        assert "trigger.fired" not in kinds(svc.store)
    finally:
        svc.close()
        intake.close()


def test_serve_tries_an_event_again_while_the_database_is_locked_and_counts_it_once(tmp_path):
    """`serve` on one node (Service's own worker): the same, with back-off, in event order."""
    svc = counting_service(tmp_path)
    calls = fail_once(svc.store, "finish_event", sqlite3.OperationalError("database is locked"))

    async def main() -> None:
        await svc.start("test")
        svc.accept([{"name": "hit"}, {"name": "hit"}], "test")
        await asyncio.wait_for(svc.queue.join(), 20)
        await until(lambda: not svc.driving)
        await svc.drain()

    try:
        asyncio.run(main())
        assert len(calls) == 3  # the first event twice, then the second
        assert events(svc.store) == [("done", "0 firing(s), 0 run(s)"), ("done", "1 firing(s), 1 run(s)")]
        assert len(svc.store.runs()) == 1
        assert "event.error" not in kinds(svc.store)
    finally:
        svc.close()


def test_a_stopping_server_leaves_an_event_the_database_refuses_accepted(tmp_path):
    svc = counting_service(tmp_path)
    svc.store.finish_event = lambda *_: (_ for _ in ()).throw(PgError(DROPPED, "08006"))

    async def main() -> None:
        await svc.start("test")
        svc.accept([{"name": "hit"}, {"name": "hit"}], "test")
        await asyncio.sleep(0.1)  # the first is being tried again
        await asyncio.wait_for(svc.drain(), 20)  # gives up at once, never hangs

    try:
        asyncio.run(main())
        assert events(svc.store) == [("accepted", None), ("accepted", None)]  # replayed at the next start
    finally:
        svc.close()


# ---- 2. `opsdsl resume` beside a worker ----------------------------------------------------


def test_a_run_whose_lease_a_worker_holds_is_not_resumable_here(tmp_path):
    state = tmp_path / "state"
    store = S.Store(state)
    L.ensure_schema(store)
    with store.transaction():
        store.insert_run(bare_run("r1"))
    fence = L.claim(store, "r1", "worker-A", 30)
    assert fence is not None
    runtime = runner.Runtime(state, create=False)
    try:
        with pytest.raises(UsageError, match="being driven by worker worker-A, which continues it"):
            runtime.resumable("r1")
        assert L.release(store, fence)
        assert runtime.resumable("r1").id == "r1"  # no live lease: it may be continued
    finally:
        runtime.close()
        store.close()


def test_opsdsl_resume_refuses_a_leased_run_and_leaves_a_released_one_to_the_workers(tmp_path):
    svc = worker_service(tmp_path)
    state = tmp_path / "state"
    L.ensure_schema(svc.store)

    async def start() -> str:
        (run_id,) = await svc.handle(1, 0.0, {"name": "ask"})
        await until(lambda: not svc.driving)
        return run_id

    try:
        run_id = asyncio.run(start())
        assert svc.store.run(run_id).status == "paused"
        fence = L.claim(svc.store, run_id, "worker-A", 30)
        assert fence is not None
        result = CliRunner().invoke(cli, ["resume", run_id, "--state-dir", str(state)])
        assert isinstance(result.exception, UsageError), result.output
        assert result.exception.exit_code == 2
        assert "worker worker-A, which continues it" in result.exception.message
        assert svc.store.run(run_id).status == "paused"  # nothing driven here
        assert L.release(svc.store, fence)
        result = CliRunner().invoke(cli, ["resume", run_id, "--state-dir", str(state)])
        assert result.exit_code == 0, result.output
        assert "a worker continues it" in result.output
        nudge = svc.store.conn.execute("SELECT run_id FROM timers WHERE kind = 'resume'").fetchall()
        assert [tuple(t) for t in nudge] == [(run_id,)]  # a durable nudge, not a second driver
        assert svc.store.run(run_id).status == "paused"
    finally:
        svc.close()


# ---- 3. a replayed event is not suppressed by its own run ----------------------------------


DEDUPED = PACK.replace("onGo: {trigger: go, run: quick}", "onGo: {trigger: go, run: asking, dedupe: event.name}")


def test_a_replayed_event_continues_its_run_and_records_no_suppression(tmp_path):
    pack = tmp_path / "deduped.yaml"
    pack.write_text(DEDUPED)
    state = tmp_path / "state"
    plans = [runner.plan_from_pack(pack, [], state)]
    first = Service(state, plans)
    first.drives = False
    (event_id,) = first.accept([{"name": "go"}], "test")
    first.store.finish_event = lambda *_: (_ for _ in ()).throw(RuntimeError("crash before finishing the event"))

    async def crash() -> None:
        with pytest.raises(RuntimeError):
            await first.handle(event_id, 0.0, {"name": "go"})
        await until(lambda: not first.driving)

    asyncio.run(crash())
    first.close()
    again = Service(state, plans)
    again.drives = False

    async def replay() -> list[str]:
        started = await again.handle(event_id, 0.0, {"name": "go"})
        await until(lambda: not again.driving)
        return started

    try:
        started = asyncio.run(replay())
        (run,) = again.store.runs()
        assert started == [run.id] and run.status == "paused"
        assert "hook.suppressed" not in kinds(again.store)
        assert events(again.store) == [("done", "1 firing(s), 1 run(s)")]
    finally:
        again.close()


# ---- 4. a claim counts once its transaction committed --------------------------------------


def test_a_run_claimed_in_a_transaction_that_rolled_back_takes_no_slot(tmp_path):
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=5, poll=0.05)
    L.ensure_schema(svc.store)
    svc.store.fence = L.Fences()
    svc.leases = worker
    real = svc.runtime.create_run

    def fails_after_the_claim(*args, within=None, **kwargs):
        def claim_then_fail(run: S.RunRow) -> None:
            within(run)
            raise PgError(DROPPED, "08006")

        return real(*args, within=claim_then_fail, **kwargs)

    svc.runtime.create_run = fails_after_the_claim

    async def main() -> None:
        with pytest.raises(PgError):
            await svc.handle(1, 0.0, {"name": "go"})

    try:
        asyncio.run(main())
        assert svc.store.runs() == []
        assert worker.claimed == {}  # no slot taken, nothing for the heartbeat to renew
        # (a claim that commits counts: test_lease's worker drives the run with the creating epoch, 1)
    finally:
        svc.close()
