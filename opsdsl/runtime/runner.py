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
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsdsl.errors import EvalError, OpsdslError, UsageError
from opsdsl.runtime import entries as E
from opsdsl.runtime import store as S
from opsdsl.runtime.scheduler import Outcome, RunEnv, Scheduler
from opsdsl.runtime.secrets import Secrets

EXIT_SUCCEEDED, EXIT_FAILED, EXIT_PAUSED, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 4, 5, 130
DEV_KEY = "keys/dev.key"


class RunRefused(OpsdslError):
    """The run did not start: bad signature, untrusted plan, missing input (exit 5)."""

    exit_code = EXIT_REFUSED


class RunBusy(OpsdslError):
    """Another process is driving this run."""

    exit_code = 2


@dataclass
class VerifiedPlan:
    envelope: bytes
    payload: dict[str, Any]
    digest: str
    keyids: list[str]
    trust: str  # "dev-key" or the trust file


@dataclass
class Selection:
    """One playbook to run, and why."""

    playbook: str
    trigger: str | None = None
    hook: str | None = None
    escalate: str | None = None
    dedupe_key: str | None = None
    event_id: int | None = None


@dataclass
class RunOptions:
    params: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, str] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    secret_refs: dict[str, tuple[str, str]] = field(default_factory=dict)
    incidents_dir: Path | None = None
    view: Any = None


# ---- keys and plans ----------------------------------------------------------------------


def dev_key(state: Path):
    """The state directory's own Ed25519 key (created on first use, mode 0600): it signs
    plans compiled by `run --pack`, ledger checkpoints and incident records."""
    from opsdsl.signing import generate_key, load_private_key, write_private_key, write_public_key

    path = state / DEV_KEY
    public = path.with_suffix(".pub")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate_key()
        write_private_key(path, key, None)
    else:
        key = load_private_key(path)
    if not public.exists():  # also heals a crash between writing the two halves
        write_public_key(public, key.public_key())
    return key


def plan_from_pack(pack: Path, policies: Sequence[Path] | None, state: Path) -> VerifiedPlan:
    """Compile and sign `pack` with the dev key; policy packs beside it are in scope unless
    `policies` names them explicitly."""
    from opsdsl.build import compile_paths
    from opsdsl.pipeline import looks_like_policy_pack

    if not pack.is_file():
        raise UsageError(f"--pack {pack}: no such file")
    if policies is None:
        policies = [
            p
            for p in sorted(pack.parent.iterdir())
            if p != pack and p.suffix in (".yaml", ".yml", ".ops") and looks_like_policy_pack(p)
        ]
    key = dev_key(state)
    out = state / "plans" / pack.stem  # one build folder per pack: builds of other packs never prune it
    result = compile_paths([pack, *policies], out, keys=[key])
    if result.failed:
        raise RunRefused(f"{pack} has errors; nothing was run", tuple(result.diagnostics))
    entry = next(p for p in result.packs if p.plan_file and p.status in ("compiled", "unchanged", "reused"))
    envelope = (out / entry.plan_file).read_bytes()
    return _verify(envelope, {_keyid(key): key.public_key()}, 1, "dev-key")


def plan_from_file(path: Path, trust_file: Path | None, environment: str, state: Path) -> VerifiedPlan:
    """Read a signed plan and verify it against the trust file (default STATE/trust.yaml)."""
    from opsdsl.trust import load_trust

    trust_file = trust_file or (state / "trust.yaml")
    if not trust_file.exists():
        raise RunRefused(
            f"no trust file to verify {path} against: pass --trust FILE, or write {trust_file}"
            " (see docs/signing.md#trust-files)"
        )
    try:
        envelope = path.read_bytes()
    except OSError as error:
        raise UsageError(f"--plan {path}: {error.strerror}") from None
    trust = load_trust(trust_file)
    keys, threshold = trust.environment(environment)
    return _verify(envelope, keys, threshold, str(trust_file))


def plan_for_dry_run(
    pack: Path | None,
    plan_file: Path | None,
    policies: Sequence[Path] | None,
    trust: Path | None,
    environment: str,
    state: Path,
) -> dict[str, Any]:
    """The plan payload a run would execute, obtained without writing anything in `state`."""
    import tempfile

    from opsdsl.build import compile_paths
    from opsdsl.pipeline import looks_like_policy_pack

    if plan_file is not None:
        return plan_from_file(plan_file, trust, environment, state).payload
    assert pack is not None
    if not pack.is_file():
        raise UsageError(f"--pack {pack}: no such file")
    if policies is None:
        policies = [
            p
            for p in sorted(pack.parent.iterdir())
            if p != pack and p.suffix in (".yaml", ".yml", ".ops") and looks_like_policy_pack(p)
        ]
    with tempfile.TemporaryDirectory(prefix="opsdsl-dry-run-") as scratch:
        result = compile_paths([pack, *policies], Path(scratch))
        if result.failed:
            raise RunRefused(f"{pack} has errors; nothing was run", tuple(result.diagnostics))
        entry = next(p for p in result.packs if p.plan_file and p.status in ("compiled", "unchanged", "reused"))
        return json.loads(_payload_of((Path(scratch) / entry.plan_file).read_bytes()))


