"""A server's group commit on SQLite (opsdsl/runtime/walsync.py): run transactions commit
without an fsync, one thread fsyncs the log for many of them, and a side effect starts only
once its intent is on disk. On PostgreSQL nothing changes: every commit is synced."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from kernel_api import opsdsl, state_db
from test_group_commit import prepare

from opsdsl.runtime import walsync
from opsdsl.runtime.store import Store

BODY = """
playbooks:
  p:
    severity: SEV-4
    steps:
      - {id: check, action: assert, with: {that: 'true'}}
      - {id: call, needs: [check], action: http.request, with: {url: "http://x/a", method: PUT}, timeout: 5s}
"""


class Recording:
    """An outside action that notes, when it starts, what the syncer has made durable."""

    def __init__(self, syncer: list) -> None:
        self.syncer = syncer
        self.started: list[dict] = []

    def knows(self, action: str) -> bool:
        return action == "http.request"

    async def execute(self, request, context):
        syncer = self.syncer[0]
        self.started.append({"step": request.step_id, "pending": syncer.pending if syncer else None})
        return {"status": 200}


def gated(syncer: walsync.WalSyncer, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the syncer's fsyncs until the returned event is set (a slow disk)."""
    gate = threading.Event()
    original = syncer._fsync

    def slow() -> None:
        assert gate.wait(30), "the gate was never opened"
        original()

    monkeypatch.setattr(syncer, "_fsync", slow)
    return gate


def intents(state: Path, run_id: str) -> list[str]:
    db = state_db(state)
    try:
        rows = db.execute("SELECT data FROM ledger WHERE run = ? AND kind = 'step.intent' ORDER BY seq", (run_id,))
        return [row[0] for row in rows]
    finally:
        db.close()


def test_an_intent_is_on_disk_before_its_side_effect_starts(tmp_path, monkeypatch, state_backend):
    holder: list = [None]
    recording = Recording(holder)
    runtime, run, secrets = prepare(tmp_path, BODY, executor=recording)
    syncer = holder[0] = walsync.attach(runtime.store)
    if state_backend == "postgresql":  # every commit is synced there: no syncer, nothing to wait for
        assert syncer is None
        assert asyncio.run(runtime.drive(run, secrets)).status == "succeeded"
        assert recording.started == [{"step": "call", "pending": None}]
        return
    gate = gated(syncer, monkeypatch)

    async def scenario() -> str:
        drive = asyncio.create_task(runtime.drive(run, secrets))
        deadline = time.monotonic() + 10
        while not intents(runtime.state, run.id):  # committed: another connection reads it
            assert time.monotonic() < deadline, "the intent was never committed"
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert recording.started == [], "the action started before its intent was on disk"
        assert syncer.pending > 0  # committed, not yet synced: the loop did not wait for the disk
        gate.set()
        return (await drive).status

    assert asyncio.run(scenario()) == "succeeded"
    assert recording.started == [{"step": "call", "pending": 0}]
    syncer.close()
    runtime.close()
    assert opsdsl("ledger", "verify", "--state-dir", runtime.state).code == 0


@pytest.mark.kills_runs  # a failed fsync is a crash: the run is left for the next start to recover
def test_a_failed_fsync_keeps_the_side_effect_from_starting(tmp_path, monkeypatch, state_backend):
    if state_backend == "postgresql":
        pytest.skip("no syncer on PostgreSQL")
    holder: list = [None]
    recording = Recording(holder)
    runtime, run, secrets = prepare(tmp_path, BODY, executor=recording)
    syncer = holder[0] = walsync.attach(runtime.store)

    def broken() -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(syncer, "_fsync", broken)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        asyncio.run(runtime.drive(run, secrets))
    assert recording.started == []
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):  # and nothing later is trusted
        syncer.sync()
    # nor committed: the run is not marked anything by this process; the next start recovers it
    status = runtime.store.conn.execute("SELECT status FROM runs WHERE id = ?", (run.id,)).fetchone()[0]
    assert status == "running"
    syncer.close()
    runtime.close()


def test_relaxed_commits_go_ahead_while_the_disk_is_slow_and_ordinary_ones_stay_synced(
    tmp_path, monkeypatch, state_backend
):
    if state_backend == "postgresql":
        pytest.skip("no syncer on PostgreSQL")
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    gate = gated(syncer, monkeypatch)
    for i in range(5):
        with store.transaction(relaxed=True):
            store.set_timer(f"r{i}", "", "resume", 1.0)
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again between transactions
    assert syncer.pending == 5

    async def wait_durable() -> bool:
        waiting = asyncio.create_task(store.durable())
        await asyncio.sleep(0.2)
        held = not waiting.done()
        gate.set()
        await waiting
        return held

    assert asyncio.run(wait_durable()) is True
    assert syncer.pending == 0
    syncer.close()
    store.close()


def test_a_relaxed_transaction_that_fails_leaves_the_connection_synced(tmp_path, state_backend):
    if state_backend == "postgresql":
        pytest.skip("no syncer on PostgreSQL")
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    with pytest.raises(RuntimeError), store.transaction(relaxed=True):
        store.set_timer("r", "", "resume", 1.0)
        raise RuntimeError("boom")
    assert not store.conn.in_transaction
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert syncer.pending == 0
    syncer.close()
    store.close()


def test_a_commit_after_the_syncer_closed_is_synced_by_its_caller(tmp_path, state_backend):
    if state_backend == "postgresql":
        pytest.skip("no syncer on PostgreSQL")
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    syncer.close()  # a shutdown: a late write must neither hang nor go unsynced
    with store.transaction(relaxed=True):
        store.set_timer("r", "", "resume", 1.0)
    syncs: list[int] = []
    original = syncer._fsync

    def counted() -> None:
        syncs.append(1)
        original()

    syncer._fsync = counted
    syncer.sync()
    asyncio.run(asyncio.wait_for(store.durable(), 5))
    assert len(syncs) == 2
    store.close()


def test_a_server_paces_an_action_after_its_intent_is_durable(tmp_path, monkeypatch, state_backend):
    # The costly piece of an outside step on the loop is starting its action (a program's
    # fork), not its intent's commit: the pacer's turn is taken between the two.
    if state_backend == "postgresql":
        pytest.skip("no syncer on PostgreSQL")
    from opsdsl.runtime import scheduler

    order: list[str] = []
    holder: list = [None]

    class Noting(Recording):
        async def execute(self, request, context):
            order.append("action")
            return await super().execute(request, context)

    runtime, run, secrets = prepare(tmp_path, BODY, executor=Noting(holder))
    syncer = holder[0] = walsync.attach(runtime.store)
    original_fsync, original_turn = syncer._fsync, scheduler.Pacer.turn

    def noted_fsync() -> None:
        original_fsync()
        order.append("fsync")

    async def noted_turn(self) -> None:
        order.append("turn")
        await original_turn(self)

    monkeypatch.setattr(syncer, "_fsync", noted_fsync)
    monkeypatch.setattr(scheduler.Pacer, "turn", noted_turn)

    async def paced() -> str:
        scheduler.pace_loop()
        try:
            return (await runtime.drive(run, secrets)).status
        finally:
            scheduler.unpace_loop()

    assert asyncio.run(paced()) == "succeeded"
    first_action = order.index("action")
    assert order[first_action - 2 : first_action] == ["fsync", "turn"], order
    syncer.close()
    runtime.close()
