"""The incident against the seed runbook's clocks: section 8's timeline marks and section 3's response targets.

Section 8 gives every incident the same template (T0 detection, T+5m triage, T+10m
mitigation, T+20m recovery validated, T+60m report draft, T+24h RCA published); section 3
gives each severity an initial response time (SEV-1 < 5 min … SEV-4 < 24 h). Each mark is
judged from the run's ledger entries alone, so the same entries give the same verdicts:
no wall clock is read here (a mark not reached is "missed" only when the entries
themselves run past its deadline, else "open").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from opsdsl.audit import entries as kinds
from opsdsl.audit.metrics import PASSIVE_ACTIONS, RESPONSE_TIMES, format_duration, summarize_run

# (key, label in the template, what it means, deadline in seconds after detection)
SECTION_8_MARKS: tuple[tuple[str, str, str, float], ...] = (
    ("detection", "T0", "Detection", 0.0),
    ("triage", "T+5m", "Initial triage", 300.0),
    ("mitigation", "T+10m", "Mitigation started", 600.0),
    ("recovery", "T+20m", "Recovery validated", 1200.0),
    ("report", "T+60m", "Report draft", 3600.0),
    ("rca", "T+24h", "RCA published", 86400.0),
)

# Marks only the run itself reaches: once it has ended without them, they are missed for good.
# (A person can still acknowledge or review a finished run.)
_RUN_MARKS = frozenset({"triage", "mitigation", "recovery", "report"})

# Seed section 3: initial response time per severity, in seconds (the escalation clocks' defaults too).
RESPONSE_TARGETS: dict[str, float] = RESPONSE_TIMES


@dataclass(frozen=True)
class Mark:
    """One clock of the incident: its deadline, when (if ever) it was reached, and the verdict."""

    key: str
    label: str  # "T+5m", or "SEV-1 < 5m" for the response target
    meaning: str
    deadline: float  # seconds after detection
    reached: float | None  # seconds after detection, or None
    how: str  # what reached it ("acknowledged by carol", "step scale_pool started", ...)
    status: str  # "met" | "late" | "missed" | "open"

    @property
    def verdict(self) -> str:
        """One line a reader takes in at once: `met at T+3m12s`, `late by 11m`, `missed`, `open`."""
        if self.status == "met":
            return f"met at {offset(self.reached)}"
        if self.status == "late":
            return f"late: {offset(self.reached)}, {format_duration(self.reached - self.deadline)} after the mark"
        if self.status == "missed":
            return "missed: not reached"
        return "open: not reached yet"


def short_duration(seconds: float) -> str:
    """`5m`, `15m`, `1h`, `24h`: a deadline as the runbook writes it."""
    if seconds % 3600 == 0 and seconds:
        return f"{int(seconds // 3600)}h"
    if seconds % 60 == 0 and seconds:
        return f"{int(seconds // 60)}m"
    return format_duration(seconds)


def offset(seconds: float | None) -> str:
    """`T0`, `T+4m12s`: seconds after detection as the template writes them."""
    if seconds is None:
        return "–"
    return "T0" if seconds <= 0 else f"T+{format_duration(seconds)}"


def incident_marks(entries: Sequence[dict]) -> tuple[list[Mark], Mark | None]:
    """Section 8's marks and section 3's response target (None for an unknown severity) of one run."""
    summary = summarize_run(entries)
    detected = summary.detected
    span = max(float(entry["ts"]) for entry in entries) - detected  # how far the entries themselves reach

    def since(ts: float | None) -> float | None:
        return None if ts is None else round(max(0.0, ts - detected), 3)

    first_step, first_acting = _first_steps(entries)
    triage_candidates = [
        (summary.acknowledged, f"acknowledged by {summary.acknowledged_by}"),
        *([(first_step[0], f"step {first_step[1]} started")] if first_step else []),
    ]
    triage = min(((ts, how) for ts, how in triage_candidates if ts is not None), default=(None, ""))
    reached = {
        "detection": (detected, "the event's time" if not summary.detection_clamped else "received (clamped)"),
        "triage": triage,
        "mitigation": (first_acting[0], f"step {first_acting[1]} started") if first_acting else (None, ""),
        "recovery": (summary.resolved, "the run succeeded"),
        "report": (summary.finished, "record and rca.md written at the run's end"),
        "rca": (summary.reviewed, f"reviewed by {summary.review['by']}" if summary.review else ""),
    }
    ended = summary.status in ("succeeded", "failed", "refused")
    marks = [
        _judge(
            key, label, meaning, deadline, since(reached[key][0]), reached[key][1], span, ended and key in _RUN_MARKS
        )
        for key, label, meaning, deadline in SECTION_8_MARKS
    ]
    target = RESPONSE_TARGETS.get(summary.severity)
    response = None
    if target is not None:
        who = f"acknowledged by {summary.acknowledged_by}" if summary.acknowledged_by else ""
        response = _judge(
            "response",
            f"{summary.severity} < {short_duration(target)}",
            "Response by a person",
            target,
            since(summary.acknowledged),
            who,
            span,
        )
    return marks, response


def _first_steps(entries: Sequence[dict]) -> tuple[tuple[float, str] | None, tuple[float, str] | None]:
    """(ts, step) of the first step started, and of the first started that changes something."""
    first = acting = None
    for entry in entries:
        if entry["kind"] != kinds.STEP_INTENT:
            continue
        step, action = entry["data"].get("step", ""), entry["data"].get("action", "")
        if first is None:
            first = (float(entry["ts"]), step)
        if acting is None and action not in PASSIVE_ACTIONS and not str(step).endswith(".compensate"):
            acting = (float(entry["ts"]), step)
    return first, acting


def _judge(
    key: str,
    label: str,
    meaning: str,
    deadline: float,
    reached: float | None,
    how: str,
    span: float,
    never: bool = False,
) -> Mark:
    """`never`: the mark can no longer be reached (the run that would reach it has ended)."""
    if reached is not None:
        status = "met" if reached <= deadline else "late"
    else:
        status = "missed" if never or span > deadline else "open"
    return Mark(key, label, meaning, deadline, reached, how if reached is not None else "", status)
