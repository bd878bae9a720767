"""Checks of a test file against the compiled pack, before anything runs.

Each check is a small named function `check_X(context) -> list[(path, Diagnostic)]`; the
path says which case a problem belongs to, so one bad case does not stop the others.
They catch tests that could never pass or never mean what they say: names the pack does
not have (OPS062), mocks of steps that are not mockable (OPS063), expectations no run can
meet (OPS064), values the run would refuse (OPS065), repeated case names (OPS066).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from opsdsl.errors import Diagnostic, EvalError, OpsdslError
from opsdsl.lang.schema import did_you_mean, type_name

from .clock import parse_iso
from .loading import located
from .model import COMPENSATE, Case, Path_, TestFile, split_key

Found = list[tuple[Path_, Diagnostic]]
SCHEDULER_ACTIONS = frozenset({"wait", "approval", "assert", "playbook.call", "report.rca"})
UNKNOWN_ACTION_POLICY = "opsdsl-known-actions"
_SECTION_RANK = {"steps": 0, "compensation": 1, "finally": 2}


@dataclass
class Context:
    test: TestFile
    case: Case
    plan: dict[str, Any]  # the plan payload

    def error(self, code: str, path: Path_, message: str, hint: str | None = None, at: str = "value"):
        return (path, located(self.test.document, code, path, message, hint, at))

    @cached_property
    def playbooks(self) -> list[str]:
        """The playbooks the case's runs can be of: its `playbook`, else those hooks run."""
        if self.case.playbook is not None:
            return [self.case.playbook] if self.case.playbook in self.plan["playbooks"] else []
        return sorted({hook["run"] for hook in (self.plan.get("hooks") or {}).values()})

    def node(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """The plan node a step key names, or None and why not."""
        playbook, step = split_key(key)
        if playbook is not None and playbook not in self.plan["playbooks"]:
            return None, f"the pack has no playbook `{playbook}`" + _maybe(playbook, self.plan["playbooks"])
        names = [playbook] if playbook is not None else self.playbooks
        known: list[str] = []
        for name in names:
            nodes = {n["id"]: n for n in self.plan["playbooks"][name]["nodes"]}
            if step in nodes:
                return nodes[step], None
            known += nodes
        where = f"playbook `{names[0]}`" if len(names) == 1 else "the playbooks hooks run"
        if not names:
            where = "the case's playbook"
        return None, f"{where} has no step `{step}`" + _maybe(step, known)

    def candidates(self, key: str) -> list[dict[str, Any]]:
        """Every node the key can name (an event case's hooks may run several playbooks)."""
        playbook, step = split_key(key)
        books = [self.plan["playbooks"][n] for n in ([playbook] if playbook else self.playbooks)]
        return [node for book in books for node in book["nodes"] if node["id"] == step]


def _maybe(word: str, choices: Any) -> str:
    hint = did_you_mean(word, sorted(choices))
    return f"; {hint}" if hint else ""


def as_text(value: Any) -> str:
    """A typed YAML value as `--param` text, so values get exactly `opsdsl run`'s conversion."""
    return value if isinstance(value, str) else json.dumps(value)


# ---- what starts the run ---------------------------------------------------------------


def check_target(ctx: Context) -> Found:
    case, playbooks = ctx.case, ctx.plan["playbooks"]
    if case.playbook is not None and case.playbook not in playbooks:
        message = f"the pack has no playbook `{case.playbook}`" + _maybe(case.playbook, playbooks)
        return [ctx.error("OPS062", (*case.path, "playbook"), message, f"it has: {', '.join(playbooks)}")]
    return []


_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "map": lambda v: isinstance(v, dict),
    "duration": lambda v: isinstance(v, str),
}


def _typed(ctx: Context, values: dict[str, Any], declared: dict[str, Any], where: str, owner: str) -> Found:
    found: Found = []
    for name, value in values.items():
        path = (*ctx.case.path, where, name)
        spec = declared.get(name)
        if spec is None:
            message = f"{owner} declares no {where[:-1]} `{name}`" + _maybe(name, declared)
            found.append(ctx.error("OPS062", path, message, at="key"))
        elif not _TYPES.get(spec["type"], lambda v: True)(value):
            message = (
                f"{where[:-1]} `{name}` takes {_A[spec['type']]}, not {_A[type_name(value)]} `{json.dumps(value)}`"
            )
            hint = None
            if isinstance(value, str) and spec["type"] != "string":
                hint = f"write it unquoted: {value}" if _looks_typed(value, spec["type"]) else None
            found.append(ctx.error("OPS065", path, message, hint))
        elif spec.get("enum") and value not in spec["enum"]:
            listed = ", ".join(json.dumps(v) for v in spec["enum"])
            found.append(ctx.error("OPS065", path, f"{where[:-1]} `{name}` must be one of {listed}"))
    return found


