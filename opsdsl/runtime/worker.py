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
EVENT_LOOK = 0.05  # seconds between looks at the accepted events while some wait
EVENT_TURN = 0.25  # seconds a worker keeps the events lease before it offers it to the others
EVENT_YIELD = 0.1  # after its turn, a worker leaves the events lease this long to the others
ADMIT = 24  # runs in flight (driving or claimed) past which a worker evaluates no more events
ADMIT_AGE = 10.0  # seconds after which a run in flight no longer counts against ADMIT (a long step)
INCIDENT_SWEEP = 60.0  # seconds between looks for incident folders a dead worker left unwritten


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
        admit: int = ADMIT,
        incident_sweep: float | None = INCIDENT_SWEEP,
    ) -> None:
        """`max_runs`: runs claimed and driven at once (the Service's run slots). `admit`:
        the runs in flight past which this worker starts no more (admission control).
        `incident_sweep`: seconds between two looks for finished runs whose incident folder
        a dead process left unwritten (runtime/incident_sweep.py), and how long ago such a
        run must have ended; 0: none after the one at start-up; None: no sweep at all."""
        self.service = service
        self.max_runs = max_runs
        self.admit = max(1, min(admit, max_runs))
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
        self._events_turn_ends = 0.0  # monotonic: when this worker's turn with the events lease ends
        self._flight_seen: dict[str, float] = {}  # run in flight -> monotonic time it was first counted
        self._tasks: list[asyncio.Task] = []
        self.incident_sweep = incident_sweep
        self._sweeper: asyncio.Task | None = None

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
        if service.runtime.write_incidents and self.incident_sweep is not None:
            self._sweeper = asyncio.create_task(self._incidents(), name="opsdsl-incident-sweep")
        log.info("worker %s: driving runs (lease %gs)", self.name, self.ttl)

    async def stop(self, timeout: float) -> None:
        """Claim nothing more; let the runs being driven finish (up to `timeout`), then
        interrupt the rest (each records that and releases its lease)."""
        self.stopping = True
        driver, events, heartbeat = self._tasks
        if self._sweeper is not None:  # a pass under way ends on its thread; the loop waits for it at exit
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in (driver, events):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.events_fence is not None:  # another worker takes the events now, not once it lapses
            self._release(self.events_fence)
            self.events_fence = None
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
            for run_id, (fence, task) in list(self.held.items()):
                try:
                    L.renew(self.store, fence)
                except L.LeaseLost as error:
                    log.warning("run %s: %s; stopping its drive", run_id, error.message)
                    self.lost.add(run_id)
                    task.cancel()
                except Exception as error:  # the database is unreachable: the lease may lapse
                    log.error("heartbeat of run %s: %s: %s", run_id, type(error).__name__, error)
            for fence in list(self.claimed.values()):
                with contextlib.suppress(Exception):
                    L.renew(self.store, fence)

    # ---- incident folders a dead process left unwritten ------------------------------

    async def _incidents(self) -> None:
        """A start-up pass, then one every `incident_sweep` seconds (another worker may die
        while this one lives), each on a thread with a connection of its own."""
        from opsdsl.runtime.incident_sweep import IncidentSweep

        runtime = self.service.runtime
        every = self.incident_sweep or 0.0
        sweep = IncidentSweep(runtime.state, runtime.incidents_root, grace=every)
        look = sweep.startup
        while True:
            try:
                await asyncio.to_thread(look)
                look = sweep.periodic
            except Exception as error:  # the database down: the next pass looks again (a start-up one if need be)
                log.error("incident folders: the sweep failed: %s: %s", type(error).__name__, error)
            if every <= 0:
                return
            await asyncio.sleep(every)

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
            # While events wait, look again soon: the lease changes hands within EVENT_LOOK
            # of its release, and a full worker sees its runs end (not a whole poll later).
            await asyncio.sleep(EVENT_LOOK if waiting else self.poll)

    def in_flight(self) -> int:
        """Runs this worker drives or has claimed to drive, for admission control: a run
        counts for its first ADMIT_AGE seconds only. A run that is slow because its step is
        (a long action, a wait) holds no writer lock meanwhile, and runs such as these must
        not stop the intake; runs slowed down by the writer lock still count while young."""
        now = time.monotonic()
        runs = set(self.service.driving) | set(self.claimed)
        seen = {run_id: self._flight_seen.get(run_id, now) for run_id in runs}
        self._flight_seen = seen
        return sum(1 for since in seen.values() if now - since < ADMIT_AGE)

    async def _evaluate_pending(self) -> bool:
        """Evaluate accepted events, in order, under the `events` lease, while this worker
        has fewer than `admit` runs in flight. Returns whether accepted events wait.

        Admission control: the runs an event starts are driven by the worker that
        evaluated it, so a worker with `admit` runs in flight leaves the events accepted
        (to another worker, or to itself once runs end) rather than start runs that would
        only queue for the writer lock and slow every run down. Accepted events are
        durable: waiting costs them latency, never their run."""
        service = self.service
        if self.events_fence is None:
            if time.monotonic() < self._events_yielded_until:
                return True  # this worker just created runs: let another take the next ones (and drive them)
            if self.in_flight() >= self.admit:
                return self._events_waiting()
            if not self._events_waiting():
                return False
            self.events_fence = L.claim(self.store, L.EVENTS, self.name, self.ttl, L.NAMED)
            if self.events_fence is None:  # another worker evaluates them
                return True
            self._events_turn_ends = time.monotonic() + EVENT_TURN
            service.engine.restore(self.store.trigger_states())  # as the last holder left it
        pending = self._pending_events()
        if not pending:
            self._release(self.events_fence)
            self.events_fence = None
            return False
        from opsdsl.runtime.service import database_unavailable

        with self.events_fence.current():
            for event_id, received, body in pending:
                if self.stopping:
                    return False
                if self.in_flight() >= self.admit:
                    break
                try:
                    await service.handle(event_id, received, json.loads(body))
                except L.LeaseLost:
                    raise
                except Exception as error:
                    if database_unavailable(error):  # not a bad event: it stays accepted, tried again later
                        raise
                    service._record_failure(event_id, error)  # one bad event must not stop the others
                await asyncio.sleep(0)
        # The worker that evaluates an event claims the runs it starts (in the same
        # transaction), so the lease goes round: after a turn (or once this worker is full)
        # another worker may take it, and the runs spread over the workers.
        if time.monotonic() < self._events_turn_ends and self.in_flight() < self.admit:
            return True  # its turn goes on: the next look takes the events accepted meanwhile
        self._release(self.events_fence)
        self.events_fence = None
        self._events_yielded_until = time.monotonic() + EVENT_YIELD
        return True

    def _events_waiting(self) -> bool:
        """Whether any event is accepted (a cheap look, without reading the bodies)."""
        return self.store.conn.execute("SELECT 1 FROM events WHERE status = 'accepted' LIMIT 1").fetchone() is not None

    def _pending_events(self) -> list[tuple[int, float, str]]:
        return self.store.conn.execute(
            "SELECT id, received_at, body FROM events WHERE status = 'accepted' ORDER BY id LIMIT ?", (EVENT_BATCH,)
        ).fetchall()


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
