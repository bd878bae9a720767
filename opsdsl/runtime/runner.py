"""Start, resume and steer runs: the runtime's front door, called by the CLI and by tests.

`opsdsl run --pack FILE` compiles the pack (with the policy packs beside it or given with
`--policies`) and signs the plan with the state directory's dev key; `--plan FILE` takes a
signed plan and verifies it against a trust file first. Either way the run executes the
verified payload, never the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets as _random
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.errors import OpsdslError, UsageError
from opsdsl.lang.names import person_name, same_person_key
from opsdsl.runtime import store as S
from opsdsl.runtime.inputs import (  # noqa: F401  (re-exported: the runtime's front door)
    Selection,
    _typed_inputs,
    coerce,
    resolve_inputs,
    resolve_params,
    restore_params,
    select_playbooks,
)
from opsdsl.runtime.people import Person, allowed, may_approve, roles_for
from opsdsl.runtime.plans import (  # noqa: F401  (re-exported)
    DEV_KEY,
    RunRefused,
    VerifiedPlan,
    _payload_of,
    dev_key,
    plan_for_dry_run,
    plan_from_file,
    plan_from_pack,
)
from opsdsl.runtime.scheduler import Outcome, RunEnv, Scheduler
from opsdsl.runtime.secrets import Secrets

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_PAUSED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 4, 5, 130


class RunBusy(OpsdslError):
    """Another process is driving this run."""

    exit_code = 2


# ---- keys and plans ----------------------------------------------------------------------


# ---- params, inputs, events ----------------------------------------------------------------


# ---- runs -----------------------------------------------------------------------------------


class Runtime:
    """One state directory: its database, dev key, incidents folder and executor."""

    def __init__(
        self,
        state: Path,
        incidents_dir: Path | None = None,
        executor: Any = None,
        view: Any = None,
        *,
        clock: Any = None,
        sleep: Any = None,
        durable: bool = True,
        write_incidents: bool = True,
        jitter: Any = None,
        create: bool = True,
        park_after: float | None = None,
    ) -> None:
        """`clock`, `sleep`, `jitter`, `durable=False` and `write_incidents=False` are for
        rehearsals (`opsdsl test`): a virtual clock, no fsync, no incident folders."""
        from opsdsl.runtime.executor import InProcessExecutor

        self.state = state
        self.store = S.Store(state, durable=durable, create=create)
        if getattr(self.store.ledger, "journaled", False):  # journal mode: chain our own entries if need be
            self.store.ledger.signer = lambda: self.signer
        self._signer = None
        self.incidents_root = incidents_dir or (state / "incidents")
        self.executor = executor or InProcessExecutor()
        self.view = view
        self.clock = clock or time.time
        self.sleep = sleep
        self.jitter = jitter
        self.write_incidents = write_incidents
        self.park_after = park_after  # a server's: see RunEnv.park_after
        self.view_gone = False  # the view's stdout was closed (RunEnv.view_gone)
        self.incident_writer: Any = None  # a server's incident_writer.IncidentWriter (RunEnv gets it)

    @property
    def signer(self):
        """The key that signs checkpoints and records (the configured key of a production state
        directory, else the dev key), loaded or made on first use: commands that sign nothing
        never create one."""
        if self._signer is None:
            from opsdsl.runtime.state_config import signer

            self._signer = signer(self.state)
        return self._signer.key

    @property
    def signing(self) -> dict[str, str]:
        """Which key signs this state directory's records, as the records say it."""
        self.signer  # noqa: B018  (loads it)
        return self._signer.describe()

    def close(self) -> None:
        """Journal mode: what this process committed is chained before it goes (by the
        sequencer, or by this process when none runs), so a command's entries are in the
        ledger when it returns, as they are inline."""
        ledger = self.store.ledger
        if getattr(ledger, "journaled", False) and not self.store.conn.in_transaction:
            import contextlib

            from opsdsl.runtime.sequencer import SequencerError

            with contextlib.suppress(SequencerError, sqlite3.Error):
                ledger.settle(timeout=5.0)
        self.store.close()

    def env(self, secrets: Secrets, child: bool = False) -> RunEnv:
        env = RunEnv(
            store=self.store,
            executor=self.executor,
            secrets=secrets,
            signer=self.signer,
            signing=self.signing,
            view=None if child else self.view,
            clock=self.clock,
            start_child=self._start_child,
            write_incidents=self.write_incidents,
            park_after=self.park_after,
            view_gone=self.view_gone,
        )
        if self.incident_writer is not None:  # an attribute, not a RunEnv field: scheduler.py is shared
            env.incident_writer = self.incident_writer
        if self.sleep is not None:
            env.sleep = self.sleep
        if self.jitter is not None:
            env.jitter = self.jitter
        return env

    # creating -----------------------------------------------------------------------------

    def create_run(
        self,
        plan: VerifiedPlan,
        selection: Selection,
        params: dict[str, Any],
        inputs: dict[str, Any],
        event: dict[str, Any],
        secrets: Secrets,
        parent: tuple[str, str] | None = None,
        incident_id: str | None = None,
        also: tuple[tuple[str, dict[str, Any]], ...] = (),
        owner: str | None = None,
        requested_by: str | None = None,
        within: Callable[[S.RunRow], None] | None = None,
        relaxed: bool = False,
    ) -> S.RunRow:
        """Create a run (its row, its steps, run.created and plan.verified) in one transaction;
        `also` adds more of the run's ledger entries to it (their data gets `run`). `relaxed`:
        a server's commit that leaves its fsync to the syncer (Store.transaction)."""
        payload = plan.payload
        playbook = payload["playbooks"][selection.playbook]
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC)
        suffix = _random.token_hex(6)  # 48 bits: no collision at hundreds of runs a second
        run_id = f"{stamp:%Y%m%d-%H%M%S}-{suffix}"
        incident_id = incident_id or f"INC-{stamp:%Y%m%d}-{stamp:%H%M%S}-{suffix}"
        folder = self.incidents_root / f"{stamp:%Y}" / incident_id
        redact = secrets.redactor.data
        stored_params = {k: ("***" if (payload["params"].get(k) or {}).get("secret") else v) for k, v in params.items()}
        run = S.RunRow(
            id=run_id,
            incident_id=incident_id,
            pack=payload["pack"]["name"],
            playbook=selection.playbook,
            severity=playbook["severity"],
            status=S.RUNNING,
            phase="steps",
            created_at=now,
            updated_at=now,
            finished_at=None,
            envelope=plan.envelope,
            plan_digest=plan.digest,
            trust=plan.trust,
            params=stored_params,
            inputs=inputs,
            event=event,
            hook=selection.hook,
            trig=selection.trigger,
            escalate=selection.escalate,
            parent_run=parent[0] if parent else None,
            parent_step=parent[1] if parent else None,
            incident_dir=str(folder),
            error=None,
            owner_pid=os.getpid(),
            dedupe_key=selection.dedupe_key,
            event_id=selection.event_id,
            requested_by=requested_by,
            owner=owner,
        )
        claimed = _event_time(event)  # 0.0 (1970) is a claim too: metrics bound it, and count it
        detected = now if claimed is None else claimed
        received = self._received_at(selection.event_id) or now
        created = {
            "run": run_id,
            "incident_id": incident_id,
            "pack": payload["pack"]["name"],
            "pack_version": payload["pack"].get("version"),
            "pack_digest": payload["pack"].get("digest"),
            "plan_digest": plan.digest,
            "playbook": selection.playbook,
            "severity": playbook["severity"],
            "params": redact(stored_params),
            "inputs": redact(inputs),
            "event": redact(event),
            "detected_at": detected,
            "received_at": received,
            "dry_run": False,
            "trigger": selection.trigger,
            "hook": selection.hook,
            "escalate": selection.escalate,
            "dedupe_key": selection.dedupe_key,
            "event_id": selection.event_id,
            "parent_run": run.parent_run,
            "parent_step": run.parent_step,
        }
        with self.store.transaction(relaxed=relaxed):
            if plan.path == "plan" and parent is None:
                self._refuse_older_plan(payload["pack"], plan.digest, now)
            self.store.insert_run(run)
            self.store.insert_steps(run_id, sorted(n["id"] for n in playbook["nodes"]))
            appended = [
                self.store.ledger.append(E.RUN_CREATED, run_id, created, ts=now),
                self.store.ledger.append(E.PLAN_VERIFIED, run_id, plan.verification(), ts=now),
            ]
            for kind, data in also:
                appended.append(self.store.ledger.append(kind, run_id, {**data, "run": run_id}, ts=now))
            if within is not None:  # more of the run's first writes, in its transaction (one fsync)
                within(run)
        if self.view is not None and parent is None:
            try:
                self.view.begin(_run_summary(run), _ordered_nodes(playbook))
                for entry in appended:
                    self.view.entry(entry.to_dict())
            except OSError:  # stdout is gone: the drive stops at once (RunEnv.view_gone)
                self.view, self.view_gone = None, True
        run.params = params  # the real values, for this process only
        return run

    def _received_at(self, event_id: int | None) -> float | None:
        """When `opsdsl serve` accepted the event (its queue may hold it a while), else None."""
        if event_id is None:
            return None
        row = self.store.conn.execute("SELECT received_at FROM events WHERE id = ?", (event_id,)).fetchone()
        return float(row[0]) if row else None

    def _refuse_older_plan(self, pack: Mapping[str, Any], digest: str, now: float) -> None:
        """Pack versions only go up in a state directory: a signed plan older than one that
        already ran here is refused (an old plan stays validly signed forever; a rollback is
        a new version of the old source)."""
        name, version = pack["name"], pack.get("version") or ""
        newest = self.store.newest_plan_version(name)
        if newest is not None and _version_key(version) < _version_key(newest[0]):
            raise RunRefused(
                f"plan refused: pack {name} {version} is older than {name} {newest[0]}, which already ran in"
                f" {self.state}; to roll back, release the old source as a new version and sign that"
            )
        if newest is None or _version_key(version) > _version_key(newest[0]):
            self.store.record_plan_version(name, version, digest, now)

    # driving ------------------------------------------------------------------------------

    async def drive(self, run: S.RunRow, secrets: Secrets, reason: str = "start", by: str | None = None) -> Outcome:
        plan = json.loads(_payload_of(run.envelope))
        by = person_name(by) if by is not None else None
        with self._lock(run.id):
            scheduler = Scheduler(self.env(secrets), run, plan)
            return await scheduler.drive(reason, by)

    async def _start_child(self, parent: Scheduler, step: str, rendered: dict[str, Any]) -> Outcome:
        """`playbook.call`: a sub-run of the same plan, driven to its end (or pause) inline."""
        existing = [r for r in self.store.children(parent.run.id) if r.parent_step == step]
        secrets = parent.env.secrets
        if existing:
            child = existing[-1]
            if child.status in S.FINAL_RUN_STATUSES:
                return Outcome(child.status, [], child.error)
            child.params = parent.run.params
            plan_payload = json.loads(_payload_of(child.envelope))
            return await Scheduler(self.env(secrets, child=True), child, plan_payload).drive("resume")
        verified = next((e.data for e in self.store.ledger.entries(run=parent.run.id) if e.kind == E.PLAN_VERIFIED), {})
        plan = VerifiedPlan(
            parent.run.envelope,
            parent.plan,
            parent.run.plan_digest,
            verified.get("keyids", []),
            parent.run.trust,
            verified.get("path") or "plan",
            verified.get("environment"),
        )

        name = rendered["playbook"]
        given = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in (rendered.get("inputs") or {}).items()}
        inputs = _typed_inputs(parent.plan["playbooks"][name], name, rendered.get("inputs") or {}, given)
        child = self.create_run(
            plan,
            Selection(name),
            parent.run.params,
            inputs,
            parent.run.event,
            secrets,
            parent=(parent.run.id, step),
            incident_id=f"{parent.run.incident_id}.{step}",
        )
        return await Scheduler(self.env(secrets, child=True), child, parent.plan).drive()

    @contextlib.contextmanager
    def _lock(self, run_id: str) -> Iterator[None]:
        """Drive `run_id` alone: an exclusive lock on its lock file, which names the holder's pid."""
        folder = self.state / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{run_id}.lock", "a+") as handle:  # "a+": never wipe the holder's pid
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read(32).strip()
                who = f"pid {holder}" if holder.isdigit() else "another process"
                raise RunBusy(
                    f"run {run_id} is being driven by {who}; it goes on there (follow it with `opsdsl runs`)"
                ) from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                handle.truncate(0)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def served_by(self, run_id: str) -> dict[str, Any] | None:
        """The running `opsdsl serve` that owns this run (`{pid, command, since}`), or None."""
        from opsdsl.runtime.driver import SERVE, engine_holder

        run = self.store.run(self.store.root_run(run_id))
        holder = engine_holder(self.state) if run.owner == SERVE else None
        return holder if holder and holder.get("command") == SERVE else None

    def refuse_if_served(self, run: S.RunRow, what: str = "resume") -> None:
        """A run a running `opsdsl serve` owns is driven there, never by a second process:
        UsageError saying how to act on it instead."""
        holder = self.served_by(run.id)
        if holder:
            raise UsageError(
                f"run {run.id} is owned by `opsdsl serve` (pid {holder.get('pid')}) on this state directory, "
                f"which drives it to its end by itself: record what it waits for with `opsdsl approve`, "
                f"`opsdsl decide` or `opsdsl cancel` (or the operator API) and the server goes on at once; "
                f"a second process may not {what} it"
            )

    def ensure_not_driven(self, run_id: str) -> None:
        """Raise RunBusy (exit 2, naming the pid) when another process is driving `run_id`."""
        with self._lock(run_id):
            pass

    def resumable(self, run_id: str) -> S.RunRow:
        run = self.store.run(run_id)
        if run.status in S.FINAL_RUN_STATUSES:
            raise UsageError(f"run {run_id} already {run.status}; there is nothing to resume")
        while run.parent_run:  # a sub-run continues through the run that called it
            run = self.store.run(run.parent_run)
        if run.status in S.FINAL_RUN_STATUSES:
            raise UsageError(f"run {run.id} already {run.status}; there is nothing to resume")
        self.refuse_if_leased(run)
        return run

    def refuse_if_leased(self, run: S.RunRow, what: str = "resume") -> None:
        """A run an `opsdsl worker` holds the lease of (by the database's clock) is driven
        there, never by a second process: UsageError naming the worker."""
        if run.lease_until is not None and run.lease_until > self.store.now():
            raise UsageError(
                f"run {run.id} is being driven by worker {run.lease_owner}, which continues it to its end"
                f" (or its next pause); record what it waits for with `opsdsl approve`, `opsdsl decide` or"
                f" `opsdsl cancel` and a worker goes on at once; a second process may not {what} it"
            )

    def nudge_workers(self, run: S.RunRow) -> bool:
        """A run workers drove before (a lease was taken on it: `lease_epoch` > 0) is theirs to
        continue: leave a durable `resume` nudge a worker claims it by, and say so (True)."""
        if run.lease_epoch <= 0:
            return False
        with self.store.transaction():
            self.store.set_timer(run.id, "", "resume", self.store.now())
        return True

    # people -------------------------------------------------------------------------------

    def approve(
        self,
        run_id: str,
        step: str,
        by: str,
        deny: bool = False,
        answers: Mapping[str, str] | None = None,
        comment: str | None = None,
        *,
        person: Person | None = None,
    ) -> dict[str, Any]:
        """Record one person's approval (or denial) of a step waiting for it.

        With `person` (the API's authenticated person, the CLI's local one), `by` is not
        used: the person's role must allow approving, `group:` approvers match their
        groups, and the ledger records `by` (Person.recorded) and `via`. Without it, `by`
        is a bare name (rehearsals, older callers). UsageError for a rule broken."""
        actor = _actor(by, person, "approve", "approving")
        run, row = self._waiting_step(run_id, step, S.AWAITING_APPROVAL, "an approval")
        name = actor.name  # one spelling per person: the two-person rule counts people
        if row.approvers and not may_approve(actor, row.approvers):
            groups = f" (groups: {', '.join(actor.groups)})" if actor.groups else ""
            hint = ""
            if not actor.groups and any(str(a).strip().casefold().startswith("group:") for a in row.approvers):
                hint = "; a group's members are the people `opsdsl users add --group` puts in it"
            raise UsageError(
                f"{name}{groups} may not approve {step}: its approvers are {', '.join(row.approvers)}{hint}"
            )
        votes = self.store.approvals(run.id, step)
        if any(same_person_key(v["by"]) == same_person_key(name) for v in votes):
            raise UsageError(f"{name} has already answered for {step}; approvals count distinct people")
        plan = json.loads(_payload_of(run.envelope))
        if not deny and run.requested_by and same_person_key(run.requested_by) == same_person_key(name):
            rule = self._distinct_from_requester(run, plan, step)
            if rule is not None:
                raise UsageError(
                    f"{name} started run {run.id} and may not approve {step}: {rule} says"
                    " `distinct_from_requester: true`, so another person must approve (a denial is still taken)"
                )
        typed: dict[str, Any] = {}
        if answers:
            node = _node(plan, run.playbook, step)
            declared = (node.get("with") or {}).get("inputs") or {}
            for answer, text in answers.items():
                if answer not in declared:
                    raise UsageError(f"--input {answer}: step {step} asks for {', '.join(declared) or 'no inputs'}")
                typed[answer] = coerce(text, declared[answer].get("type", "string"), f"--input {answer}")
        decision = "deny" if deny else "approve"
        now = self.clock()
        data = {"step": step, "by": actor.recorded, "decision": decision, "answers": typed, "comment": comment}
        if person is not None:
            data["via"] = person.via
        approved = len({same_person_key(v["by"]) for v in votes if v["decision"] == "approve"}) + (0 if deny else 1)
        with self.store.transaction():
            self.store.add_approval(run.id, step, name, decision, typed, comment, now)
            self.store.ledger.append(E.APPROVAL_RECORDED, run.id, data, ts=now)
            if deny or approved >= max(1, row.approvals_needed):  # settled: whoever drives it may go on
                self.store.set_timer(self.store.root_run(run.id), "", "approval", now)
        return {
            "decision": decision,
            "approved": approved,
            "needed": max(1, row.approvals_needed),
            "by": actor.recorded,
        }

    def _distinct_from_requester(self, run: S.RunRow, plan: dict[str, Any], step: str) -> str | None:
        """What asks that the run's requester not approve `step` (the approval step, or a
        policy that asked for this approval), or None."""
        node = _node(plan, run.playbook, step)
        if node.get("action") == "approval" and (node.get("with") or {}).get("distinct_from_requester") is True:
            return f"approval step {step}"
        asking: list[str] = []
        for entry in self.store.ledger.entries(run=run.id):
            if entry.kind == E.APPROVAL_REQUESTED and entry.data.get("step") == step:
                asking = list(entry.data.get("policies") or [])
        for policy in plan.get("policies") or []:
            if policy.get("id") in asking and policy.get("distinct_from_requester") is True:
                return f"policy {policy['id']}"
        return None

    def decide(self, run_id: str, step: str, by: str, outcome: str, *, person: Person | None = None) -> None:
        """Settle a step left in doubt by a crash: retry it, or record it as succeeded or failed."""
        actor = _actor(by, person, "decide", "deciding")
        run, row = self._waiting_step(run_id, step, S.IN_DOUBT, "a decision")
        now = self.clock()
        if outcome == "retry":
            row.status = S.PENDING
        elif outcome == "succeeded":
            row.status, row.finished_at, row.outputs = S.SUCCEEDED, now, {}
            row.completed = now_counter(self.store, run.id)
        else:
            row.status, row.finished_at, row.error = S.FAILED, now, f"marked failed by {actor.recorded} after a crash"
        data = {"step": step, "by": actor.recorded, "decision": outcome}
        if person is not None:
            data["via"] = person.via
        with self.store.transaction():
            self.store.save_step(run.id, row)
            self.store.ledger.append(E.STEP_DECIDED, run.id, data, ts=now)
            self.store.set_timer(self.store.root_run(run.id), "", "decision", now)  # a durable nudge

    def acknowledge(self, run_id: str, by: str, *, person: Person | None = None) -> dict[str, Any]:
        """Record a person's acknowledgement, unless a person already acknowledged the run
        (an ack, an approval or a decision): returns that first one, `{by, ts, kind, new}`."""
        from opsdsl.audit.metrics import first_acknowledgement

        actor = _actor(by, person, "ack", "acknowledging")
        run = self.store.run(self.store.root_run(run_id))  # the incident is the top-level run's
        data = {"by": actor.recorded}
        if person is not None:
            data["via"] = person.via
        with self.store.transaction():
            entries = [e.to_dict() for e in self.store.ledger.entries(run=run.id)]
            earlier = first_acknowledgement(entries)
            if earlier is not None:
                return {**earlier, "new": False}
            now = self.clock()
            self.store.ledger.append(E.RUN_ACKNOWLEDGED, run.id, data, ts=now)
        return {"by": actor.recorded, "ts": now, "kind": E.RUN_ACKNOWLEDGED, "new": True}

    def cancel(self, run_id: str, by: str, via: str = "local", reason: str | None = None) -> S.RunRow:
        """Ask a live run to stop: recorded at once (from any process); the run's driver starts
        no new step, compensates what was done, and ends the run `cancelled`. Returns the
        top-level run, which whoever drives runs here must now drive (a paused run too)."""
        run = self.store.run(run_id)
        while run.parent_run:  # a sub-run is cancelled with the run that called it
            run = self.store.run(run.parent_run)
        if run.status in S.FINAL_RUN_STATUSES:
            raise UsageError(f"run {run.id} already {run.status}; there is nothing to cancel")
        if run.cancel_requested:
            return run
        now = self.clock()
        family = self.store.family(run.id)
        with self.store.transaction():
            self.store.ledger.append(E.RUN_CANCEL_REQUESTED, run.id, {"by": by, "via": via, "reason": reason}, ts=now)
            for member in family:
                self.store.update_run(member, cancel_requested=by, updated_at=now)
            self.store.set_timer(run.id, "", "cancel", now)
        run.cancel_requested = by
        return run

    def _waiting_step(self, run_id: str, step: str, status: str, what: str) -> tuple[S.RunRow, S.StepRow]:
        run = self.store.run(run_id)
        steps = self.store.steps(run.id)
        if step not in steps:
            raise UsageError(f"run {run_id} has no step `{step}` (steps: {', '.join(sorted(steps))})")
        row = steps[step]
        if row.status != status:
            waiting = self.store.pending_approvals(run.id)
            hint = f"; waiting: {', '.join(waiting)}" if waiting else ""
            raise UsageError(f"step {step} of run {run_id} is {row.status}, not waiting for {what}{hint}")
        return run, row


