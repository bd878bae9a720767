"""A state directory with a month of incidents, written through the real Store and Ledger,
for the compliance report's tests (tests/audit/test_compliance.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opsdsl.runtime.store import Store

DAY = 86400.0
T0 = 1_794_297_600.0  # 2026-11-10T08:00:00Z
SINCE, UNTIL = "2026-11-01", "2026-12-01"
HOSTILE = '<img src=x onerror=alert(1)> & </td></tr></table><script>alert("x")</script>'


def incident(
    run: str,
    t0: float,
    severity: str,
    incident_id: str,
    *,
    pack: str = "sqlx-sev2",
    playbook: str = "query-latency-regression",
    levels: tuple[tuple[str, float], ...] = (),
    of: int = 3,
    ack: tuple[str, float] | None = None,
    outcome: tuple[str, float] | None = None,
    review: tuple[str, float, int] | None = None,
    opened: int = 0,
    deny: bool = False,
    approval: tuple[str, float] | None = None,
    dry_run: bool = False,
    parent: str | None = None,
) -> list[tuple[float, str, str, dict[str, Any]]]:
    """One run's entries as (ts, run, kind, data), in order of time."""
    items: list[tuple[float, str, str, dict[str, Any]]] = [
        (
            t0 + 5,
            run,
            "run.created",
            {
                "run": run,
                "incident_id": incident_id,
                "pack": pack,
                "playbook": playbook,
                "severity": severity,
                "detected_at": t0,
                "received_at": t0 + 2,
                "dry_run": dry_run,
                "parent_run": parent,
                "params": {},
                "inputs": {},
                "event": {},
            },
        ),
        (t0 + 6, run, "run.started", {"reason": "start", "by": None}),
        (t0 + 7, run, "step.intent", {"step": "inspect", "attempt": 1, "action": "http.request"}),
        (t0 + 8, run, "step.succeeded", {"step": "inspect", "attempts": 1, "outputs": {}}),
    ]
    for index, (level, at) in enumerate(levels, start=1):
        items.append(
            (
                t0 + at,
                run,
                "incident.escalated",
                {"level": level, "index": index, "of": of, "who": "someone", "reason": "not acknowledged"},
            )
        )
    if deny:
        items.append((t0 + 9, run, "policy.decision", {"step": "drop_table", "action": "shell", "decision": "deny"}))
    if approval:
        by, at = approval
        items.append((t0 + at - 1, run, "approval.requested", {"step": "scale", "reason": "policy"}))
        items.append((t0 + at, run, "approval.recorded", {"step": "scale", "by": by, "decision": "approve"}))
    if ack:
        by, at = ack
        items.append((t0 + at, run, "run.acknowledged", {"by": by, "via": "local"}))
    if outcome:
        status, at = outcome
        items.append((t0 + at, run, "run.finished", {"status": status, "human": bool(approval)}))
    if review:
        by, at, follow_ups = review
        data = {"by": by, "root_cause": "stale plans", "impact": "p95 up", "follow_ups": ["fix"] * follow_ups}
        items.append((t0 + at, run, "incident.reviewed", data))
    for number in range(opened):
        items.append(
            (t0 + (review[1] if review else 0) + 60 + number, run, "incident.follow_up_opened", {"key": f"fu-{number}"})
        )
    return items


def month() -> list[tuple[float, str, str, dict[str, Any]]]:
    """November 2026: an unacknowledged SEV-1 that reached L3, a SEV-2 a person approved, a SEV-1
    acknowledged in time, a dry run, a child run with a policy denial, and one from October."""
    return sorted(
        [
            *incident(
                "r-a",
                T0,
                "SEV-1",
                "INC-20261110-A",
                levels=(("L1", 6), ("L2", 300), ("L3", 600)),
                ack=("local:alice", 720),
                outcome=("failed", 2400),
            ),
            *incident(
                "r-b",
                T0 + DAY,
                "SEV-2",
                "INC-20261111-B",
                levels=(("L1", 6),),
                ack=("local:bob", 180),
                approval=("local:carol", 200),
                deny=True,
                outcome=("succeeded", 1200),
                review=("local:erin", 7200, 2),
                opened=1,
            ),
            *incident("r-b1", T0 + DAY + 30, "SEV-2", "INC-20261111-B", parent="r-b", deny=True),
            *incident(
                "r-c",
                T0 + 2 * DAY,
                "SEV-1",
                "INC-20261112-C",
                levels=(("L1", 6),),
                ack=("local:dave", 120),
                outcome=("succeeded", 900),
                review=("local:erin", 3600, 0),
            ),
            *incident("r-d", T0 + 3 * DAY, "SEV-3", "INC-DRY", dry_run=True, outcome=("succeeded", 60)),
            *incident("r-old", T0 - 40 * DAY, "SEV-2", "INC-OCTOBER", outcome=("succeeded", 60)),
        ],
        key=lambda item: item[0],
    )


def populate(root: Path, items: list[tuple[float, str, str, dict[str, Any]]] | None = None, checkpoint=None) -> None:
    """Append `items` (default: `month()`) to the ledger of a real state directory at `root`;
    sign a checkpoint of the head with `checkpoint` (a private key) when given."""
    store = Store(root)
    try:
        for ts, run, kind, data in month() if items is None else items:
            with store.transaction():
                store.ledger.append(kind, run, data, ts=ts)
        if checkpoint is not None:
            store.ledger.checkpoint(checkpoint)
    finally:
        store.close()