_A = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "list": "a list",
    "array": "a list",
    "map": "a map",
    "object": "a map",
    "duration": "a duration",
    "null": "null",
}


def _looks_typed(text: str, kind: str) -> bool:
    from opsdsl.runtime import runner

    try:
        runner.coerce(text, kind, "")
    except OpsdslError:
        return False
    return True


def check_params(ctx: Context) -> Found:
    declared = ctx.plan.get("params") or {}
    found = _typed(ctx, ctx.case.params, declared, "params", "the pack")
    for name, spec in declared.items():
        if spec.get("default") is None and name not in ctx.case.params and name not in ctx.case.secrets:
            message = f"param `{name}` has no default: give it under `params:`"
            found.append(ctx.error("OPS065", (*ctx.case.path, "params"), message))
    return found


def check_inputs(ctx: Context) -> Found:
    """Inputs given exist and are typed; every other input gets a value from the event's
    `from:` or a default, as `resolve_inputs` will need at run time."""
    case = ctx.case
    if case.by_event:
        if case.inputs:
            message = "`inputs` need `playbook:`; runs started by hooks take their inputs from the event"
            return [ctx.error("OPS064", (*case.path, "inputs"), message, at="key")]
        return []
    if not ctx.playbooks:
        return []
    declared = ctx.plan["playbooks"][case.playbook].get("inputs") or {}
    found = _typed(ctx, case.inputs, declared, "inputs", f"playbook `{case.playbook}`")
    params = _params(ctx)
    for name, spec in declared.items():
        if name in case.inputs or spec.get("default") is not None:
            continue
        source, why = spec.get("from"), ""
        if source and case.event and params is not None:
            try:
                _evaluate(source, {"event": case.event, "params": params})
                continue
            except EvalError as error:
                why = f" (`{source}`: {error.message})"
        message = f"input `{name}` has no value{why}: give it under `inputs:`"
        if source:
            message += f", or an `event:` that carries it (`from: {source}`)"
        found.append(ctx.error("OPS065", (*case.path, "inputs" if case.inputs else "playbook"), message))
    return found


def _params(ctx: Context) -> dict[str, Any] | None:
    """The params a run would get, or None if they have problems of their own."""
    from opsdsl.runtime import runner

    from .mocks import RehearsalSecrets

    try:
        given = {k: as_text(v) for k, v in ctx.case.params.items()}
        return runner.resolve_params(ctx.plan, given, RehearsalSecrets(ctx.case.secrets))
    except OpsdslError:
        return None


def _evaluate(source: str, activation: dict[str, Any]) -> Any:
    from opsdsl.lang.expr import compile_expr, parse

    return compile_expr(parse(source))(activation)


def check_clock(ctx: Context) -> Found:
    if ctx.case.clock is None:
        return []
    try:
        parse_iso(ctx.case.clock)
    except ValueError as error:
        return [ctx.error("OPS065", (*ctx.case.path, "clock"), f"`{ctx.case.clock}` is not a time: {error}")]
    return []


def check_events(ctx: Context) -> Found:
    found: Found = []
    last = 0.0
    for item in ctx.case.events:
        if item.at is not None and item.at < last:
            message = "events arrive in order: this offset is earlier than the previous event's"
            found.append(ctx.error("OPS065", (*item.path, "at"), message))
        last = max(last, item.at or 0.0)
    return found


# ---- mocks and approvals ------------------------------------------------------------------


def check_mocks(ctx: Context) -> Found:
    found: Found = []
    for key, mock in ctx.case.mocks.items():
        node, why = ctx.node(key)
        if node is None:
            found.append(ctx.error("OPS062", mock.path, f"mock for an unknown step: {why}", at="key"))
            continue
        if node["action"] in SCHEDULER_ACTIONS:
            article = "an" if node["action"][0] in "aeiou" else "a"
            message = (
                f"`{key}` is {article} `{node['action']}` step, which the scheduler runs itself: it cannot be mocked"
            )
            hint = {"wait": "waits take no real time in a rehearsal (the clock is virtual)"}.get(node["action"])
            hint = hint or ("answer it under `approvals:`" if node["action"] == "approval" else None)
            found.append(ctx.error("OPS063", mock.path, message, hint, at="key"))
            continue
        if node["timeout"] is None and any(a.timeout for a in mock.attempts):
            message = f"`{key}` has no timeout, so an attempt that never answers would never end"
            found.append(ctx.error("OPS063", mock.path, message, "give the step a `timeout:`", at="key"))
    return found


