"""The seed runbook's section-12 figures, computed from ledger entries alone.

Per severity: runs, outcomes, MTTA, MTTR, the auto-mitigation success rate and RCA
completion, compared with the seed's targets. The definitions of *when* a run was
detected, acknowledged, mitigated and resolved live here (`summarize_run`), and incident
records (`opsdsl.audit.incident`) use the same ones, so a record and a report never disagree.
docs/incidents.md states every definition for users.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from opsdsl.audit import entries as kinds

SEVERITIES = ("SEV-1", "SEV-2", "SEV-3", "SEV-4")
# Steps that tell, record or wait rather than change the system: they do not mitigate.
PASSIVE_ACTIONS = frozenset({"notify", "report.rca", "evidence.collect", "approval", "wait", "assert"})
RCA_WINDOW = 24 * 3600.0  # seed §8: "T+24h RCA & prevention measures published"
# How far before our receipt an event's own time is believed: the slowest initial response
# of seed §3 (SEV-4, < 24 h). Older, or later than our receipt, is a clock we cannot trust.
MAX_DETECTION_LEAD = 24 * 3600.0
FINISHED = ("succeeded", "failed", "refused", "cancelled")
# Entries by which a person acknowledges an incident (an approval or decision is one too).
# The seed runbook's section 3: each severity's initial response time, in seconds. A person
# should acknowledge the incident within it; runtime/escalation.py escalates when nobody does.
RESPONSE_TIMES = {"SEV-1": 300.0, "SEV-2": 900.0, "SEV-3": 3600.0, "SEV-4": 86400.0}
PERSON_ACKS = (kinds.RUN_ACKNOWLEDGED, kinds.APPROVAL_RECORDED, kinds.STEP_DECIDED)
# Entries that show a run needed a person: it asked for one, or one steered it.
NEEDS_PERSON = (kinds.APPROVAL_REQUESTED, kinds.APPROVAL_RECORDED, kinds.STEP_IN_DOUBT, kinds.STEP_DECIDED)


def bounded_detection(claimed: object, received: float) -> tuple[float, bool]:
    """(detection time, clamped?): the event's own time if within [received − 24 h, received], else `received`.

    A sender's clock is not ours: a `startsAt` in the future would make MTTA 0, one in 1970
    would make it 55 years. Either is replaced by our receipt time, and counted.
    """
    if isinstance(claimed, int | float) and not isinstance(claimed, bool):
        value = float(claimed)
        if received - MAX_DETECTION_LEAD <= value <= received:
            return value, False
    return received, True


def first_acknowledgement(entries: Iterable[dict]) -> dict | None:
    """The earliest acknowledgement by a person, `{by, ts, kind}`, in one run's entries."""
    found = None
    for entry in entries:
        earlier = found is None or float(entry["ts"]) < found["ts"]
        if entry["kind"] in PERSON_ACKS and entry["data"].get("by") and earlier:
            found = {"by": entry["data"]["by"], "ts": float(entry["ts"]), "kind": entry["kind"]}
    return found


# --- one run --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """When one run was detected, acknowledged, mitigated, resolved and reviewed, and how it ended.

    Times are epoch seconds. `status` is run.finished's status, else "paused",
    "interrupted" or "running" after the last such entry. `human` is run.finished's flag
    (None while unfinished); `needed_person` is computed from the entries (see NEEDS_PERSON).
    """

    run: str
    severity: str
    playbook: str
    pack: str
    dry_run: bool
    parent_run: str | None
    created: float
    received: float
    claimed_detected: float | None  # what the event said, believed or not
    detected: float
    detection_clamped: bool
    acknowledged: float | None
    acknowledged_by: str | None  # a person's name
    acknowledged_via: str | None  # the entry kind that acknowledged
    mitigated: float | None
    resolved: float | None
    finished: float | None
    status: str
    human: bool | None
    needed_person: bool
    retries: int
    reviewed: float | None  # the first review by a person
    review: dict | None  # the latest review: {by, ts, root_cause, impact, follow_ups, revision}

    @property
    def acknowledge_delay(self) -> float | None:
        """Seconds from detection to a person's acknowledgement (never negative)."""
        return None if self.acknowledged is None else max(0.0, self.acknowledged - self.detected)

    @property
    def resolve_delay(self) -> float | None:
        """Seconds from detection to a successful finish."""
        return None if self.resolved is None else max(0.0, self.resolved - self.detected)


