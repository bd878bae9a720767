"""What happened in a run, read from its ledger entries alone.

The ledger is the one account of a run (opsdsl.runtime.entries), so expectations are
compared with it rather than with the scheduler's internals: a rehearsal checks exactly
what an auditor would later read.

"Started" means the action began: the first `step.intent` of a step (executor actions,
`wait`, `playbook.call`); the `approval.requested` of an `approval` step (asking is its
action); the result of an `assert` or `report.rca` step that passed the gate (they have no
intent: decision and result are one transaction). A step that was skipped, denied by a
policy or by people, or failed before the gate (`when:` or `with:` errors) never started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from opsdsl.audit import entries as E

PURE_ACTIONS = frozenset({"assert", "report.rca"})  # as opsdsl.runtime.scheduler.PURE_ACTIONS


@dataclass
class RunFacts:
    """One run's story, in the terms expectations use."""

    run_id: str
    playbook: str
    started: list[str] = field(default_factory=list)  # node ids, in the order they started
    skipped: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)  # steps whose compensation started, in order
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id → policy.decision data
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # node id → outputs of its result
    results: dict[str, str] = field(default_factory=dict)  # node id → succeeded | failed | skipped
    errors: dict[str, str] = field(default_factory=dict)  # node id → error of a failed step
    status: str = "running"
    error: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def headline(self) -> str:
        """The RCA report's headline (built from the entries only when asked: it costs a record)."""
        from opsdsl.audit.incident import build_record, headline

        return headline(build_record(self.entries, checkpoint=None, evidence_dir=None))

    def fate(self, node: str) -> str:
        """How a node fared, in words, for failure messages."""
        if node in self.skipped:
            return "it was skipped (its `when:` was false)"
        decision = self.decisions.get(node)
        if node in self.results and decision is None:
            return f"it failed before the policy gate: {self.errors.get(node, '')}".rstrip(": ")
        if decision is not None and decision.get("decision") == "deny":
            return "it was denied by policy"
        if node in self.results:
            return f"it {self.results[node]}"
        if decision is not None:
            return "it is still waiting for an approval"
        return "it never became ready"


def run_facts(entries: list[dict[str, Any]], playbook: dict[str, Any]) -> RunFacts:
    """Fold one run's ledger entries (in order) into facts; `playbook` is its plan entry."""
    nodes = {n["id"]: n for n in playbook["nodes"]}
    created = next(e for e in entries if e["kind"] == E.RUN_CREATED)
    facts = RunFacts(created["run"], created["data"]["playbook"], entries=entries)
    denied_by_people: set[str] = set()
    started: set[str] = set()

    def start(node: str) -> None:
        if node not in started:
            started.add(node)
            facts.started.append(node)
            if nodes.get(node, {}).get("section") == "compensation":
                facts.compensated.append(nodes[node]["for"])

    for entry in entries:
        kind, data = entry["kind"], entry["data"]
        node = data.get("step")
        if kind == E.STEP_INTENT or (kind == E.APPROVAL_REQUESTED and data.get("reason") == "action"):
            start(node)
        elif kind == E.POLICY_DECISION:
            facts.decisions.setdefault(node, data)
        elif kind in (E.APPROVAL_RECORDED, E.APPROVAL_TIMED_OUT) and "deny" in (
            data.get("decision"),
            data.get("outcome"),
        ):
            denied_by_people.add(node)
        elif kind == E.STEP_SKIPPED:
            facts.skipped.append(node)
            facts.results[node] = "skipped"
        elif kind in (E.STEP_SUCCEEDED, E.STEP_FAILED):
            action = nodes.get(node, {}).get("action")
            gated = node in facts.decisions and facts.decisions[node].get("decision") != "deny"
            if action in PURE_ACTIONS and gated and node not in denied_by_people and not data.get("denied_by"):
                start(node)
            facts.results[node] = "succeeded" if kind == E.STEP_SUCCEEDED else "failed"
            facts.outputs[node] = data.get("outputs") or {}
            if kind == E.STEP_FAILED:
                facts.errors[node] = data.get("error") or ""
        elif kind == E.RUN_FINISHED:
            facts.status, facts.error = data.get("status", "finished"), data.get("error")
        elif kind == E.RUN_PAUSED:
            facts.status = "paused"
        elif kind == E.RUN_INTERRUPTED:
            facts.status = "interrupted"
        elif kind == E.RUN_STARTED:
            facts.status = "running"
    return facts


def deciding_policies(decision: dict[str, Any]) -> list[str]:
    """The ids of the policies that made a decision (for `allow`: explicit allow policies)."""
    verdict = decision.get("decision")
    return [p["id"] for p in decision.get("policies") or () if p.get("effect") == verdict]
