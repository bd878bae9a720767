"""`opsdsl worker`: the driving half of `opsdsl serve`, without HTTP, any number at once.

A worker drives a run only under the run's lease (opsdsl.runtime.lease): it claims the run
(epoch + 1, itself as owner, until the database's clock + TTL), drives it with the same
Service and Scheduler `serve` uses, renews the lease every TTL/3 (a heartbeat) and with
every write (the fence check in `Store.transaction`), and releases it when the drive ends:
the run finished, paused (an approval, a decision, a parked wait or back-off) or was
interrupted. A paused run holds no lease; the timers its approvals, decisions,
cancellations and waits leave make it claimable again, as does a lapsed lease on a run
left `running` or `interrupted` (its worker died or was cut off). A worker whose lease
another claimed writes nothing more: its transaction raises LeaseLost, and the heartbeat
cancels the drive.

Accepted events (`serve --no-drive` only commits them) are evaluated by one worker at a
time, in order, under the named lease `events`: the triggers' state is shared, so the
worker that takes the lease reads it again first. Runs an event starts are claimed by
the worker that created them; a run created by a worker that died before claiming it is
`running` with no lease, and any worker claims it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from opsdsl.runtime import lease as L
from opsdsl.runtime import store as S
from opsdsl.runtime.driver import NUDGES, POLL, SCAN_EVERY, SERVE, Driver

log = logging.getLogger("opsdsl.worker")
EVENT_BATCH = 100  # accepted events read at a time by the holder of the events lease
EVENT_LOOK = 0.05  # seconds between looks while events wait and another worker holds (or was handed) the lease
EVENT_YIELD = 0.15  # after its batch, a worker leaves the events lease this long to the others
EVENT_SLICE = 0.01  # seconds of evaluating events before the loop's other tasks get a turn
EVENT_GROUP = 10  # accepted events evaluated in one transaction (their runs created, their notes kept)


def default_name() -> str:
    """`HOST:PID`: unique among live workers, and says where to look."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """Drives a Service's runs under leases, and evaluates its accepted events."""

    def __init__(
        self,
        service: Any,
        name: str | None = None,
        ttl: float = L.DEFAULT_TTL,
        poll: float = POLL,
        max_runs: int = 64,
    ) -> None:
        """`max_runs`: runs claimed and driven at once (the Service's run slots)."""
        self.service = service
        self.max_runs = max_runs
        self.store: S.Store = service.store
        self.name = name or default_name()
        self.ttl = ttl
        self.poll = poll
        self.claimed: dict[str, L.Fence] = {}  # claimed by the driver, not yet driving
        self.held: dict[str, tuple[L.Fence, asyncio.Task]] = {}  # run -> its lease and drive
        self.lost: set[str] = set()
        self.stopping = False
        self.events_fence: L.Fence | None = None
        self._events_yielded_until = 0.0  # monotonic: not before then may this worker take the events lease again
        self._tasks: list[asyncio.Task] = []

    # ---- starting and stopping -------------------------------------------------------

    async def start(self) -> None:
        """Fence the store, set up what `serve` sets up to own runs, and start driving."""
        from opsdsl.runtime.compliance import LastLevelReports
        from opsdsl.runtime.escalation import TIMER, EscalationPolicy, Escalator
        from opsdsl.runtime.service import PARK_AFTER

        service = self.service
        L.ensure_schema(self.store)
        from opsdsl.runtime.sequencer import start_if_journal

        # With the journal ledger every worker offers to chain it (one leads, the rest stand by).
        service.sequencer = start_if_journal(self.store, service.runtime.signer)
        self.store.fence = L.Fences()
        service.leases = self
        service.runtime.park_after = PARK_AFTER
        if service.runtime.write_incidents and service.runtime.incident_writer is None:
            from opsdsl.runtime.incident_writer import IncidentWriter

            # Incident folders (several fsync'd files a run) on a thread, not on the loop
            # every run shares: as `serve` writes them (~10 % of a worker's loop under load).
            service.runtime.incident_writer = IncidentWriter(service.runtime.state)
        service.escalator = Escalator(self.store, service.escalation or EscalationPolicy(), clock=service.clock)
        levels = [level.name for level in service.escalator.policy.levels]
        service.reports = LastLevelReports(self.store.root, levels, clock=service.clock)
        service.driver = LeaseDriver(
            self,
            self.store,
            service.drive_existing,
            lambda: list(service.driving),
            clock=self.store.now,
            poll=self.poll,
            handlers={TIMER: service._escalation_due},
        )
        self._tasks = [
            asyncio.create_task(service.driver.run(), name="opsdsl-driver"),
            asyncio.create_task(self._events(), name="opsdsl-events"),
            asyncio.create_task(self._heartbeat(), name="opsdsl-heartbeat"),
        ]
        log.info("worker %s: driving runs (lease %gs)", self.name, self.ttl)

    async def stop(self, timeout: float) -> None:
        """Claim nothing more; let the runs being driven finish (up to `timeout`), then
        interrupt the rest (each records that and releases its lease)."""
        self.stopping = True
        driver, events, heartbeat = self._tasks
        for task in (driver, events):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for run_id, fence in list(self.claimed.items()):
            self._release(fence)
            del self.claimed[run_id]
        runs = set(self.service.runs)
        if runs:
            _, pending = await asyncio.wait(runs, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("drain timeout: interrupting %d runs; another worker continues them", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await heartbeat
        sequencer = getattr(self.service, "sequencer", None)
        if sequencer is not None:
            await asyncio.to_thread(sequencer.stop)
        if self.service.reports is not None:
            from opsdsl.runtime.service import REPORT_DRAIN

            await asyncio.to_thread(self.service.reports.join, REPORT_DRAIN)
        if self.service.runtime.incident_writer is not None:  # the folders of the runs that ended
            await asyncio.to_thread(self.service.runtime.incident_writer.join)
        log.info("worker %s: stopped", self.name)

    async def run(self, stop: asyncio.Event, drain_timeout: float = 30.0) -> None:
        await self.start()
        done = asyncio.ensure_future(stop.wait())
        await asyncio.wait([done, *self._tasks[:2]], return_when=asyncio.FIRST_COMPLETED)
        done.cancel()
        await self.stop(drain_timeout)

    # ---- driving under a lease -------------------------------------------------------

    def claim(self, run_id: str, within: Callable[[], None] | None = None) -> L.Fence | None:
        return L.claim(self.store, run_id, self.name, self.ttl, within=within)

    @contextlib.contextmanager
    def claiming(self, within: Callable[[S.RunRow], None] | None) -> Iterator[Callable[[S.RunRow], None]]:
        """`create_run`'s `within`: the new run's lease, taken in the transaction that
        creates it (no other worker can take a run for one left behind in between). The
        claim counts (a run slot, the heartbeat) only once that transaction committed,
        i.e. when `create_run` returns in this context."""
        taken: list[L.Fence] = []

        def claim_new(run: S.RunRow) -> None:
            if within is not None:
                within(run)
            self.store.conn.execute(  # on the database's clock, in the statement (no round trip to read it)
                "UPDATE runs SET lease_owner = ?, lease_epoch = lease_epoch + 1,"
                f" lease_until = {self.store.now_sql()} + ? WHERE id = ?",
                (self.name, self.ttl, run.id),
            )
            taken.append(L.Fence(run.id, self.name, run.lease_epoch + 1, self.ttl))

        yield claim_new
        for fence in taken:
            self.claimed[fence.key] = fence

    async def under_lease(self, run_id: str, drive: Coroutine[Any, Any, Any]) -> None:
        """Drive (`Service._drive`) only under the run's lease; release it when the drive ends."""
        fence = self.claimed.pop(run_id, None) or (None if self.stopping else self.claim(run_id))
        if fence is None:  # another worker holds it: it goes on there
            drive.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self.held[run_id] = (fence, task)
        try:
            with fence.current():
                await drive
        except L.LeaseLost as error:
            self.lost.add(run_id)
            log.warning("run %s: %s", run_id, error.message)
        except asyncio.CancelledError:
            if run_id not in self.lost:
                raise
        except sqlite3.Error as error:  # the database went away mid-drive: the lease lapses, a worker recovers it
            log.warning("run %s: the state database failed (%s); it is continued once the lease lapses", run_id, error)
        finally:
            del self.held[run_id]
            if run_id in self.lost:
                self.lost.discard(run_id)
            else:
                self._release(fence)

    def _release(self, fence: L.Fence) -> None:
        try:
            L.release(self.store, fence)
        except Exception as error:  # the lease lapses by itself
            log.error("releasing the lease on %s: %s: %s", fence.key, type(error).__name__, error)

    async def _heartbeat(self) -> None:
        """Renew every lease held every TTL/3; a lease lost stops its drive at once."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            # One statement for every lease held, not a transaction each (64 runs held made
            # 64 transactions in a row, each waiting for the writer lock, every TTL/3).
            held = [(run_id, fence) for run_id, (fence, _task) in self.held.items() if fence.owner == self.name]
            try:
                gone = L.renew_many(self.store, self.name, self.ttl, [fence for _, fence in held])
            except Exception as error:  # the database is unreachable: the leases may lapse
                log.error("heartbeat: %s: %s", type(error).__name__, error)
                gone = set()
            for run_id, fence in held:
                if run_id in gone and run_id in self.held and self.held[run_id][0] is fence:
                    log.warning("run %s: lease lost (epoch %d); stopping its drive", run_id, fence.epoch)
                    self.lost.add(run_id)
                    self.held[run_id][1].cancel()
            with contextlib.suppress(Exception):
                L.renew_many(self.store, self.name, self.ttl, list(self.claimed.values()))

    # ---- events ----------------------------------------------------------------------

    async def _events(self) -> None:
        """Evaluate accepted events, in order, while holding the `events` lease; give the
        lease up when none are left, so that any worker may take the next ones."""
        from opsdsl.runtime.service import RETRY_MAX

        delay = self.poll
        while True:
            try:
                waiting = await self._evaluate_pending()
                delay = self.poll
            except L.LeaseLost as error:
                log.warning("events: %s", error.message)
                self.events_fence = None
            except Exception as error:  # a failing database: the events stay accepted; try again later
                # The lease is kept (a lapsed or taken one fails the next fenced write), and
                # the Service reads the triggers' state again before its next event.
                log.error("events: %s: %s; trying again in %gs", type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
                continue
            # Events wait for another worker's turn: look again soon, so that the lease
            # changes hands within EVENT_LOOK of its release (not a whole poll later, which
            # under overload left the events unevaluated a third of the time).
            await asyncio.sleep(EVENT_LOOK if waiting else self.poll)

    async def _evaluate_pending(self) -> bool:
        """Evaluate a batch of accepted events under the `events` lease. Returns whether
        events wait that this worker left to another (or could not take the lease for)."""
        service = self.service
        if self.events_fence is None:
            if not self._events_waiting():
                return False
            if time.monotonic() < self._events_yielded_until:
                return True  # this worker just created runs: let another take the next ones (and drive them)
            if self._events_lease_held():  # a claim would wait for the writer lock only to fail
                return True
            self.events_fence = L.claim(self.store, L.EVENTS, self.name, self.ttl, L.NAMED)
            if self.events_fence is None:  # another worker evaluates them
                return True
            service.engine.restore(self.store.trigger_states())  # as the last holder left it
        pending = self._pending_events()
        if not pending:
            self._release(self.events_fence)
            self.events_fence = None
            return False

        with self.events_fence.current():
            slice_began = time.monotonic()
            for start in range(0, len(pending), EVENT_GROUP):
                if self.stopping:
                    return False
                self._evaluate_group(pending[start : start + EVENT_GROUP])
                # The runs' drives get the loop every EVENT_SLICE, not after every group: a
                # turn of the loop runs every ready drive (each with its round trips), so a
                # turn per event slowed the intake down as runs piled up.
                if time.monotonic() - slice_began >= EVENT_SLICE:
                    await asyncio.sleep(0)
                    slice_began = time.monotonic()
        # The worker that evaluates an event claims the runs it starts (in the same
        # transaction), so the lease goes round: each batch is another worker's turn when
        # one is waiting, and the runs spread over the workers.
        self._release(self.events_fence)
        self.events_fence = None
        self._events_yielded_until = time.monotonic() + EVENT_YIELD
        return True

    def _evaluate_group(self, group: list[tuple[int, float, str]]) -> None:
        """Evaluate these events in one transaction (Store.group): their runs, claims, notes
        and trigger state commit together, with one fsync instead of two per event, and the
        writer lock is taken once. Nothing awaits inside (an evaluation that would is
        refused), so no drive starts before the commit: the runs start driving after it.

        Each event has a savepoint: a bad event (an error that is not the database's) is
        rolled back alone, the runs it started are not driven, and it is recorded as failed
        (`event.error`) in the group, as one at a time. LeaseLost and an unavailable
        database roll the whole group back (its events stay accepted) and are raised."""
        from opsdsl.runtime.service import database_unavailable

        service = self.service
        began = set(service.driving), set(self.claimed)
        try:
            with self.store.group() as conn:
                for event_id, received, body in group:
                    if self.stopping:
                        break
                    before = set(service.driving), set(self.claimed)
                    conn.execute("SAVEPOINT opsdsl_event")
                    try:
                        _complete(service.handle(event_id, received, json.loads(body)))
                    except Exception as error:
                        if isinstance(error, L.LeaseLost) or database_unavailable(error):
                            raise
                        conn.execute("ROLLBACK TO SAVEPOINT opsdsl_event")
                        self._forget(*before)
                        service._triggers_stale = True  # read again, as this savepoint left them
                        service._record_failure(event_id, error)  # one bad event must not stop the others
        except BaseException:
            self._forget(*began)
            service._triggers_stale = True
            raise

    def _forget(self, driving: set[str], claimed: set[str]) -> None:
        """Undo the drives and claims of runs whose creation rolled back (not driven: the
        tasks have not had a turn yet)."""
        for run_id, task in list(self.service.driving.items()):
            if run_id not in driving:
                task.cancel()
                self.service.driving.pop(run_id, None)
        for run_id in set(self.claimed) - claimed:
            del self.claimed[run_id]

    def _events_lease_held(self) -> bool:
        """Whether another worker holds the `events` lease now (a read: no writer lock)."""
        held = self.store.conn.execute(
            f"SELECT 1 FROM leases WHERE name = ? AND lease_until IS NOT NULL AND lease_until >= {self.store.now_sql()}",
            (L.EVENTS,),
        )
        return held.fetchone() is not None

    def _events_waiting(self) -> bool:
        """Whether any event is accepted (a cheap look, without reading the bodies)."""
        return self.store.conn.execute("SELECT 1 FROM events WHERE status = 'accepted' LIMIT 1").fetchone() is not None

    def _pending_events(self) -> list[tuple[int, float, str]]:
        return self.store.conn.execute(
            "SELECT id, received_at, body FROM events WHERE status = 'accepted' ORDER BY id LIMIT ?", (EVENT_BATCH,)
        ).fetchall()


def _complete(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never awaits (an event's evaluation) to its end, here; one that
    would give the loop a turn is stopped (RuntimeError) rather than let other tasks write
    inside a group's transaction."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("an event's evaluation awaited inside a transaction group")


class LeaseDriver(Driver):
    """The Driver of `serve`, for many workers: a run is driven only once claimed, and a
    timer is dropped only by the worker that claimed its run."""

    def __init__(self, worker: Worker, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker = worker

    def adopt(self) -> list[str]:
        """Own the unfinished runs nobody owns that no process drives (paused, interrupted):
        e.g. `opsdsl run` paused for an approval. A `running` one may be a live CLI's."""
        with L.unfenced(), self.store.transaction():
            self.store.conn.execute(
                "UPDATE runs SET owner = ? WHERE owner IS NULL AND parent_run IS NULL AND status IN (?, ?)",
                (SERVE, S.PAUSED, S.INTERRUPTED),
            )
        return []

    def look(self) -> list[str]:
        busy = set(self.driving())
        started = []
        for run_id, reason in self.due(busy):
            if self.drive(run_id, reason) is None:  # it cannot start now (a secret is missing): try later
                fence = self.worker.claimed.pop(run_id, None)
                with L.unfenced(), self.store.transaction():
                    self.store.set_timer(run_id, "", "retry", self.clock() + 60.0)
                if fence is not None:
                    self.worker._release(fence)
                continue
            busy.add(run_id)
            started.append(run_id)
        return started

    def due(self, busy: set[str]) -> list[tuple[str, str]]:
        """(top-level run, why) for each run this worker claimed now: runs with a due timer,
        runs left running or interrupted whose lease lapsed, paused runs ready to go on."""
        if self.worker.stopping:
            return []
        now = self.clock()
        candidates: dict[str, str] = {}
        timers = self.store.due_timers(now)
        handled = [timer for timer in timers if timer[2] in self.handlers]
        if handled:
            self._handle(handled, now)
        for run_id, _step, kind, _due in timers:
            if kind not in self.handlers:
                candidates.setdefault(self.store.root_run(run_id), kind if kind in NUDGES else "timer")
        over = self._over(set(candidates))  # finished (or gone): their timers have nothing left to wake
        if over:
            with L.unfenced(), self.store.transaction():
                self.store.drop_timers(sorted(over), now)
        owned = self._owned_live(set(candidates))  # not a run a CLI process drives
        candidates = {run_id: why for run_id, why in candidates.items() if run_id in owned}
        rows = self.store.conn.execute(
            "SELECT id FROM runs WHERE parent_run IS NULL AND owner = ? AND status IN (?, ?)"
            " AND (lease_until IS NULL OR lease_until < ?) ORDER BY created_at LIMIT 100",
            (SERVE, S.RUNNING, S.INTERRUPTED, now),
        ).fetchall()
        for (run_id,) in rows:
            candidates.setdefault(run_id, "recover")
        if now - self._scanned >= SCAN_EVERY:
            self._scanned = now
            for root, reason in self._ready_paused(busy):
                candidates.setdefault(root, reason)
        free = self.worker.max_runs - len(busy) - len(self.worker.claimed)
        found = []
        for run_id, reason in candidates.items():
            if run_id in busy or run_id in self.worker.claimed:
                continue
            if len(found) >= max(0, free):
                break
            # Its due timers go in the claim's transaction (one write transaction, not two).
            fence = self.worker.claim(run_id, within=lambda run_id=run_id: self.store.drop_timers([run_id], now))
            if fence is None:  # another worker drives it (its timers stay for whoever drives next)
                continue
            self.worker.claimed[run_id] = fence
            found.append((run_id, reason))
        return found

    def _handle(self, timers: list[tuple[str, str, str, float]], now: float) -> None:
        """A timer that is not a drive (an escalation clock) fires once across workers: the
        worker whose DELETE removed it calls the handler."""
        mine = []
        for timer in timers:
            run_id, step, kind, _due = timer
            with L.unfenced(), self.store.transaction():
                cursor = self.store.conn.execute(
                    "DELETE FROM timers WHERE run_id = ? AND step_id = ? AND kind = ? AND due_at <= ?",
                    (run_id, step, kind, now),
                )
            if cursor.rowcount > 0:
                mine.append(timer)
        for run_id, _step, kind, _due in mine:
            try:
                self.handlers[kind](run_id)
            except Exception as error:
                log.error("timer %s of run %s: %s: %s", kind, run_id, type(error).__name__, error)
