"""Check stage: semantic rules over checked models, each a small named function.

A rule reads one `Unit` (a pack's document and model) and the `Scope` around it (the
policy packs linted with it) and returns diagnostics. `SEMANTIC_CHECKS` find what makes a
pack wrong; `REVIEW_CHECKS` find what a careful reviewer would flag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from opsdsl.durations import format_duration
from opsdsl.errors import Diagnostic, EvalError, Span
from opsdsl.expr import ExprSyntaxError, RootSpec, check, compile_expr, parse, parse_template
from opsdsl.loader import Document
from opsdsl.model import BUILTIN_ACTIONS, NETWORK_ACTIONS, AnyPack, Pack, Playbook, Policy, PolicyPack, Step
from opsdsl.rules import rule
from opsdsl.schema import did_you_mean
from opsdsl.sites import HOOK, INPUT, POLICY, STEP, TRIGGER, Site, iter_sites

Path_ = tuple[str | int, ...]


@dataclass
class Unit:
    """One pack file as the checks see it."""

    document: Document
    model: AnyPack
    _parsed: tuple[list[ParsedSite], list[Diagnostic]] | None = field(default=None, repr=False)

    @property
    def parsed_sites(self) -> tuple[list[ParsedSite], list[Diagnostic]]:
        """Every expression site, parsed once for all the rules that read expressions."""
        if self._parsed is None:
            self._parsed = parse_sites(self)
        return self._parsed

    def at(self, code: str, path: Path_, message: str, hint: str | None = None, *, key: bool = False) -> Diagnostic:
        span = self.document.key_span(path) if key else self.document.span(path)
        return Diagnostic(code, rule(code).severity, message, span, hint)

    def at_span(self, code: str, span: Span, message: str, hint: str | None = None) -> Diagnostic:
        return Diagnostic(code, rule(code).severity, message, span, hint)


@dataclass
class Scope:
    """What surrounds a pack: the organisation's policies linted alongside it."""

    policies: tuple[Policy, ...] = ()
    plugin_actions: frozenset[str] | None = None
    _plugins_loaded: bool = field(default=False, repr=False)

    def is_action(self, name: str) -> bool:
        if name in BUILTIN_ACTIONS:
            return True
        if self.plugin_actions is None:
            self.plugin_actions = _plugin_actions()
        return name in self.plugin_actions


def _plugin_actions() -> frozenset[str]:
    from importlib.metadata import entry_points

    return frozenset(ep.name for ep in entry_points(group="opsdsl.actions"))


Rule = Callable[[Unit, Scope], Iterable[Diagnostic]]

# ---------------------------------------------------------------- step graphs


def predecessors(steps: tuple[Step, ...]) -> dict[str, tuple[str, ...]]:
    """Each step's direct dependencies: `needs:`, or the previous step when omitted."""
    out: dict[str, tuple[str, ...]] = {}
    for i, step in enumerate(steps):
        if step.needs is not None:
            out.setdefault(step.id, tuple(step.needs))
        else:
            out.setdefault(step.id, (steps[i - 1].id,) if i else ())
    return out


def ancestors(preds: Mapping[str, tuple[str, ...]], step_id: str) -> set[str]:
    seen: set[str] = set()
    stack = list(preds.get(step_id, ()))
    while stack:
        current = stack.pop()
        if current in seen or current not in preds:
            continue
        seen.add(current)
        stack.extend(preds[current])
    return seen


