"""A server's group commit on SQLite: its run transactions commit without an fsync, and one
thread makes them durable, several at a time, off the event loop.

With `synchronous=FULL` every COMMIT fsyncs the write-ahead log before it returns, holding
SQLite's write lock meanwhile; a server committing 60 two-step runs a second spent more
than half its event loop's time in those fsyncs, and the HTTP intake waited behind them.
A *relaxed* transaction (`Store.transaction(relaxed=True)`) commits with
`synchronous=NORMAL`: its frames are in the log, in commit order, but not yet on disk.
`WalSyncer` fsyncs the log on its own thread whenever someone waits for durability, and
one fsync covers every commit made before it began, from any connection of the process
(the loop's runs, the intake writer): a group commit across runs.

The rules that keep this as safe as a synced commit:

1. A side effect waits for durability: a run awaits `Store.durable()` after its intent's
   commit and before the action starts; the intake answers 202 only after `sync()`; an
   escalation's POST and an incident folder wait too. A transaction whose rows another
   process acts on (a runner pool's dispatch row) is not relaxed.
2. The log is one sequence: what a power loss takes is a suffix of the commits (SQLite's
   recovery stops at the first frame that is not whole), never a hole, so the ledger stays
   a hash chain with its entries in order, and no transaction is half there.
3. A crash of the process (kill -9) loses nothing committed: the frames are in the
   operating system's cache. Only a power loss or kernel crash can take the unsynced
   suffix, which no one outside has acted on (rule 1).

What others may see earlier than before: a relaxed commit is visible to readers (the API,
the console, `opsdsl runs`) a few milliseconds before it is durable.

Checkpoints (copying the log into the database file, which fsyncs both) move here too:
the connections that relax their commits turn automatic checkpoints off, and this thread
checkpoints when the log has grown past CHECKPOINT_BYTES.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("opsdsl.serve")

CHECKPOINT_BYTES = 4 << 20  # a log larger than this is checkpointed (SQLite's default: 1,000 pages)


class WalSyncer:
    """The thread that fsyncs the state database's write-ahead log for relaxed commits."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.log_path = Path(f"{database}-wal")
        self._cond = threading.Condition()
        self._committed = 0  # relaxed commits noted so far
        self._durable = 0  # of those, the ones known to be on disk
        self._wanted = 0  # the highest commit someone waits for
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._failed: OSError | None = None  # an fsync that failed: nothing after it is known durable
        self._stopping = False
        self._closed = False
        self.syncs = 0  # fsyncs made (tests, metrics)
        self._thread = threading.Thread(target=self._run, name="opsdsl-wal-sync", daemon=True)
        self._thread.start()

    # --- the committers' side ---------------------------------------------------------

    def note_commit(self) -> None:
        """A relaxed transaction committed (called right after its COMMIT returned)."""
        with self._cond:
            self._committed += 1

    def sync(self) -> None:
        """Until every commit noted before this call is on disk (any thread but the loop's)."""
        with self._cond:
            target = self._committed
            if not self._closed:
                self._want(target)
                while self._durable < target and self._failed is None:
                    self._cond.wait()
                self._raise_if_failed(target)
                return
        self._fsync()  # after close (a late write in a shutdown): the caller syncs itself

    async def durable(self) -> None:
        """Until every commit noted before this call is on disk (on an event loop)."""
        loop = asyncio.get_running_loop()
        with self._cond:
            target = self._committed
            if self._durable >= target:
                return
            self._raise_if_failed(target)
            if not self._closed:
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append((target, loop, future))
                self._want(target)
        if self._closed:  # after close (a late write in a shutdown): the caller syncs itself
            self._fsync()
            return
        await future

    def close(self) -> None:
        """Make every noted commit durable, then stop the thread."""
        with self._cond:
            self._want(self._committed)
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    @property
    def pending(self) -> int:
        """Relaxed commits not yet known to be on disk."""
        with self._cond:
            return self._committed - self._durable

    def _want(self, target: int) -> None:
        if target > self._wanted:
            self._wanted = target
            self._cond.notify_all()

    def _raise_if_failed(self, target: int) -> None:
        if self._failed is not None and self._durable < target:
            raise sqlite3.OperationalError(
                f"disk I/O error: the state database's log could not be synced: {self._failed}"
            )

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        checkpointer: sqlite3.Connection | None = None
        try:
            while True:
                with self._cond:
                    while self._wanted <= self._durable and not self._stopping:
                        self._cond.wait()
                    if self._wanted <= self._durable and self._stopping:
                        self._closed = True  # from here on, sync() and durable() fsync themselves
                        return
                    target = self._committed  # every commit noted so far rides on this fsync
                try:
                    self._fsync()
                except OSError as error:  # the kernel may have dropped the pages: never trust a later fsync
                    log.error("cannot sync the state database's log: %s", error)
                    with self._cond:
                        self._failed = error
                        waiters, self._waiters = self._waiters, []
                        self._stopping = True
                        self._cond.notify_all()
                    for _, loop, future in waiters:
                        _settle(loop, future, error)
                    return
                with self._cond:
                    self.syncs += 1
                    self._durable = max(self._durable, target)
                    done = [w for w in self._waiters if w[0] <= self._durable]
                    self._waiters = [w for w in self._waiters if w[0] > self._durable]
                    self._cond.notify_all()
                for _, loop, future in done:
                    _settle(loop, future, None)
                checkpointer = self._checkpoint(checkpointer)
        finally:
            if checkpointer is not None:
                checkpointer.close()

    def _fsync(self) -> None:
        """fsync the log file: every frame written to it so far, by any connection, is on disk."""
        try:
            fd = os.open(self.log_path, os.O_RDONLY)
        except FileNotFoundError:  # no log: SQLite removed it after a complete, synced checkpoint
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _checkpoint(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """Copy the log into the database (PASSIVE: never waits for, nor blocks, a writer)."""
        try:
            if self.log_path.stat().st_size < CHECKPOINT_BYTES:
                return conn
        except FileNotFoundError:
            return conn
        try:
            if conn is None:
                conn = sqlite3.connect(self.database, isolation_level=None, check_same_thread=True)
                conn.execute("PRAGMA busy_timeout=5000")
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as error:  # tried again after a later sync
            log.warning("state database checkpoint failed: %s", error)
        return conn


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future[None], error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(
                sqlite3.OperationalError(f"disk I/O error: the state database's log could not be synced: {error}")
            )

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
        loop.call_soon_threadsafe(settle)


def attach(store: Any) -> WalSyncer | None:
    """Give a server's SQLite store a WalSyncer (None on PostgreSQL, or for a state that
    does not sync at all, as rehearsals' throwaway state does not)."""
    if getattr(store, "postgres", False):
        return None
    (synchronous,) = store.conn.execute("PRAGMA synchronous").fetchone()
    if synchronous == 0:
        return None
    from opsdsl.runtime.store import DB_NAME

    syncer = WalSyncer(Path(store.root) / DB_NAME)
    relax(store, syncer)
    return syncer


def relax(store: Any, syncer: WalSyncer) -> None:
    """Let `store`'s relaxed transactions leave their fsync to `syncer` (and its checkpoints)."""
    store.conn.execute("PRAGMA wal_autocheckpoint=0")
    store.syncer = syncer
