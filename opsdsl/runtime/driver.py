"""A server owns its runs: it drives each one to its end, with nobody at a shell.

The scheduler stops a run whenever it must wait for the world: people (an approval, a
decision on a step left in doubt, a cancellation) or the clock (an approval's deadline, a
`wait`, a retry's back-off). A paused run holds no task and no lock; what it waits for is in
the state database, written by whoever acted (the operator API, the CLI on the same state
directory, the scheduler's own timers). The driver looks there, every `POLL` seconds and
whenever it is nudged (`wake`), and drives again the runs that can go on:

- a timer is due (`timers` table; one due while the server was down fires at start);
- a waiting step got its verdict: enough distinct approvers, a denial, or a decision;
- someone asked to cancel the run.

At start it adopts the state directory's unfinished runs (a server owns them all) and
continues those a stopped process left `running` or `interrupted`: the scheduler's own
recovery re-runs idempotent steps with their key and puts the others in doubt.

A paused run whose waiting state has not changed since the driver last looked is left
alone, so that a run that cannot go on yet is never driven in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from opsdsl.runtime import store as S
from opsdsl.runtime.approvals import approval_verdict
from opsdsl.runtime.store import StateError

POLL = 0.5  # seconds between two looks at the database when nothing nudges the driver
SERVE = "serve"  # runs.owner of a run a server owns
# Timers that are a person's act, written with it (runtime/runner.py): the reason a drive gives.
NUDGES = ("approval", "decision", "cancel")
# Seconds between two scans of every paused run for changes a writer left no nudge for. Every
# act of opsdsl's own leaves one; the scan is O(paused runs), so it runs rarely.
SCAN_EVERY = 30.0
LOCK_TRIES = 10  # tries 20 ms apart to take the engine lock before saying who holds it
RETRY_AFTER = 60.0  # seconds before a run that could not start (its secret params missing) is tried again

log = logging.getLogger("opsdsl.serve")

# (run, step, status, verdict or None) of every step a paused run waits on; plus cancellation.
Waiting = frozenset


class StateBusy(StateError):
    """Another process's engine holds the state directory (exit 2)."""