def summarize_run(entries: Sequence[dict]) -> RunSummary:
    """Summarise one run from its entries (in ledger order); ValueError without run.created.

    detected: the event's time (`detected_at`), bounded by `bounded_detection` to the day
    before our receipt (`received_at`, else run.created's time).
    acknowledged: the first run.acknowledged, approval.recorded or step.decided entry, all of
    them a person's act; automation starting a step acknowledges nothing.
    mitigated: the last successful step that changes something (not a compensation, and
    not one of PASSIVE_ACTIONS), in a run that finished succeeded.
    resolved: run.finished's time when it succeeded.
    reviewed: the first incident.reviewed entry (a person's RCA).
    """
    created = next((entry for entry in entries if entry["kind"] == kinds.RUN_CREATED), None)
    if created is None:
        raise ValueError("no run.created entry for this run")
    data = created["data"]
    received = data.get("received_at")
    received = float(received) if isinstance(received, int | float) and received else float(created["ts"])
    received = min(received, float(created["ts"]))  # we cannot have received it after acting on it
    claimed = data.get("detected_at")
    detected, clamped = bounded_detection(claimed, received)

    acknowledged = first_acknowledgement(entries)
    actions: dict[str, str] = {}
    last_acting: float | None = None
    finished: dict | None = None
    finished_ts: float | None = None
    status = "running"
    retries = 0
    needed_person = False
    reviewed: float | None = None
    review: dict | None = None
    revisions = 0
    for entry in entries:
        kind, ts, payload = entry["kind"], float(entry["ts"]), entry["data"]
        if kind in NEEDS_PERSON:
            needed_person = True
        if kind == kinds.STEP_INTENT:
            actions.setdefault(payload["step"], payload.get("action", ""))
        elif kind == kinds.ATTEMPT_FAILED:
            retries += 1
        elif kind == kinds.STEP_SUCCEEDED:
            action = actions.get(payload["step"], "")
            if action not in PASSIVE_ACTIONS and not payload["step"].endswith(".compensate"):
                last_acting = ts
        elif kind == kinds.RUN_FINISHED:
            finished, finished_ts, status = payload, ts, payload.get("status", "failed")
        elif kind in (kinds.RUN_PAUSED, kinds.RUN_INTERRUPTED, kinds.RUN_STARTED) and finished is None:
            status = {kinds.RUN_PAUSED: "paused", kinds.RUN_INTERRUPTED: "interrupted"}.get(kind, "running")
        elif kind == kinds.INCIDENT_REVIEWED and payload.get("by"):
            reviewed = ts if reviewed is None else reviewed
            revisions += 1
            review = {
                "by": payload["by"],
                "ts": ts,
                "root_cause": payload.get("root_cause"),
                "impact": payload.get("impact"),
                "follow_ups": list(payload.get("follow_ups") or []),
                "revision": revisions,
            }

    succeeded = status == "succeeded"
    return RunSummary(
        run=created["run"],
        severity=data.get("severity") or "unknown",
        playbook=data.get("playbook") or "",
        pack=data.get("pack") or "",
        dry_run=bool(data.get("dry_run")),
        parent_run=data.get("parent_run"),
        created=float(created["ts"]),
        received=received,
        claimed_detected=float(claimed) if isinstance(claimed, int | float) and not isinstance(claimed, bool) else None,
        detected=detected,
        detection_clamped=clamped,
        acknowledged=acknowledged["ts"] if acknowledged else None,
        acknowledged_by=acknowledged["by"] if acknowledged else None,
        acknowledged_via=acknowledged["kind"] if acknowledged else None,
        mitigated=last_acting if succeeded else None,
        resolved=finished_ts if succeeded else None,
        finished=finished_ts,
        status=status,
        human=bool(finished.get("human")) if finished is not None else None,
        needed_person=needed_person,
        retries=retries,
        reviewed=reviewed,
        review=review,
    )


