"""Drive one run of a playbook through its DAG, durably.

For each ready step: evaluate `when` → render `with:` → policy gate → write the intent →
run the action (timeout, retries with backoff) → record the result. Ready steps run
concurrently. A failure stops new steps, lets running ones finish, compensates the
completed steps in reverse order of completion, then runs `finally`. Approvals and steps
left in doubt by a crash pause the run; `resume` picks it up from the database.

Every state change is one transaction that also appends its ledger entries, so the state
tables and the ledger never disagree, and an intent is on disk before its side effect.
Group commit (docs/runtime.md "Group commit"): the changes of steps with no side effect
outside the run (PURE_ACTIONS) ride, in order, on the run's next transaction (at most
GROUP_MAX of them wait); the transaction that writes a side effect's intent carries them
with it and commits before the side effect starts, and nothing is awaited with any of
them uncommitted. A crash loses a whole group or none of it; its steps are re-run.
In a server on SQLite the run's transactions commit without an fsync, which one thread
makes for many runs' commits at once (runtime/walsync.py); a step with an effect outside
awaits `Store.durable()` after its intent's commit, so the intent is on disk before the
action starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.errors import EvalError
from opsdsl.lang.actions import policy_step_view
from opsdsl.lang.taint import url_keys
from opsdsl.runtime import store as S
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.approvals import ApprovalSteps
from opsdsl.runtime.dispatch import DeferredSecrets, Dispatcher, DispatchLost, reference_key
from opsdsl.runtime.endings import RunEndings
from opsdsl.runtime.executor import InProcessExecutor
from opsdsl.runtime.gate import ALLOW, DENY, REQUIRE_APPROVAL, TAINT_POLICY, Decision, Gate
from opsdsl.runtime.outcome import TIMED_OUT, TIMEOUT_VOTER, Outcome, Paused  # noqa: F401  (re-exported)
from opsdsl.runtime.secrets import SecretError, Secrets, SecretsView

# Actions the scheduler carries out itself: they touch run state, not the outside world.
SCHEDULER_ACTIONS = frozenset({"wait", "approval", "assert", "playbook.call", "report.rca"})
# No side effect at all: the decision, intent and result go to disk in one transaction.
PURE_ACTIONS = frozenset({"assert", "report.rca"})
# Changes of pure steps that may wait for the run's next transaction (group commit).
GROUP_MAX = 64

# Pacing (a server's: see Pacer): run continuations let through per turn of the event loop.
PACE_PER_TURN = 2
HOLD_SLICE = 1.0  # seconds a process sleeps at a time through a wait, looking for a cancellation
PHASE_STEPS, PHASE_COMPENSATING, PHASE_FINALLY, PHASE_DONE = "steps", "compensating", "finally", "done"
FINISHED_OK = (S.SUCCEEDED, S.SKIPPED)


@dataclass
class RunEnv:
    """Everything a run needs besides its own rows: shared by a run and its sub-runs."""

    store: S.Store
    executor: Any  # executor.Executor
    secrets: Secrets
    signer: Any  # Ed25519PrivateKey: checkpoints and incident records
    signing: dict[str, str] | None = None  # which key that is, as records say (state_config.Signer.describe)
    view: Any = None  # view.View
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    start_child: Callable[..., Awaitable[Outcome]] | None = None  # playbook.call (set by runner)
    jitter: Callable[[], float] = random.random
    write_incidents: bool = True  # False in rehearsals: no incident folder, no checkpoint
    # A server parks a run whose `wait` or retry back-off is longer than this many seconds:
    # the run pauses, holding no task, and the server's timers wake it when it is due. None
    # (the CLI): the process sleeps through it, as the one driving the run.
    park_after: float | None = None
    view_gone: bool = False  # stdout was closed before the drive: it stops as on SIGTERM


class Scheduler(ApprovalSteps, RunEndings):
    def __init__(self, env: RunEnv, run: S.RunRow, plan: dict[str, Any]) -> None:
        self.env = env
        self.store = env.store
        self.run = run
        self.plan = plan
        self.playbook = plan["playbooks"][run.playbook]
        self.nodes: dict[str, dict[str, Any]] = {n["id"]: n for n in self.playbook["nodes"]}
        self.tainted_inputs = run_tainted_inputs(plan, run, self.store)
        self.preds: dict[str, list[str]] = {sid: [] for sid in self.nodes}
        self.dependents: dict[str, list[str]] = {sid: [] for sid in self.nodes}
        for edge in self.playbook["edges"]:
            if edge["kind"] in ("needs", "sequence"):
                self.preds[edge["to"]].append(edge["from"])
                self.dependents[edge["from"]].append(edge["to"])
        ordered = set(self.playbook["order"])  # a list here was quadratic: ~14 ms for 1,000 steps
        self.order = [*self.playbook["order"], *(sid for sid in sorted(self.nodes) if sid not in ordered)]
        self.position = {sid: index for index, sid in enumerate(self.order)}
        self._failed_main = False
        self.gate = Gate(plan["policies"], lambda action: action in SCHEDULER_ACTIONS or env.executor.knows(action))
        self.redactor = env.secrets.redactor
        self.steps: dict[str, S.StepRow] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.incident_folder = Path(run.incident_dir)
        self._completed = 0
        self._rendered: dict[str, dict[str, Any]] = {}
        self._later_fields: dict[str, Any] = {}
        self._cancelled_by: str | None = run.cancel_requested
        self._drive_task: asyncio.Task | None = None  # cancelled (as by SIGTERM) when stdout is gone
        self._adopted: set[str] = set()  # runner steps whose dispatch a crash left outstanding
        # Runner pools are the default executor's: an executor the caller gave (a rehearsal's
        # mocks) runs every step itself, `runner:` or not.
        self._pools = isinstance(env.executor, InProcessExecutor)
        # Group commit: changes that ride on the next transaction (see _commit); empty
        # whenever the drive awaits anything.
        self._group: list[dict[str, Any]] = []
        self._commits = 0  # this drive's transactions so far
        self._cancel_read = -1  # how many there were when the run's cancel_requested was last read
        self._not_started: list[str] = []  # steps whose intent was written, then the drive cancelled

    # ---- entry points ----------------------------------------------------------------

    async def drive(self, reason: str = "start", by: str | None = None) -> Outcome:
        """Run (or continue) the run until it finishes, pauses or is interrupted."""
        # A server's turn (Pacer). Cancelled here, the drive has done nothing yet, but the run
        # says so (run.interrupted), as when cancelled later or while it waited for a run slot.
        try:
            await self._pace()
        except asyncio.CancelledError:
            self.steps = self.store.steps(self.run.id)
            return self._interrupted()
        self.steps = self.store.steps(self.run.id)
        self._completed = max((s.completed or 0 for s in self.steps.values()), default=0)
        for sid, row in self.steps.items():
            if row.status in S.FINAL_STEP_STATUSES:
                self.results[sid] = self._result(row)
            if row.status == S.FAILED:
                self._note_failure(sid)
        if self.run.error == TIMED_OUT or self._cancel_seen():
            self._failed_main = True
        self._drive_task = asyncio.current_task()
        recovered = self._recover_in_flight()
        # Rides on the run's first transaction: nothing outside happens before that commits.
        self._commit(
            [(E.RUN_STARTED, {"reason": reason, "by": by, **recovered})],
            run_fields={"status": S.RUNNING, "owner_pid": _pid()},
            defer=True,
        )
        if self.env.view_gone:  # nobody reads this run's progress any more: interrupted, resumable
            self._drive_task.cancel()
        try:
            outcome = await self._drive_phases()
        except asyncio.CancelledError:
            return self._interrupted()
        except Exception as error:
            # Not a state the run can be left in: record the interruption (if the store still
            # takes writes), so no run stays `running` without an owner, then let it surface.
            running = sorted(sid for sid, row in self.steps.items() if row.status == S.STARTED)
            with contextlib.suppress(Exception):
                self._commit(
                    [(E.RUN_INTERRUPTED, {"running": running, "error": type(error).__name__})],
                    run_fields={"status": S.INTERRUPTED},
                    checkpoint=True,
                )
            raise
        return outcome

    def _interrupted(self) -> Outcome:
        """The drive was cancelled (SIGTERM, a server's drain): the run is interrupted, resumable."""
        running = sorted(sid for sid, row in self.steps.items() if row.status == S.STARTED)
        data: dict[str, Any] = {"running": running}
        if self._not_started:  # their intents are in the ledger, their actions never started
            data["not_started"] = sorted(self._not_started)
        changed = [self.steps[sid] for sid in self._not_started]
        self._commit([(E.RUN_INTERRUPTED, data)], steps=changed, run_fields={"status": S.INTERRUPTED}, checkpoint=True)
        self._write_incident()
        return Outcome(S.INTERRUPTED, [], f"interrupted; continue with `opsdsl resume {self.run.id}`")

    async def _drive_phases(self) -> Outcome:
        deadline = self._deadline()
        if self.run.phase == PHASE_STEPS:
            try:
                await self._run_section("steps", deadline)
            except Paused:
                return self._pause()
            if self._failing():
                self._set_phase(PHASE_COMPENSATING)
            else:
                self._set_phase(PHASE_FINALLY)
        if self.run.phase == PHASE_COMPENSATING:
            try:
                await self._compensate()
            except Paused:
                return self._pause()
            self._set_phase(PHASE_FINALLY)
        if self.run.phase == PHASE_FINALLY:
            try:
                await self._run_section("finally", None)
            except Paused:
                return self._pause()
            self._set_phase(PHASE_DONE)
        await self._pace()
        return self._finish()

    # ---- sections ----------------------------------------------------------------------

    async def _run_section(self, section: str, deadline: float | None) -> None:
        """Run the DAG of one section until nothing more can start.

        Only the dependents of a step that just finished are examined again, so a long
        playbook costs O(steps + edges), not O(steps²).
        """
        members = [sid for sid in self.order if self.nodes[sid]["section"] == section]
        candidates = set(members)
        running: dict[asyncio.Task, str] = {}
        paused = False
        try:
            while True:
                if deadline is not None and self.env.clock() >= deadline and not self._failing():
                    await self._time_out(running)  # e.g. a run resumed after its deadline
                    return
                while candidates and not (section == "steps" and self._failing()):
                    batch = sorted(candidates, key=self.position.__getitem__)
                    candidates = set()
                    for sid in batch:
                        # A step whose task has not run yet is still pending: never a second task
                        # (it would send its side effect twice).
                        if sid in running.values() or not self._ready(sid, section):
                            continue
                        if self.nodes[sid]["action"] in PURE_ACTIONS and self.steps[sid].status == S.PENDING:
                            # It never waits on anything: run it now rather than as a task.
                            try:
                                await self._guarded_step(sid)
                            except Paused:
                                paused = True
                            candidates.update(self.dependents[sid])
                            continue
                        if self._group:  # what ran inline commits before anything is awaited
                            self._flush()
                            if section == "steps" and self._failing():  # a cancellation the flush let us see
                                break
                        task = asyncio.create_task(self._guarded_step(sid), name=sid)
                        running[task] = sid
                if not running:
                    break
                self._flush()
                timeout = None if deadline is None else max(0.0, deadline - self.env.clock())
                done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the playbook's timeout
                    await self._time_out(running)
                    return
                for task in done:
                    sid = running.pop(task)
                    candidates.update(self.dependents[sid])
                    if task.exception() is not None:
                        if isinstance(task.exception(), Paused):
                            paused = True
                            continue
                        raise task.exception()
        except asyncio.CancelledError:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise
        if section == "steps" and self._failing() and await self._stop_called_runs(members):
            paused = True  # a sub-run asked to stop waits for a person (a step in doubt)
        elif section == "steps" and self._failing():
            # The run is failing: a step still waiting for approval will never run. (A step in
            # doubt still needs a person: compensation must know whether it happened.)
            abandoned = [
                self.steps[sid] for sid in members if self.steps[sid].status in (S.AWAITING_APPROVAL, S.WAITING)
            ]
            ending = "was cancelled" if self._cancelled_by else "failed"
            reasons = {
                S.AWAITING_APPROVAL: f"the run {ending} before the step was approved",
                S.WAITING: f"the run {ending} while the step waited",
            }
            skipped = [
                (E.STEP_SKIPPED, {"step": r.step_id, "when": None, "reason": reasons[r.status]}) for r in abandoned
            ]
            for row in abandoned:
                row.status, row.finished_at = S.SKIPPED, self.env.clock()
                self.results[row.step_id] = self._result(row)
            if abandoned:
                self._commit(skipped, steps=abandoned)
            paused = False
        if paused or any(self.steps[sid].status in (S.AWAITING_APPROVAL, S.IN_DOUBT, S.WAITING) for sid in members):
            raise Paused()

    async def _stop_called_runs(self, members: list[str]) -> bool:
        """A failing (or cancelled) run starts nothing new; a sub-run one of its steps called
        that is still live is asked to stop too and driven to its end here (it compensates
        what it did), and the calling step fails. Whether one of them still waits for a
        person (then this run pauses too)."""
        waiting = False
        for sid in members:
            row = self.steps[sid]
            if self.nodes[sid]["action"] != "playbook.call" or row.status not in (S.PENDING, S.STARTED):
                continue
            live = [
                child
                for child in self.store.children(self.run.id)
                if child.parent_step == sid and child.status not in S.FINAL_RUN_STATUSES
            ]
            if not live:
                continue
            child = live[-1]
            self._flush()
            if not child.cancel_requested:
                why = self._cancelled_by or f"run {self.run.id}"
                data = {"by": why, "via": "opsdsl", "reason": "the calling run stopped"}
                with self.store.transaction():
                    self.store.ledger.append(E.RUN_CANCEL_REQUESTED, child.id, data, ts=self.env.clock())
                    self.store.update_run(child.id, cancel_requested=why)
            assert self.env.start_child is not None
            outcome = await self.env.start_child(self, sid, self._rendered_cache(sid))
            if outcome.status == "paused":
                row.status = S.STARTED  # it goes on with its sub-run when a person has decided
                waiting = True
                continue
            self._fail(sid, f"the called playbook {outcome.status}: the calling run stopped", {}, None)
        return waiting

    def _ready(self, sid: str, section: str) -> bool:
        row = self.steps[sid]
        if row.status not in (S.PENDING, S.AWAITING_APPROVAL, S.WAITING):
            return False
        if row.status == S.AWAITING_APPROVAL and not self._approval_settled(sid):
            return False
        for pred in self.preds[sid]:
            status = self.steps[pred].status
            if section == "finally":
                if status not in S.FINAL_STEP_STATUSES:
                    return False
            elif not (status in FINISHED_OK or (status == S.FAILED and self.nodes[pred]["continue_on_error"])):
                return False
        return True

    def _failing(self) -> bool:
        """Whether a main step failed for good (not continue_on_error), or someone cancelled
        the run (from any process: asked of the database): no new steps start."""
        if not self._failed_main and self._cancel_seen():
            self._failed_main = True
        return self._failed_main

    def _cancel_seen(self, fresh: bool = False) -> bool:
        """Whether someone cancelled the run: asked of the database once per transaction of
        this drive (a step's commit, a flushed group: every step start and every awaited
        step's end follow one), not while pure steps' changes wait to commit; `fresh`: ask
        now (after a sleep, which no commit of ours follows)."""
        if self._cancelled_by is None and (fresh or (not self._group and self._cancel_read != self._commits)):
            self._cancel_read = self._commits
            row = self.store.conn.execute("SELECT cancel_requested FROM runs WHERE id = ?", (self.run.id,)).fetchone()
            self._cancelled_by = row[0] if row else None
        return self._cancelled_by is not None

    async def _time_out(self, running: dict[asyncio.Task, str]) -> None:
        self._flush()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for sid in running.values():  # cancelled by the timeout, not by an interruption: failed, attempt spent
            if sid in self._not_started:
                self._not_started.remove(sid)
                self.steps[sid].attempts += 1
        message = "the playbook's timeout passed; the step was cancelled"
        self._failed_main = True  # no new steps; compensation, then finally
        self._commit([], run_fields={"error": TIMED_OUT})
        for sid in running.values():
            row = self.steps[sid]
            row.status, row.error, row.finished_at = S.FAILED, message, self.env.clock()
            self._note_failure(sid)
            self._commit(
                [(E.STEP_FAILED, self._failed_data(sid, message, {}))],
                steps=[row],
            )
            self.results[sid] = self._result(row)

    async def _compensate(self) -> None:
        """Undo the completed steps, newest first; a failing compensation does not stop the rest."""
        done = [
            (row.completed or 0, sid)
            for sid, row in self.steps.items()
            if row.status == S.SUCCEEDED and self.nodes[sid]["section"] == "steps" and self.nodes[sid]["compensation"]
        ]
        for _, sid in sorted(done, reverse=True):
            comp = self.nodes[sid]["compensation"]
            if self.steps[comp].status in S.FINAL_STEP_STATUSES:
                continue
            # Strictly newest first: an undo waiting for people holds back the older ones.
            if self.steps[comp].status == S.AWAITING_APPROVAL and not self._approval_settled(comp):
                raise Paused()
            if self.steps[comp].status == S.IN_DOUBT:
                raise Paused()
            await self._run_step(comp)

    # ---- one step ----------------------------------------------------------------------

    async def _guarded_step(self, sid: str) -> None:
        """One step, total: whatever goes wrong before its action starts (a `when:`, its
        rendering, the gate, a bug of ours) fails the step, so the run compensates and ends
        instead of dying with the step's task."""
        try:
            await self._run_step(sid)
        except (Paused, asyncio.CancelledError):
            raise
        except Exception as error:
            row = self.steps[sid]
            if row.status not in (S.PENDING, S.AWAITING_APPROVAL):
                raise  # the action may have run: the run is interrupted, and resume decides
            message = f"opsdsl could not prepare the step ({type(error).__name__}); the step was not run"
            self._fail(sid, message, {}, decision=None)

    async def _run_step(self, sid: str) -> None:
        node = self.nodes[sid]
        row = self.steps[sid]
        if sid in self._adopted:  # runner pools: its outstanding dispatch is awaited, not judged or sent again
            return await self._execute(sid, self._rendered_cache(sid), [])
        if row.status == S.WAITING:
            return await self._continue_waiting(sid)
        gated = row.status == S.AWAITING_APPROVAL
        if gated:
            verdict = self._approval_verdict(sid)
            if verdict == "deny":
                return self._fail(sid, self._denial_message(sid), {}, decision=None)
            if node["action"] == "approval":
                return self._approve_action_step(sid)
            try:  # rendered before the gate too, but a resumed run may lack a secret now
                rendered = self._render(sid)
            except (EvalError, SecretError) as error:
                return self._fail(sid, f"`with:` could not be rendered: {error.message}", {}, decision=None)
            if self._changed_since_asked(sid, rendered):
                message = "the step's inputs changed since its approval was asked for; it was not run"
                return self._fail(sid, message, {}, decision=None)
            decision_entry: list = []
        else:
            if node.get("when"):
                try:
                    go = self._evaluate(node["when"], self._activation(sid))
                except EvalError as error:
                    return self._fail(sid, f"`when` could not be evaluated: {error.message}", {}, decision=None)
                if go is not True:
                    row.status, row.finished_at = S.SKIPPED, self.env.clock()
                    self._commit([(E.STEP_SKIPPED, {"step": sid, "when": node["when"]})], steps=[row])
                    self.results[sid] = self._result(row)
                    return
            try:
                rendered = self._render(sid)
            except (EvalError, SecretError) as error:
                return self._fail(sid, f"`with:` could not be rendered: {error.message}", {}, decision=None)
            decision = self._taint_decision(sid, rendered) or self.gate.judge(self._policy_activation(sid, rendered))
            decision_entry = [(E.POLICY_DECISION, {"step": sid, "action": node["action"], **decision.to_dict()})]
            if decision.decision == DENY:
                return self._fail(sid, decision.reason, {}, decision=decision_entry, denied_by=decision.deciding_policy)
            needed = decision.approvals if decision.decision == REQUIRE_APPROVAL else 0
            if node["action"] == "approval":
                needed = max(needed, int(rendered.get("min_approvals", 1)))
            if needed:
                return self._request_approval(sid, rendered, decision, needed, decision_entry)
            assert decision.decision == ALLOW
        await self._execute(sid, rendered, decision_entry)

    async def _execute(self, sid: str, rendered: dict[str, Any], decision_entry: list) -> None:
        node = self.nodes[sid]
        action = node["action"]
        row = self.steps[sid]
        now = self.env.clock()
        if action in PURE_ACTIONS:
            # No side effect to write ahead of: decision, intent and result in one transaction.
            row.attempts += 1
            row.started_at = now
            intent = self._intent(sid, rendered, row.attempts)
            try:
                outputs = self._pure(sid, rendered)
            except ActionFailed as failure:
                message, details = self.redactor.text(failure.message), self.redactor.data(failure.outputs)
                return self._fail(sid, message, details, decision=[*decision_entry, intent], defer=True)
            return self._succeed(sid, self.redactor.data(outputs), before=[*decision_entry, intent], defer=True)
        if action == "wait":
            if row.wake_at is None:
                row.wake_at = now + _duration_seconds(rendered.get("duration", "0s"))
            row.status, row.started_at, row.attempts = S.WAITING, row.started_at or now, row.attempts + 1
            self._commit(
                [*decision_entry, self._intent(sid, rendered, row.attempts)],
                steps=[row],
                timers=[(sid, "wait", row.wake_at)],
            )
            await self._hold(sid)
            return self._succeed(sid, {})
        if action == "playbook.call":
            row.status, row.started_at, row.attempts = S.STARTED, now, row.attempts + 1
            self._commit([*decision_entry, self._intent(sid, rendered, row.attempts)], steps=[row])
            assert self.env.start_child is not None
            child = await self.env.start_child(self, sid, rendered)
            if child.status == S.SUCCEEDED:
                return self._succeed(sid, {"status": child.status})
            if child.status == "paused":
                raise Paused()
            return self._fail(sid, f"the called playbook {child.status}: {child.error or ''}".strip(), {}, None)

        # An action with effects outside: intent on disk first, then attempts.
        retry = node["retry"]
        timeout = node["timeout"] / 1000 if node["timeout"] is not None else None
        # Runner pools (opsdsl.runtime.dispatch): a step with `runner:` is queued for its pool
        # in its intent's transaction and its result awaited; its runner enforces the timeout.
        remote = self._dispatcher(sid) if self._remote(sid) else None
        adopted = remote is not None and sid in self._adopted and remote.adopt(self.run.id, sid, row.attempts)
        if sid in self._adopted and not adopted and not node["idempotent"]:
            self._in_doubt(sid, "its dispatch was lost while the worker restarted")
        self._adopted.discard(sid)
        first = True
        while True:
            row.attempts += 0 if adopted else 1
            row.status, row.started_at, row.wake_at = S.STARTED, row.started_at or self.env.clock(), None
            request = ActionRequest(
                run_id=self.run.id,
                step_id=sid,
                action=action,
                inputs=rendered,
                attempt=row.attempts,
                idempotency_key=f"{self.run.id}:{sid}",
                timeout=timeout,
                severity=self.run.severity,
                playbook=self.run.playbook,
                pack=self.run.pack,
            )
            if not adopted:
                enqueue = (lambda: remote.enqueue(request)) if remote is not None else None
                intent = self._intent(sid, rendered, row.attempts)
                self._commit([*(decision_entry if first else []), intent], steps=[row], within=enqueue)
                if remote is None:  # a server's relaxed commit: the intent is on disk before the action starts
                    try:
                        await self.store.durable()
                        await self._pace()  # then a turn of the loop's: starting the action is the costly part
                    except asyncio.CancelledError:
                        # Interrupted before the action started: nothing was sent, so the step
                        # is not in flight (never in doubt), and the attempt is not spent.
                        row.status, row.attempts = S.PENDING, row.attempts - 1
                        self._not_started.append(sid)
                        raise
            first = adopted = False
            executor = remote or self.env.executor
            try:
                if timeout is None or remote is not None:
                    outputs = await executor.execute(request, self._context())
                else:
                    outputs = await asyncio.wait_for(executor.execute(request, self._context()), timeout)
            except TimeoutError:
                failure = ActionFailed(f"timed out after {_seconds(timeout)}")
            except ActionFailed as error:
                failure = error
            except DispatchLost as lost:  # its runner vanished, and the step may not be repeated
                self._in_doubt(sid, lost.message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # an action's own bug must not take the run down
                failure = ActionFailed(f"action `{action}` crashed: {type(error).__name__}: {error}", retryable=False)
            else:
                outputs = self.redactor.data(outputs or {})
                extra = []
                if action == "evidence.collect" and outputs.get("files"):
                    extra.append(
                        (E.EVIDENCE_ADDED, {"step": sid, "name": rendered.get("name"), "files": outputs["files"]})
                    )
                return self._succeed(sid, outputs, after=extra)
            message = self.redactor.text(failure.message)
            if not failure.retryable or row.attempts >= retry["attempts"]:
                outputs = self.redactor.data(failure.outputs)
                kept = []  # evidence collected before the failure is still evidence
                if action == "evidence.collect" and outputs.get("files"):
                    kept.append(
                        (E.EVIDENCE_ADDED, {"step": sid, "name": rendered.get("name"), "files": outputs["files"]})
                    )
                return self._fail(sid, message, outputs, decision=kept)
            delay = self._backoff(retry, row.attempts)
            # The attempt is over: the step waits, durably, so that a restart retries it on
            # time rather than taking it for an attempt in flight.
            row.status, row.wake_at = S.WAITING, self.env.clock() + delay
            self._commit(
                [
                    (
                        E.ATTEMPT_FAILED,
                        {"step": sid, "attempt": row.attempts, "error": message, "retry_in": _number(delay)},
                    )
                ],
                steps=[row],
                timers=[(sid, "backoff", row.wake_at)],
            )
            await self._hold(sid)

    def _in_doubt(self, sid: str, reason: str) -> None:
        """A runner step whose runner vanished mid-action: in doubt, for a person to decide."""
        row = self.steps[sid]
        row.status = S.IN_DOUBT
        self._commit([(E.STEP_IN_DOUBT, {"step": sid, "attempt": row.attempts, "reason": reason})], steps=[row])
        raise Paused()

    async def _hold(self, sid: str) -> None:
        """Wait until the step's `wake_at`: asleep in this process, or, in a server and for
        longer than `park_after`, by pausing the run (its timer wakes it; no task is held)."""
        remaining = (self.steps[sid].wake_at or 0.0) - self.env.clock()
        if remaining <= 0:
            return
        if self.env.park_after is not None and remaining > self.env.park_after:
            raise Paused()
        while remaining > 0:  # in slices: a cancellation (from any process) ends the wait
            await self.env.sleep(min(remaining, HOLD_SLICE))
            if self._cancel_seen(fresh=True):
                raise Paused()  # the run stops: the section skips the waiting step
            remaining = (self.steps[sid].wake_at or 0.0) - self.env.clock()

    async def _continue_waiting(self, sid: str) -> None:
        """A step that was waiting when the run paused or its process stopped: a `wait` ends
        when due; an action between attempts tries again, rendered anew and so judged anew
        by the taint check and the gate (its inputs may have changed: `now`, a secret)."""
        await self._hold(sid)
        if self.nodes[sid]["action"] == "wait":
            return self._succeed(sid, {})
        try:
            rendered = self._render(sid)
        except (EvalError, SecretError) as error:
            return self._fail(sid, f"`with:` could not be rendered: {error.message}", {}, decision=None)
        decision = self._taint_decision(sid, rendered) or self.gate.judge(self._policy_activation(sid, rendered))
        entry = [(E.POLICY_DECISION, {"step": sid, "action": self.nodes[sid]["action"], **decision.to_dict()})]
        if decision.decision == DENY:
            return self._fail(sid, decision.reason, {}, decision=entry, denied_by=decision.deciding_policy)
        approved = self._approval_verdict(sid) == "approve"
        if decision.decision == REQUIRE_APPROVAL and not approved:
            message = f"the retry's inputs now need an approval ({decision.reason}); it was not retried"
            return self._fail(sid, message, {}, decision=entry)
        await self._execute(sid, rendered, entry)

    def _pure(self, sid: str, rendered: dict[str, Any]) -> dict[str, Any]:
        node = self.nodes[sid]
        if node["action"] == "assert":
            that = node["with"]["that"]
            try:
                holds = self._evaluate(that, self._activation(sid))
            except EvalError as error:
                raise ActionFailed(f"`{that}` could not be evaluated: {error.message}") from None
            if holds is not True:
                raise ActionFailed(rendered.get("message") or f"assertion failed: {that}")
            return {}
        # report.rca: the report is written with the incident record; this sets its contents.
        return {
            "title": rendered.get("title"),
            "summary": rendered.get("summary"),
            "include": rendered.get("include"),
            "path": str(self.incident_folder / "rca.md"),
        }

    # ---- results -----------------------------------------------------------------------

    def _succeed(
        self, sid: str, outputs: dict[str, Any], before: list = (), after: list = (), defer: bool = False
    ) -> None:
        row = self.steps[sid]
        self._completed += 1
        row.status, row.outputs, row.error = S.SUCCEEDED, outputs, None
        row.finished_at, row.completed = self.env.clock(), self._completed
        row.attempts = max(row.attempts, 1)
        self._commit(
            [*before, (E.STEP_SUCCEEDED, {"step": sid, "attempts": row.attempts, "outputs": outputs}), *after],
            steps=[row],
            defer=defer,
        )
        self.results[sid] = self._result(row)

    def _fail(
        self,
        sid: str,
        message: str,
        outputs: dict[str, Any],
        decision: list | None,
        denied_by: str | None = None,
        defer: bool = False,
    ) -> None:
        row = self.steps[sid]
        row.status, row.error, row.outputs, row.finished_at = S.FAILED, message, outputs, self.env.clock()
        self._note_failure(sid)
        self._commit(
            [*(decision or []), (E.STEP_FAILED, self._failed_data(sid, message, outputs, denied_by))],
            steps=[row],
            defer=defer,
        )
        self.results[sid] = self._result(row)

    def _note_failure(self, sid: str) -> None:
        node = self.nodes[sid]
        if node["section"] == "steps" and not node.get("continue_on_error"):
            self._failed_main = True

    def _failed_data(self, sid: str, message: str, outputs: dict, denied_by: str | None = None) -> dict[str, Any]:
        node = self.nodes[sid]
        return {
            "step": sid,
            "attempts": self.steps[sid].attempts,
            "error": message,
            "outputs": outputs,
            "denied_by": denied_by,
            "continue_on_error": bool(node.get("continue_on_error")),
        }

    @staticmethod
    def _result(row: S.StepRow) -> dict[str, Any]:
        return {
            "outputs": row.outputs or {},
            "status": row.status,
            "error": row.error,
            "attempts": row.attempts,
        }

    # ---- crash recovery ----------------------------------------------------------------

    def _recover_in_flight(self) -> dict[str, list[str]]:
        """Steps caught mid-flight: re-run the idempotent ones, put the others in doubt."""
        rerun, doubt = [], []
        for sid, row in self.steps.items():
            if row.status != S.STARTED:
                continue
            if self._remote(sid):  # runner pools: an outstanding dispatch goes on, awaited by _run_step
                dispatcher = self._dispatcher(sid)
                if dispatcher.adopt(self.run.id, sid, row.attempts):
                    if not self._failed_main:
                        row.status = S.PENDING
                        self._adopted.add(sid)
                        continue
                    dispatcher.withdraw("the run is stopping")  # nothing will wait for it: as any step mid-flight
            if self.nodes[sid]["idempotent"] or self.nodes[sid]["action"] in ("wait", "playbook.call"):
                row.status = S.PENDING
                rerun.append(sid)
            else:
                row.status = S.IN_DOUBT
                doubt.append(sid)
        if rerun or doubt:
            changed = [self.steps[s] for s in rerun + doubt]
            self._commit(
                [(E.STEP_IN_DOUBT, {"step": s, "attempt": self.steps[s].attempts}) for s in doubt], steps=changed
            )
        return {"rerun": sorted(rerun), "in_doubt": sorted(doubt)}

    # ---- expressions -------------------------------------------------------------------

    def _activation(self, sid: str) -> dict[str, Any]:
        return {
            "params": self.run.params,
            "inputs": self.run.inputs,
            "steps": self.results,
            "event": self.run.event,
            "run": self._run_view(),
            "secrets": SecretsView(self.env.secrets),
            "now": self.env.clock(),
        }

    def _taint_decision(self, sid: str, rendered: dict[str, Any]) -> Decision | None:
        node = self.nodes[sid]
        return taint_decision(node["action"], node.get("with") or {}, self.tainted_inputs, rendered)

    def _policy_activation(self, sid: str, rendered: dict[str, Any]) -> dict[str, Any]:
        node = self.nodes[sid]
        owner = self.nodes[node["for"]] if node["section"] == "compensation" else node
        step = policy_step_view(
            sid,
            owner.get("name") if node is owner else f"{owner.get('name') or owner['id']} (compensation)",
            node["action"],
            owner.get("risk", "low"),
            self.redactor.data(rendered),
            node["timeout"],
            node["idempotent"],
            bool(node.get("compensation")),
        )
        return {
            "run": self._run_view(),
            "playbook": {"name": self.run.playbook, "severity": self.run.severity, "pack": self.run.pack},
            "step": step,
            "event": self.run.event,
            "params": self.run.params,
            "now": self.env.clock(),
        }

    def _run_view(self) -> dict[str, Any]:
        return {
            "id": self.run.id,
            "incident_id": self.run.incident_id,
            "pack": self.run.pack,
            "playbook": self.run.playbook,
            "severity": self.run.severity,
            "status": self.run.status,
            "started_at": self.run.created_at,
            "dry_run": False,
            "inputs": self.redactor.data(self.run.inputs),  # policies read them; a secret never
        }

    @staticmethod
    def _evaluate(text: str, activation: dict[str, Any]) -> Any:
        from opsdsl.lang.expr import compile_expr, parse

        return compile_expr(parse(text))(activation)

    def _render(self, sid: str) -> dict[str, Any]:
        node = self.nodes[sid]
        activation = self._activation(sid)
        deferred = None
        if self._remote(sid):  # runner pools: secrets stay references its runner resolves (dispatch.py)
            activation["secrets"] = deferred = DeferredSecrets(self.run.id, sid, reference_key(self.store.root))
        rendered = render_with(node["action"], node.get("with") or {}, activation)
        if deferred is not None:
            deferred.check(rendered, self.redactor)
        self._rendered[sid] = rendered
        return rendered

    def _rendered_cache(self, sid: str) -> dict[str, Any]:
        if sid not in self._rendered:
            try:
                self._render(sid)
            except (EvalError, SecretError):
                return dict(self.nodes[sid].get("with") or {})
        return self._rendered[sid]

    def _intent(self, sid: str, rendered: dict[str, Any], attempt: int) -> tuple[str, dict[str, Any]]:
        node = self.nodes[sid]
        return (
            E.STEP_INTENT,
            {
                "step": sid,
                "attempt": attempt,
                "action": node["action"],
                "with": self.redactor.data(rendered),
                "idempotency_key": f"{self.run.id}:{sid}",
                "timeout": _number(node["timeout"] / 1000) if node["timeout"] is not None else None,
            },
        )

    def _remote(self, sid: str) -> bool:
        return self._pools and bool(self.nodes[sid].get("runner"))

    def _dispatcher(self, sid: str) -> Dispatcher:
        return Dispatcher(self.store, self.nodes[sid])

    def _context(self) -> ActionContext:
        return ActionContext(
            evidence_dir=self.incident_folder / "evidence",
            redact=self.redactor.text,
            redact_bytes=self.redactor.bytes,
            state_dir=self.store.root,
        )

    def _backoff(self, retry: dict[str, Any], attempt: int) -> float:
        initial, cap = retry["initial"] / 1000, retry["max"] / 1000
        wait = initial if retry["backoff"] == "fixed" else min(cap, initial * 2 ** (attempt - 1))
        if retry.get("jitter"):
            wait = min(wait * (0.5 + self.env.jitter()), max(cap, initial))
        return round(wait, 3)

    def _deadline(self) -> float | None:
        timeout = self.playbook.get("timeout")
        return self.run.created_at + timeout / 1000 if timeout else None

    # ---- persistence -------------------------------------------------------------------

    async def _pace(self) -> None:
        """Wait for a server's turn (Pacer) before work that ends in a transaction of its own.
        Never with pure steps' changes waiting (nothing is awaited with a group uncommitted):
        then that work simply goes ahead."""
        pacer = _PACERS.get(asyncio.get_running_loop())
        if pacer is not None and not self._group:
            await pacer.turn()

    def _writing(self) -> contextlib.AbstractContextManager[Any]:
        """A server's write turn (Pacer.writes) around a transaction; nothing elsewhere."""
        try:
            pacer = _PACERS.get(asyncio.get_running_loop())
        except RuntimeError:
            pacer = None
        if pacer is None or pacer.writes is None or self.store.conn.in_transaction:
            return contextlib.nullcontext()
        return pacer.writes

    def _flush(self) -> None:
        """Commit the pure steps' changes that wait for a transaction (group commit), if any."""
        if self._group:
            self._commit([])

    def _set_phase(self, phase: str) -> None:
        """Record the phase with the next commit: it needs no transaction of its own, since a
        resumed run derives the same phase from its steps (a failed step: compensating)."""
        self.run.phase = phase
        self._later_fields["phase"] = phase

    def _commit(
        self,
        new_entries: list[tuple[str, dict[str, Any]]],
        steps: list[S.StepRow] = (),
        run_fields: dict[str, Any] | None = None,
        approvals: list[tuple] = (),
        checkpoint: bool = False,
        timers: list[tuple[str, str, float]] = (),
        within: Callable[[], None] | None = None,
        defer: bool = False,
    ) -> None:
        """One transaction: ledger entries, step rows, run fields, votes (and a signed
        checkpoint of the new head), and `within` (a runner step's dispatch row); then show
        the entries.

        `defer` (a pure step's changes, group commit): keep them for the run's next
        transaction, which writes them first, in order; at most GROUP_MAX wait (_flush)."""
        if defer:
            self._group.append({"entries": new_entries, "steps": steps, "run_fields": run_fields})
            if len(self._group) >= GROUP_MAX:
                self._flush()
            return
        if self._group:
            group, self._group = self._group, []  # taken before the transaction: a failed one loses them all
            new_entries = [*(e for g in group for e in g["entries"]), *new_entries]
            steps = [*(r for g in group for r in g["steps"]), *steps]
            merged: dict[str, Any] = {}
            for g in group:
                merged.update(g["run_fields"] or {})
            run_fields = {**merged, **(run_fields or {})} or None
        now = self.env.clock()
        appended = []
        if self._later_fields:  # e.g. a phase change: it rides on the next commit
            run_fields = {**self._later_fields, **(run_fields or {})}
            self._later_fields = {}
        # Relaxed (a server's group commit, runtime/walsync.py) unless another process acts on
        # the transaction's rows (`within`: a runner pool's dispatch row): what must be on disk
        # before something outside happens is awaited (Store.durable) where that happens.
        with self._writing(), self.store.transaction(relaxed=within is None):
            for vote in approvals:
                self.store.add_approval(self.run.id, *vote)
            if new_entries:
                run_id = self.run.id
                appended = self.store.ledger.append_many([(kind, run_id, data) for kind, data in new_entries], ts=now)
            # One statement for them all; a row twice in a group is saved once.
            self.store.save_steps(self.run.id, list({row.step_id: row for row in steps}.values()))
            for step_id, kind, due in timers:
                self.store.set_timer(self.run.id, step_id, kind, due)
            if within is not None:
                within()
            fields = {"updated_at": now, **run_fields} if run_fields else {}
            if fields:
                self.store.update_run(self.run.id, **fields)
            if checkpoint and self.env.write_incidents:
                self.store.ledger.checkpoint(self.env.signer)
        self._commits += 1
        # A worker's fence check read cancel_requested in this transaction: no need to ask again.
        fenced = getattr(self.store, "fenced_cancel", None)
        if fenced is not None and fenced[0] == self.run.id:
            self._cancel_read = self._commits
            self._cancelled_by = self._cancelled_by or fenced[1]
        for name, value in fields.items():
            setattr(self.run, name, value)
        if self.env.view is not None:
            try:
                for entry in appended:
                    self.env.view.entry(entry.to_dict())
            except OSError:  # stdout was closed (`| head`, a dropped SSH session): stop as SIGTERM does
                self.env.view, self.env.view_gone = None, True
                if self._drive_task is not None:
                    self._drive_task.cancel()


class FairLock:
    """A lock handed to its waiters in the order they asked (no barging).

    A server's loop and its intake writer thread both write the one SQLite database. SQLite
    makes a writer that finds the database locked sleep and try again, sleeping longer each
    time (up to 100 ms); meanwhile the loop, committing run after run, takes the lock again
    the moment it is free, so the intake's transaction (and every 202 waiting on it) could
    wait through a whole turn of the loop. Taking this lock first, each waits exactly for
    the transaction before it."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        try:
            waiter.acquire()  # released by release(), which hands the lock over: still held
        except BaseException:
            # Interrupted (a signal handler's exception, KeyboardInterrupt): a waiter that is
            # gone must not be handed the lock, nor keep it if it already was.
            with self._mutex:
                try:
                    self._waiters.remove(waiter)
                except ValueError:  # release() handed it over: pass it on
                    handed = True
                else:
                    handed = False
            if handed:
                self.release()
            raise

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Pacer:
    """Run-driving work, a little per turn of the event loop, so the loop's other work (a
    server's HTTP intake, health checks) never waits behind every live run's next step.

    asyncio runs, in each turn of its loop, every callback that was ready when the turn
    began, and only then polls its sockets again. A server with 64 live runs would drive
    all 64 one step further (a transaction each, fsync'd) in one turn, while an HTTP request
    needs three or four turns from its first byte to its 202: under a busy CPU those turns
    took hundreds of milliseconds each. A run asks the pacer for a turn (`turn`) before each
    piece of work that ends in a transaction of its own (its start, a step with an effect
    outside, its end); at most `per_turn` pieces go ahead at once and more then wait for the
    next turns, in the order they asked. The work is the same, in the same order per run;
    only its spread over the loop's turns changes.

    Only a server paces (`pace_loop`); the CLI's runs never wait for a turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop, per_turn: int = PACE_PER_TURN) -> None:
        self.loop = loop
        self.per_turn = max(1, per_turn)
        self._used = 0  # pieces let through since the last tick
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._ticking = False
        # The server's SQLite writers in this process (the loop's runs, the intake writer)
        # take turns through it (FairLock); None on PostgreSQL.
        self.writes: FairLock | None = None

    async def turn(self) -> None:
        """Until this piece of work may go ahead: at once when this turn has room and nobody
        waits, else after the pieces that asked before it."""
        if self._used < self.per_turn and not self._waiting:
            self._used += 1
            self._tick_soon()
            return
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiting.append(future)
        self._tick_soon()
        await future  # cancelled: _tick skips it

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _tick_soon(self) -> None:
        if not self._ticking:
            self._ticking = True
            self.loop.call_soon(self._tick)

    def _tick(self) -> None:
        """Once a turn while anything waits: a fresh allowance, given to the first in line."""
        self._ticking = False
        self._used = 0
        while self._waiting and self._used < self.per_turn:
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._used += 1
        if self._waiting or self._used:
            self._tick_soon()


_PACERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def pace_loop(loop: asyncio.AbstractEventLoop | None = None, per_turn: int = PACE_PER_TURN) -> Pacer:
    """Pace the runs driven on this loop (a server calls it once, on its loop); the Pacer."""
    loop = loop or asyncio.get_running_loop()
    pacer = _PACERS.get(loop)
    if pacer is None:
        pacer = _PACERS[loop] = Pacer(loop, per_turn)
    return pacer


def unpace_loop(loop: asyncio.AbstractEventLoop | None = None) -> None:
    _PACERS.pop(loop or asyncio.get_running_loop(), None)


def render_with(action: str, with_: dict[str, Any], activation: dict[str, Any]) -> dict[str, Any]:
    """A step's `with:` rendered for its action: URLs percent-encoded by position; an
    `assert`'s `that` left for the action to evaluate."""
    if action == "assert":
        rendered = dict(with_)
        if isinstance(with_.get("message"), str):
            rendered["message"] = _render_value(with_["message"], activation)
        return rendered
    urls = url_keys(action)
    return {
        key: _render_url(value, activation) if key in urls else _render_value(value, activation)
        for key, value in with_.items()
    }


def taint_decision(
    action: str, with_: dict[str, Any], tainted: frozenset[str], rendered: dict[str, Any]
) -> Decision | None:
    """Deny a step that would put event data where it may not go (docs/security.md): the
    same findings as lint's OPS043 and OPS051, on the plan as signed, whatever lint said."""
    from opsdsl.lang.taint import step_findings

    findings = step_findings(action, with_, tainted, rendered)
    if not findings:
        return None
    message = "; ".join(f"{'.'.join(map(str, ('with', *f.path)))}: {f.message}" for f in findings)
    policy = {"id": TAINT_POLICY, "effect": DENY, "message": message, "origin": "opsdsl"}
    return Decision(DENY, (policy,))


def _render_value(value: Any, activation: dict[str, Any]) -> Any:
    from opsdsl.lang.expr import parse_template

    if isinstance(value, str):
        if "${{" not in value:
            return value
        return parse_template(value).render(activation)
    if isinstance(value, dict):
        return {k: _render_value(v, activation) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_value(v, activation) for v in value]
    return value


def _render_url(value: Any, activation: dict[str, Any]) -> Any:
    """A URL, or a list of them, with `${{ }}` percent-encoded by position (docs/security.md)."""
    from opsdsl.lang.taint import render_url

    if isinstance(value, list):
        return [_render_url(item, activation) for item in value]
    if isinstance(value, str) and "${{" in value:
        return render_url(value, activation)
    return _render_value(value, activation)


def run_tainted_inputs(plan: dict[str, Any], run: Any, store: Any = None) -> frozenset[str]:
    """Inputs carrying event data: taken `from:` an event, or given tainted data by the
    `playbook.call` that started this run (its caller's templates, judged by the caller's
    own taint, up the chain), unless `pattern:`/`enum:` validates them."""
    from opsdsl.lang.taint import tainted_inputs, value_tainted

    declared = plan["playbooks"][run.playbook].get("inputs") or {}
    if run.parent_run is None:
        return tainted_inputs(declared)
    parent = store.run(run.parent_run) if store is not None else None
    caller = None
    if parent is not None:
        nodes = plan["playbooks"].get(parent.playbook, {}).get("nodes", [])
        caller = next((n for n in nodes if n["id"] == run.parent_step), None)
    given = (caller or {}).get("with", {}).get("inputs") if caller else None
    if parent is None or not isinstance(given, dict):
        return tainted_inputs(declared, dict.fromkeys(declared, True))  # unknown caller: assume the worst
    parent_tainted = run_tainted_inputs(plan, parent, store)
    return tainted_inputs(declared, {name: value_tainted(value, parent_tainted) for name, value in given.items()})


def _duration_seconds(value: Any) -> float:
    from opsdsl.lang.durations import parse_duration

    if isinstance(value, (int, float)):
        return float(value)
    return parse_duration(value) / 1000


def _number(value: float) -> int | float:
    """Whole numbers as ints: they canonicalise on the fast path, and read better."""
    return int(value) if float(value).is_integer() else value


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _pid() -> int:
    import os

    return os.getpid()
