"""What every check sees: the pack (`Unit`), its surroundings (`Scope`), step graphs and
the names each kind of expression may use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opsdsl.errors import Diagnostic, Span
from opsdsl.lang.actions import BUILTIN_ACTIONS
from opsdsl.lang.config import Config
from opsdsl.lang.expr import ExprSyntaxError, RootSpec, parse, parse_template
from opsdsl.lang.rules import rule
from opsdsl.lang.sites import HOOK, INPUT, POLICY, TRIGGER, Site, iter_sites
from opsdsl.lang.source import Document

if TYPE_CHECKING:  # either model: pydantic's (compile) or the checked one (lint)
    from opsdsl.lang.model import AnyPack, Pack, Playbook, Policy, Step

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
    """What surrounds a pack: the organisation's policies linted alongside it, and the
    configuration (for the rules that are off unless enabled there)."""

    policies: tuple[Policy, ...] = ()
    plugin_actions: frozenset[str] | None = None
    config: Config | None = None
    _plugins_loaded: bool = field(default=False, repr=False)

    def is_action(self, name: str) -> bool:
        if name in BUILTIN_ACTIONS:
            return True
        if self.plugin_actions is None:
            self.plugin_actions = _plugin_actions()
        return name in self.plugin_actions


def _plugin_actions() -> frozenset[str]:
    from opsdsl.lang.plugins import plugin_names

    return plugin_names()


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
        "inputs": RootSpec("map"),  # the playbook's inputs, redacted; a policy serves many playbooks
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
    if pack.kind == "PolicyPack":
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
    assert pack.kind == "Pack" and site.playbook is not None
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


def iter_steps(pack: Pack) -> Iterator[tuple[Path_, str, Playbook, Step, bool]]:
    """Every step of every playbook, with its path, playbook name and section."""
    for name, playbook in pack.playbooks.items():
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            for i, step in enumerate(steps):
                yield ("playbooks", name, section, i), name, playbook, step, section == "finally"
