"""Events in, runs out: the engine behind `opsdsl fire`, `opsdsl watch` and `opsdsl serve`.

1. `accept` persists events in the state database (one transaction) before anyone is
   told they were accepted, so a crash loses none; `start` replays those not yet handled,
   a batch at a time (the queue holds events as their JSON text, parsed when their turn
   comes), so that a restart behind a big backlog does not load it all at once.
2. A worker takes events in order: the trigger engine decides which triggers fire; each
   hook on a fired trigger checks its cooldown, dedupe key and concurrency cap (from the
   runs table, so the checks hold across restarts); a firing that passes starts a durable
   run like `opsdsl run` does. Suppressed firings go to the ledger with the reason.
3. Runs execute concurrently (up to `max_runs`); a failed run of a hook with `escalate:`
   is escalated (ledger entry, and a POST to the escalation URL when one is configured).
4. One engine per state directory: `claim` takes `EngineLock` (an OS lock the kernel
   drops when the process dies), so that two processes never replay the same events.
   A later issue replaces it with leases in the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from opsdsl.errors import EvalError
from opsdsl.runtime import runner
from opsdsl.runtime import store as S
from opsdsl.runtime.database import database_unavailable
from opsdsl.runtime.driver import SERVE, EngineLock, StateBusy, engine_holder  # noqa: F401 (re-exported)
from opsdsl.runtime.secrets import Secrets
from opsdsl.runtime.triggers import TriggerEngine

PARK_AFTER = 2.0  # seconds: a server parks a run whose wait or back-off is longer (RunEnv.park_after)
PERSON_SOURCE = "user:"  # events.source of an event a person fired through the operator API
log = logging.getLogger("opsdsl.serve")
# One line per accepted event and per milestone of a run (started, paused, approval,
# decision, cancellation, end), with its fields in `record.fields` (JSON lines in `serve`).
lifecycle = logging.getLogger("opsdsl.runs")
# Ledger kinds logged as milestones, and the fields of their data each line carries.
MILESTONES: dict[str, tuple[str, ...]] = {
    "run.created": ("pack", "playbook", "severity", "hook", "event_id", "incident_id"),
    "run.started": ("reason", "by"),
    "run.paused": ("waiting",),
    "approval.recorded": ("step", "by", "via", "decision"),
    "approval.timed_out": ("step", "outcome"),
    "step.decided": ("step", "by", "via", "decision"),
    "run.cancel_requested": ("by", "via", "reason"),
    "run.finished": ("status", "error"),
}

TRIGGER_FIRED = "trigger.fired"  # data: pack, trigger, hook, reason, event_id, run, dedupe_key
HOOK_SUPPRESSED = "hook.suppressed"  # data: pack, trigger, hook, reason, event_id, dedupe_key
RUN_ESCALATED = "run.escalated"  # data: to, incident_id, error, delivered (bool), detail
EVENT_ERROR = "event.error"  # data: event_id, pack, trigger or hook, error

REPLAY_BATCH_EVENTS, REPLAY_BATCH_BYTES = 500, 8 * 1024 * 1024  # queued at a time while replaying
_NEXT_REPLAY_BATCH = (-1, 0.0, "")  # a queue item: queue the next batch of the replay
PRUNE_EVERY = 60.0  # seconds between deletions of expired spent signatures
# Seconds before an event is tried again while the database is unavailable (doubling up to the last).
RETRY_FIRST, RETRY_MAX = 0.25, 10.0
REPORT_DRAIN = 30.0  # seconds a stopping server waits for a compliance report being written


@dataclass
class Metrics:
    """Counters and a latency histogram, rendered in the Prometheus text format."""

    counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)
    buckets: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
    histograms: dict[str, list[float]] = field(default_factory=dict)  # name → counts per bucket + [sum, count]

    HELP: ClassVar[dict[str, str]] = {
        "opsdsl_events_received_total": "Events accepted and persisted, by source.",
        "opsdsl_events_rejected_total": "Requests refused, by HTTP status.",
        "opsdsl_triggers_fired_total": "Triggers fired, by pack and trigger.",
        "opsdsl_hooks_suppressed_total": "Hook firings that started no run, by reason.",
        "opsdsl_runs_started_total": "Runs started by hooks.",
        "opsdsl_runs_finished_total": "Runs finished, by status.",
        "opsdsl_policy_denials_total": "Steps denied by the policy gate.",
        "opsdsl_step_duration_seconds": "Time from a step's intent to its result.",
        "opsdsl_intake_seconds": "Time to accept a request (parse, persist, enqueue).",
        "opsdsl_loop_lag_seconds": "How late a 0.1 s sleep on the server's event loop ends.",
        "opsdsl_queue_depth": "Events accepted and waiting for the worker.",
    }

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.counters[key] = self.counters.get(key, 0) + amount

    def set(self, name: str, value: float) -> None:
        self.counters[(name, ())] = value

    def observe(self, name: str, seconds: float) -> None:
        counts = self.histograms.setdefault(name, [0.0] * (len(self.buckets) + 2))
        for index, bound in enumerate(self.buckets):
            if seconds <= bound:
                counts[index] += 1
        counts[-2] += seconds
        counts[-1] += 1

    def value(self, name: str, **labels: str) -> float:
        return self.counters.get((name, tuple(sorted(labels.items()))), 0)

    def render(self) -> str:
        lines: list[str] = []
        names = sorted({name for name, _ in self.counters} | set(self.histograms))
        for name in names:
            kind = "histogram" if name in self.histograms else ("gauge" if name == "opsdsl_queue_depth" else "counter")
            lines.append(f"# HELP {name} {self.HELP.get(name, name)}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "histogram":
                counts = self.histograms[name]
                for index, bound in enumerate(self.buckets):
                    lines.append(f'{name}_bucket{{le="{bound:g}"}} {counts[index]:g}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {counts[-1]:g}')
                lines.append(f"{name}_sum {counts[-2]:.6f}")
                lines.append(f"{name}_count {counts[-1]:g}")
                continue
            for (metric, labels), value in sorted(self.counters.items()):
                if metric == name:
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass(frozen=True)
class StoredEvents:
    """What `Service.persist_events` stored: when, each event's id, and whether it is new
    (false: an Idempotency-Key retry of an event stored before, not queued again)."""

    at: float
    ids: list[int]
    new: list[bool]


class QueueFull(Exception):
    """The bounded queue is full: tell the sender to retry later (HTTP 429)."""


class _ViewTap:
    """Feeds step latencies and policy denials from ledger entries into the metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.started: dict[tuple[str, str], float] = {}

    def begin(self, run: dict, nodes: list[dict]) -> None:
        pass

    def end(self, status: str, summary: dict) -> None:
        pass

    def entry(self, entry: dict) -> None:
        kind, data = entry["kind"], entry["data"]
        if kind == "step.intent":
            self.started.setdefault((entry["run"], data["step"]), entry["ts"])
        elif kind in ("step.succeeded", "step.failed"):
            began = self.started.pop((entry["run"], data["step"]), None)
            if began is not None:
                self.metrics.observe("opsdsl_step_duration_seconds", max(0.0, entry["ts"] - began))
            if kind == "step.failed" and data.get("denied_by"):
                self.metrics.inc("opsdsl_policy_denials_total", policy=str(data["denied_by"]))