def _actor(by: str, person: Person | None, act: str, doing: str) -> Person:
    """Who acts: `person` once their role is checked, else the bare name `by` (recorded as given)."""
    if person is None:
        return Person(person_name(by), "admin", (), "unspecified")  # recorded as the name itself
    if not allowed(person, act):
        roles = roles_for(act)
        raise UsageError(
            f"{person.name} is a {person.role}; {doing} needs the role {', '.join(roles[:-1])} or {roles[-1]}"
        )
    return person


def _version_key(version: str) -> tuple:
    """Semantic-version order: 1.10.0 > 1.9.0, 2.0.0 > 2.0.0-rc.1; build metadata is ignored."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    numbers = tuple(int(part) if part.isdigit() else -1 for part in core.split("."))
    tags = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")) if pre else ()
    return (numbers, 0 if pre else 1, tags)


def now_counter(store: S.Store, run_id: str) -> int:
    row = store.conn.execute("SELECT COALESCE(MAX(completed), 0) FROM steps WHERE run_id = ?", (run_id,)).fetchone()
    return int(row[0]) + 1


def _node(plan: dict, playbook: str, step: str) -> dict[str, Any]:
    return next(n for n in plan["playbooks"][playbook]["nodes"] if n["id"] == step)


def _event_time(event: Mapping[str, Any] | None) -> float | None:
    if not event:
        return None
    for key in ("startsAt", "timestamp", "time"):
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _run_summary(run: S.RunRow) -> dict[str, Any]:
    return {
        "id": run.id,
        "incident_id": run.incident_id,
        "pack": run.pack,
        "playbook": run.playbook,
        "severity": run.severity,
    }


def _ordered_nodes(playbook: dict[str, Any]) -> list[dict[str, Any]]:
    by_id = {n["id"]: n for n in playbook["nodes"]}
    ordered = [by_id[sid] for sid in playbook["order"] if sid in by_id]
    return ordered + [n for n in playbook["nodes"] if n["section"] == "compensation"]


def exit_code(outcome: Outcome) -> int:
    return {
        S.SUCCEEDED: EXIT_SUCCEEDED,
        S.FAILED: EXIT_FAILED,
        "paused": EXIT_PAUSED,
        S.INTERRUPTED: EXIT_INTERRUPTED,
        S.CANCELLED: EXIT_FAILED,
    }.get(outcome.status, EXIT_FAILED)


def run_until_done(coroutine_factory) -> Any:
    """Run a coroutine with Ctrl-C, SIGTERM and SIGHUP (a closed terminal) cancelling it
    cleanly: the run is marked interrupted and stays resumable."""

    async def main():
        task = asyncio.ensure_future(coroutine_factory())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        return await task

    return asyncio.run(main())