# --- figures --------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """The section-12 figures for one severity (or "all"). Rates are None without a denominator."""

    severity: str
    runs: int
    finished: int
    succeeded: int
    failed: int
    refused: int
    clamped: int  # runs whose event time was not believed (see bounded_detection)
    mtta: float | None  # seconds, mean over `acknowledged` runs
    acknowledged: int
    unacknowledged: int  # runs no person acknowledged (yet)
    mttr: float | None  # seconds, mean over `resolved` runs
    resolved: int
    auto_succeeded: int
    auto_finished: int
    person_succeeded: int
    person_finished: int
    rca_on_time: int
    rca_late: int
    rca_missing: int  # finished, unreviewed, and the 24 h are over
    rca_pending: int  # finished, unreviewed, still inside the 24 h: not yet counted
    ack_in_time: int = 0  # acknowledged within the severity's response time (RESPONSE_TIMES)

    @property
    def auto_mitigation(self) -> float | None:
        return self.auto_succeeded / self.auto_finished if self.auto_finished else None

    @property
    def rca_expected(self) -> int:
        return self.rca_on_time + self.rca_late + self.rca_missing

    @property
    def rca_completion(self) -> float | None:
        return self.rca_on_time / self.rca_expected if self.rca_expected else None

    def to_dict(self) -> dict:
        return {
            "runs": self.runs,
            "finished": self.finished,
            "unfinished": self.runs - self.finished,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "refused": self.refused,
            "detection_clamped": self.clamped,
            "mtta_seconds": _round(self.mtta),
            "acknowledged": self.acknowledged,
            "unacknowledged": self.unacknowledged,
            "mttr_seconds": _round(self.mttr),
            "resolved": self.resolved,
            "auto_mitigation": {
                "rate": _round(self.auto_mitigation),
                "succeeded": self.auto_succeeded,
                "finished": self.auto_finished,
            },
            "with_people": {"succeeded": self.person_succeeded, "finished": self.person_finished},
            "response": {
                "target_seconds": RESPONSE_TIMES.get(self.severity),
                "acknowledged_in_time": self.ack_in_time,
                "acknowledged_late": self.acknowledged - self.ack_in_time,
                "never_acknowledged": self.unacknowledged,
            },
            "rca_completion": {
                "rate": _round(self.rca_completion),
                "within_24h": self.rca_on_time,
                "late": self.rca_late,
                "missing": self.rca_missing,
                "pending": self.rca_pending,
                "expected": self.rca_expected,
            },
        }