class MilestoneLog:
    """Logs the run milestones the ledger gains, whoever appended them (this server, the
    API, the CLI on the same state directory): `tail()` reads what is new since last time."""

    def __init__(self, store: S.Store) -> None:
        self.store = store
        (self.cursor,) = store.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()

    def tail(self) -> None:
        if not lifecycle.isEnabledFor(logging.INFO):
            return
        marks = ", ".join("?" for _ in MILESTONES)
        rows = self.store.conn.execute(
            f"SELECT seq, ts, run, kind, data FROM ledger WHERE seq > ? AND kind IN ({marks}) ORDER BY seq LIMIT 1000",
            (self.cursor, *MILESTONES),
        ).fetchall()
        for seq, ts, run, kind, text in rows:
            data = json.loads(text)
            fields = {"event": kind, "run": run, "at": ts, **{k: data.get(k) for k in MILESTONES[kind]}}
            lifecycle.info("%s", _line(fields), extra={"fields": fields})
            self.cursor = seq
        if len(rows) < 1000:  # past milestones of other kinds too: the next read starts at the head
            (self.cursor,) = self.store.conn.execute(
                "SELECT COALESCE(MAX(seq), ?) FROM ledger", (self.cursor,)
            ).fetchone()


def _line(fields: dict[str, Any]) -> str:
    """`run.paused run=… waiting=[…]`: the text form of a milestone (values as JSON, cut at 300)."""
    parts = [str(fields["event"])]
    for name, value in fields.items():
        if name not in ("event", "at") and value is not None:
            parts.append(f"{name}={json.dumps(value, ensure_ascii=True, default=str)[:300]}")
    return " ".join(parts)


