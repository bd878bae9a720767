"""The step-state model behind the live view: one row per step, folded from the run's ledger entries.

The rich view draws a `Board`; it is kept apart from the views so it can be tested (and
reasoned about) without a terminal. Each row's status moves only along `TRANSITIONS`
(`{status: {event: new status}}`), so a late or repeated entry cannot bring a finished
step back to life. Nothing here imports rich.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opsdsl.audit import entries as E

PENDING, RUNNING, SUCCEEDED, FAILED, SKIPPED = "pending", "running", "succeeded", "failed", "skipped"
AWAITING, IN_DOUBT, INTERRUPTED = "awaiting approval", "in doubt", "interrupted"

# A person's decision on a step left in doubt is an event of its own per decision.
DECIDED_RETRY, DECIDED_SUCCEEDED, DECIDED_FAILED = (f"{E.STEP_DECIDED}:{d}" for d in ("retry", "succeeded", "failed"))

# {status: {event: new status}}; an event missing here leaves the status as it is, so a
# late or repeated entry cannot bring a finished step back to life.
TRANSITIONS: dict[str, dict[str, str]] = {
    PENDING: {
        E.STEP_INTENT: RUNNING,
        E.STEP_SKIPPED: SKIPPED,
        E.STEP_SUCCEEDED: SUCCEEDED,
        E.STEP_FAILED: FAILED,
        E.STEP_IN_DOUBT: IN_DOUBT,
        E.APPROVAL_REQUESTED: AWAITING,
        E.RUN_PAUSED: AWAITING,
    },
    RUNNING: {
        E.STEP_INTENT: RUNNING,
        E.STEP_SUCCEEDED: SUCCEEDED,
        E.STEP_FAILED: FAILED,
        E.STEP_IN_DOUBT: IN_DOUBT,
        E.APPROVAL_REQUESTED: AWAITING,
        E.RUN_INTERRUPTED: INTERRUPTED,
    },
    AWAITING: {E.STEP_INTENT: RUNNING, E.STEP_SKIPPED: SKIPPED, E.STEP_SUCCEEDED: SUCCEEDED, E.STEP_FAILED: FAILED},
    IN_DOUBT: {
        E.STEP_INTENT: RUNNING,
        DECIDED_RETRY: PENDING,
        DECIDED_SUCCEEDED: SUCCEEDED,
        DECIDED_FAILED: FAILED,
    },
    INTERRUPTED: {
        E.STEP_INTENT: RUNNING,
        E.STEP_IN_DOUBT: IN_DOUBT,
        E.STEP_SUCCEEDED: SUCCEEDED,
        E.STEP_FAILED: FAILED,
    },
}
STOPPED = frozenset({SUCCEEDED, FAILED, SKIPPED, IN_DOUBT, INTERRUPTED})
RUN_OVER = frozenset({"succeeded", "failed", "refused", "cancelled", "interrupted"})


@dataclass
class StepRow:
    """One step as the table shows it."""

    id: str
    action: str
    section: str
    max_attempts: int = 1
    status: str = PENDING
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    note: str = ""
    note_kind: str = ""  # the entry kind that wrote `note`: a success drops retry notes only
    approvers: list[str] = field(default_factory=list)
    needed: int = 1

    def set_note(self, kind: str, text: str) -> None:
        self.note, self.note_kind = text, kind

    def elapsed(self, now: float) -> float | None:
        if self.started is None:
            return None
        return (self.finished if self.finished is not None else now) - self.started


class Board:
    """The state of one run as the view shows it, folded from its ledger entries.

    Main and finally steps have rows from the start; a compensation gets one when the
    first entry about it arrives (most runs never compensate).
    """

    def __init__(self, run: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        self.run = dict(run)
        self.status = "running"
        self.acknowledged_by: str | None = None
        self.rows: dict[str, StepRow] = {}
        self.shown: list[str] = []
        rank = {"steps": 0, "finally": 1}
        for node in sorted(nodes, key=lambda n: rank.get(n.get("section", "steps"), 2)):  # stable: keeps plan order
            row = StepRow(
                id=node["id"],
                action=node.get("action", ""),
                section=node.get("section", "steps"),
                max_attempts=int((node.get("retry") or {}).get("attempts") or 1),
            )
            self.rows[row.id] = row
            if row.section != "compensation":
                self.shown.append(row.id)

    @property
    def over(self) -> bool:
        return self.status in RUN_OVER

    def visible(self) -> list[StepRow]:
        return [self.rows[step] for step in self.shown]

    def apply(self, entry: dict[str, Any]) -> None:
        """Fold one entry into the rows and the run's status."""
        kind, data, ts = entry.get("kind", ""), entry.get("data") or {}, entry.get("ts") or time.time()
        if kind == E.RUN_STARTED:
            self.status = "running"
        elif kind == E.RUN_PAUSED:
            self.status = "paused"
            for wait in data.get("waiting", []):
                row = self._row(wait.get("step", ""), "")
                _move(row, E.RUN_PAUSED, ts)
                if not row.note:
                    row.set_note(kind, f"waiting: {wait.get('reason', '')}")
        elif kind == E.RUN_INTERRUPTED:
            self.status = "interrupted"
            for step in data.get("running", []):
                row = self._row(step, "")
                _move(row, E.RUN_INTERRUPTED, ts)
                row.set_note(kind, "cancelled")
            for step in data.get("not_started", []):  # its intent written, its action never started
                row = self._row(step, "")
                _move(row, E.RUN_INTERRUPTED, ts)
                row.set_note(kind, "interrupted before it started")
        elif kind == E.RUN_FINISHED:
            self.status = data.get("status", "finished")
        elif kind == E.RUN_ACKNOWLEDGED:
            self.acknowledged_by = data.get("by")
        elif kind in _ROW_FOLDS and data.get("step"):
            row = self._row(data["step"], data.get("action", ""))
            _ROW_FOLDS[kind](row, data, ts)

    def _row(self, step: str, action: str) -> StepRow:
        """The row of `step`, made (and shown) on first sight for compensations and strangers."""
        row = self.rows.get(step)
        if row is None:
            section = "compensation" if step.endswith(".compensate") else "steps"
            row = self.rows[step] = StepRow(id=step, action=action, section=section)
        if step not in self.shown:
            self.shown.append(step)
        if action and not row.action:
            row.action = action
        return row