def restore_params(
    plan: dict[str, Any], stored: dict[str, Any], given: Mapping[str, str], secrets: Secrets
) -> dict[str, Any]:
    """A resumed run's params: stored values, with secret ones looked up again (never stored)."""
    values = dict(stored)
    for name, spec in (plan.get("params") or {}).items():
        if not spec.get("secret"):
            continue
        if name in given:
            values[name] = coerce(given[name], spec["type"], f"--param {name}")
        elif name in secrets:
            values[name] = secrets[name]
        elif spec.get("default") is not None:
            values[name] = spec["default"]
        else:
            raise RunRefused(f"secret param `{name}` is not stored with the run: pass --param {name}=VALUE")
        secrets.redactor.add(str(values[name]))
    return values


def _verify(envelope: bytes, keys: Mapping, threshold: int, trust: str) -> VerifiedPlan:
    from opsdsl.canonical import sha256_digest
    from opsdsl.signing import PLAN_PAYLOAD_TYPE, SignatureError, parse_envelope, verify_envelope

    try:
        verified = verify_envelope(parse_envelope(envelope), keys, threshold)
    except SignatureError as error:
        raise RunRefused(f"plan refused: {error.message}") from None
    if verified.payload_type != PLAN_PAYLOAD_TYPE:
        raise RunRefused(f"plan refused: payload type {verified.payload_type!r} is not a plan")
    payload = json.loads(verified.payload)
    return VerifiedPlan(envelope, payload, sha256_digest(verified.payload), sorted(verified.keyids), trust)


def _keyid(key) -> str:
    from opsdsl.signing import keyid

    return keyid(key.public_key())


# ---- params, inputs, events ----------------------------------------------------------------


def coerce(text: str, kind: str, what: str) -> Any:
    """A command-line value converted to its declared type."""
    try:
        if kind == "string":
            return text
        if kind == "integer":
            return int(text)
        if kind == "number":
            value = float(text)
            return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value
        if kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind == "duration":
            from opsdsl.durations import parse_duration

            return parse_duration(text) / 1000
        if kind in ("list", "map"):
            value = json.loads(text)
            if not isinstance(value, list if kind == "list" else dict):
                raise ValueError
            return value
    except ValueError:
        pass
    article = "an" if kind[0] in "aeiou" else "a"
    raise UsageError(f"{what}: {text!r} is not {article} {kind}" + (" (write JSON)" if kind in ("list", "map") else ""))


def _declared_value(value: Any, kind: str) -> Any:
    if kind == "duration" and isinstance(value, str):
        from opsdsl.durations import parse_duration

        return parse_duration(value) / 1000
    return value


def resolve_params(plan: dict[str, Any], given: Mapping[str, str], secrets: Secrets) -> dict[str, Any]:
    declared = plan.get("params") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"--param {unknown[0]}: the pack declares no such param (it has: {', '.join(declared)})")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            value = coerce(given[name], spec["type"], f"--param {name}")
        elif spec.get("secret") and name in secrets:
            value = secrets[name]
        elif spec.get("default") is not None:
            value = _declared_value(spec["default"], spec["type"])
        else:
            raise RunRefused(f"param `{name}` is required: pass --param {name}=VALUE")
        if spec.get("enum") and value not in spec["enum"]:
            raise UsageError(f"--param {name}: {value!r} is not one of {spec['enum']}")
        if spec.get("secret"):
            secrets.redactor.add(str(value))
        values[name] = value
    return values


def resolve_inputs(
    playbook: dict[str, Any], name: str, event: dict[str, Any], params: dict[str, Any], given: Mapping[str, str]
) -> dict[str, Any]:
    from opsdsl.expr import compile_expr, parse

    declared = playbook.get("inputs") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"--input {unknown[0]}: playbook `{name}` has no such input")
    values: dict[str, Any] = {}
    for input_name, spec in declared.items():
        if input_name in given:
            values[input_name] = coerce(given[input_name], spec["type"], f"--input {input_name}")
            continue
        problem = None
        if spec.get("from") and event:
            try:
                values[input_name] = compile_expr(parse(spec["from"]))({"event": event, "params": params})
                continue
            except EvalError as error:
                problem = error.message
        if spec.get("default") is not None:
            values[input_name] = _declared_value(spec["default"], spec["type"])
        else:
            because = f" (`{spec['from']}`: {problem})" if problem else ""
            raise RunRefused(
                f"input `{input_name}` of playbook `{name}` has no value{because}: "
                f"pass --input {input_name}=VALUE or an --event that carries it"
            )
    return values


