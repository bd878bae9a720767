"""Semantic checks: what makes a pack wrong (references, cycles, expressions, bounds)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from opsdsl.errors import Diagnostic
from opsdsl.lang.actions import BUILTIN_ACTIONS
from opsdsl.lang.checks.context import Scope, Unit, ancestors, find_cycle, iter_steps, predecessors, roots_for
from opsdsl.lang.durations import format_duration
from opsdsl.lang.expr import RootSpec, check
from opsdsl.lang.expr.functions import regex_error
from opsdsl.lang.expr.nodes import Call, Expression, Literal, walk
from opsdsl.lang.schema import did_you_mean
from opsdsl.lang.sites import STEP, Site

if TYPE_CHECKING:  # either model: pydantic's (compile) or the checked one (lint)
    from opsdsl.lang.model import Pack

Path_ = tuple[str | int, ...]


def check_expressions(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    """Parse every expression; check names, functions, arity, types and step order."""
    parsed, syntax = unit.parsed_sites
    yield from syntax
    pack = unit.model
    preds_cache: dict[tuple[str, bool], dict[str, tuple[str, ...]]] = {}
    roots_cache: dict[tuple[str, str | None], dict[str, RootSpec]] = {}
    problems_cache: dict[tuple[str, str, str | None], list] = {}
    for item in parsed:
        site = item.site
        scope_key = (site.context, site.playbook)
        roots = roots_cache.get(scope_key)
        if roots is None:
            roots = roots_cache[scope_key] = roots_for(site, pack)
        for expression, base in item.expressions:
            problems = problems_cache.get((expression.text, *scope_key))
            if problems is None:
                problems = problems_cache[(expression.text, *scope_key)] = check(expression, roots)
            for problem in problems:
                span = unit.document.expression_span(site.path, base + problem.offset, base + problem.end)
                yield unit.at_span(problem.code, span, problem.message, problem.hint)
            yield from _check_patterns(unit, site, expression, base)
            if site.context == STEP:
                yield from _check_step_order(unit, site, expression, base, preds_cache)


def _re2_hint(reason: str) -> str:
    if reason.startswith(("invalid perl operator", "invalid escape sequence")):
        return "RE2 has no backreferences or lookaround, and writes `\\z` for Python's `\\Z`"
    if reason.startswith(("invalid repetition size", "pattern too large")):
        return "RE2 repeats at most 1000 times (`x{1,1000}`) and caps a pattern's size"
    return "`matches()` patterns are RE2 syntax: https://github.com/google/re2/wiki/Syntax"


def _check_patterns(unit: Unit, site: Site, expression: Expression, base: int) -> Iterator[Diagnostic]:
    """A `matches()` pattern written as a literal that RE2 rejects fails on every event."""
    for node in walk(expression.root):
        if not isinstance(node, Call) or node.function != "matches":
            continue
        arguments = node.args if node.target is None else (node.target, *node.args)
        if len(arguments) != 2:
            continue  # OPS023 reports it
        pattern = arguments[1]
        if not (isinstance(pattern, Literal) and pattern.kind == "string"):
            continue
        reason = regex_error(pattern.value)
        if reason is not None:
            span = unit.document.expression_span(site.path, base + pattern.offset, base + pattern.end)
            yield unit.at_span("OPS026", span, f"invalid RE2 pattern: {reason}", _re2_hint(reason))


def _check_step_order(unit: Unit, site: Site, expression, base: int, cache: dict) -> Iterator[Diagnostic]:
    assert unit.model.kind == "Pack" and site.playbook is not None and site.step is not None
    playbook = unit.model.playbooks[site.playbook]
    main_ids = {s.id for s in playbook.steps}
    section = playbook.finally_ if site.in_finally else playbook.steps
    refs = [r for r in expression.references() if r.root == "steps" and r.path]
    if not refs:
        return
    key = (site.playbook, site.in_finally)
    if key not in cache:
        cache[key] = predecessors(section)
    allowed = ancestors(cache[key], site.step)
    if site.in_finally:
        allowed |= main_ids
    if site.compensation:
        allowed.add(site.step)
    for ref in refs:
        target = ref.path[0]
        if target in allowed or target not in {s.id for s in (*playbook.steps, *playbook.finally_)}:
            continue
        span = unit.document.expression_span(site.path, base + ref.offset, base + ref.end)
        if target == site.step:
            message = f"step `{site.step}` reads its own result before it has one"
        else:
            message = f"step `{site.step}` reads `steps.{target}`, which is not guaranteed to have run before it"
        yield unit.at_span(
            "OPS025",
            span,
            message,
            f"add `{target}` to `needs:` of `{site.step}`" if target != site.step else None,
        )


# ---------------------------------------------------------------- references and structure


def check_duplicate_ids(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    seen_policies: dict[str, int] = {}
    organisation = {p.id for p in scope.policies}
    for i, policy in enumerate(pack.policies):
        if pack.kind == "Pack" and policy.id in organisation:
            yield unit.at(
                "OPS030",
                ("policies", i, "id"),
                f"policy id `{policy.id}` is already used by an organisation policy pack",
                "policy ids must be unique so every decision names one policy",
            )
            continue
        if policy.id in seen_policies:
            yield unit.at(
                "OPS030",
                ("policies", i, "id"),
                f"duplicate policy id `{policy.id}`",
                f"first used by policies[{seen_policies[policy.id]}]",
            )
        else:
            seen_policies[policy.id] = i
    if pack.kind != "Pack":
        return
    for name, playbook in pack.playbooks.items():
        seen: dict[str, Path_] = {}
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            for i, step in enumerate(steps):
                path = ("playbooks", name, section, i, "id")
                if step.id in seen:
                    first = unit.document.span(seen[step.id])
                    yield unit.at(
                        "OPS030",
                        path,
                        f"duplicate step id `{step.id}` in playbook `{name}`",
                        f"first defined at line {first.line}",
                    )
                else:
                    seen[step.id] = path


def check_references(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for name, hook in pack.hooks.items():
        if hook.trigger not in pack.triggers:
            yield unit.at(
                "OPS032",
                ("hooks", name, "trigger"),
                f"hook `{name}` uses unknown trigger `{hook.trigger}`",
                did_you_mean(hook.trigger, sorted(pack.triggers)),
            )
        if hook.run not in pack.playbooks:
            yield unit.at(
                "OPS033",
                ("hooks", name, "run"),
                f"hook `{name}` runs unknown playbook `{hook.run}`",
                did_you_mean(hook.run, sorted(pack.playbooks)),
            )
    for path, _, playbook, step, in_finally in iter_steps(pack):
        section = playbook.finally_ if in_finally else playbook.steps
        ids = [s.id for s in section]
        for j, need in enumerate(step.needs or ()):
            if need not in ids:
                where = "`finally:`" if in_finally else "the playbook's steps"
                other = [s.id for s in (playbook.steps if in_finally else playbook.finally_)]
                hint = did_you_mean(need, ids) or (
                    f"`{need}` is in another section; `needs:` links steps within {where}" if need in other else None
                )
                yield unit.at("OPS031", (*path, "needs", j), f"step `{step.id}` needs unknown step `{need}`", hint)
        for action, at in (
            (step.action, (*path, "action")),
            *(((step.compensate.action, (*path, "compensate", "action")),) if step.compensate else ()),
        ):
            if not scope.is_action(action):
                yield unit.at(
                    "OPS036",
                    at,
                    f"unknown action `{action}`",
                    did_you_mean(action, list(BUILTIN_ACTIONS))
                    or "plugin actions come from the `opsdsl.actions` entry-point group; is the plugin installed?",
                )
        if step.action == "playbook.call":
            target = step.with_.get("playbook")
            if isinstance(target, str) and target not in pack.playbooks:
                yield unit.at(
                    "OPS033",
                    (*path, "with", "playbook"),
                    f"`playbook.call` names unknown playbook `{target}`",
                    did_you_mean(target, sorted(pack.playbooks)),
                )

    cycle = find_cycle(call_graph(pack), list(pack.playbooks))
    if cycle:
        callee = cycle[1] if len(cycle) > 1 else cycle[0]
        path = next(
            p
            for p, pb, _, s, _ in iter_steps(pack)
            if pb == cycle[0] and s.action == "playbook.call" and s.with_.get("playbook") == callee
        )
        chain = " calls ".join(f"`{c}`" for c in (*cycle, cycle[0]))
        yield unit.at(
            "OPS034",
            (*path, "with", "playbook"),
            f"playbooks call each other in a cycle: {chain}",
            "a playbook may not call itself, directly or through others",
        )


def call_graph(pack: Pack) -> dict[str, tuple[str, ...]]:
    """Each playbook's `playbook.call` targets (within the pack)."""
    graph: dict[str, list[str]] = {name: [] for name in pack.playbooks}
    for _, name, _, step, _ in iter_steps(pack):
        target = step.with_.get("playbook") if step.action == "playbook.call" else None
        if isinstance(target, str) and target in pack.playbooks and target not in graph[name]:
            graph[name].append(target)
    return {name: tuple(targets) for name, targets in graph.items()}