class Service:
    """Triggers and hooks of a set of packs over one state directory."""

    def __init__(
        self,
        state: Path,
        plans: Sequence[runner.VerifiedPlan],
        *,
        params: Sequence[dict[str, Any]] | None = None,
        secrets: Secrets | None = None,
        max_runs: int = 64,
        queue_size: int = 10_000,
        escalation_url: str | None = None,
        escalation: Any = None,
        clock: Callable[[], float] = time.time,
        view: Any = None,
        runtime: runner.Runtime | None = None,
    ) -> None:
        """`runtime`: an existing Runtime to start runs in (rehearsals bring one with a
        virtual clock and mock actions); by default one over `state` with a metrics tap."""
        self.metrics = Metrics()
        self.runtime = runtime or runner.Runtime(state, view=view or _ViewTap(self.metrics))
        self.store = self.runtime.store
        self.plans = list(plans)
        self.secrets = secrets if secrets is not None else Secrets(state)  # an unused Secrets is falsy
        self.params = (
            list(params)
            if params is not None
            else [runner.resolve_params(p.payload, {}, self.secrets) for p in self.plans]
        )
        self.engine = TriggerEngine([p.payload for p in self.plans], self.params)
        self.engine.restore(self.store.trigger_states())
        self.clock = clock
        self.queue: asyncio.Queue[tuple[int, float, str]] | None = None  # (id, received, JSON text)
        self.queue_size = queue_size
        self.waiting = 0  # events accepted and not handled yet: queued, or still to be replayed
        self.waiting_bytes = 0  # the length of their JSON text
        self._replaying = False
        self._replayed = 0  # the last event id the replay queued
        self.runs: set[asyncio.Task] = set()
        self.driving: dict[str, asyncio.Task] = {}  # run id -> the task driving it
        self.driver: Any = None  # driver.Driver, when this service owns its runs (`serve`)
        # worker.Worker when runs are driven under leases (`opsdsl worker`); `drives` False:
        # this process drives no run at all (`serve --no-drive`: workers do).
        self.leases: Any = None
        self.drives = True
        self.announcer: Any = None  # announce.Announcer, when `serve` has notifiers
        self.milestones: MilestoneLog | None = None  # `serve`'s log of run milestones
        self._driver_task: asyncio.Task | None = None
        self.sequencer: Any = None  # journal mode: this process's sequencer thread (one process leads)
        self.run_slots = asyncio.Semaphore(max_runs)
        self.escalation_url = escalation_url
        self.escalation = escalation  # escalation.EscalationPolicy: response clocks of a server's incidents
        self.escalator: Any = None
        self.reports: Any = None  # compliance.LastLevelReports: the report at the last escalation level
        self._worker: asyncio.Task | None = None
        self.lock = EngineLock(state)
        self._pruned = 0.0  # when expired spent signatures were last deleted
        # A handle() failed: the engine may have counted an event no commit kept; the next
        # handle() reads the triggers' state again first.
        self._triggers_stale = False
        self._stopping = False  # drain() began: an event the database refuses stays accepted
        self._held_back = False  # the events left in the queue stay accepted (order kept)
        self._dedupe = {}
        from opsdsl.lang.expr import compile_expr, parse

        for index, plan in enumerate(self.plans):
            for name, hook in (plan.payload.get("hooks") or {}).items():
                if hook.get("dedupe"):
                    self._dedupe[(index, name)] = compile_expr(parse(hook["dedupe"]))

    # ---- intake ------------------------------------------------------------------------

    def accept(self, events: Sequence[dict], source: str) -> list[int]:
        """Persist events (durable before this returns) and queue them for the worker.

        Raises QueueFull, before persisting anything, when the queue cannot take them all.
        """
        if self.queue_full(len(events)):
            raise QueueFull()
        for event in events:
            problem = unrecordable(event)
            if problem is not None:
                raise ValueError(problem)
        return self.accept_serialized([json.dumps(e, sort_keys=True, separators=(",", ":")) for e in events], source)

    def accept_serialized(
        self,
        bodies: Sequence[str],
        source: str,
        spent: Sequence[tuple[str, float]] = (),
        keys: Sequence[str | None] = (),
    ) -> list[int]:
        """`accept` for events already checked and serialised (`opsdsl serve` does both off the
        event loop). `spent`: (signature, expires_at) of the signed requests that brought them,
        recorded as spent in the same transaction, so that a signature is spent exactly when
        its events are stored, and stays spent across restarts. `keys`: each body's
        idempotency key (`event_key`) or None; an event already stored under its key is not
        stored or queued again, and its id is the stored one's."""
        if self.queue_full(len(bodies)):
            raise QueueFull()
        with self.store.transaction():
            stored = self.persist_events(self.store, bodies, source, spent, keys)
        self.queue_stored(stored, bodies, source)
        return stored.ids

    def persist_events(
        self,
        store: S.Store,
        bodies: Sequence[str],
        source: str,
        spent: Sequence[tuple[str, float]] = (),
        keys: Sequence[str | None] = (),
    ) -> StoredEvents:
        """The database half of `accept_serialized`, inside the caller's transaction on `store`:
        this Service's own, or the intake writer's (`opsdsl serve` commits on a thread with its
        own connection, so that the event loop never waits for the fsync). Touches nothing the
        event loop owns; `queue_stored` does that once the transaction is committed."""
        now = self.clock()
        stored = store.add_keyed_events(list(bodies), source, now, list(keys) or [None] * len(bodies))
        if spent:
            store.conn.executemany(
                "INSERT OR REPLACE INTO spent_signatures (signature, expires_at) VALUES (?, ?)", spent
            )
            if now - self._pruned >= PRUNE_EVERY:
                store.conn.execute("DELETE FROM spent_signatures WHERE expires_at < ?", (now,))
                self._pruned = now
        return StoredEvents(now, [event_id for event_id, _ in stored], [new for _, new in stored])

    def queue_stored(self, stored: StoredEvents, bodies: Sequence[str], source: str) -> None:
        """The event loop's half of `accept_serialized`, after the commit: count, log and queue
        the events that are new (in id order: call it in the order the commits happened)."""
        now = stored.at
        ids = [event_id for event_id, new in zip(stored.ids, stored.new, strict=True) if new]
        bodies = [body for body, new in zip(bodies, stored.new, strict=True) if new]
        self.metrics.inc("opsdsl_events_received_total", len(ids), source=source)
        if lifecycle.isEnabledFor(logging.INFO):
            for event_id in ids:
                fields = {"event": "event.accepted", "event_id": event_id, "source": source, "at": now}
                lifecycle.info("%s", _line(fields), extra={"fields": fields})
        if self.queue is not None:
            self.waiting += len(ids)
            self.waiting_bytes += sum(len(body) for body in bodies)
            if not self._replaying:  # else the replay reads them from the database, in their turn
                for event_id, body in zip(ids, bodies, strict=True):
                    # The commit happened on the intake's thread: a replay that ran meanwhile
                    # may have read (and queued) this event already.
                    if event_id > self._replayed:
                        self.queue.put_nowait((event_id, now, body))
            self.metrics.set("opsdsl_queue_depth", self.waiting)

    def signature_spent(self, signature: str, now: float) -> bool:
        """Whether a request with this signature was accepted and the signature has not expired."""
        row = self.store.conn.execute(
            "SELECT 1 FROM spent_signatures WHERE signature = ? AND expires_at >= ?", (signature, now)
        ).fetchone()
        return row is not None

    def queue_full(self, extra: int = 1) -> bool:
        return self.queue is not None and self.waiting + extra > self.queue_size

    def claim(self, holder: str) -> None:
        """Take the state directory's engine lock for `holder` (`serve`, `watch`, `fire`);
        StateBusy when another process holds it. `close` releases it."""
        self.lock.acquire(holder)

    async def start(self, holder: str = "engine", own_runs: bool = False) -> int:
        """Start the worker, replaying first the events a previous process accepted but never
        handled; how many there are. They are queued a batch at a time, each batch when
        the worker reaches the end of the one before. Claims the engine lock first (see
        `claim`): only one process may replay a state directory's events.

        `own_runs` (a server): also drive every run of the state directory to its end — runs
        a stopped process left, runs whose approvals or decisions arrive, timers as they fall
        due (runtime/driver.py) — and park long waits instead of sleeping through them."""
        self.claim(holder)
        from opsdsl.runtime.sequencer import start_if_journal

        self.sequencer = start_if_journal(self.store, self.runtime.signer)
        if own_runs:
            from opsdsl.runtime.driver import Driver

            self.runtime.park_after = PARK_AFTER
            if self.store.syncer is None:  # run commits fsync'd off the loop, many at once (SQLite)
                from opsdsl.runtime.walsync import attach

                attach(self.store)
            if self.runtime.write_incidents and self.runtime.incident_writer is None:
                from opsdsl.runtime.incident_writer import IncidentWriter

                syncer = self.store.syncer  # a folder describes only what is on disk
                self.runtime.incident_writer = IncidentWriter(  # folders off the loop
                    self.runtime.state, durable=syncer.sync if syncer is not None else None
                )
                # The folders a killed process left unwritten, before (and in order with) ours.
                self.runtime.incident_writer.sweep(self.runtime.incidents_root)
            from opsdsl.runtime.escalation import TIMER, EscalationPolicy, Escalator

            self.milestones = milestones = MilestoneLog(self.store)
            self.escalator = Escalator(self.store, self.escalation or EscalationPolicy(), clock=self.clock)
            from opsdsl.runtime.compliance import LastLevelReports

            levels = [level.name for level in self.escalator.policy.levels]
            self.reports = LastLevelReports(self.store.root, levels, clock=self.clock)
            self.driver = Driver(
                self.store,
                self.drive_existing,
                lambda: list(self.driving),
                clock=self.clock,
                after_look=milestones.tail,
                handlers={TIMER: self._escalation_due},
            )
            self._driver_task = asyncio.create_task(self.driver.run(), name="opsdsl-driver")
        self.queue = asyncio.Queue()
        self.waiting, self.waiting_bytes = self.store.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE status = 'accepted'"
        ).fetchone()
        self._replaying = self.waiting > 0
        if self._replaying:
            self._queue_replay_batch()
        self._worker = asyncio.create_task(self._work(), name="opsdsl-worker")
        return self.waiting

    def _queue_replay_batch(self) -> None:
        """Queue the next pending events, oldest first (events accepted meanwhile included),
        then the marker that queues the batch after them; the replay ends on an empty batch."""
        assert self.queue is not None
        rows = self.store.conn.execute(
            "SELECT id, received_at, body FROM events WHERE status = 'accepted' AND id > ? ORDER BY id LIMIT ?",
            (self._replayed, REPLAY_BATCH_EVENTS),
        )
        queued = size = 0
        for event_id, received, body in rows:
            self.queue.put_nowait((event_id, received, body))
            self._replayed = event_id
            queued, size = queued + 1, size + len(body)
            if size >= REPLAY_BATCH_BYTES:
                break
        if queued:
            self.queue.put_nowait(_NEXT_REPLAY_BATCH)
        else:
            self._replaying = False

    def hold_events(self) -> None:
        """From now on an event the database refuses stays accepted, and so do the events
        queued behind it, for the next start to replay (a stopping server's rule)."""
        self._stopping = True

    async def stop_driving(self) -> None:
        """No run starts (or continues) driving from here on: the first thing a shutdown does,
        so that a drain never starts a step only to interrupt it. Idempotent."""
        if self._driver_task is not None:
            self._driver_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver_task

    async def drain(self, timeout: float | None = None) -> None:
        """Handle every queued event, then wait for the runs they started (up to `timeout`)."""
        self.hold_events()
        await self.stop_driving()
        if self.queue is not None:
            await self.queue.join()
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self.runs:
            _, pending = await asyncio.wait(self.runs, timeout=timeout)
            for task in pending:  # interrupted runs stay resumable (`opsdsl resume`)
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self.milestones is not None:
            with contextlib.suppress(Exception):  # the last milestones, e.g. runs that ended in the drain
                self.milestones.tail()
        if self.reports is not None:  # a compliance report being written (a few seconds at most)
            await asyncio.to_thread(self.reports.join, REPORT_DRAIN)
        if self.runtime.incident_writer is not None:  # the folders of the runs that ended
            await asyncio.to_thread(self.runtime.incident_writer.join)

    def close(self) -> None:
        if self.sequencer is not None:
            self.sequencer.stop()
        if self.runtime.incident_writer is not None:
            self.runtime.incident_writer.close()
            self.runtime.incident_writer = None
        syncer, self.store.syncer = self.store.syncer, None
        if syncer is not None:  # every relaxed commit on disk before the process goes
            syncer.close()
        self.runtime.close()
        self.lock.release()

    # ---- the compliance report at the last escalation level (issue 20 part 4) ---------

    def _escalation_due(self, run_id: str) -> None:
        """An incident's response clock ran out: escalate it (Escalator.fire, synchronous, in the
        ledger before this returns); when that reached the last level, write the compliance
        report on a thread (runtime/compliance.py), never on the event loop."""
        entry = self.escalator.fire(run_id)
        if entry is not None and entry.data.get("compliance_report") and self.reports is not None:
            self.reports.schedule(entry)

    # ---- the worker --------------------------------------------------------------------

    async def _work(self) -> None:
        assert self.queue is not None
        while True:
            event_id, received, body = await self.queue.get()
            if event_id == _NEXT_REPLAY_BATCH[0]:
                try:
                    self._queue_replay_batch()
                finally:
                    self.queue.task_done()
                continue
            try:
                if not self._held_back:
                    await self._handle_patiently(event_id, received, body)
            finally:
                self.queue.task_done()
                self.waiting -= 1
                self.waiting_bytes -= len(body)
                self.metrics.set("opsdsl_queue_depth", self.waiting)
            await asyncio.sleep(0)  # let intake and health checks in between events

    async def _handle_patiently(self, event_id: int, received: float, body: str) -> None:
        """Handle one event. One the database cannot take now stays `accepted` and is tried
        again, with back-off, before any later event (a stopping server leaves it and the rest
        accepted, replayed at the next start); a bad event is recorded as failed."""
        delay = RETRY_FIRST
        while True:
            try:
                if delay == RETRY_FIRST or self._accepted(event_id):  # a retry: unless a commit we never heard of
                    await self.handle(event_id, received, json.loads(body))
                return
            except Exception as error:
                if not database_unavailable(error):  # one bad event must not stop the intake of the others
                    self._record_failure(event_id, error)
                    return
                log.warning(
                    "event %s: the database is unavailable (%s: %s); trying again in %gs",
                    event_id,
                    type(error).__name__,
                    error,
                    delay,
                )
            if self._stopping:
                self._held_back = True
                return
            await asyncio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)

    def _accepted(self, event_id: int) -> bool:
        row = self.store.conn.execute("SELECT status FROM events WHERE id = ?", (event_id,)).fetchone()
        return row is not None and row[0] == "accepted"

    def _record_failure(self, event_id: int, error: Exception) -> None:
        message = f"{type(error).__name__}: {error}"
        self.metrics.inc("opsdsl_event_errors_total")
        try:
            with self.store.transaction():
                self.store.ledger.append(EVENT_ERROR, None, {"event_id": event_id, "error": message}, ts=self.clock())
                self.store.finish_event(event_id, f"error: {message}"[:500])
        except Exception:  # the database itself is failing: the event stays accepted, replayed on restart
            pass

    async def handle(self, event_id: int, received: float, event: dict) -> list[str]:
        """Evaluate one event; start the runs it calls for. Returns the run ids started.

        The triggers' state (windows, counts) is kept only with the event's last commit: after
        a failure it is read again, so an event tried again is not counted twice."""
        if self._triggers_stale:
            self.engine.restore(self.store.trigger_states())
            self._triggers_stale = False
        try:
            return await self._evaluate(event_id, received, event)
        except BaseException:
            self._triggers_stale = True
            raise

    async def _evaluate(self, event_id: int, received: float, event: dict) -> list[str]:
        evaluation = self.engine.observe(event, received)
        notes: list[tuple[str, dict]] = []
        started: list[tuple[runner.VerifiedPlan, runner.Selection, dict]] = []
        for plan_index, trigger, message in evaluation.errors:
            pack = self.plans[plan_index].payload["pack"]["name"]
            notes.append((EVENT_ERROR, {"event_id": event_id, "pack": pack, "trigger": trigger, "error": message}))
        for firing in evaluation.firings:
            plan = self.plans[firing.plan]
            pack = plan.payload["pack"]["name"]
            self.metrics.inc("opsdsl_triggers_fired_total", pack=pack, trigger=firing.trigger)
            for hook_name, hook in sorted((plan.payload.get("hooks") or {}).items()):
                if hook["trigger"] != firing.trigger:
                    continue
                base = {"pack": pack, "trigger": firing.trigger, "hook": hook_name, "event_id": event_id}
                key, reason = self._admit(firing.plan, hook_name, hook, event, received)
                base["dedupe_key"] = key
                if reason is not None and self._run_of(event_id, hook_name) is not None:
                    reason = None  # replayed: the run this event started holds the key (or the slot); continue it
                if reason is not None:
                    self.metrics.inc("opsdsl_hooks_suppressed_total", hook=hook_name, reason=reason.split(":")[0])
                    notes.append((HOOK_SUPPRESSED, {**base, "reason": reason}))
                    continue
                selection = runner.Selection(
                    hook["run"], firing.trigger, hook_name, hook.get("escalate"), key, event_id
                )
                started.append((plan, selection, {**base, "reason": firing.reason}))

        def close_event() -> None:
            """The event's notes, its triggers' state and its `done` mark (the caller's transaction)."""
            for kind, data in notes:
                self.store.ledger.append(kind, None, data, ts=self.clock())
            for (pack, trig), text in self.engine.take_dirty().items():
                self.store.save_trigger_state(pack, trig, text)
            summary = f"{len(evaluation.firings)} firing(s), {len(started)} run(s)"
            self.store.finish_event(event_id, summary)

        # Runs first (each with its trigger.fired entry, in one transaction); the event is
        # marked handled in the transaction of the last one, or in one of its own when that
        # one started nothing (an existing run continued). A crash before then replays the
        # event, and a run that already exists for (event, hook) is continued rather than
        # started twice.
        run_ids = []
        closed = False
        for index, (plan, selection, data) in enumerate(started):
            last = index == len(started) - 1
            run_id, closed = self._start_run(plan, selection, event, data, close_event if last else None, notes)
            if run_id:
                run_ids.append(run_id)
        if not closed:
            with self.store.transaction(relaxed=True):  # nothing outside depends on it (walsync.py)
                close_event()
        return run_ids

    def _admit(self, plan: int, name: str, hook: dict, event: dict, now: float) -> tuple[str | None, str | None]:
        """(dedupe key, reason to suppress or None): cooldown, then dedupe key, then the cap."""
        key = None
        predicate = self._dedupe.get((plan, name))
        if predicate is not None:
            try:
                value = predicate({"event": event, "params": self.params[plan]})
            except EvalError as error:
                return None, f"dedupe-error: {error.message}"
            key = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        cooldown = hook.get("cooldown")
        if cooldown:
            last = self.store.last_run_started(name, key)
            if last is not None and now - last < cooldown / 1000:
                return key, f"cooldown: a run started {now - last:.0f}s ago"
        if key is not None and self.store.live_runs(name, key):
            return key, f"dedupe: a run for key {key!r} is still live"
        cap = hook.get("max_concurrent")
        if cap and self.store.live_runs(name) >= cap:
            return key, f"max_concurrent: {cap} runs live"
        return key, None

    def _start_run(
        self,
        plan: runner.VerifiedPlan,
        selection: runner.Selection,
        event: dict,
        data: dict,
        then: Callable[[], None] | None = None,
        notes: list[tuple[str, dict]] | None = None,
    ) -> tuple[str | None, bool]:
        """(the run's id, or None when its inputs suppressed it; whether `then` was called).
        `then`: more writes for the transaction that starts the run or records its
        suppression (the event's handled mark); not called when the run already existed.
        `notes` (with no `then`): where a suppression goes, to be written with the event's
        handled mark, so that a replayed event does not record it twice."""
        from opsdsl.errors import OpsdslError

        index = self.plans.index(plan)
        existing = self._run_of(selection.event_id, selection.hook)
        if existing is not None:  # a replayed event: continue its run, never start a second one
            if self.store.run(existing).status not in S.FINAL_RUN_STATUSES:
                self.drive_existing(existing, "resume")  # its secret params looked up again
            return existing, False
        book = plan.payload["playbooks"][selection.playbook]
        try:
            inputs = runner.resolve_inputs(book, selection.playbook, event, self.params[index], {})
        except OpsdslError as error:
            suppressed = (HOOK_SUPPRESSED, {**data, "reason": f"inputs: {error.message}"})
            self.metrics.inc("opsdsl_hooks_suppressed_total", hook=selection.hook or "", reason="inputs")
            if then is None and notes is not None:  # not the event's last hook: with its handled mark
                notes.append(suppressed)
                return None, False
            with self.store.transaction():
                self.store.ledger.append(*suppressed[:1], None, suppressed[1], ts=self.clock())
                if then is not None:
                    then()
            return None, then is not None
        within = self.escalator.start if self.escalator is not None else None
        if then is not None:
            first = within

            def within(run: S.RunRow) -> None:
                if first is not None:
                    first(run)
                then()

        # A worker: the new run is its own from its first commit (claimed once that commits).
        claiming = self.leases.claiming(within) if self.leases is not None else contextlib.nullcontext(within)
        with claiming as within:
            run = self.runtime.create_run(
                plan,
                selection,
                self.params[index],
                inputs,
                event,
                self.secrets,
                also=((TRIGGER_FIRED, data),),
                owner=SERVE if self.driver is not None else None,
                requested_by=self._requester(selection.event_id),
                within=within,
                relaxed=True,
            )
        self.metrics.inc("opsdsl_runs_started_total", hook=selection.hook or "")
        if run.id not in self.driving:
            self._spawn(run, "resume" if run.status != "running" else "start")
        return run.id, then is not None

    def _run_of(self, event_id: int | None, hook: str | None) -> str | None:
        """The top-level run this event already started for this hook (it is replayed), or None."""
        if event_id is None:
            return None
        row = self.store.conn.execute(
            "SELECT id FROM runs WHERE event_id = ? AND hook = ? AND parent_run IS NULL", (event_id, hook)
        ).fetchone()
        return row[0] if row else None

    def _requester(self, event_id: int | None) -> str | None:
        """The person whose request brought the event (source `user:NAME`), or None."""
        if event_id is None:
            return None
        row = self.store.conn.execute("SELECT source FROM events WHERE id = ?", (event_id,)).fetchone()
        source = row[0] if row else ""
        return source[len(PERSON_SOURCE) :] if source.startswith(PERSON_SOURCE) else None

    # ---- driving runs ------------------------------------------------------------------

    def wake(self, run_id: str | None = None) -> None:
        """Something a run waits for was just recorded (an approval, a decision, a
        cancellation): have the driver look now rather than at its next poll."""
        if self.driver is not None:
            self.driver.wake()
        if self.announcer is not None:
            self.announcer.wake()

    def resume(self, run_id: str, by: str | None = None) -> str:
        """Drive a run now (one `interrupted`, or paused, which pauses again if it must still
        wait): the top-level run's id. Raises UsageError for a finished run."""
        run = self.runtime.resumable(run_id)
        if not self.drives:  # a durable nudge: a worker drives it
            with self.store.transaction():
                self.store.set_timer(run.id, "", "resume", self.clock())
            return run.id
        if run.id not in self.driving:
            self.drive_existing(run.id, "resume", by)
        return run.id

    def drive_existing(self, run_id: str, reason: str, by: str | None = None) -> asyncio.Task | None:
        """Start driving a run of the state directory (the driver's way in): its secret
        params are looked up again, as `opsdsl resume` does. None when it cannot start."""
        from opsdsl.errors import OpsdslError

        if run_id in self.driving:
            return self.driving[run_id]
        try:
            run = self.store.run(run_id)
            plan = json.loads(runner._payload_of(run.envelope))
            run.params = runner.restore_params(plan, run.params, {}, self.secrets)
        except OpsdslError as error:
            log.error("run %s cannot be driven: %s", run_id, error.message)
            return None
        return self._spawn(run, reason, by)

    def _spawn(self, run, reason: str, by: str | None = None) -> asyncio.Task:
        drive = self._drive(run, reason, by)
        if self.leases is not None:  # a worker drives a run only under its lease
            drive = self.leases.under_lease(run.id, drive)
        task = asyncio.create_task(drive, name=run.id)
        self.runs.add(task)
        self.driving[run.id] = task
        task.add_done_callback(self.runs.discard)
        task.add_done_callback(lambda _: self.driving.pop(run.id, None))
        return task

    async def _drive(self, run, reason: str, by: str | None = None) -> None:
        try:
            await self.run_slots.acquire()
        except asyncio.CancelledError:  # shut down before it could start: resumable, and said so
            from opsdsl.audit import entries as E

            with self.store.transaction():
                self.store.ledger.append(E.RUN_INTERRUPTED, run.id, {"running": []}, ts=self.clock())
                self.store.update_run(run.id, status="interrupted", updated_at=self.clock())
            raise
        try:
            outcome = await self.runtime.drive(run, self.secrets, reason, by)
        except runner.RunBusy as error:  # a CLI process drives it: it goes on there
            log.info("run %s: %s", run.id, error.message)
            return
        finally:
            self.run_slots.release()
        self.metrics.inc("opsdsl_runs_finished_total", status=outcome.status)
        if outcome.status == "failed" and run.escalate:
            await self._escalate(run, outcome)

    async def _escalate(self, run, outcome) -> None:
        delivered, detail = False, "no escalation URL configured; recorded only"
        if self.escalation_url:
            import httpx

            await self.store.durable()  # the run's failure is on disk before anyone hears of it

            payload = {
                "escalate": run.escalate,
                "run": run.id,
                "incident_id": run.incident_id,
                "pack": run.pack,
                "playbook": run.playbook,
                "severity": run.severity,
                "error": outcome.error,
            }
            try:
                async with httpx.AsyncClient(timeout=10) as client:
                    response = await client.post(self.escalation_url, json=payload)
                delivered = response.is_success
                detail = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                detail = f"{type(error).__name__}: {error}"
        with self.store.transaction():
            self.store.ledger.append(
                RUN_ESCALATED,
                run.id,
                {
                    "to": run.escalate,
                    "incident_id": run.incident_id,
                    "error": outcome.error,
                    "delivered": delivered,
                    "detail": detail,
                },
                ts=self.clock(),
            )