def select_playbooks(
    plan: dict[str, Any], event: dict[str, Any] | None, playbook: str | None, params: dict[str, Any]
) -> list[Selection]:
    """What to run: the named playbook, else the hooks whose trigger matches the event, else the only playbook."""
    from opsdsl.expr import compile_expr, parse

    playbooks = plan["playbooks"]
    if playbook is not None:
        if playbook not in playbooks:
            raise UsageError(f"--playbook {playbook}: the pack has no such playbook (it has: {', '.join(playbooks)})")
        return [Selection(playbook)]
    if event is None:
        if len(playbooks) != 1:
            raise UsageError(
                f"the pack has {len(playbooks)} playbooks; choose one with --playbook ({', '.join(playbooks)})"
            )
        return [Selection(next(iter(playbooks)))]
    from opsdsl.runtime.triggers import event_kind

    kind = event_kind(event)
    activation = {"event": event, "params": params, "now": time.time()}
    chosen: list[Selection] = []
    for hook_name, hook in sorted((plan.get("hooks") or {}).items()):
        trigger = plan["triggers"][hook["trigger"]]
        if trigger["on"] != kind:
            continue
        if trigger.get("when"):
            try:
                if compile_expr(parse(trigger["when"]))(activation) is not True:
                    continue
            except EvalError:
                continue
        if not any(s.playbook == hook["run"] for s in chosen):
            chosen.append(Selection(hook["run"], hook["trigger"], hook_name, hook.get("escalate")))
    return chosen


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
    ) -> None:
        """`clock`, `sleep`, `jitter`, `durable=False` and `write_incidents=False` are for
        rehearsals (`opsdsl test`): a virtual clock, no fsync, no incident folders."""
        from opsdsl.runtime.executor import InProcessExecutor

        self.state = state
        self.store = S.Store(state, durable=durable, create=create)
        self._signer = None
        self.incidents_root = incidents_dir or (state / "incidents")
        self.executor = executor or InProcessExecutor()
        self.view = view
        self.clock = clock or time.time
        self.sleep = sleep
        self.jitter = jitter
        self.write_incidents = write_incidents

    @property
    def signer(self):
        """The dev key, made on first use: commands that sign nothing never create one."""
        if self._signer is None:
            self._signer = dev_key(self.state)
        return self._signer

    def close(self) -> None:
        self.store.close()

    def env(self, secrets: Secrets, child: bool = False) -> RunEnv:
        env = RunEnv(
            store=self.store,
            executor=self.executor,
            secrets=secrets,
            signer=self.signer,
            incidents_root=self.incidents_root,
            view=None if child else self.view,
            clock=self.clock,
            start_child=self._start_child,
            write_incidents=self.write_incidents,
        )
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
    ) -> S.RunRow:
        payload = plan.payload
        playbook = payload["playbooks"][selection.playbook]
        now = self.clock()
        stamp = datetime.fromtimestamp(now, UTC)
        suffix = _random.token_hex(3)
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
        )
        detected = _event_time(event) or now
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
            "dry_run": False,
            "trigger": selection.trigger,
            "hook": selection.hook,
            "escalate": selection.escalate,
            "dedupe_key": selection.dedupe_key,
            "event_id": selection.event_id,
            "parent_run": run.parent_run,
            "parent_step": run.parent_step,
        }
        with self.store.transaction():
            self.store.insert_run(run)
            self.store.insert_steps(run_id, sorted(n["id"] for n in playbook["nodes"]))
            appended = [
                self.store.ledger.append(E.RUN_CREATED, run_id, created, ts=now),
                self.store.ledger.append(E.PLAN_VERIFIED, run_id, {"keyids": plan.keyids, "trust": plan.trust}, ts=now),
            ]
        if self.view is not None and parent is None:
            self.view.begin(_run_summary(run), _ordered_nodes(playbook))
            for entry in appended:
                self.view.entry(entry.to_dict())
        run.params = params  # the real values, for this process only
        return run

    # driving ------------------------------------------------------------------------------

    async def drive(self, run: S.RunRow, secrets: Secrets, reason: str = "start", by: str | None = None) -> Outcome:
        plan = json.loads(_payload_of(run.envelope))
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
            parent.run.envelope, parent.plan, parent.run.plan_digest, verified.get("keyids", []), parent.run.trust
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
        folder = self.state / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{run_id}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunBusy(f"run {run_id} is being driven by another process") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def resumable(self, run_id: str) -> S.RunRow:
        run = self.store.run(run_id)
        if run.status in S.FINAL_RUN_STATUSES:
            raise UsageError(f"run {run_id} already {run.status}; there is nothing to resume")
        while run.parent_run:  # a sub-run continues through the run that called it
            run = self.store.run(run.parent_run)
        if run.status in S.FINAL_RUN_STATUSES:
            raise UsageError(f"run {run.id} already {run.status}; there is nothing to resume")
        return run

    # people -------------------------------------------------------------------------------

    def approve(
        self,
        run_id: str,
        step: str,
        by: str,
        deny: bool = False,
        answers: Mapping[str, str] | None = None,
        comment: str | None = None,
    ) -> dict[str, Any]:
        """Record one person's approval (or denial) of a step waiting for it."""
        run, row = self._waiting_step(run_id, step, S.AWAITING_APPROVAL, "an approval")
        if not by.strip():
            raise UsageError("--by must name the person approving")
        if row.approvers and by not in row.approvers:
            raise UsageError(f"{by} may not approve {step}: its approvers are {', '.join(row.approvers)}")
        votes = self.store.approvals(run.id, step)
        if any(v["by"] == by for v in votes):
            raise UsageError(f"{by} has already answered for {step}; approvals count distinct people")
        typed: dict[str, Any] = {}
        if answers:
            plan = json.loads(_payload_of(run.envelope))
            node = _node(plan, run.playbook, step)
            declared = (node.get("with") or {}).get("inputs") or {}
            for name, text in answers.items():
                if name not in declared:
                    raise UsageError(f"--input {name}: step {step} asks for {', '.join(declared) or 'no inputs'}")
                typed[name] = coerce(text, declared[name].get("type", "string"), f"--input {name}")
        decision = "deny" if deny else "approve"
        now = self.clock()
        with self.store.transaction():
            self.store.add_approval(run.id, step, by, decision, typed, comment, now)
            self.store.ledger.append(
                E.APPROVAL_RECORDED,
                run.id,
                {"step": step, "by": by, "decision": decision, "answers": typed, "comment": comment},
                ts=now,
            )
        approved = len({v["by"] for v in votes if v["decision"] == "approve"}) + (0 if deny else 1)
        return {"decision": decision, "approved": approved, "needed": max(1, row.approvals_needed)}

    def decide(self, run_id: str, step: str, by: str, outcome: str) -> None:
        """Settle a step left in doubt by a crash: retry it, or record it as succeeded or failed."""
        run, row = self._waiting_step(run_id, step, S.IN_DOUBT, "a decision")
        now = self.clock()
        if outcome == "retry":
            row.status = S.PENDING
        elif outcome == "succeeded":
            row.status, row.finished_at, row.outputs = S.SUCCEEDED, now, {}
            row.completed = now_counter(self.store, run.id)
        else:
            row.status, row.finished_at, row.error = S.FAILED, now, f"marked failed by {by} after a crash"
        with self.store.transaction():
            self.store.save_step(run.id, row)
            self.store.ledger.append(E.STEP_DECIDED, run.id, {"step": step, "by": by, "decision": outcome}, ts=now)

    def acknowledge(self, run_id: str, by: str) -> None:
        run = self.store.run(run_id)
        with self.store.transaction():
            self.store.ledger.append(E.RUN_ACKNOWLEDGED, run.id, {"by": by}, ts=self.clock())

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