def _move(row: StepRow, event: str, ts: float) -> None:
    before = row.status
    row.status = TRANSITIONS.get(before, {}).get(event, before)
    if row.status in STOPPED and before not in STOPPED:
        row.finished = ts


def _fold_policy(row: StepRow, data: dict[str, Any], ts: float) -> None:
    note = policy_note(data)
    if note:
        row.set_note(E.POLICY_DECISION, note)


def _fold_intent(row: StepRow, data: dict[str, Any], ts: float) -> None:
    if row.started is None or row.finished is not None:  # first attempt, or resumed after a stop
        row.started, row.finished = ts, None
    _move(row, E.STEP_INTENT, ts)
    row.attempts = max(row.attempts, int(data.get("attempt") or 1))


def _fold_attempt_failed(row: StepRow, data: dict[str, Any], ts: float) -> None:
    row.attempts = max(row.attempts, int(data.get("attempt") or 1))
    row.set_note(E.ATTEMPT_FAILED, f"retry in {float(data.get('retry_in') or 0):.1f}s: {shorten(data.get('error'))}")


def _fold_succeeded(row: StepRow, data: dict[str, Any], ts: float) -> None:
    _move(row, E.STEP_SUCCEEDED, ts)
    row.attempts = int(data.get("attempts") or row.attempts)
    if row.note_kind == E.ATTEMPT_FAILED:
        row.set_note("", "")


def _fold_failed(row: StepRow, data: dict[str, Any], ts: float) -> None:
    _move(row, E.STEP_FAILED, ts)
    row.attempts = int(data.get("attempts") or row.attempts)
    if data.get("denied_by"):
        note = f"denied by policy {data['denied_by']}"
    else:
        note = shorten(data.get("error")) or "failed"
    if data.get("continue_on_error"):
        note += " (run continues)"
    row.set_note(E.STEP_FAILED, note)


def _fold_skipped(row: StepRow, data: dict[str, Any], ts: float) -> None:
    _move(row, E.STEP_SKIPPED, ts)
    row.set_note(E.STEP_SKIPPED, shorten(f"when: {data.get('when', '')}"))