class EngineLock:
    """The single-instance lock of a state directory's events engine: `flock` on
    `STATE/engine.lock`, whose content names the holder (pid and command).

    The kernel releases the lock when its holder dies, even by SIGKILL, so a crash never
    blocks the next start. The file itself is never removed: unlinking a lock file lets
    two processes lock two different files of the same name.
    """

    NAME = "engine.lock"

    def __init__(self, state: Path) -> None:
        self.path = state / self.NAME
        self._fd: int | None = None

    def acquire(self, holder: str) -> None:
        """Take the lock for `holder` (a command name); StateBusy at once if another process has it."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as error:
            raise StateError(f"cannot open {self.path}: {error.strerror}") from None
        for attempt in range(LOCK_TRIES):  # `engine_holder` takes a shared lock for a moment
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == LOCK_TRIES - 1:
                    os.close(fd)
                    raise StateBusy(self._busy_message()) from None
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": holder, "since": time.time()}).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def holder(self) -> dict[str, Any]:
        """What the lock file says about its holder ({} if it says nothing readable yet)."""
        for _ in range(20):  # the holder writes its name just after taking the lock
            try:
                found = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                found = None
            if isinstance(found, dict) and isinstance(found.get("pid"), int):
                return found
            time.sleep(0.01)
        return {}

    def _busy_message(self) -> str:
        found = self.holder()
        state = self.path.parent
        who = f"`opsdsl {found.get('command', '?')}` (pid {found['pid']})" if found else "another process"
        if found and not _alive(found["pid"]):  # the file names a holder that is gone: not who holds it now
            who = "another process"
        return (
            f"state directory {state} is in use by {who}: one `opsdsl serve`, `watch` or `fire` "
            f"at a time drives its events; stop it first, send the events to it, or use another --state-dir"
        )


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def engine_holder(state: Path) -> dict[str, Any] | None:
    """Who holds the state directory's engine lock (`{pid, command, since}`), or None when
    no process does: a running `opsdsl serve` owns the runs it adopted."""
    path = state / EngineLock.NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return EngineLock(state).holder() or {"pid": None, "command": "?"}
    finally:
        os.close(fd)  # drops a lock we took
    return None


class Driver:
    """Finds the runs a server must drive now; `drive(run_id, reason)` (the service's) drives one."""

    def __init__(
        self,
        store: S.Store,
        drive: Callable[[str, str], Any],
        driving: Callable[[], Iterable[str]],
        clock: Callable[[], float] = time.time,
        poll: float = POLL,
        after_look: Callable[[], None] | None = None,
        handlers: Mapping[str, Callable[[str], None]] | None = None,
    ) -> None:
        self.store = store
        self.drive = drive  # (run id, reason) -> starts driving it (a task); None if it cannot now
        self.driving = driving  # the run ids being driven in this process
        self.clock = clock
        self.poll = poll
        self.after_look = after_look  # e.g. the service's milestone log, after every look
        self.handlers = dict(handlers or {})  # timer kind -> what to call with the run (not a drive)
        self.nudged = asyncio.Event()
        self._seen: dict[str, Waiting] = {}  # a paused run's waiting state when last looked at
        self._scanned = float("-inf")  # when the paused runs were last scanned

    # ---- starting -------------------------------------------------------------------------

    def adopt(self) -> list[str]:
        """Own every unfinished top-level run of the state directory; the ids of those left
        `running` or `interrupted` by a process that stopped, to drive at once."""
        final = tuple(S.FINAL_RUN_STATUSES)
        marks = ", ".join("?" for _ in final)
        with self.store.transaction():
            self.store.conn.execute(
                f"UPDATE runs SET owner = ? WHERE parent_run IS NULL AND status NOT IN ({marks})", (SERVE, *final)
            )
        rows = self.store.conn.execute(
            "SELECT id FROM runs WHERE parent_run IS NULL AND status IN (?, ?) ORDER BY created_at",
            (S.RUNNING, S.INTERRUPTED),
        ).fetchall()
        return [run_id for (run_id,) in rows]

    async def run(self) -> None:
        """Drive what a stopped process left, then look for runs to drive until cancelled."""
        for run_id in self.adopt():
            if self.drive(run_id, "recover") is None:  # it cannot start now (a secret is missing): try later
                with self.store.transaction():
                    self.store.set_timer(run_id, "", "retry", self.clock() + RETRY_AFTER)
        while True:
            try:
                self.look()
                if self.after_look is not None:
                    self.after_look()
            except Exception as error:  # a locked or failing database: look again later
                log.error("driver: %s: %s", type(error).__name__, error)
            await self._sleep()

    def wake(self) -> None:
        """Look now (an approval or a decision was just recorded in this process)."""
        self.nudged.set()

    async def _sleep(self) -> None:
        timeout = self.poll
        try:
            due = self.store.next_timer()
            now = self.clock() if due is not None else 0.0  # one read (a round trip on a worker's clock)
            if due is not None and due > now:  # one due already was seen by the look just done
                timeout = min(timeout, due - now)
        except Exception:  # a failing database (a restart): the look that follows logs it; poll as usual
            pass
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.nudged.wait(), timeout)
        self.nudged.clear()

    # ---- looking --------------------------------------------------------------------------

    def look(self) -> list[str]:
        """Start driving every run that can go on now; their ids."""
        busy = set(self.driving())
        started = []
        for run_id, reason in self.due(busy):
            if run_id in busy:
                continue
            if self.drive(run_id, reason) is None:  # it cannot start now (a secret is missing): try later
                with self.store.transaction():
                    self.store.set_timer(run_id, "", "retry", self.clock() + RETRY_AFTER)
                continue
            busy.add(run_id)
            started.append(run_id)
        return started

    def due(self, busy: set[str]) -> list[tuple[str, str]]:
        """(top-level run, why) for each run to drive now, timers first."""
        now = self.clock()
        found: dict[str, str] = {}
        timers = self.store.due_timers(now)
        handled = [timer for timer in timers if timer[2] in self.handlers]
        if handled:
            self._handle(handled, now)
            timers = [timer for timer in timers if timer[2] not in self.handlers]
        if timers:
            roots = {self.store.root_run(run_id) for run_id, *_ in timers}
            owned = self._owned_live(roots)
            fired = sorted(owned - busy)
            over = sorted(self._over(roots))  # finished (or gone): their timers have nothing left to wake
            with self.store.transaction():
                self.store.drop_timers(fired, now)
                self.store.drop_timers(over, now)
            for run_id, _step, kind, _due in timers:
                root = self.store.root_run(run_id)
                if root in fired:
                    found.setdefault(root, kind if kind in NUDGES else "timer")
        if now - self._scanned >= SCAN_EVERY:  # the fallback for a writer that left no nudge
            self._scanned = now
            for root, reason in self._ready_paused(busy):
                found.setdefault(root, reason)
        return list(found.items())

    def _handle(self, timers: list[tuple[str, str, str, float]], now: float) -> None:
        """Timers that are not a drive (an escalation clock): forget each, then call its handler
        (which may set the next one); a failing handler is logged, never retried in a loop."""
        with self.store.transaction():
            self.store.conn.executemany(
                "DELETE FROM timers WHERE run_id = ? AND step_id = ? AND kind = ? AND due_at <= ?",
                [(run_id, step, kind, now) for run_id, step, kind, _ in timers],
            )
        for run_id, _step, kind, _due in timers:
            try:
                self.handlers[kind](run_id)
            except Exception as error:
                log.error("timer %s of run %s: %s: %s", kind, run_id, type(error).__name__, error)

    def _over(self, run_ids: set[str]) -> set[str]:
        """The runs among these that finished, or that are not in the database."""
        if not run_ids:
            return set()
        marks = ", ".join("?" for _ in run_ids)
        rows = self.store.conn.execute(f"SELECT id, status FROM runs WHERE id IN ({marks})", tuple(run_ids))
        live = {run_id for run_id, status in rows.fetchall() if status not in S.FINAL_RUN_STATUSES}
        return set(run_ids) - live

    def _owned_live(self, run_ids: set[str]) -> set[str]:
        if not run_ids:
            return set()
        marks = ", ".join("?" for _ in run_ids)
        final = tuple(S.FINAL_RUN_STATUSES)
        rows = self.store.conn.execute(
            f"SELECT id FROM runs WHERE id IN ({marks}) AND owner = ? "
            f"AND status NOT IN ({', '.join('?' for _ in final)})",
            (*run_ids, SERVE, *final),
        ).fetchall()
        return {run_id for (run_id,) in rows}

    def _ready_paused(self, busy: set[str]) -> list[tuple[str, str]]:
        """Paused runs (this server's) whose waiting state changed so that they can go on."""
        conn = self.store.conn
        paused = conn.execute("SELECT id, parent_run, owner, cancel_requested FROM runs WHERE status = ?", (S.PAUSED,))
        roots: dict[str, str] = {}  # paused run -> its top-level run
        cancelled: set[str] = set()
        owned: set[str] = set()
        for run_id, parent, owner, cancel in paused.fetchall():
            root = run_id if parent is None else self.store.root_run(run_id)
            roots[run_id] = root
            if parent is None and owner == SERVE:
                owned.add(run_id)
            if cancel:
                cancelled.add(root)
        waiting: dict[str, set[tuple]] = {root: set() for root in owned}
        rows = conn.execute(
            "SELECT s.run_id, s.step_id, s.status, s.approvals_needed FROM steps s JOIN runs r ON r.id = s.run_id "
            "WHERE r.status = ? AND s.status IN (?, ?, ?)",
            (S.PAUSED, S.AWAITING_APPROVAL, S.IN_DOUBT, S.WAITING),
        ).fetchall()
        awaiting = [(run_id, step) for run_id, step, status, _ in rows if status == S.AWAITING_APPROVAL]
        votes = self._votes(awaiting)
        for run_id, step, status, needed in rows:
            root = roots.get(run_id)
            if root not in waiting:
                continue
            verdict = approval_verdict(votes.get((run_id, step), []), needed) if status == S.AWAITING_APPROVAL else None
            waiting[root].add((run_id, step, status, verdict))
        ready = []
        for root, items in waiting.items():
            state: Waiting = frozenset(items | ({("cancel",)} if root in cancelled else set()))
            before = self._seen.get(root)
            self._seen[root] = state
            if root in busy or state == before:
                continue
            if root in cancelled:
                ready.append((root, "cancel"))
            elif any(item[3] is not None for item in items):
                ready.append((root, "approval"))
            elif not items:
                ready.append((root, "resume"))  # nothing left to wait for
            elif before is not None and _waited_on(before) - _waited_on(state):
                ready.append((root, "decision"))  # a step stopped waiting (a decision)
        for gone in set(self._seen) - set(waiting):
            del self._seen[gone]
        return ready

    def _votes(self, steps: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict]]:
        found: dict[tuple[str, str], list[dict]] = {}
        runs = sorted({run_id for run_id, _ in steps})
        if not runs:
            return found
        marks = ", ".join("?" for _ in runs)
        rows = self.store.conn.execute(
            f"SELECT run_id, step_id, by, decision FROM approvals WHERE run_id IN ({marks})", runs
        ).fetchall()
        for run_id, step, by, decision in rows:
            found.setdefault((run_id, step), []).append({"by": by, "decision": decision})
        return found


def _waited_on(state: Waiting) -> set[tuple[str, str]]:
    return {(item[0], item[1]) for item in state if len(item) == 4 and item[2] in (S.AWAITING_APPROVAL, S.IN_DOUBT)}