def now_counter(store: S.Store, run_id: str) -> int:
    row = store.conn.execute("SELECT COALESCE(MAX(completed), 0) FROM steps WHERE run_id = ?", (run_id,)).fetchone()
    return int(row[0]) + 1


def _typed_inputs(playbook: dict, name: str, values: dict[str, Any], given: dict[str, str]) -> dict[str, Any]:
    declared = playbook.get("inputs") or {}
    out = {}
    for input_name, spec in declared.items():
        if input_name in values:
            out[input_name] = values[input_name]
        elif spec.get("default") is not None:
            out[input_name] = _declared_value(spec["default"], spec["type"])
        else:
            raise EvalError(f"playbook.call: input `{input_name}` of `{name}` has no value")
    return out


def _node(plan: dict, playbook: str, step: str) -> dict[str, Any]:
    return next(n for n in plan["playbooks"][playbook]["nodes"] if n["id"] == step)


def _payload_of(envelope: bytes) -> bytes:
    from opsdsl.signing import decode_base64, parse_envelope

    return decode_base64(parse_envelope(envelope)["payload"])


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
    }.get(outcome.status, EXIT_FAILED)


def run_until_done(coroutine_factory) -> Any:
    """Run a coroutine with Ctrl-C and SIGTERM cancelling it cleanly (state is saved)."""

    async def main():
        task = asyncio.ensure_future(coroutine_factory())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, task.cancel)
        return await task

    return asyncio.run(main())