def _fold_in_doubt(row: StepRow, data: dict[str, Any], ts: float) -> None:
    _move(row, E.STEP_IN_DOUBT, ts)
    row.set_note(E.STEP_IN_DOUBT, f"attempt {data.get('attempt', '?')} cut off mid-flight; a person must decide")


def _fold_decided(row: StepRow, data: dict[str, Any], ts: float) -> None:
    _move(row, f"{E.STEP_DECIDED}:{data.get('decision', '')}", ts)
    if row.status == PENDING:
        row.started = row.finished = None
    row.set_note(E.STEP_DECIDED, f"decided {data.get('decision', '?')} by {data.get('by', '?')}")


def _fold_approval_requested(row: StepRow, data: dict[str, Any], ts: float) -> None:
    _move(row, E.APPROVAL_REQUESTED, ts)
    row.approvers, row.needed = [], int(data.get("min_approvals") or 1)
    note = f"approvals 0/{row.needed}"
    if data.get("policies"):
        note += f" (policy {', '.join(data['policies'])})"
    if data.get("message"):
        note += f": {shorten(data['message'], None)}"  # the question a person answers is never cut short
    row.set_note(E.APPROVAL_REQUESTED, note)


def _fold_approval_recorded(row: StepRow, data: dict[str, Any], ts: float) -> None:
    by = data.get("by", "?")
    if data.get("decision") == "deny":
        note = f"denied by {by}"
    else:
        row.approvers.append(by)
        note = f"approvals {len(row.approvers)}/{row.needed} by {', '.join(row.approvers)}"
    if data.get("comment"):
        note += f": {shorten(data['comment'])}"
    row.set_note(E.APPROVAL_RECORDED, note)


def _fold_approval_timed_out(row: StepRow, data: dict[str, Any], ts: float) -> None:
    row.set_note(E.APPROVAL_TIMED_OUT, f"approval timed out: {data.get('outcome', '?')}")


def _fold_evidence(row: StepRow, data: dict[str, Any], ts: float) -> None:
    row.set_note(E.EVIDENCE_ADDED, f"evidence {data.get('name', '')}: {_count(len(data.get('files', [])), 'file')}")


_ROW_FOLDS: dict[str, Callable[[StepRow, dict[str, Any], float], None]] = {
    E.POLICY_DECISION: _fold_policy,
    E.STEP_INTENT: _fold_intent,
    E.ATTEMPT_FAILED: _fold_attempt_failed,
    E.STEP_SUCCEEDED: _fold_succeeded,
    E.STEP_FAILED: _fold_failed,
    E.STEP_SKIPPED: _fold_skipped,
    E.STEP_IN_DOUBT: _fold_in_doubt,
    E.STEP_DECIDED: _fold_decided,
    E.APPROVAL_REQUESTED: _fold_approval_requested,
    E.APPROVAL_RECORDED: _fold_approval_recorded,
    E.APPROVAL_TIMED_OUT: _fold_approval_timed_out,
    E.EVIDENCE_ADDED: _fold_evidence,
}


# ---------------------------------------------------------------------------------------
# Words the board's notes share with the human views


def shorten(text: Any, limit: int | None = 80) -> str:
    """One line of at most `limit` characters (`None`: the whole text on one line): notes are
    a glance, the ledger has the rest."""
    flat = " ".join(str(text or "").split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def policy_note(data: dict[str, Any], limit: int | None = 40) -> str:
    """The gate's verdict in a few words, naming the policies behind it; empty for a plain allow.
    `limit` shortens each policy's error (`None`: whole)."""
    decision = data.get("decision", "allow")
    policies = data.get("policies", [])
    ids = [p.get("id", "?") for p in policies if p.get("effect") == decision] or [p.get("id", "?") for p in policies]
    parts = []
    if decision == "deny":
        parts.append(f"denied by policy {', '.join(ids) or '?'}")
    elif decision == "require_approval":
        parts.append(f"approval required by policy {', '.join(ids) or '?'}")
    for err in data.get("errors", []):
        parts.append(f"policy {err.get('id', '?')} failed: {shorten(err.get('error'), limit)}")
    return "; ".join(parts)
