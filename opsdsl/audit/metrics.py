"""The seed runbook's section-12 figures, computed from ledger entries alone.

Per severity: runs, outcomes, MTTA, MTTR, the auto-mitigation success rate and RCA
completion, compared with the seed's targets. The definitions of *when* a run was
detected, acknowledged, mitigated and resolved live here (`summarize_run`), and incident
records (`opsdsl.audit.incident`) use the same ones, so a record and a report never disagree.
docs/incidents.md states every definition for users.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from opsdsl.audit import entries as kinds

SEVERITIES = ("SEV-1", "SEV-2", "SEV-3", "SEV-4")
# Steps that tell, record or wait rather than change the system: they do not mitigate.
PASSIVE_ACTIONS = frozenset({"notify", "report.rca", "evidence.collect", "approval", "wait", "assert"})
RCA_ACTION = "report.rca"
RCA_WINDOW = 24 * 3600.0
FINISHED = ("succeeded", "failed", "refused")


# --- one run --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """When one run was detected, acknowledged, mitigated and resolved, and how it ended.

    Times are epoch seconds. `status` is run.finished's status, else "paused",
    "interrupted" or "running" after the last such entry. `human` is run.finished's flag
    (None while unfinished).
    """

    run: str
    severity: str
    playbook: str
    pack: str
    dry_run: bool
    parent_run: str | None
    created: float
    detected: float
    acknowledged: float | None
    acknowledged_by: str | None  # a person's name, or "automation" for the first step
    acknowledged_via: str | None  # the entry kind that acknowledged
    mitigated: float | None
    resolved: float | None
    finished: float | None
    status: str
    human: bool | None
    retries: int
    rca_expected: bool  # the run has a report.rca step
    rca_completed: float | None  # when that step succeeded

    @property
    def acknowledge_delay(self) -> float | None:
        """Seconds from detection to acknowledgement; a detection clock ahead of ours counts as 0."""
        return None if self.acknowledged is None else max(0.0, self.acknowledged - self.detected)

    @property
    def resolve_delay(self) -> float | None:
        """Seconds from detection to a successful finish."""
        return None if self.resolved is None else max(0.0, self.resolved - self.detected)


def summarize_run(entries: Sequence[dict]) -> RunSummary:
    """Summarise one run from its entries (in ledger order); ValueError without run.created.

    acknowledged: the earliest of a run.acknowledged entry, an approval.recorded entry, or
    the run's first step.intent: an automated responder acting on the incident
    acknowledges it as surely as a person pressing "ack".
    mitigated: the last successful step that changes something (not a compensation, and
    not one of PASSIVE_ACTIONS), in a run that finished succeeded.
    resolved: run.finished's time when it succeeded.
    """
    created = next((entry for entry in entries if entry["kind"] == kinds.RUN_CREATED), None)
    if created is None:
        raise ValueError("no run.created entry for this run")
    data = created["data"]
    detected = data.get("detected_at")
    detected = float(detected) if isinstance(detected, int | float) else float(created["ts"])

    acknowledged: tuple[float, str, str] | None = None
    actions: dict[str, str] = {}
    last_acting: float | None = None
    rca_expected = False
    rca_completed: float | None = None
    finished: dict | None = None
    finished_ts: float | None = None
    status = "running"
    retries = 0
    for entry in entries:
        kind, ts, payload = entry["kind"], float(entry["ts"]), entry["data"]
        candidate = None
        if kind == kinds.RUN_ACKNOWLEDGED or kind == kinds.APPROVAL_RECORDED:
            candidate = (ts, payload.get("by") or "unknown", kind)
        elif kind == kinds.STEP_INTENT:
            actions.setdefault(payload["step"], payload.get("action", ""))
            candidate = (ts, "automation", kind)
            if payload.get("action") == RCA_ACTION:
                rca_expected = True
        elif kind == kinds.ATTEMPT_FAILED:
            retries += 1
        elif kind == kinds.STEP_SUCCEEDED:
            action = actions.get(payload["step"], "")
            if action == RCA_ACTION and rca_completed is None:
                rca_completed = ts
            if action not in PASSIVE_ACTIONS and not payload["step"].endswith(".compensate"):
                last_acting = ts
        elif kind == kinds.RUN_FINISHED:
            finished, finished_ts, status = payload, ts, payload.get("status", "failed")
        elif kind in (kinds.RUN_PAUSED, kinds.RUN_INTERRUPTED, kinds.RUN_STARTED) and finished is None:
            status = {kinds.RUN_PAUSED: "paused", kinds.RUN_INTERRUPTED: "interrupted"}.get(kind, "running")
        if candidate is not None and (acknowledged is None or candidate[0] < acknowledged[0]):
            acknowledged = candidate

    succeeded = status == "succeeded"
    return RunSummary(
        run=created["run"],
        severity=data.get("severity") or "unknown",
        playbook=data.get("playbook") or "",
        pack=data.get("pack") or "",
        dry_run=bool(data.get("dry_run")),
        parent_run=data.get("parent_run"),
        created=float(created["ts"]),
        detected=detected,
        acknowledged=acknowledged[0] if acknowledged else None,
        acknowledged_by=acknowledged[1] if acknowledged else None,
        acknowledged_via=acknowledged[2] if acknowledged else None,
        mitigated=last_acting if succeeded else None,
        resolved=finished_ts if succeeded else None,
        finished=finished_ts,
        status=status,
        human=bool(finished.get("human")) if finished is not None else None,
        retries=retries,
        rca_expected=rca_expected,
        rca_completed=rca_completed,
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
    mtta: float | None  # seconds, mean over `acknowledged` runs
    acknowledged: int
    mttr: float | None  # seconds, mean over `resolved` runs
    resolved: int
    auto_succeeded: int
    auto_finished: int
    rca_on_time: int
    rca_expected: int

    @property
    def auto_mitigation(self) -> float | None:
        return self.auto_succeeded / self.auto_finished if self.auto_finished else None

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
            "mtta_seconds": _round(self.mtta),
            "acknowledged": self.acknowledged,
            "mttr_seconds": _round(self.mttr),
            "resolved": self.resolved,
            "auto_mitigation": {
                "rate": _round(self.auto_mitigation),
                "succeeded": self.auto_succeeded,
                "finished": self.auto_finished,
            },
            "rca_completion": {
                "rate": _round(self.rca_completion),
                "within_24h": self.rca_on_time,
                "expected": self.rca_expected,
            },
        }


def figures_of(severity: str, runs: Sequence[RunSummary]) -> Figures:
    """Aggregate run summaries into figures (see the module docs and docs/incidents.md)."""
    finished = [run for run in runs if run.status in FINISHED]
    ack = [run.acknowledge_delay for run in runs if run.acknowledge_delay is not None]
    res = [run.resolve_delay for run in runs if run.resolve_delay is not None]
    auto = [run for run in finished if run.human is False]
    rca = [run for run in finished if run.rca_expected]
    return Figures(
        severity=severity,
        runs=len(runs),
        finished=len(finished),
        succeeded=sum(run.status == "succeeded" for run in runs),
        failed=sum(run.status == "failed" for run in runs),
        refused=sum(run.status == "refused" for run in runs),
        mtta=_mean(ack),
        acknowledged=len(ack),
        mttr=_mean(res),
        resolved=len(res),
        auto_succeeded=sum(run.status == "succeeded" for run in auto),
        auto_finished=len(auto),
        rca_on_time=sum(
            run.rca_completed is not None and run.rca_completed - run.detected <= RCA_WINDOW for run in rca
        ),
        rca_expected=len(rca),
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

    def to_dict(self) -> dict:
        return {
            "metric": self.target.metric,
            "severity": self.target.severity,
            "target": f"{self.target.comparison} {self.target.threshold:g}",
            "label": self.target.label,
            "value": _round(self.value),
            "sample": self.sample,
            "verdict": self.verdict,
        }


def judge(target: Target, figures: Figures) -> Verdict:
    value, sample = {
        "mtta": (figures.mtta, figures.acknowledged),
        "mttr": (figures.mttr, figures.resolved),
        "auto_mitigation": (figures.auto_mitigation, figures.auto_finished),
        "rca_completion": (figures.rca_completion, figures.rca_expected),
    }[target.metric]
    if value is None:
        return Verdict(target, None, sample, "no data")
    met = value < target.threshold if target.comparison == "<" else value >= target.threshold
    return Verdict(target, value, sample, "met" if met else "missed")


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
) -> Report:
    """Section-12 figures for the runs detected in [since, until) (epoch seconds or dates, UTC).

    Dry runs and child runs (playbook.call; their parent is the incident) are left out and
    counted in `excluded`, as are runs whose run.created entry is not in `entries`.
    """
    start, end = _as_ts(since), _as_ts(until)
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
    severities = tuple(figures_of(name, [run for run in summaries if run.severity == name]) for name in names)
    overall = figures_of("all", summaries)
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
    "rca_completion": "no finished run with a report.rca step",
}


def _verdict_value(verdict: Verdict) -> str:
    if verdict.value is None:
        return _NO_DATA[verdict.target.metric]
    runs = f"{verdict.sample} run{'s' if verdict.sample != 1 else ''}"
    if verdict.target.metric in ("mtta", "mttr"):
        return f"{format_duration(verdict.value)} over {runs}"
    return f"{verdict.value * 100:.0f} % of {runs}"


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
            "MTTR",
            "Auto-mitigation",
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
                    "–" if figures.mttr is None else format_duration(figures.mttr),
                    _rate(figures.auto_succeeded, figures.auto_finished),
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
    lines += ["", "Targets (seed runbook §12)"]
    width = max(len(verdict.target.label) for verdict in report.verdicts)
    for verdict in report.verdicts:
        lines.append(f"  {_MARKS[verdict.verdict]} {verdict.target.label.ljust(width)}  {_verdict_value(verdict)}")
    return "\n".join(lines) + "\n"