def check_approvals(ctx: Context) -> Found:
    found: Found = []
    gating = any(p["effect"] == "require_approval" for p in ctx.plan.get("policies") or ())
    for key, answers in ctx.case.approvals.items():
        path = (*ctx.case.path, "approvals", key)
        node, why = ctx.node(key)
        if node is None:
            found.append(ctx.error("OPS062", path, f"answers for an unknown step: {why}", at="key"))
            continue
        if node["action"] != "approval" and not gating:
            message = f"`{key}` never waits for people: it is not an approval step and no policy requires approval"
            found.append(ctx.error("OPS064", path, message, at="key"))
            continue
        declared = ((node.get("with") or {}).get("inputs") or {}) if node["action"] == "approval" else {}
        for answer in answers:
            for name in answer.answers:
                if name not in declared:
                    message = f"`{key}` asks for no input `{name}`" + _maybe(name, declared)
                    found.append(ctx.error("OPS062", (*answer.path, "answers", name), message, at="key"))
    return found


# ---- expectations --------------------------------------------------------------------------


def check_event_expectations(ctx: Context) -> Found:
    found: Found = []
    expect, base = ctx.case.expect, (*ctx.case.path, "expect")
    names = {"triggers": ctx.plan.get("triggers") or {}, "hooks": ctx.plan.get("hooks") or {}}
    names["suppressed"] = names["hooks"]
    for key, known in names.items():
        if key not in expect:
            continue
        if not ctx.case.by_event:
            message = (
                f"`{key}`: this case runs playbook `{ctx.case.playbook}` directly; triggers and hooks are not consulted"
            )
            found.append(ctx.error("OPS064", (*base, key), message, "send an `event:` without `playbook:`", at="key"))
            continue
        what = "trigger" if key == "triggers" else "hook"
        for i, name in enumerate(expect[key]):
            if name not in known:
                message = f"the pack has no {what} `{name}`" + _maybe(name, known)
                found.append(ctx.error("OPS062", (*base, key, i), message))
    return found


def _expected_node(ctx: Context, key: str, path: Path_, at: str = "value") -> tuple[dict | None, Found]:
    """The node an expectation names; expectations are about the case's own run, so a
    `PLAYBOOK/STEP` key (a sub-run's step) is refused."""
    node, why = ctx.node(key)
    if node is None:
        return None, [ctx.error("OPS062", path, why, at=at)]
    if "/" in key:
        step = key.rpartition("/")[2]
        message = f"expectations are about the case's own run: `{key}` is a step of a sub-run"
        hint = f"write `{step}` if you mean the run's own step; sub-run steps are not checked"
        return None, [ctx.error("OPS064", path, message, hint, at=at)]
    return node, []


def _constant_when(node: dict[str, Any]) -> bool | None:
    """True or False for a `when:` that reads no data (lint's OPS035/OPS048), else None."""
    from opsdsl.lang.expr import compile_expr, parse

    if not node.get("when"):
        return None
    try:
        expression = parse(node["when"])
        if expression.references():
            return None
        value = compile_expr(expression)({})
    except (EvalError, OpsdslError):
        return None
    return value if isinstance(value, bool) else None


def _flat(started: list) -> list[tuple[int, int, str]]:
    """(group index, index within it, key) of each entry of `started`."""
    return [
        (g, k, key)
        for g, item in enumerate(started)
        for k, key in enumerate(item if isinstance(item, list) else [item])
    ]


class _Order:
    """Which nodes must start before which, whatever happens at run time."""

    def __init__(self, playbook: dict[str, Any]) -> None:
        self.nodes = {n["id"]: n for n in playbook["nodes"]}
        preds: dict[str, set[str]] = {n: set() for n in self.nodes}
        for edge in playbook["edges"]:
            if edge["kind"] in ("needs", "sequence"):
                preds[edge["to"]].add(edge["from"])
        self.ancestors: dict[str, set[str]] = {}
        for node in self.nodes:
            seen, stack = set(), list(preds[node])
            while stack:
                item = stack.pop()
                if item not in seen:
                    seen.add(item)
                    stack.extend(preds[item])
            self.ancestors[node] = seen

    def why_before(self, first: str, then: str) -> str | None:
        """Why `first` must start before `then`, or None if nothing says so."""
        if first in self.ancestors.get(then, ()):
            return f"`{then}` needs `{first}`"
        a, b = self.nodes[first]["section"], self.nodes[then]["section"]
        if _SECTION_RANK[a] < _SECTION_RANK[b]:
            later = {"compensation": "compensations start", "finally": "`finally` steps start"}[b]
            return f"{later} only after the {'main steps' if a == 'steps' else 'compensations'} have ended"
        return None


