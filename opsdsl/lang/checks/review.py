"""Review rules: what a careful reviewer would flag in a pack that is not wrong as such."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from opsdsl.errors import Diagnostic, EvalError
from opsdsl.lang.actions import NETWORK_ACTIONS, SCHEDULER_ACTIONS, policy_step_view
from opsdsl.lang.checks.context import Scope, Unit, ancestors, iter_steps, predecessors
from opsdsl.lang.checks.semantic import call_graph
from opsdsl.lang.expr import ExprSyntaxError, parse

if TYPE_CHECKING:  # either model: pydantic's (compile) or the checked one (lint)
    from opsdsl.lang.model import Input, Pack, Policy, Step

Path_ = tuple[str | int, ...]


# ---------------------------------------------------------------- review rules


def _constant(text: str) -> object:
    """The value of an expression that reads no data, or a sentinel if it depends on data."""
    try:
        expression = parse(text)
    except ExprSyntaxError:
        return _UNKNOWN
    if expression.references():
        return _UNKNOWN
    from opsdsl.lang.expr import compile_expr  # the code generator loads only when needed

    try:
        return compile_expr(expression)({})
    except EvalError:
        return _UNKNOWN


_UNKNOWN = object()


def check_conditions(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for path, _, _, step, _ in iter_steps(pack):
        if step.when is None:
            continue
        value = _constant(step.when)
        if value is False:
            yield unit.at(
                "OPS035",
                (*path, "when"),
                f"step `{step.id}` never runs: its `when:` is always false",
                "remove the step, or fix the condition",
            )
        elif value is True:
            yield unit.at(
                "OPS048", (*path, "when"), f"the `when:` of step `{step.id}` is always true", "remove the `when:`"
            )


def approval_policy_covers(policy: Policy, pack: Pack, playbook_name: str, step: Step) -> bool:
    """Whether an approval policy could apply to `step` (unknown data counts as could)."""
    if policy.effect != "require_approval":
        return False
    playbook = pack.playbooks[playbook_name]
    activation = {
        "step": policy_step_view(
            step.id,
            step.name,
            step.action,
            step.risk,
            step.with_,
            step.timeout,
            step.idempotent,
            step.compensate is not None,
        ),
        "playbook": {"name": playbook_name, "severity": playbook.severity, "pack": pack.metadata.name},
        "params": {k: p.default for k, p in pack.params.items()},
    }
    try:
        expression = parse(policy.when)
    except ExprSyntaxError:
        return False
    run_refs = {r.path[0] for r in expression.references() if r.root == "run" and r.path}
    if run_refs - {"severity", "playbook", "pack"}:
        return True
    activation["run"] = {"severity": playbook.severity, "playbook": playbook_name, "pack": pack.metadata.name}
    from opsdsl.lang.expr import compile_expr

    try:
        return compile_expr(expression)(activation) is True
    except EvalError:
        return True  # depends on run-time data (event, now): it may apply


def check_risky_steps(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    policies = (*pack.policies, *scope.policies)
    for path, name, playbook, step, in_finally in iter_steps(pack):
        if step.risk != "high" or step.compensate is not None:
            continue
        section = playbook.finally_ if in_finally else playbook.steps
        by_id = {s.id: s for s in section}
        earlier = ancestors(predecessors(section), step.id)
        if any(by_id[a].action == "approval" for a in earlier if a in by_id):
            continue
        if any(approval_policy_covers(p, pack, name, step) for p in policies):
            continue
        yield unit.at(
            "OPS040",
            (*path, "risk"),
            f"high-risk step `{step.id}` has no approval and no `compensate:`",
            "add `compensate:` to undo it, an `approval` step before it, or a policy with `effect: require_approval`",
        )


def check_network_timeouts(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for path, _, _, step, _ in iter_steps(pack):
        networked = step.action in NETWORK_ACTIONS or (step.action == "evidence.collect" and step.with_.get("urls"))
        if networked and step.timeout is None:
            yield unit.at(
                "OPS041",
                (*path, "action"),
                f"`{step.action}` step `{step.id}` has no `timeout:`",
                "add e.g. `timeout: 10s`; without it a hung server stalls the run",
            )
        comp = step.compensate
        if comp is not None and comp.action in NETWORK_ACTIONS and comp.timeout is None:
            yield unit.at(
                "OPS041",
                (*path, "compensate", "action"),
                f"compensation of `{step.id}` has no `timeout:`",
                "add `timeout:` under `compensate:`",
            )


def check_hook_cooldowns(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for name, hook in pack.hooks.items():
        if hook.cooldown is None:
            yield unit.at(
                "OPS042",
                ("hooks", name),
                f"hook `{name}` has no `cooldown:`",
                "add e.g. `cooldown: 10m` so a flapping alert does not start a run each time",
                key=True,
            )


def _taint_spec(spec: Input) -> dict:
    """What `tainted_inputs` reads of a declared input, from either model."""
    return {"from": spec.from_, "pattern": spec.pattern, "enum": spec.enum}


def pack_tainted_inputs(pack: Pack) -> dict[str, frozenset[str]]:
    """Per playbook, the inputs that carry event data: taken `from:` an event, or passed
    tainted data by a `playbook.call`, and validated by neither `pattern:` nor `enum:`."""
    from opsdsl.lang.taint import tainted_inputs, value_tainted

    declared = {name: {k: _taint_spec(v) for k, v in pb.inputs.items()} for name, pb in pack.playbooks.items()}
    called: dict[str, dict[str, bool]] = {name: {} for name in pack.playbooks}
    result = {name: tainted_inputs(declared[name]) for name in pack.playbooks}
    changed = True
    while changed:  # a call chain passes taint along; at most one round per playbook
        changed = False
        for _, playbook_name, _, step, _ in iter_steps(pack):
            target = step.with_.get("playbook") if step.action == "playbook.call" else None
            if not isinstance(target, str) or target not in called or not isinstance(step.with_.get("inputs"), dict):
                continue
            for input_name, value in step.with_["inputs"].items():
                if value_tainted(value, result[playbook_name]) and not called[target].get(input_name):
                    called[target][input_name] = True
                    result[target] = tainted_inputs(declared[target], called[target])
                    changed = True
    return result


def check_tainted_data(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    """Event data in a position not on the allow-list of `opsdsl.lang.taint` (OPS043 for
    commands, OPS051 for destinations)."""
    from opsdsl.lang.taint import step_findings

    pack = unit.model
    if pack.kind != "Pack":
        return
    tainted = pack_tainted_inputs(pack)
    from opsdsl.lang.taint import compile_pattern

    for playbook_name, playbook in pack.playbooks.items():
        for input_name, spec in playbook.inputs.items():
            if spec.pattern is not None and compile_pattern(spec.pattern) is None:
                yield unit.at(
                    "OPS013",
                    ("playbooks", playbook_name, "inputs", input_name, "pattern"),
                    f"`pattern:` of input `{input_name}` is not a valid RE2 expression, so every value would be refused",
                    "RE2 has no backreferences or lookaround; see https://github.com/google/re2/wiki/Syntax",
                )
    hints = {
        "OPS043": "pass event data as an argument of a fixed, ordinary program (or in `env:`), validate the input "
        "with `pattern:` or `enum:`, or read it from a file the pack controls",
        "OPS051": "keep destinations in the pack (params); validate the input with `pattern:` or `enum:`",
    }
    for path, playbook_name, _, step, _ in iter_steps(pack):
        places = [(step.action, step.with_, (*path, "with"))]
        if step.compensate:
            places.append((step.compensate.action, step.compensate.with_, (*path, "compensate", "with")))
        for action, with_, at in places:
            for finding in step_findings(action, with_, tainted[playbook_name]):
                yield unit.at(
                    finding.code,
                    (*at, *finding.path),
                    f"possible injection in step `{step.id}`: {finding.message}",
                    hints[finding.code],
                )


_SECRET_KEY = re.compile(
    r"(?i)(^|[_.-])(pass(word|wd)?|secret|token|api[_-]?key|apikey|auth(orization)?|routing[_-]?key|private[_-]?key"
    r"|credentials?|access[_-]?key)$"
)
# Searched with every `${{` replaced by NUL, so an interpolated value is never a literal one.
_SECRET_VALUE = re.compile(
    r"(AKIA[0-9A-Z]{16}|xox[abposr]-[0-9A-Za-z-]{10,}|gh[pousr]_[0-9A-Za-z]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|hooks\.slack\.com/services/[A-Z0-9]+/[A-Z0-9]+/[0-9A-Za-z]+|(?i:bearer|basic) [0-9A-Za-z._~+/=-]{8,}"
    r"|[?&](?i:token|api_?key|password|secret)=[^&${}\s\x00]{6,}|--(?i:password|token|secret)=[^${}\s\x00]+"
    r"|[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\x00]*:[^/\s@\x00]+@)"  # a password in a URL's userinfo
)


def _literal_value(text: str) -> bool:
    """Something other than nothing, an interpolation, or a path to a file holding the value."""
    text = text.strip()
    return bool(text) and "${{" not in text and not text.startswith(("/", "./", "../", "~/"))


def _looks_like_credential(text: str) -> bool:
    return bool(_SECRET_VALUE.search(text.replace("${{", "\x00")))


def _secret_findings(value: object, path: Path_) -> Iterator[tuple[Path_, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and item and _SECRET_KEY.search(str(key)) and "${{" not in item:
                yield (*path, key), f"`{key}` holds a literal value"
            else:
                yield from _secret_findings(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _secret_findings(item, (*path, i))
    elif isinstance(value, str) and _looks_like_credential(value):
        yield path, "a value looks like a credential"


def check_plaintext_secrets(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    hint = "store it outside the pack and reference it as `${{ secrets.NAME }}`"
    for name, param in pack.params.items():
        if param.secret and isinstance(param.default, str) and param.default:
            yield unit.at("OPS044", ("params", name, "default"), f"secret param `{name}` has a literal default", hint)
        elif isinstance(param.default, str) and _looks_like_credential(param.default):
            yield unit.at(
                "OPS044", ("params", name, "default"), f"the default of param `{name}` looks like a credential", hint
            )
        elif isinstance(param.default, str) and _SECRET_KEY.search(name) and _literal_value(param.default):
            yield unit.at(
                "OPS044",
                ("params", name, "default"),
                f"param `{name}` is named like a credential and has a literal default",
                "declare it `secret: true` with no default, and give its value at run time"
                " (`--secret NAME=env:VAR|file:PATH`)",
            )
    for path, _, _, step, _ in iter_steps(pack):
        sections = [((*path, "with"), step.with_)]
        if step.compensate:
            sections.append(((*path, "compensate", "with"), step.compensate.with_))
        for at, with_ in sections:
            for where, message in _secret_findings(with_, at):
                yield unit.at("OPS044", where, f"plaintext secret in step `{step.id}`: {message}", hint)


def check_unused(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    used_triggers = {h.trigger for h in pack.hooks.values()}
    for name in pack.triggers:
        if name not in used_triggers:
            yield unit.at(
                "OPS045",
                ("triggers", name),
                f"trigger `{name}` is not used by any hook",
                "add a hook that uses it, or remove it",
                key=True,
            )
    calls = call_graph(pack)
    called: set[str] = set()
    pending = [h.run for h in pack.hooks.values()]
    while pending:
        name = pending.pop()
        if name not in called:
            called.add(name)
            pending.extend(calls.get(name, ()))
    for name in pack.playbooks:
        if name not in called:
            yield unit.at(
                "OPS046",
                ("playbooks", name),
                f"playbook `{name}` is not run by any hook or `playbook.call`",
                "hooks start playbooks when a trigger fires; `opsdsl run --playbook` can still run it by hand",
                key=True,
            )
    read: set[str] = set()
    parsed, syntax = unit.parsed_sites
    if syntax:
        return  # reported elsewhere; unused-param needs every expression
    for item in parsed:
        for expression, _ in item.expressions:
            read.update(r.path[0] for r in expression.references() if r.root == "params" and r.path)
            if any(r.root == "params" and not r.path for r in expression.references()):
                return  # `params` used whole: every param may be read
    for name in pack.params:
        if name not in read:
            yield unit.at(
                "OPS047",
                ("params", name),
                f"param `{name}` is never read",
                "use it as `params.NAME`, or remove it",
                key=True,
            )


def check_retry_idempotency(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for path, _, _, step, _ in iter_steps(pack):
        if step.action == "shell" and step.retry and step.retry.attempts > 1 and step.idempotent is not True:
            yield unit.at(
                "OPS049",
                (*path, "retry"),
                f"shell step `{step.id}` is retried but not marked `idempotent: true`",
                "a retried command may repeat a side effect; mark the step `idempotent: true` if repeating it is safe",
            )


def check_runner_pools(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    """`runner:` on a step with no side effect: the scheduler runs it where the run is
    driven, so the pool would never see it and the pack would say otherwise."""
    pack = unit.model
    if pack.kind != "Pack":
        return
    for path, _, _, step, _ in iter_steps(pack):
        if step.runner is not None and step.action in SCHEDULER_ACTIONS:
            yield unit.at(
                "OPS053",
                (*path, "runner"),
                f"`runner:` only applies to steps with side effects: `{step.action}` step `{step.id}` runs in the "
                "worker that drives the run",
                "remove `runner:`; put it on the steps that act on the other network",
            )
