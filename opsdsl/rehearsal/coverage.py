"""Coverage of a test session: what of each tested playbook no case exercised.

Four kinds of items, per playbook of every pack a test file ran:

- **steps** (main and `finally`): the step started (as `expect.started` means it);
- **branches**: a step's `when:` was true (the step went on to the gate), and, separately,
  false (the step was skipped);
- **compensations**: a step's `compensate:` started;
- **policies**: a policy in scope applied to a step of the playbook (it was among the
  policies of a gate decision). Only policies that can apply to one of the playbook's
  steps count: one whose `when:` is false for every step, whatever the run, is left out
  (`sev4-is-a-scheduled-fix` means nothing to a SEV-2 playbook).

It is gathered from the facts each case result keeps (`CaseResult.observed`: the runs'
ledger entries, sub-runs of `playbook.call` included), whether the case passed or not,
and every item is located in its pack (or policy pack) file. Rendering: `coverage_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.errors import EvalError, Span

from .execute import CompiledPack
from .facts import RunFacts
from .session import SessionResult

STEPS, BRANCHES, COMPENSATIONS, POLICIES = "steps", "branches", "compensations", "policies"
KINDS = (STEPS, BRANCHES, COMPENSATIONS, POLICIES)
HIGH_RISK = "high_risk_steps"
_RENDER_FAILED = "`with:` could not be rendered"  # as the scheduler says: `when:` was true
_SECTION_RANK = {"steps": 0, "finally": 1}


@dataclass
class Item:
    """One thing a test can exercise, where it is written, and whether a case did."""

    kind: str
    id: str  # the step's id (steps, branches, compensations) or the policy's
    span: Span
    covered: bool = False
    risk: str | None = None  # steps
    when: bool | None = None  # branches: which outcome of the `when:`
    effect: str | None = None  # policies

    @property
    def label(self) -> str:
        if self.kind == BRANCHES:
            return f"`{self.id}` when {'true' if self.when else 'false'}"
        if self.kind == COMPENSATIONS:
            return f"compensation of `{self.id}`"
        if self.kind == POLICIES:
            return f"policy `{self.id}` ({self.effect})"
        return f"step `{self.id}`" + (" (risk: high)" if self.risk == "high" else "")


@dataclass(frozen=True)
class Count:
    covered: int
    total: int

    @property
    def percent(self) -> float | None:
        return None if not self.total else 100.0 * self.covered / self.total

    def __add__(self, other: Count) -> Count:
        return Count(self.covered + other.covered, self.total + other.total)


@dataclass
class PlaybookCoverage:
    name: str
    items: dict[tuple[str, str, bool | None], Item] = field(default_factory=dict)  # (kind, id, when) → item

    def add(self, item: Item) -> None:
        self.items.setdefault((item.kind, item.id, item.when), item)

    def mark(self, kind: str, id_: str, when: bool | None = None) -> None:
        item = self.items.get((kind, id_, when))
        if item is not None:
            item.covered = True

    def of(self, kind: str) -> list[Item]:
        if kind == HIGH_RISK:
            return [i for i in self.items.values() if i.kind == STEPS and i.risk == "high"]
        return [i for i in self.items.values() if i.kind == kind]

    def count(self, kind: str) -> Count:
        items = self.of(kind)
        return Count(sum(i.covered for i in items), len(items))

    @property
    def missed(self) -> list[Item]:
        return [i for i in self.items.values() if not i.covered]


@dataclass
class PackCoverage:
    path: str  # as shown: relative to the working directory
    name: str
    digest: str  # sha256 of the pack file the cases ran
    policy_packs: list[dict[str, str]] = field(default_factory=list)  # {path, digest}
    playbooks: dict[str, PlaybookCoverage] = field(default_factory=dict)
    cases: int = 0
    policies: dict[str, Item] = field(default_factory=dict)  # every policy in scope, as an uncovered item

    def count(self, kind: str) -> Count:
        return sum((p.count(kind) for p in self.playbooks.values()), Count(0, 0))

    @property
    def inapplicable(self) -> list[str]:
        """Policies in scope that can apply to no step of the pack (not counted)."""
        used = {i.id for book in self.playbooks.values() for i in book.of(POLICIES)}
        return [policy for policy in self.policies if policy not in used]


@dataclass
class Coverage:
    packs: list[PackCoverage] = field(default_factory=list)
    cases: int = 0

    def count(self, kind: str) -> Count:
        return sum((p.count(kind) for p in self.packs), Count(0, 0))


# ---- gathering ----------------------------------------------------------------------------


def gather(session: SessionResult) -> Coverage:
    """The coverage of every pack the session's test files ran, from their cases' facts."""
    by_pack: dict[Path, tuple[PackCoverage, dict[str, Any]]] = {}
    coverage = Coverage()
    for result in session.files:
        compiled = result.compiled
        if compiled is None:
            continue
        key = Path(compiled.sources["pack"]["path"]).resolve()
        if key not in by_pack:
            by_pack[key] = (_skeleton(compiled), compiled.plan.payload)
            coverage.packs.append(by_pack[key][0])
        else:
            _add_policies(by_pack[key][0], compiled)
        pack, payload = by_pack[key]
        for case in result.cases:
            if case.observed is None:
                continue
            pack.cases += 1
            coverage.cases += 1
            for facts in (*case.observed.runs, *case.observed.subruns):
                record(pack, payload, facts)
    return coverage


def record(pack: PackCoverage, payload: dict[str, Any], facts: RunFacts) -> None:
    """Mark what one run exercised."""
    book = pack.playbooks.get(facts.playbook)
    if book is None:
        return
    nodes = {n["id"]: n for n in payload["playbooks"][facts.playbook]["nodes"]}
    for node_id in facts.started:
        node = nodes.get(node_id, {})
        if node.get("section") == "compensation":
            book.mark(COMPENSATIONS, node["for"])
        else:
            book.mark(STEPS, node_id)
    for entry in facts.entries:
        if entry["kind"] == E.STEP_SKIPPED and entry["data"].get("when"):
            book.mark(BRANCHES, entry["data"]["step"], False)
    for node_id, decision in facts.decisions.items():
        book.mark(BRANCHES, node_id, True)
        for policy in decision.get("policies") or ():
            if (POLICIES, policy["id"], None) not in book.items and policy["id"] in pack.policies:
                book.add(replace(pack.policies[policy["id"]]))  # it applied where it seemed it could not
            book.mark(POLICIES, policy["id"])
    for node_id, error in facts.errors.items():
        if error.startswith(_RENDER_FAILED):
            book.mark(BRANCHES, node_id, True)


# ---- the items of a pack, located ----------------------------------------------------------


class _Locator:
    """Spans in the pack and policy pack files (loaded again: the plan keeps no positions)."""

    def __init__(self, compiled: CompiledPack) -> None:
        from opsdsl.lang.loader import load_file

        self.documents: dict[str, Any] = {}  # pack name → Document
        self.files: dict[str, str] = {}
        for source in (compiled.sources["pack"], *compiled.sources["policy_packs"]):
            document, _ = load_file(Path(source["path"]))
            if document is not None and isinstance(document.data, dict):
                name = (document.data.get("metadata") or {}).get("name", source["path"])
                self.documents[name] = document
                self.files[name] = source["path"]

    def span(self, pack: str, path: tuple, key: bool = False) -> Span:
        document = self.documents.get(pack)
        if document is None:
            return Span(self.files.get(pack, pack), 1, 1)
        return document.key_span(path) if key else document.span(path)

    def policy_span(self, policy: dict[str, Any]) -> Span:
        document = self.documents.get(policy.get("origin", ""))
        if document is None:
            return Span(policy.get("origin") or "?", 1, 1)
        for index, item in enumerate(document.data.get("policies") or ()):
            if isinstance(item, dict) and item.get("id") == policy["id"]:
                return document.span(("policies", index, "id"))
        return document.span(())


def _skeleton(compiled: CompiledPack) -> PackCoverage:
    payload, sources = compiled.plan.payload, compiled.sources
    name = payload["pack"]["name"]
    locate = _Locator(compiled)
    pack = PackCoverage(
        sources["pack"]["path"], name, sources["pack"]["digest"], [dict(p) for p in sources["policy_packs"]]
    )
    document = locate.documents.get(name)
    written = list((document.data.get("playbooks") or {}) if document is not None else ())
    order = {book: i for i, book in enumerate(written)}
    for book_name in sorted(payload["playbooks"], key=lambda b: (order.get(b, len(order)), b)):
        nodes = payload["playbooks"][book_name]["nodes"]
        book = PlaybookCoverage(book_name)
        steps = sorted((n for n in nodes if n["section"] in _SECTION_RANK), key=_written_order)
        for node in steps:
            at = ("playbooks", book_name, node["section"], node["index"])
            book.add(Item(STEPS, node["id"], locate.span(name, at), risk=node.get("risk")))
        for node in steps:
            at = ("playbooks", book_name, node["section"], node["index"])
            if node.get("when") is not None:
                for outcome in (True, False):
                    book.add(Item(BRANCHES, node["id"], locate.span(name, (*at, "when")), when=outcome))
        for node in steps:
            at = ("playbooks", book_name, node["section"], node["index"])
            if node.get("compensation"):
                book.add(Item(COMPENSATIONS, node["id"], locate.span(name, (*at, "compensate"), key=True)))
        pack.playbooks[book_name] = book
    _add_policies(pack, compiled, locate)
    return pack


def _written_order(node: dict[str, Any]) -> tuple[int, int]:
    return _SECTION_RANK[node["section"]], node["index"]


def _add_policies(pack: PackCoverage, compiled: CompiledPack, locate: _Locator | None = None) -> None:
    """The policies in scope that can apply to a step of each playbook (a second test file
    of the same pack may bring other policy packs)."""
    payload = compiled.plan.payload
    known = {p["path"] for p in pack.policy_packs}
    pack.policy_packs += [dict(p) for p in compiled.sources["policy_packs"] if p["path"] not in known]
    for policy in payload.get("policies") or ():
        if policy["id"] not in pack.policies:
            locate = locate or _Locator(compiled)
            pack.policies[policy["id"]] = Item(
                POLICIES, policy["id"], locate.policy_span(policy), effect=policy["effect"]
            )
        for book_name, book in pack.playbooks.items():
            if (POLICIES, policy["id"], None) not in book.items and may_apply(policy, book_name, payload):
                book.add(replace(pack.policies[policy["id"]]))


def may_apply(policy: dict[str, Any], book_name: str, payload: dict[str, Any]) -> bool:
    """Whether `policy` can apply to some step of the playbook: its `when:` evaluated on each
    step as the gate would see it, with what only a run knows (params, the event, `now`,
    the run's id, rendered `with:` values) unknown; unknown counts as can."""
    from opsdsl.lang.actions import policy_step_view
    from opsdsl.lang.expr import compile_expr, parse

    expression = parse(policy["when"])
    if any(r.root == "step" and r.path[:1] == ("with",) for r in expression.references()):
        return True  # rendered at run time: a template is not its value
    predicate = compile_expr(expression)
    book = payload["playbooks"][book_name]
    nodes = {n["id"]: n for n in book["nodes"]}
    pack_name = payload["pack"]["name"]
    for node in nodes.values():
        owner = nodes[node["for"]] if node["section"] == "compensation" else node
        step = policy_step_view(
            node["id"],
            owner.get("name"),
            node["action"],
            owner.get("risk", "low"),
            node.get("with") or {},
            node.get("timeout"),
            node.get("idempotent"),
            bool(node.get("compensation")),
        )
        activation = {
            "step": step,
            "playbook": {"name": book_name, "severity": book["severity"], "pack": pack_name},
            "run": {"playbook": book_name, "severity": book["severity"], "pack": pack_name},
        }
        try:
            if predicate(activation) is True:
                return True
        except EvalError:
            return True
    return False
