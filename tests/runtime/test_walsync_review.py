"""Review of 1e877b3 (runtime/walsync.py): cases where the syncer reported relaxed commits
durable that it never synced, or stopped making them durable. Each test failed on 1e877b3."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest

from opsdsl.runtime import walsync
from opsdsl.runtime.store import DB_NAME, Store


@pytest.fixture
def sqlite_only(state_backend):
    if state_backend == "postgresql":
        pytest.skip("no syncer on PostgreSQL")


def _fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files walsync fsyncs (their real paths)."""
    synced: list[str] = []
    original = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        original(fd)

    monkeypatch.setattr(walsync.os, "fsync", recording)
    return synced


def test_a_state_database_behind_a_symlink_still_has_its_log_synced(tmp_path, monkeypatch, sqlite_only):
    # An operator keeps state.db on another disk through a symlink. SQLite resolves the link
    # and writes its log beside the real file; the syncer looked for STATE/state.db-wal,
    # found none, and took "no log" for "everything is on disk".
    state, disk = tmp_path / "state", tmp_path / "disk"
    disk.mkdir()
    Store(state).close()
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{state / DB_NAME}{suffix}")
        if path.exists():
            path.rename(disk / f"{DB_NAME}{suffix}")
    os.symlink(disk / DB_NAME, state / DB_NAME)
    store = Store(state, create=False)
    syncer = walsync.attach(store)
    synced = _fsyncs(monkeypatch)
    try:
        with store.transaction(relaxed=True):
            store.set_timer("r", "", "resume", 1.0)
        asyncio.run(asyncio.wait_for(store.durable(), 10))
        assert syncer.pending == 0
        real_log = os.path.realpath(f"{disk / DB_NAME}-wal")
        assert real_log in synced, f"reported durable, but the log {real_log} was never fsync'd (fsyncs: {synced})"
    finally:
        syncer.close()
        store.close()


def test_a_log_that_cannot_be_opened_for_a_moment_does_not_fail_every_later_commit(tmp_path, monkeypatch, sqlite_only):
    # os.open of the log fails with EMFILE (a server at its descriptor limit for a moment:
    # many connections, many shell steps). No fsync was made, so no write-back error was
    # consumed (the fsyncgate rule is about fsync's errors); yet the syncer took it for a
    # failed fsync, stopped for good, and every later relaxed commit of the process (each
    # run's next step, each intake batch: 202s never come again) fails with
    # "disk I/O error" until a restart. The syncer now keeps the descriptor it opened at
    # the start, and opens the log again only when the path names another file.
    import errno

    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    syncer._fd_id = (-1, -1)  # as if SQLite had made a new log file: the next sync opens it
    original = os.open
    failures = [OSError(errno.EMFILE, "Too many open files")]

    def flaky_open(path, flags, *args, **kwargs):
        if failures and str(path).endswith("-wal"):
            raise failures.pop()
        return original(path, flags, *args, **kwargs)

    monkeypatch.setattr(walsync.os, "open", flaky_open)
    try:
        with store.transaction(relaxed=True):
            store.set_timer("r1", "", "resume", 1.0)
        with pytest.raises(Exception):  # noqa: B017 - this one may fail: it was not made durable
            syncer.sync()
        with store.transaction(relaxed=True):  # descriptors are free again
            store.set_timer("r2", "", "resume", 1.0)
        syncer.sync()  # raised "disk I/O error": the disk is fine, and nothing was dropped
        assert syncer.pending == 0
    finally:
        syncer.close()
        store.close()


def test_a_log_file_once_large_is_not_checkpointed_after_every_sync(tmp_path, monkeypatch, sqlite_only):
    # SQLite reuses the log file from its start after a complete checkpoint and never
    # shrinks it (no journal_size_limit), so its size says how large it once grew, not how
    # much is left to copy. Once past CHECKPOINT_BYTES, every sync (every group commit)
    # was followed by a checkpoint: an fsync of the log again and one of the database.
    monkeypatch.setattr(walsync, "CHECKPOINT_BYTES", 256 << 10)
    checkpoints: list[str] = []
    connect = walsync.sqlite3.connect

    class Counting:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if "wal_checkpoint" in sql:
                checkpoints.append(sql)
            return self.conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.conn, name)

    def connecting(*args, **kwargs):  # the syncer's checkpointer (a Store's connections pass no check_same_thread)
        conn = connect(*args, **kwargs)
        return Counting(conn) if "check_same_thread" in kwargs else conn

    monkeypatch.setattr(walsync.sqlite3, "connect", connecting)
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    try:
        with store.transaction(relaxed=True):  # one large commit: the log passes the threshold
            for i in range(400):
                store.ledger.append("note", None, {"i": i, "pad": "x" * 2000}, ts=1.0)
        syncer.sync()
        deadline = time.monotonic() + 10
        while not checkpoints:  # the thread checkpoints after settling the sync
            assert time.monotonic() < deadline, "the large log was never checkpointed"
            time.sleep(0.01)
        log = Path(f"{tmp_path / 'state' / DB_NAME}-wal")
        for i in range(20):  # small commits, a few KB of log in all
            with store.transaction(relaxed=True):
                store.set_timer(f"r{i}", "", "resume", 1.0)
            syncer.sync()
            time.sleep(0.05)  # time for the thread's checkpoint after the sync, if it makes one
        frames = store.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        assert frames * 4096 < walsync.CHECKPOINT_BYTES  # little in it
        assert log.stat().st_size < walsync.CHECKPOINT_BYTES  # and the file was cut when it started over
        assert len(checkpoints) <= 2, f"{len(checkpoints)} checkpoints for 20 small commits"
    finally:
        syncer.close()
        store.close()