def find_cycle(preds: Mapping[str, tuple[str, ...]], order: list[str]) -> list[str] | None:
    """A dependency cycle `[a, b, c]` (a needs b, b needs c, c needs a), starting at its
    first step in document order."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for dep in preds.get(node, ()):
            if dep not in preds:
                continue
            if state.get(dep) == 1:
                return trail[trail.index(dep) :]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        trail.pop()
        state[node] = 2
        return None

    for node in order:
        if node not in state:
            cycle = visit(node)
            if cycle:
                i = cycle.index(min(cycle, key=order.index))
                return cycle[i:] + cycle[:i]
    return None


# ---------------------------------------------------------------- expressions

_NUMBER = RootSpec("number")
_STRING = RootSpec("string")
_DYN = RootSpec("dyn")
_STEP_RESULT = RootSpec(
    "map",
    fields={"outputs": _DYN, "status": _STRING, "error": _DYN, "attempts": _NUMBER},
    open=False,
)
_RUN = RootSpec(
    "map",
    fields={
        "id": _STRING,
        "pack": _STRING,
        "playbook": _STRING,
        "severity": _STRING,
        "status": _STRING,
        "incident_id": _STRING,
        "started_at": _NUMBER,
        "dry_run": RootSpec("bool"),
    },
    open=False,
)
_TYPE_SPECS = {
    "string": _STRING,
    "number": _NUMBER,
    "integer": _NUMBER,
    "duration": _NUMBER,
    "boolean": RootSpec("bool"),
    "list": RootSpec("list"),
    "map": RootSpec("map"),
}
_POLICY_STEP = RootSpec(
    "map",
    fields={
        "id": _STRING,
        "name": _STRING,
        "action": _STRING,
        "risk": _STRING,
        "with": _DYN,
        "timeout": _NUMBER,
        "compensation": RootSpec("bool"),
        "idempotent": RootSpec("bool"),
    },
    open=False,
)
_POLICY_PLAYBOOK = RootSpec("map", fields={"name": _STRING, "severity": _STRING, "pack": _STRING}, open=False)


def _params_spec(pack: AnyPack) -> RootSpec:
    if isinstance(pack, PolicyPack):
        return _DYN  # organisation policies see each pack's own params
    return RootSpec("map", fields={k: _TYPE_SPECS[p.type] for k, p in pack.params.items()}, open=False)


def roots_for(site: Site, pack: AnyPack) -> dict[str, RootSpec]:
    params = _params_spec(pack)
    if site.context == TRIGGER:
        return {"event": _DYN, "params": params, "now": _NUMBER}
    if site.context in (HOOK, INPUT):
        return {"event": _DYN, "params": params}
    if site.context == POLICY:
        return {
            "run": _RUN,
            "playbook": _POLICY_PLAYBOOK,
            "step": _POLICY_STEP,
            "event": _DYN,
            "params": params,
            "now": _NUMBER,
        }
    assert isinstance(pack, Pack) and site.playbook is not None
    playbook = pack.playbooks[site.playbook]
    step_ids = [s.id for s in (*playbook.steps, *playbook.finally_)]
    return {
        "params": params,
        "inputs": RootSpec("map", fields={k: _TYPE_SPECS[i.type] for k, i in playbook.inputs.items()}, open=False),
        "steps": RootSpec("map", fields=dict.fromkeys(step_ids, _STEP_RESULT), open=False),
        "event": _DYN,
        "run": _RUN,
        "secrets": RootSpec("map"),
        "now": _NUMBER,
    }


@dataclass(frozen=True)
class ParsedSite:
    site: Site
    expressions: tuple  # ((Expression, offset in the site's text), ...)


def parse_sites(unit: Unit) -> tuple[list[ParsedSite], list[Diagnostic]]:
    parsed: list[ParsedSite] = []
    diagnostics: list[Diagnostic] = []
    for site in iter_sites(unit.model):
        try:
            if site.template:
                expressions = tuple(parse_template(site.text).expressions)
            else:
                expressions = ((parse(site.text), 0),)
        except ExprSyntaxError as exc:
            span = unit.document.expression_span(site.path, exc.offset)
            diagnostics.append(unit.at_span("OPS020", span, exc.message, exc.hint))
            continue
        parsed.append(ParsedSite(site, expressions))
    return parsed, diagnostics


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
            if site.context == STEP:
                yield from _check_step_order(unit, site, expression, base, preds_cache)


def _check_step_order(unit: Unit, site: Site, expression, base: int, cache: dict) -> Iterator[Diagnostic]:
    assert isinstance(unit.model, Pack) and site.playbook is not None and site.step is not None
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


def _steps(pack: Pack) -> Iterator[tuple[Path_, str, Playbook, Step, bool]]:
    for name, playbook in pack.playbooks.items():
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            for i, step in enumerate(steps):
                yield ("playbooks", name, section, i), name, playbook, step, section == "finally"


def check_duplicate_ids(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    seen_policies: dict[str, int] = {}
    for i, policy in enumerate(pack.policies):
        if policy.id in seen_policies:
            yield unit.at("OPS030", ("policies", i, "id"), f"duplicate policy id `{policy.id}`", f"first used by policies[{seen_policies[policy.id]}]")
        else:
            seen_policies[policy.id] = i
    if not isinstance(pack, Pack):
        return
    for name, playbook in pack.playbooks.items():
        seen: dict[str, Path_] = {}
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            for i, step in enumerate(steps):
                path = ("playbooks", name, section, i, "id")
                if step.id in seen:
                    first = unit.document.span(seen[step.id])
                    yield unit.at("OPS030", path, f"duplicate step id `{step.id}` in playbook `{name}`", f"first defined at line {first.line}")
                else:
                    seen[step.id] = path


def check_references(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for name, hook in pack.hooks.items():
        if hook.trigger not in pack.triggers:
            yield unit.at("OPS032", ("hooks", name, "trigger"), f"hook `{name}` uses unknown trigger `{hook.trigger}`", did_you_mean(hook.trigger, sorted(pack.triggers)))
        if hook.run not in pack.playbooks:
            yield unit.at("OPS033", ("hooks", name, "run"), f"hook `{name}` runs unknown playbook `{hook.run}`", did_you_mean(hook.run, sorted(pack.playbooks)))
    for path, name, playbook, step, in_finally in _steps(pack):
        section = playbook.finally_ if in_finally else playbook.steps
        ids = [s.id for s in section]
        for j, need in enumerate(step.needs or ()):
            if need not in ids:
                where = "`finally:`" if in_finally else "the playbook's steps"
                other = [s.id for s in (playbook.steps if in_finally else playbook.finally_)]
                hint = did_you_mean(need, ids) or (f"`{need}` is in another section; `needs:` links steps within {where}" if need in other else None)
                yield unit.at("OPS031", (*path, "needs", j), f"step `{step.id}` needs unknown step `{need}`", hint)
        for action, at in ((step.action, (*path, "action")), *(((step.compensate.action, (*path, "compensate", "action")),) if step.compensate else ())):
            if not scope.is_action(action):
                yield unit.at("OPS036", at, f"unknown action `{action}`", did_you_mean(action, list(BUILTIN_ACTIONS)) or "plugin actions come from the `opsdsl.actions` entry-point group; is the plugin installed?")
        if step.action == "playbook.call":
            target = step.with_.get("playbook")
            if isinstance(target, str) and target not in pack.playbooks:
                yield unit.at("OPS033", (*path, "with", "playbook"), f"`playbook.call` names unknown playbook `{target}`", did_you_mean(target, sorted(pack.playbooks)))
            elif target == name:
                yield unit.at("OPS034", (*path, "with", "playbook"), f"playbook `{name}` calls itself")


def check_cycles(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
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
            yield unit.at("OPS034", at, f"dependency cycle in playbook `{name}`: {chain}", "remove one of these `needs:` entries", key=steps[index].needs is not None)


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
            yield unit.at("OPS038", path, f"`{kind.split()[-1]}` of zero", "use a positive duration, or leave the key out")
        elif value > limit:
            yield unit.at("OPS038", path, f"`{kind.split()[-1]}` of {format_duration(value)} is longer than the limit of {format_duration(limit)}")

    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for name, trigger in pack.triggers.items():
        if trigger.threshold:
            yield from bounded(("triggers", name, "threshold", "within"), trigger.threshold.within, "within")
        yield from bounded(("triggers", name, "for"), trigger.for_, "for")
    for name, hook in pack.hooks.items():
        yield from bounded(("hooks", name, "cooldown"), hook.cooldown, "cooldown")
    for name, playbook in pack.playbooks.items():
        yield from bounded(("playbooks", name, "timeout"), playbook.timeout, "playbook timeout")
    for path, _, _, step, _ in _steps(pack):
        yield from bounded((*path, "timeout"), step.timeout, "timeout")
        for retry, at in ((step.retry, (*path, "retry")), (step.compensate.retry if step.compensate else None, (*path, "compensate", "retry"))):
            if retry is None:
                continue
            yield from bounded((*at, "initial"), retry.initial, "initial")
            yield from bounded((*at, "max"), retry.max, "max")
            if retry.initial > retry.max:
                yield unit.at("OPS038", (*at, "initial"), f"retry `initial` ({format_duration(retry.initial)}) is longer than `max` ({format_duration(retry.max)})")
        if step.action == "wait" and isinstance(step.with_.get("duration"), str):
            from opsdsl.durations import parse_duration

            yield from bounded((*path, "with", "duration"), parse_duration(step.with_["duration"]), "duration")


def check_defaults(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for name, param in pack.params.items():
        path = ("params", name)
        if "default" in param.model_fields_set and not value_matches(param.default, param.type):
            yield unit.at("OPS037", (*path, "default"), f"default of param `{name}` is not a {param.type}")
        elif param.enum is not None and "default" in param.model_fields_set and param.default not in param.enum:
            yield unit.at("OPS037", (*path, "default"), f"default of param `{name}` is not one of its `enum` values")
    for pb_name, playbook in pack.playbooks.items():
        for name, spec in playbook.inputs.items():
            if "default" in spec.model_fields_set and not value_matches(spec.default, spec.type):
                yield unit.at("OPS037", ("playbooks", pb_name, "inputs", name, "default"), f"default of input `{name}` is not a {spec.type}")


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
        from opsdsl.durations import parse_duration

        try:
            parse_duration(value)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True
    return False


# ---------------------------------------------------------------- review rules


def _constant(text: str) -> object:
    """The value of an expression that reads no data, or a sentinel if it depends on data."""
    try:
        expression = parse(text)
    except ExprSyntaxError:
        return _UNKNOWN
    if expression.references():
        return _UNKNOWN
    try:
        return compile_expr(expression)({})
    except EvalError:
        return _UNKNOWN


_UNKNOWN = object()


def check_conditions(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for path, _, _, step, _ in _steps(pack):
        if step.when is None:
            continue
        value = _constant(step.when)
        if value is False:
            yield unit.at("OPS035", (*path, "when"), f"step `{step.id}` never runs: its `when:` is always false", "remove the step, or fix the condition")
        elif value is True:
            yield unit.at("OPS048", (*path, "when"), f"the `when:` of step `{step.id}` is always true", "remove the `when:`")


def _approval_policy_covers(policy: Policy, pack: Pack, playbook_name: str, step: Step) -> bool:
    """Whether an approval policy could apply to `step` (unknown data counts as could)."""
    if policy.effect != "require_approval":
        return False
    playbook = pack.playbooks[playbook_name]
    activation = {
        "step": {
            "id": step.id,
            "name": step.name or step.id,
            "action": step.action,
            "risk": step.risk,
            "with": step.with_,
            "timeout": (step.timeout or 0) / 1000,
            "compensation": step.compensate is not None,
            "idempotent": bool(step.idempotent),
        },
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
    try:
        return compile_expr(expression)(activation) is True
    except EvalError:
        return True  # depends on run-time data (event, now): it may apply


def check_risky_steps(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    policies = (*pack.policies, *scope.policies)
    for path, name, playbook, step, in_finally in _steps(pack):
        if step.risk != "high" or step.compensate is not None:
            continue
        section = playbook.finally_ if in_finally else playbook.steps
        by_id = {s.id: s for s in section}
        earlier = ancestors(predecessors(section), step.id)
        if any(by_id[a].action == "approval" for a in earlier if a in by_id):
            continue
        if any(_approval_policy_covers(p, pack, name, step) for p in policies):
            continue
        yield unit.at(
            "OPS040",
            (*path, "risk"),
            f"high-risk step `{step.id}` has no approval and no `compensate:`",
            "add `compensate:` to undo it, an `approval` step before it, or a policy with `effect: require_approval`",
        )


def check_network_timeouts(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for path, _, _, step, _ in _steps(pack):
        networked = step.action in NETWORK_ACTIONS or (step.action == "evidence.collect" and step.with_.get("urls"))
        if networked and step.timeout is None:
            yield unit.at("OPS041", (*path, "action"), f"`{step.action}` step `{step.id}` has no `timeout:`", "add e.g. `timeout: 10s`; without it a hung server stalls the run")
        comp = step.compensate
        if comp is not None and comp.action in NETWORK_ACTIONS and comp.timeout is None:
            yield unit.at("OPS041", (*path, "compensate", "action"), f"compensation of `{step.id}` has no `timeout:`", "add `timeout:` under `compensate:`")


def check_hook_cooldowns(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for name, hook in pack.hooks.items():
        if hook.cooldown is None:
            yield unit.at("OPS042", ("hooks", name), f"hook `{name}` has no `cooldown:`", "add e.g. `cooldown: 10m` so a flapping alert does not start a run each time", key=True)


_SHELLS = frozenset({"sh", "bash", "zsh", "dash", "ksh", "ash", "fish", "busybox", "pwsh", "powershell", "cmd"})
_INTERPRETERS = {"python": "-c", "python3": "-c", "perl": "-e", "ruby": "-e", "node": "-e", "php": "-r"}
_TAINTED_ROOTS = frozenset({"event", "inputs", "steps"})


def _tainted(text: str) -> set[str]:
    """Roots of run-time data that `text` interpolates (event, inputs, step outputs)."""
    if "${{" not in text:
        return set()
    try:
        template = parse_template(text)
    except ExprSyntaxError:
        return set()
    return {ref.root for expression, _ in template.expressions for ref in expression.references()} & _TAINTED_ROOTS


def _argv_findings(argv: list) -> Iterator[tuple[int, str]]:
    if not argv or not all(isinstance(a, str) for a in argv):
        return
    roots = _tainted(argv[0])
    if roots:
        yield 0, f"the program name is filled from {', '.join(sorted(roots))} data"
        return
    program = argv[0].rsplit("/", 1)[-1]
    flag = "-c" if program in _SHELLS else _INTERPRETERS.get(re.sub(r"[0-9.]+$", "", program) if program not in _INTERPRETERS else program)
    if program == "env" and len(argv) > 1:
        yield from ((i + 1, m) for i, m in _argv_findings(argv[1:]))
        return
    if flag is None:
        return
    for i, arg in enumerate(argv[1:], start=1):
        if arg == flag or (program in _SHELLS and arg.startswith("-") and "c" in arg[1:] and not arg.startswith("--")):
            if i + 1 < len(argv):
                roots = _tainted(argv[i + 1])
                if roots:
                    yield i + 1, f"{', '.join(sorted(roots))} data is interpolated into a `{program} {flag}` script"
            return


def check_shell_injection(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for path, _, _, step, _ in _steps(pack):
        places = [(step.action, step.with_, (*path, "with"))]
        if step.compensate:
            places.append((step.compensate.action, step.compensate.with_, (*path, "compensate", "with")))
        for action, with_, at in places:
            if action != "shell" or not isinstance(with_.get("argv"), list):
                continue
            for index, message in _argv_findings(with_["argv"]):
                yield unit.at("OPS043", (*at, "argv", index), f"possible command injection in step `{step.id}`: {message}", "pass the data as its own argv element (or in `env:`), and keep the program name fixed")


_SECRET_KEY = re.compile(r"(?i)(pass(word|wd)?|secret|token|api[_-]?key|apikey|auth(orization)?|routing[_-]?key|private[_-]?key|credentials?|access[_-]?key)$")
_SECRET_VALUE = re.compile(
    r"(AKIA[0-9A-Z]{16}|xox[abposr]-[0-9A-Za-z-]{10,}|gh[pousr]_[0-9A-Za-z]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|hooks\.slack\.com/services/[A-Z0-9]+/[A-Z0-9]+/[0-9A-Za-z]+|(?i:bearer|basic) [0-9A-Za-z._~+/=-]{8,}"
    r"|[?&](?i:token|api_?key|password|secret)=[^&${}\s]{6,}|--(?i:password|token|secret)=[^${}\s]+)"
)


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
    elif isinstance(value, str) and _SECRET_VALUE.search(value.replace("${{", "\x00")):
        yield path, "a value looks like a credential"


def check_plaintext_secrets(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    hint = "store it outside the pack and reference it as `${{ secrets.NAME }}`"
    for name, param in pack.params.items():
        if param.secret and isinstance(param.default, str) and param.default:
            yield unit.at("OPS044", ("params", name, "default"), f"secret param `{name}` has a literal default", hint)
    for path, _, _, step, _ in _steps(pack):
        sections = [((*path, "with"), step.with_)]
        if step.compensate:
            sections.append(((*path, "compensate", "with"), step.compensate.with_))
        for at, with_ in sections:
            for where, message in _secret_findings(with_, at):
                yield unit.at("OPS044", where, f"plaintext secret in step `{step.id}`: {message}", hint)


def check_unused(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    used_triggers = {h.trigger for h in pack.hooks.values()}
    for name in pack.triggers:
        if name not in used_triggers:
            yield unit.at("OPS045", ("triggers", name), f"trigger `{name}` is not used by any hook", "add a hook that uses it, or remove it", key=True)
    called = {h.run for h in pack.hooks.values()}
    for _, _, _, step, _ in _steps(pack):
        if step.action == "playbook.call" and isinstance(step.with_.get("playbook"), str):
            called.add(step.with_["playbook"])
    for name in pack.playbooks:
        if name not in called:
            yield unit.at("OPS046", ("playbooks", name), f"playbook `{name}` is not run by any hook or `playbook.call`", "hooks start playbooks when a trigger fires; `opsdsl run --playbook` can still run it by hand", key=True)
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
            yield unit.at("OPS047", ("params", name), f"param `{name}` is never read", "use it as `params.NAME`, or remove it", key=True)


def check_retry_idempotency(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    pack = unit.model
    if not isinstance(pack, Pack):
        return
    for path, _, _, step, _ in _steps(pack):
        if step.action == "shell" and step.retry and step.retry.attempts > 1 and step.idempotent is not True:
            yield unit.at("OPS049", (*path, "retry"), f"shell step `{step.id}` is retried but not marked `idempotent: true`", "a retried command may repeat a side effect; mark the step `idempotent: true` if repeating it is safe")


SEMANTIC_CHECKS: tuple[Rule, ...] = (
    check_duplicate_ids,
    check_references,
    check_cycles,
    check_durations,
    check_defaults,
    check_expressions,
)
REVIEW_CHECKS: tuple[Rule, ...] = (
    check_conditions,
    check_risky_steps,
    check_network_timeouts,
    check_hook_cooldowns,
    check_shell_injection,
    check_plaintext_secrets,
    check_unused,
    check_retry_idempotency,
)


def run_checks(unit: Unit, scope: Scope) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for check_rule in (*SEMANTIC_CHECKS, *REVIEW_CHECKS):
        out.extend(check_rule(unit, scope))
    return out
