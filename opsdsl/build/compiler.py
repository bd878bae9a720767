"""Compile stage: a checked pack becomes a plan, canonical JSON a runtime can trust.

A plan holds the pack's identity and model digest, the compiler version, params,
triggers, hooks, every policy in scope, and per playbook the DAG's nodes and edges with
every action's settings resolved (defaults filled in). Durations in a plan are integer
milliseconds. The same model and scope give byte-identical plans on any machine.

Either model compiles: the checked model (`opsdsl.lang.checked`, plain records, what
`opsdsl compile` builds, so compiling never imports pydantic) or the pydantic model of the
Python API (`opsdsl.lang.model`). Both dump to the same JSON data, so they give the same
digests and plan bytes (tests compare them on every pack the repository has).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opsdsl import __version__
from opsdsl.canonical import canonical_json, is_fast_path_exact, sha256_digest
from opsdsl.errors import CompileError
from opsdsl.lang.actions import ACTION_DEFAULTS, SCHEDULER_ACTIONS, resolved_idempotent, resolved_timeout

if TYPE_CHECKING:  # either model (see the module doc)
    from opsdsl.lang.model import Compensation, Pack, Playbook, PolicyPack, Retry, Step

PLAN_API_VERSION = "opsdsl/v1"
__all__ = [
    "ACTION_DEFAULTS",
    "CompileError",
    "ScopeEntry",
    "build_plan",
    "compile_pack",
    "model_digest",
    "plan_bytes",
    "scope_digest",
]

NO_RETRY = {"attempts": 1, "backoff": "fixed", "initial": 0, "max": 0, "jitter": False}


@dataclass(frozen=True)
class ScopeEntry:
    """A policy pack in scope: its identity, digest and policies."""

    name: str
    version: str
    digest: str
    pack: PolicyPack


def model_digest(model: Pack | PolicyPack) -> str:
    """sha256 of the canonical JSON of the checked model: formatting-independent."""
    return sha256_digest(canonical_json(model_dump_full(model)))


def model_dump_full(model: Pack | PolicyPack) -> dict:
    """The model as JSON data, by its field aliases: the same from either model."""
    return _dump(model)


def _dump(record: Any) -> dict[str, Any]:
    dump = getattr(record, "model_dump", None)
    if dump is not None:  # the pydantic model
        return dump(mode="json", by_alias=True)
    return record.dump()  # a checked record


def scope_digest(scope: Sequence[ScopeEntry]) -> str:
    return sha256_digest(canonical_json([[s.name, s.digest] for s in sorted(scope, key=lambda s: s.name)]))


def _retry(retry: Retry | None) -> dict[str, Any]:
    return dict(NO_RETRY) if retry is None else _dump(retry)


def _runner(action: str, runner: str | None) -> dict[str, Any]:
    """`{"runner": NAME}` for a node whose side effect runs in a pool; nothing otherwise, so
    the plans of packs without `runner:` stay byte-identical. An action the scheduler runs
    itself never gets one (OPS053 refuses `runner:` on such a step)."""
    return {"runner": runner} if runner is not None and action not in SCHEDULER_ACTIONS else {}


def _compensation_node(step: Step, comp: Compensation) -> dict[str, Any]:
    from opsdsl.build.graph import compensation_id

    return {
        "id": compensation_id(step.id),
        "section": "compensation",
        "for": step.id,
        "action": comp.action,
        "with": comp.with_,
        "timeout": resolved_timeout(comp.action, comp.timeout),
        "retry": _retry(comp.retry),
        "idempotent": resolved_idempotent(comp.action, comp.with_, None),
        # The undo runs where the step ran: a pool inside another network is where it can reach.
        **_runner(comp.action, step.runner),
    }


def _step_node(step: Step, section: str, index: int) -> dict[str, Any]:
    from opsdsl.build.graph import compensation_id

    return {
        "id": step.id,
        "section": section,
        "index": index,
        "name": step.name or step.id,
        "action": step.action,
        "with": step.with_,
        "when": step.when,
        "timeout": resolved_timeout(step.action, step.timeout),
        "retry": _retry(step.retry),
        "risk": step.risk,
        "idempotent": resolved_idempotent(step.action, step.with_, step.idempotent),
        "continue_on_error": step.continue_on_error,
        "compensation": compensation_id(step.id) if step.compensate is not None else None,
        **_runner(step.action, step.runner),
    }


def compile_playbook(playbook: Playbook, dumped: dict[str, Any] | None = None) -> dict[str, Any]:
    from opsdsl.build.graph import FINALLY, MAIN, PlaybookGraph

    graph = PlaybookGraph(playbook)
    graph.validate()
    nodes = [_step_node(s, MAIN, i) for i, s in enumerate(playbook.steps)]
    nodes += [_step_node(s, FINALLY, i) for i, s in enumerate(playbook.finally_)]
    nodes += [_compensation_node(s, s.compensate) for s in (*playbook.steps, *playbook.finally_) if s.compensate]
    nodes.sort(key=lambda n: n["id"])
    dumped = dumped if dumped is not None else _dump(playbook)
    return {
        "severity": playbook.severity,
        "description": playbook.description,
        "timeout": playbook.timeout,
        "inputs": dumped["inputs"],
        "nodes": nodes,
        **graph.serialize(),
    }


def build_plan(pack: Pack, scope: Sequence[ScopeEntry]) -> dict[str, Any]:
    """The plan of a checked pack, with the organisation policies of `scope`."""
    return _build(pack, scope)[0]


def compile_pack(pack: Pack, scope: Sequence[ScopeEntry]) -> tuple[dict[str, Any], bytes]:
    """The plan of a checked pack and its canonical bytes (what gets signed)."""
    plan, exact = _build(pack, scope)
    # Everything in the plan comes from model dumps checked in _build, ASCII keys and
    # safe integers, so the fast canonical form is exact whenever theirs was.
    return plan, canonical_json(plan, known_exact=exact)


_SCOPE_DUMPS: dict[int, tuple[PolicyPack, list[dict[str, Any]], bool]] = {}


def _scope_policies(entry: ScopeEntry) -> tuple[list[dict[str, Any]], bool]:
    """A policy pack's policies as JSON data, and whether its dump takes canonical JSON's
    fast path; worked out once per policy pack, not once per pack compiled with it."""
    cached = _SCOPE_DUMPS.get(id(entry.pack))
    if cached is None or cached[0] is not entry.pack:
        dumped = _dump(entry.pack)
        cached = (entry.pack, dumped["policies"], is_fast_path_exact(dumped))
        if len(_SCOPE_DUMPS) > 64:
            _SCOPE_DUMPS.clear()
        _SCOPE_DUMPS[id(entry.pack)] = cached
    return cached[1], cached[2]


def _plan_dump(pack: Pack) -> tuple[dict[str, Any], bool]:
    """The pack's dump for its plan, and whether it takes canonical JSON's fast path. A
    checked pack is dumped without copying its own values first (`dump(deep=False)`),
    which gives the same JSON text whenever that dump takes the fast path."""
    if not hasattr(pack, "model_dump"):
        dumped = pack.dump(deep=False)
        if is_fast_path_exact(dumped):
            return dumped, True
    dumped = model_dump_full(pack)
    return dumped, is_fast_path_exact(dumped)


def _build(pack: Pack, scope: Sequence[ScopeEntry]) -> tuple[dict[str, Any], bool]:
    dumped, exact = _plan_dump(pack)
    exact = exact and all(_scope_policies(s)[1] for s in scope)
    digest = sha256_digest(canonical_json(dumped, known_exact=exact))
    policies = [{**p, "origin": pack.metadata.name} for p in dumped["policies"]]
    ordered_scope = sorted(scope, key=lambda s: s.name)
    for entry in ordered_scope:
        policies += [{**p, "origin": entry.name} for p in _scope_policies(entry)[0]]
    plan = {
        "apiVersion": PLAN_API_VERSION,
        "kind": "Plan",
        "compiler": {"name": "opsdsl", "version": __version__},
        "pack": {
            "name": pack.metadata.name,
            "version": pack.metadata.version,
            "owner": pack.metadata.owner,
            "digest": digest,
        },
        "params": dumped["params"],
        "triggers": dumped["triggers"],
        "hooks": dumped["hooks"],
        "policies": policies,
        "policyPacks": [{"name": s.name, "version": s.version, "digest": s.digest} for s in ordered_scope],
        "playbooks": {
            name: compile_playbook(pb, dumped["playbooks"][name]) for name, pb in sorted(pack.playbooks.items())
        },
    }
    return plan, exact


def plan_bytes(plan: dict[str, Any]) -> bytes:
    """The signed form of a plan: its RFC 8785 canonical JSON."""
    return canonical_json(plan)
