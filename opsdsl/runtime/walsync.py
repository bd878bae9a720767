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
checkpoints when the log has grown past CHECKPOINT_BYTES; those connections also cap the
log's file at a quarter of that when SQLite starts it over, so that its size keeps saying how
much is in it.

The log is fsync'd through one descriptor, opened when the syncer starts on the file the
database really is (a `state.db` that is a symlink has its log beside the real file) and
kept: Linux reports a write-back error to every descriptor open when it happened, so an
error first seen by someone else (a checkpoint, another connection's synced COMMIT) is
still seen here; a descriptor opened afterwards would not see it, and would call the
dropped pages durable. A failed fsync, or a checkpoint that fails with an I/O error, is
final: nothing after it is called durable, and relaxed transactions are refused until the
server restarts (SQLite's recovery then reads what the log really holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("opsdsl.serve")

CHECKPOINT_BYTES = 4 << 20  # a log larger than this is checkpointed (SQLite's default: 1,000 pages)
_SQLITE_IOERR = 10  # the primary result code of every SQLITE_IOERR_* (an fsync, a write, a read failed)


class WalSyncer:
    """The thread that fsyncs the state database's write-ahead log for relaxed commits."""

    def __init__(self, database: Path) -> None:
        self.database = Path(os.path.realpath(database))  # SQLite keeps the log beside the real file
        self.log_path = Path(f"{self.database}-wal")
        self._fd: int | None = None
        self._fd_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file self._fd is
        self._open_log()  # before any relaxed commit: its write-back errors are reported to this descriptor
        self._cond = threading.Condition()
        self._committed = 0  # relaxed commits noted so far
        self._durable = 0  # of those, the ones known to be on disk
        self._wanted = 0  # the highest commit someone waits for
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._failed: OSError | None = None  # an fsync that failed: nothing after it is known durable
        self._stopping = False
        self._closed = False
        # The last sync that could not open the log (the commits it covered, the error): its
        # callers are told, and a later sync tries again (nothing was synced, nothing lost).
        self._missed: tuple[int, OSError] | None = None
        self.syncs = 0  # fsyncs made (tests, metrics)
        # Called once, on the syncer's thread, when a failure became final (a server stops on it:
        # its supervisor restarts it, and SQLite's recovery reads what the log really holds).
        self.on_failure: Callable[[OSError], None] | None = None
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
                self._missed = None  # this call asks again
                self._want(target)
                while self._durable < target and self._failed is None and not self._missed_covers(target):
                    self._cond.wait()
                self._raise_if_failed(target)
                if self._durable < target and self._missed is not None:
                    raise sqlite3.OperationalError(
                        f"disk I/O error: the state database's log could not be synced: {self._missed[1]}"
                    )
                return
        self._sync_after_close()

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
        if self._closed:
            self._sync_after_close()
            return
        await future

    def check(self) -> None:
        """Raise if an fsync failed: a relaxed transaction is then refused before it begins
        (its caller could only be told "not durable", and it would still be committed)."""
        with self._cond:
            if self._failed is not None:
                raise sqlite3.OperationalError(
                    f"disk I/O error: the state database's log could not be synced: {self._failed}"
                )

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

    def _missed_covers(self, target: int) -> bool:
        return self._missed is not None and self._missed[0] >= target

    def _sync_after_close(self) -> None:
        """A late write in a shutdown: the caller syncs itself, and a failure is kept too."""
        with self._cond:
            self._raise_if_failed(self._committed)
        try:
            self._fsync()
        except OSError as error:
            with self._cond:
                self._failed = error
            raise

    def _raise_if_failed(self, target: int) -> None:
        if self._failed is not None and self._durable < target:
            raise sqlite3.OperationalError(
                f"disk I/O error: the state database's log could not be synced: {self._failed}"
            )

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:  # a bug: nobody may wait forever, and nothing more is called durable
            log.exception("the state database's log syncer stopped")
            self._fail(OSError(f"the log syncer stopped: {type(error).__name__}: {error}"))
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _fail(self, error: OSError) -> None:
        """Final: settle every waiter with `error`, and never call a later commit durable."""
        with self._cond:
            first = self._failed is None
            if first:
                self._failed = error
            waiters, self._waiters = self._waiters, []
            self._stopping = True
            self._closed = True
            self._cond.notify_all()
        for _, loop, future in waiters:
            _settle(loop, future, error)
        if first and self.on_failure is not None:
            try:
                self.on_failure(error)
            except Exception:  # the failure is final whatever the callback does
                log.exception("the log syncer's failure callback failed")

    def _loop(self) -> None:
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
                except _CannotOpen as error:  # nothing was synced, nor any error consumed: later syncs may work
                    log.error("cannot open the state database's log to sync it: %s", error)
                    with self._cond:
                        self._missed = (target, error)
                        waiters = [w for w in self._waiters if w[0] <= target]
                        self._waiters = [w for w in self._waiters if w[0] > target]
                        # wait to be asked again, unless a later commit is waited for already
                        self._wanted = max([self._durable, *(w[0] for w in self._waiters)])
                        self._cond.notify_all()
                    for _, loop, future in waiters:
                        _settle(loop, future, error)
                    continue
                except OSError as error:  # the kernel may have dropped the pages: never trust a later fsync
                    log.error("cannot sync the state database's log: %s", error)
                    self._fail(error)
                    return
                with self._cond:
                    self.syncs += 1
                    self._durable = max(self._durable, target)
                    done = [w for w in self._waiters if w[0] <= self._durable]
                    self._waiters = [w for w in self._waiters if w[0] > self._durable]
                    self._cond.notify_all()
                for _, loop, future in done:
                    _settle(loop, future, None)
                try:
                    checkpointer = self._checkpoint(checkpointer)
                except OSError as error:  # an I/O error in the checkpoint's fsync: as a failed fsync
                    log.error("cannot checkpoint the state database: %s", error)
                    self._fail(error)
                    return
        finally:
            if checkpointer is not None:
                checkpointer.close()

    def _open_log(self) -> None:
        try:
            fd = os.open(self.log_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as error:
            raise _CannotOpen(error.errno, f"{error.strerror}: {self.log_path}") from None
        stat = os.fstat(fd)
        self._fd, self._fd_id = fd, (stat.st_dev, stat.st_ino)

    def _fsync(self) -> None:
        """fsync the log file: every frame written to it so far, by any connection, is on disk.

        Through the descriptor kept since the start, which stays on the file it was opened
        on: should the path name another file now (SQLite removed the log, and a new one was
        made), the old file is synced first, then the new one is opened, kept and synced. A
        log that is gone has its frames in the file the descriptor still holds."""
        if self._fd is None:
            self._open_log()
        assert self._fd is not None
        try:
            stat = os.stat(self.log_path)
            current: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            current = None
        os.fsync(self._fd)
        if current is None or current == self._fd_id:
            return
        os.close(self._fd)
        self._fd = self._fd_id = None
        self._open_log()
        assert self._fd is not None
        os.fsync(self._fd)

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
        except sqlite3.Error as error:
            if _io_error(error):  # its fsync failed: the pages it dropped are not on disk
                raise OSError(f"the state database's checkpoint failed: {error}") from error
            log.warning("state database checkpoint failed: %s", error)  # tried again after a later sync
        return conn


class _CannotOpen(OSError):
    """The log could not be opened (too many open files, for a moment): nothing synced, nothing lost."""


def _io_error(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == _SQLITE_IOERR
    return "disk I/O error" in str(error)


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

    store.conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # the log exists once it is read
    syncer = WalSyncer(Path(store.root) / DB_NAME)
    relax(store, syncer)
    return syncer


def relax(store: Any, syncer: WalSyncer) -> None:
    """Let `store`'s relaxed transactions leave their fsync to `syncer` (and its checkpoints)."""
    store.conn.execute("PRAGMA wal_autocheckpoint=0")
    # When SQLite starts the log over after a checkpoint, it cuts the file to this, so that
    # the file's size keeps telling how much is in it (a full-size file would be checkpointed
    # after every sync)
    store.conn.execute(f"PRAGMA journal_size_limit={CHECKPOINT_BYTES // 4}")
    store.syncer = syncer