def _failing_once(syncer: walsync.WalSyncer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next fsync fails with EIO; later ones "succeed" (Linux reports a write-back error
    once: the pages it dropped are gone, and a later fsync has nothing left to complain of)."""
    original = syncer._fsync
    errors = [OSError(5, "Input/output error")]

    def fsync() -> None:
        if errors:
            raise errors.pop()
        original()

    monkeypatch.setattr(syncer, "_fsync", fsync)


def test_after_a_failed_fsync_a_relaxed_transaction_does_not_commit(tmp_path, monkeypatch, sqlite_only):
    # Once an fsync failed nothing later is trusted, and every relaxed commit's caller is
    # told so (a run's step fails, the intake answers an error). But the transactions still
    # COMMITTED: an event the client was told was not accepted stays 'accepted' and is
    # replayed (run) at the next start, twice if the client sent it again.
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    _failing_once(syncer, monkeypatch)
    try:
        with store.transaction(relaxed=True):
            store.set_timer("r1", "", "resume", 1.0)
        with pytest.raises(Exception, match="disk I/O error"):
            syncer.sync()
        with pytest.raises(Exception, match="disk I/O error"), store.transaction(relaxed=True):
            store.set_timer("r2", "", "resume", 1.0)
    finally:
        kept = store.conn.execute("SELECT COUNT(*) FROM timers WHERE run_id = 'r2'").fetchone()[0]
        syncer.close()
        store.close()
    assert kept == 0, "a commit whose caller can only be told 'not durable' was kept"


def test_a_failed_fsync_after_close_is_not_forgotten(tmp_path, monkeypatch, sqlite_only):
    # After close, sync()/durable() fsync on the caller's thread; a failure there was
    # raised once and forgotten, so the next call's fsync (which Linux lets succeed) said
    # the same lost commits were durable.
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    syncer.close()
    _failing_once(syncer, monkeypatch)
    try:
        with store.transaction(relaxed=True):
            store.set_timer("r1", "", "resume", 1.0)
        with pytest.raises(OSError):
            syncer.sync()
        with pytest.raises(Exception, match="I/O error"):
            syncer.sync()  # returned: r1 "durable"
    finally:
        store.close()


def test_a_checkpoint_that_failed_with_an_io_error_is_not_forgotten(tmp_path, monkeypatch, sqlite_only):
    # The thread's checkpoint fsyncs the log through SQLite's own descriptor. When that
    # fsync fails (SQLITE_IOERR: "disk I/O error"), the kernel has reported, and marked as
    # seen, the write-back error of the log's pages: the next _fsync opens a new descriptor,
    # which Linux no longer tells of it, and succeeds. The checkpoint's error was logged as
    # a warning ("tried again after a later sync") and the commits whose pages were dropped
    # were then reported durable: an action could start on an intent a power cut undoes.
    monkeypatch.setattr(walsync, "CHECKPOINT_BYTES", 0)
    attempts: list[str] = []
    connect = walsync.sqlite3.connect

    class FailingCheckpoints:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if "wal_checkpoint" in sql:
                attempts.append(sql)
                raise sqlite3.OperationalError("disk I/O error")
            return self.conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.conn, name)

    def connecting(*args, **kwargs):
        conn = connect(*args, **kwargs)
        return FailingCheckpoints(conn) if "check_same_thread" in kwargs else conn

    monkeypatch.setattr(walsync.sqlite3, "connect", connecting)
    store = Store(tmp_path / "state")
    syncer = walsync.attach(store)
    try:
        with store.transaction(relaxed=True):
            store.set_timer("r1", "", "resume", 1.0)
        syncer.sync()
        deadline = time.monotonic() + 10
        while not attempts:
            assert time.monotonic() < deadline, "no checkpoint was tried"
            time.sleep(0.01)
        with pytest.raises(Exception, match="I/O error"):  # refused, or at the latest not called durable
            with store.transaction(relaxed=True):
                store.set_timer("r2", "", "resume", 1.0)
            syncer.sync()  # returned: r2's pages may be the ones the kernel dropped
    finally:
        syncer.close()
        store.close()