def check_started(ctx: Context) -> Found:
    started = ctx.case.expect.get("started")
    if started is None:
        return []
    base = (*ctx.case.path, "expect", "started")
    found: Found = []
    entries = _flat(started)
    seen: dict[str, Path_] = {}
    resolved: list[tuple[int, str, Path_]] = []
    for g, k, key in entries:
        path = (*base, g, k) if isinstance(started[g], list) else (*base, g)
        node, problems = _expected_node(ctx, key, path)
        if node is None:
            found += problems
            continue
        if key in seen:
            message = f"`{key}` is listed twice: a step starts once (retries are attempts of that one start)"
            found.append(ctx.error("OPS064", path, message))
            continue
        seen[key] = path
        if all(_constant_when(n) is False for n in ctx.candidates(key)):
            found.append(ctx.error("OPS064", path, f"`{key}` never starts: its `when:` is always false"))
        if len(ctx.playbooks) == 1:
            resolved.append((g, key, path))
    if len(ctx.playbooks) != 1 or found:
        return found
    order = _Order(ctx.plan["playbooks"][ctx.playbooks[0]])
    reported: set[str] = set()
    for i, (g1, early, early_path) in enumerate(resolved):
        for g2, late, late_path in resolved[i + 1 :]:
            if early in reported or late in reported:
                continue
            if g1 == g2:
                reason = order.why_before(late, early) or order.why_before(early, late)
                if reason is not None:
                    message = f"`{early}` and `{late}` cannot start together: {reason}"
                    found.append(ctx.error("OPS064", late_path, message))
                    reported.add(late)
            elif (reason := order.why_before(late, early)) is not None:
                message = f"`{early}` cannot start before `{late}`: {reason}"
                found.append(ctx.error("OPS064", early_path, message))
                reported.add(early)
    return found


def check_step_lists(ctx: Context) -> Found:
    found: Found = []
    expect, base = ctx.case.expect, (*ctx.case.path, "expect")
    started = {key for _, _, key in _flat(expect.get("started") or [])}
    for key_name in ("skipped", "compensated"):
        for i, key in enumerate(expect.get(key_name) or []):
            path = (*base, key_name, i)
            node, problems = _expected_node(ctx, key, path)
            nodes = ctx.candidates(key) if node is not None else []
            if node is None:
                found += problems
            elif key_name == "skipped" and not any(n.get("when") for n in nodes):
                found.append(ctx.error("OPS064", path, f"`{key}` has no `when:`, so it is never skipped"))
            elif key_name == "skipped" and all(_constant_when(n) is True for n in nodes):
                found.append(ctx.error("OPS064", path, f"`{key}` is never skipped: its `when:` is always true"))
            elif key_name == "skipped" and key in started:
                found.append(ctx.error("OPS064", path, f"`{key}` cannot both start and be skipped"))
            elif key_name == "compensated" and (
                key.endswith(COMPENSATE) or not any(n.get("compensation") for n in nodes)
            ):
                message = f"`{key}` has no `compensate:`, so nothing can undo it"
                if key.endswith(COMPENSATE):
                    message = f"list the step, not its compensation: `{key[: -len(COMPENSATE)]}`"
                found.append(ctx.error("OPS064", path, message))
    return found


def check_keyed_expectations(ctx: Context) -> Found:
    found: Found = []
    expect, base = ctx.case.expect, (*ctx.case.path, "expect")
    policies = {p["id"] for p in ctx.plan.get("policies") or ()} | {UNKNOWN_ACTION_POLICY}
    for key_name in ("decisions", "outputs"):
        for key, value in (expect.get(key_name) or {}).items():
            path = (*base, key_name, key)
            node, problems = _expected_node(ctx, key, path, at="key")
            if node is None:
                found += problems
                continue
            policy = value.get("policy") if isinstance(value, dict) else None
            if policy is not None and policy not in policies:
                message = f"no policy `{policy}` is in scope" + _maybe(policy, policies)
                found.append(ctx.error("OPS062", (*path, "policy"), message))
    return found


def check_case_names(test: TestFile) -> Found:
    found: Found = []
    seen: dict[str, int] = {}
    for case in test.cases:
        if case.name in seen:
            first = test.span(("cases", seen[case.name], "name"))
            message = f"two cases are named `{case.name}` (the first at line {first.line})"
            path = (*case.path, "name")
            found.append(
                (path, located(test.document, "OPS066", path, message, "case names select (-k) and report cases"))
            )
        else:
            seen[case.name] = case.index
    return found


CASE_CHECKS: tuple[Callable[[Context], Found], ...] = (
    check_target,
    check_params,
    check_inputs,
    check_clock,
    check_events,
    check_mocks,
    check_approvals,
    check_event_expectations,
    check_started,
    check_step_lists,
    check_keyed_expectations,
)


def check_case(test: TestFile, case: Case, plan: dict[str, Any]) -> list[Diagnostic]:
    """Every problem of one case, sorted by position; the target first (the rest needs it)."""
    ctx = Context(test, case, plan)
    first = check_target(ctx)
    if first:
        return [d for _, d in first]
    found = [d for check in CASE_CHECKS[1:] for _, d in check(ctx)]
    return sorted(set(found), key=Diagnostic.sort_key)