def check_cycles(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for name, playbook in pack.playbooks.items():
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            order = [s.id for s in steps]
            cycle = find_cycle(predecessors(steps), order)
            if not cycle:
                continue
            index = order.index(cycle[0])
            path = ("playbooks", name, section, index)
            at = (*path, "needs") if steps[index].needs is not None else (*path, "id")
            chain = " needs ".join(f"`{s}`" for s in (*cycle, cycle[0]))
            yield unit.at(
                "OPS034",
                at,
                f"dependency cycle in playbook `{name}`: {chain}",
                "remove one of these `needs:` entries",
                key=steps[index].needs is not None,
            )


_LIMITS_MS = {
    "timeout": 24 * 3_600_000,
    "cooldown": 7 * 86_400_000,
    "within": 24 * 3_600_000,
    "for": 24 * 3_600_000,
    "initial": 3_600_000,
    "max": 24 * 3_600_000,
    "duration": 24 * 3_600_000,
    "playbook timeout": 7 * 86_400_000,
}


def check_durations(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    def bounded(path: Path_, value: int | None, kind: str) -> Iterator[Diagnostic]:
        if value is None:
            return
        limit = _LIMITS_MS[kind]
        if value == 0:
            yield unit.at(
                "OPS038", path, f"`{kind.split()[-1]}` of zero", "use a positive duration, or leave the key out"
            )
        elif value > limit:
            yield unit.at(
                "OPS038",
                path,
                f"`{kind.split()[-1]}` of {format_duration(value)} is longer than the limit of {format_duration(limit)}",
            )

    pack = unit.model
    if pack.kind != "Pack":
        return
    for name, trigger in pack.triggers.items():
        if trigger.threshold:
            yield from bounded(("triggers", name, "threshold", "within"), trigger.threshold.within, "within")
        yield from bounded(("triggers", name, "for"), trigger.for_, "for")
    for name, hook in pack.hooks.items():
        yield from bounded(("hooks", name, "cooldown"), hook.cooldown, "cooldown")
    for name, playbook in pack.playbooks.items():
        yield from bounded(("playbooks", name, "timeout"), playbook.timeout, "playbook timeout")
    for path, _, _, step, _ in iter_steps(pack):
        yield from bounded((*path, "timeout"), step.timeout, "timeout")
        if step.compensate is not None:
            yield from bounded((*path, "compensate", "timeout"), step.compensate.timeout, "timeout")
        for retry, at in (
            (step.retry, (*path, "retry")),
            (step.compensate.retry if step.compensate else None, (*path, "compensate", "retry")),
        ):
            if retry is None:
                continue
            yield from bounded((*at, "initial"), retry.initial, "initial")
            yield from bounded((*at, "max"), retry.max, "max")
            if retry.initial > retry.max:
                yield unit.at(
                    "OPS038",
                    (*at, "initial"),
                    f"retry `initial` ({format_duration(retry.initial)}) is longer than `max` ({format_duration(retry.max)})",
                )
        if step.action == "wait" and isinstance(step.with_.get("duration"), str):
            from opsdsl.lang.durations import parse_duration

            yield from bounded((*path, "with", "duration"), parse_duration(step.with_["duration"]), "duration")


def check_defaults(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if pack.kind != "Pack":
        return
    for name, param in pack.params.items():
        path = ("params", name)
        if not param.required and not value_matches(param.default, param.type):
            yield unit.at("OPS037", (*path, "default"), f"default of param `{name}` is not {_article(param.type)}")
        elif param.enum is not None and not param.required and param.default not in param.enum:
            yield unit.at("OPS037", (*path, "default"), f"default of param `{name}` is not one of its `enum` values")
    for pb_name, playbook in pack.playbooks.items():
        for name, spec in playbook.inputs.items():
            if not spec.required and not value_matches(spec.default, spec.type):
                yield unit.at(
                    "OPS037",
                    ("playbooks", pb_name, "inputs", name, "default"),
                    f"default of input `{name}` is not {_article(spec.type)}",
                )


def value_matches(value: object, kind: str) -> bool:
    """Whether a YAML value fits a declared param/input type."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list)
    if kind == "map":
        return isinstance(value, dict)
    if kind == "duration":
        from opsdsl.lang.durations import parse_duration

        try:
            parse_duration(value)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True
    return False


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"