def event_key(source: str, key: str, index: int) -> str:
    """The stored key of the `index`th event of a request to `source` with `Idempotency-Key: key`."""
    return f"{source}\0{key}\0{index}"


def unrecordable(event: Any) -> str | None:
    """Why the ledger could not hold this event (RFC 8785 refuses integers beyond 2^53 and
    lone surrogates), or None."""
    from opsdsl.canonical import canonical_json

    try:
        canonical_json(event)
    except Exception as error:  # rfc8785's own error types, UnicodeEncodeError
        return f"the event cannot be recorded: {type(error).__name__}: {error}"
    return None


def events_from_payload(payload: Any) -> list[dict]:
    """The events in a request body or a file: an Alertmanager webhook (version 4) gives one
    alert event per alert; a JSON list gives its objects; an object is one event."""
    if isinstance(payload, dict) and isinstance(payload.get("alerts"), list) and "version" in payload:
        common = {k: payload.get(k) for k in ("receiver", "groupKey", "externalURL") if k in payload}
        events = []
        for alert in payload["alerts"]:
            if not isinstance(alert, dict):
                raise ValueError("an Alertmanager alert is a JSON object")
            events.append({"kind": "alert", **common, **alert})
        return events
    if isinstance(payload, list):
        if not all(isinstance(item, dict) for item in payload):
            raise ValueError("a list of events holds JSON objects only")
        return list(payload)
    if isinstance(payload, dict):
        return [payload]
    raise ValueError(f"an event is a JSON object, not {type(payload).__name__}")


def load_plans(
    packs: Sequence[Path],
    plans: Sequence[Path],
    policies: Sequence[Path] | None,
    trust: Path | None,
    environment: str,
    state: Path,
) -> list[runner.VerifiedPlan]:
    """Every pack compiled and signed with the dev key, and every signed plan verified."""
    loaded = [runner.plan_from_pack(pack, policies, state) for pack in packs]
    loaded += [runner.plan_from_file(plan, trust, environment, state) for plan in plans]
    names = [p.payload["pack"]["name"] for p in loaded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        from opsdsl.errors import UsageError

        raise UsageError(f"pack {duplicates[0]} is given twice")
    return loaded