def figures_of(severity: str, runs: Sequence[RunSummary], now: float) -> Figures:
    """Aggregate run summaries into figures (see the module docs and docs/incidents.md)."""
    finished = [run for run in runs if run.status in FINISHED]
    ack = [run.acknowledge_delay for run in runs if run.acknowledge_delay is not None]
    res = [run.resolve_delay for run in runs if run.resolve_delay is not None]
    auto = [run for run in finished if not run.needed_person]
    people = [run for run in finished if run.needed_person]
    on_time = [run for run in finished if run.reviewed is not None and run.reviewed - run.detected <= RCA_WINDOW]
    late = [run for run in finished if run.reviewed is not None and run.reviewed - run.detected > RCA_WINDOW]
    unreviewed = [run for run in finished if run.reviewed is None]
    return Figures(
        severity=severity,
        runs=len(runs),
        finished=len(finished),
        succeeded=sum(run.status == "succeeded" for run in runs),
        failed=sum(run.status == "failed" for run in runs),
        refused=sum(run.status == "refused" for run in runs),
        clamped=sum(run.detection_clamped for run in runs),
        mtta=_mean(ack),
        acknowledged=len(ack),
        unacknowledged=len(runs) - len(ack),
        mttr=_mean(res),
        resolved=len(res),
        auto_succeeded=sum(run.status == "succeeded" for run in auto),
        auto_finished=len(auto),
        person_succeeded=sum(run.status == "succeeded" for run in people),
        person_finished=len(people),
        rca_on_time=len(on_time),
        rca_late=len(late),
        rca_missing=sum(now - run.detected > RCA_WINDOW for run in unreviewed),
        rca_pending=sum(now - run.detected <= RCA_WINDOW for run in unreviewed),
        ack_in_time=sum(
            run.acknowledge_delay is not None and run.acknowledge_delay <= RESPONSE_TIMES.get(run.severity, 0.0)
            for run in runs
        ),
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# --- targets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One row of the seed's section-12 table: metric, whom it applies to, and the bar."""

    metric: str  # "mtta" | "mttr" | "auto_mitigation" | "rca_completion"
    severity: str  # a severity, or "all"
    comparison: str  # "<" or ">="
    threshold: float  # seconds for times, a fraction for rates
    label: str


TARGETS = (
    Target("mtta", "SEV-1", "<", 300.0, "MTTA SEV-1 < 5 min"),
    Target("mttr", "SEV-1", "<", 1800.0, "MTTR SEV-1 < 30 min"),
    Target("auto_mitigation", "SEV-2", ">=", 0.8, "Auto-mitigation SEV-2 ≥ 80 %"),
    Target("rca_completion", "all", ">=", 1.0, "RCA within 24 h, all incidents"),
)


@dataclass(frozen=True)
class Verdict:
    target: Target
    value: float | None
    sample: int  # how many runs the value is computed over
    verdict: str  # "met" | "missed" | "no data"
    note: str = ""  # what the value leaves out, said beside it

    def to_dict(self) -> dict:
        return {
            "metric": self.target.metric,
            "severity": self.target.severity,
            "target": f"{self.target.comparison} {self.target.threshold:g}",
            "label": self.target.label,
            "value": _round(self.value),
            "sample": self.sample,
            "verdict": self.verdict,
            "note": self.note or None,
        }


def judge(target: Target, figures: Figures) -> Verdict:
    value, sample = {
        "mtta": (figures.mtta, figures.acknowledged),
        "mttr": (figures.mttr, figures.resolved),
        "auto_mitigation": (figures.auto_mitigation, figures.auto_finished),
        "rca_completion": (figures.rca_completion, figures.rca_expected),
    }[target.metric]
    notes = {
        "mtta": [f"{figures.unacknowledged} never acknowledged by a person"] if figures.unacknowledged else [],
        "mttr": [f"{figures.finished - figures.resolved} finished unresolved"]
        if figures.finished > figures.resolved
        else [],
        "auto_mitigation": [f"{figures.person_finished} run(s) that needed a person reported apart"]
        if figures.person_finished
        else [],
        "rca_completion": [
            text
            for count, text in (
                (figures.rca_late, f"{figures.rca_late} reviewed late"),
                (figures.rca_missing, f"{figures.rca_missing} never reviewed"),
                (figures.rca_pending, f"{figures.rca_pending} still inside their 24 h"),
            )
            if count
        ],
    }[target.metric]
    note = "; ".join(notes)
    if value is None:
        return Verdict(target, None, sample, "no data", note)
    met = value < target.threshold if target.comparison == "<" else value >= target.threshold
    return Verdict(target, value, sample, "met" if met else "missed", note)


# --- the report -----------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Figures per severity and overall, the verdicts against the targets, and what was left out."""

    since: float | None
    until: float | None
    severities: tuple[Figures, ...]
    overall: Figures
    verdicts: tuple[Verdict, ...]
    excluded: dict[str, int]  # "dry_run", "child", "incomplete" → runs left out

    def to_dict(self) -> dict:
        return {
            "apiVersion": "opsdsl/v1",
            "kind": "Report",
            "since": _iso(self.since),
            "until": _iso(self.until),
            "runs": self.overall.runs,
            "excluded": dict(sorted(self.excluded.items())),
            "severities": {figures.severity: figures.to_dict() for figures in self.severities},
            "all": self.overall.to_dict(),
            "targets": [verdict.to_dict() for verdict in self.verdicts],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def to_text(self) -> str:
        return render_text(self)


def compute_report(
    entries: Iterable[dict],
    *,
    since: datetime | date | float | None = None,
    until: datetime | date | float | None = None,
    now: float | None = None,
) -> Report:
    """Section-12 figures for the runs detected in [since, until) (epoch seconds or dates, UTC).

    Dry runs and child runs (playbook.call; their parent is the incident) are left out and
    counted in `excluded`, as are runs whose run.created entry is not in `entries`. `now`
    (default: the clock) decides whether an unreviewed run's 24 h for its RCA are over.
    """
    start, end = _as_ts(since), _as_ts(until)
    now = time.time() if now is None else float(now)
    by_run: dict[str, list[dict]] = {}
    for entry in entries:
        if entry.get("run") is not None and entry.get("kind") in kinds.RUN_KINDS:
            by_run.setdefault(entry["run"], []).append(entry)
    excluded = {"dry_run": 0, "child": 0, "incomplete": 0}
    summaries: list[RunSummary] = []
    for run_entries in by_run.values():
        run_entries.sort(key=lambda entry: entry["seq"])
        try:
            summary = summarize_run(run_entries)
        except ValueError:
            excluded["incomplete"] += 1
            continue
        if (start is not None and summary.detected < start) or (end is not None and summary.detected >= end):
            continue
        if summary.dry_run:
            excluded["dry_run"] += 1
        elif summary.parent_run:
            excluded["child"] += 1
        else:
            summaries.append(summary)
    names = list(SEVERITIES) + sorted({run.severity for run in summaries} - set(SEVERITIES))
    severities = tuple(figures_of(name, [run for run in summaries if run.severity == name], now) for name in names)
    overall = figures_of("all", summaries, now)
    table = {figures.severity: figures for figures in severities} | {"all": overall}
    verdicts = tuple(judge(target, table[target.severity]) for target in TARGETS)
    return Report(start, end, severities, overall, verdicts, excluded)


def _as_ts(value: datetime | date | float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    return float(value)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# --- text -----------------------------------------------------------------------------

_MARKS = {"met": "✓", "missed": "✗", "no data": "–"}


def format_duration(seconds: float) -> str:
    """`45s`, `4m12s`, `1h02m`, `2d03h`: short, and the same for the same number."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms" if seconds > 0 else "0s"
    total = round(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _rate(numerator: int, denominator: int) -> str:
    if not denominator:
        return "–"
    return f"{numerator / denominator * 100:.0f} % ({numerator}/{denominator})"


_NO_DATA = {
    "mtta": "no acknowledged runs",
    "mttr": "no resolved runs",
    "auto_mitigation": "no run finished without a person",
    "rca_completion": "no finished run past its 24 h or reviewed",
}


def _verdict_value(verdict: Verdict) -> str:
    note = f" ({verdict.note})" if verdict.note else ""
    if verdict.value is None:
        return _NO_DATA[verdict.target.metric] + note
    runs = f"{verdict.sample} run{'s' if verdict.sample != 1 else ''}"
    if verdict.target.metric in ("mtta", "mttr"):
        return f"{format_duration(verdict.value)} over {runs}{note}"
    return f"{verdict.value * 100:.0f} % of {runs}{note}"


def render_text(report: Report) -> str:
    """A table per severity, then each target with ✓ (met), ✗ (missed) or – (no data)."""
    period = f"detected {_iso(report.since) or 'any time'} … {_iso(report.until) or 'now'}"
    lines = [f"opsdsl report: {report.overall.runs} run{'s' if report.overall.runs != 1 else ''} {period}"]
    left_out = [f"{count} {what.replace('_', ' ')}" for what, count in sorted(report.excluded.items()) if count]
    if left_out:
        lines.append(f"left out: {', '.join(left_out)} run(s)")
    lines.append("")
    if not report.overall.runs:
        lines.append("no runs")
    else:
        header = (
            "Severity",
            "Runs",
            "Succeeded",
            "Failed",
            "Unfinished",
            "MTTA",
            "Unacked",
            "MTTR",
            "Auto-mitigation",
            "With people",
            "RCA ≤ 24 h",
        )
        rows = [header]
        for figures in (*report.severities, report.overall):
            rows.append(
                (
                    "All" if figures.severity == "all" else figures.severity,
                    str(figures.runs),
                    str(figures.succeeded),
                    str(figures.failed + figures.refused),
                    str(figures.runs - figures.finished),
                    "–" if figures.mtta is None else format_duration(figures.mtta),
                    str(figures.unacknowledged),
                    "–" if figures.mttr is None else format_duration(figures.mttr),
                    _rate(figures.auto_succeeded, figures.auto_finished),
                    _rate(figures.person_succeeded, figures.person_finished),
                    _rate(figures.rca_on_time, figures.rca_expected),
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
        for row in rows:
            cells = [
                cell.ljust(width) if column == 0 else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        if report.overall.clamped:
            lines += [
                "",
                f"detection clamped to receipt for {report.overall.clamped} run(s): the event's time was in the "
                "future or more than 24 h before opsdsl received it",
            ]
    response = [f for f in report.severities if f.severity in RESPONSE_TIMES and f.runs]
    if response:
        lines += ["", "Time to acknowledge against the response times (seed runbook §3)"]
        for figures in response:
            target = format_duration(RESPONSE_TIMES[figures.severity])
            late = figures.acknowledged - figures.ack_in_time
            lines.append(
                f"  {figures.severity} < {target}: {figures.ack_in_time} of {figures.runs} acknowledged in time, "
                f"{late} late, {figures.unacknowledged} never"
            )
    lines += ["", "Targets (seed runbook §12)"]
    width = max(len(verdict.target.label) for verdict in report.verdicts)
    for verdict in report.verdicts:
        lines.append(f"  {_MARKS[verdict.verdict]} {verdict.target.label.ljust(width)}  {_verdict_value(verdict)}")
    return "\n".join(lines) + "\n"
