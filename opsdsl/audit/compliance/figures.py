"""What the compliance report says, computed from ledger entries alone (and the ledger's verification).

The period is [since, until) in UTC, by detection time, as `opsdsl report` selects runs
(metrics.compute_report: dry runs and child runs left out). Only entries written before
`until` are read, and `until` is also the "now" that decides whether an RCA's 24 h are
over, so the same ledger and period always give the same report, however late it is made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opsdsl.audit import entries as kinds
from opsdsl.audit.metrics import (
    RESPONSE_TIMES,
    SEVERITIES,
    Report,
    RunSummary,
    compute_report,
    format_duration,
    summarize_run,
)

DEFAULT_LEVEL_NAMES = ("L1", "L2", "L3")  # the seed runbook's section 8, when nothing else is known


@dataclass(frozen=True)
class LedgerBasis:
    """What the report rests on: the ledger's entries it read, and whether the ledger verified.

    `verified` is None when the ledger could not be checked at all (no key to check with).
    `checkpoint` is the last signed checkpoint stored ({seq, head, ts, keyid}), if any.
    """

    first_seq: int | None
    last_seq: int | None
    entries: int  # entries written before the period's end: what the figures are computed from
    digest: str | None  # incident.record's entries_digest of those entries
    verified: bool | None
    verdict: str  # one line: "ledger intact: ..." or the first problem
    checkpoint: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "entries": self.entries,
            "entries_digest": self.digest,
            "verified": self.verified,
            "verdict": self.verdict,
            "checkpoint": self.checkpoint,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class Incident:
    """One incident of the period, as the report's table shows it."""

    summary: RunSummary
    incident_id: str
    levels: tuple[str, ...]  # the escalation levels it reached, in order
    reached_last: bool  # it reached the last level of its escalation (index == of)
    follow_ups_opened: int  # incident.follow_up_opened entries: issues opened in a tracker
    follow_ups_listed: int  # follow-ups in the latest review

    @property
    def response_time(self) -> float | None:
        return RESPONSE_TIMES.get(self.summary.severity)

    @property
    def acknowledged_in_time(self) -> bool | None:
        """None: never acknowledged (or no response time for the severity)."""
        delay, target = self.summary.acknowledge_delay, self.response_time
        if delay is None or target is None:
            return None
        return delay <= target

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "incident_id": self.incident_id,
            "run": s.run,
            "severity": s.severity,
            "pack": s.pack,
            "playbook": s.playbook,
            "detected": iso(s.detected),
            "acknowledged": iso(s.acknowledged),
            "acknowledged_by": s.acknowledged_by,
            "acknowledge_seconds": s.acknowledge_delay,
            "acknowledged_in_time": self.acknowledged_in_time,
            "status": s.status,
            "resolved": iso(s.resolved),
            "reviewed": iso(s.reviewed),
            "levels": list(self.levels),
            "reached_last_level": self.reached_last,
            "follow_ups_opened": self.follow_ups_opened,
            "follow_ups_listed": self.follow_ups_listed,
        }


@dataclass(frozen=True)
class People:
    """What people and policies decided in the period's incidents (and their child runs)."""

    policy_denials: int = 0  # policy.decision entries with decision "deny"
    approvals_requested: int = 0
    approved: int = 0  # approval.recorded "approve": one per person and step
    denied: int = 0  # approval.recorded "deny"
    timed_out: int = 0  # approval.timed_out
    decisions: int = 0  # step.decided: a person settled a step left in doubt
    acknowledgements: int = 0  # run.acknowledged

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ComplianceReport:
    since: float
    until: float
    report: Report  # the section-12 figures of the same period (metrics.py)
    incidents: tuple[Incident, ...]
    levels: tuple[str, ...]  # escalation level names, in order
    reached: Mapping[str, int]  # level name -> incidents that reached it
    people: People
    basis: LedgerBasis
    title: str = "Compliance report"
    extra: Mapping[str, Any] = field(default_factory=dict)  # what asked for it (a server's escalation)

    @property
    def reached_last(self) -> tuple[Incident, ...]:
        return tuple(incident for incident in self.incidents if incident.reached_last)

    def summary_sentences(self) -> list[str]:
        return executive_summary(self)

    def to_dict(self) -> dict[str, Any]:
        """Everything the PDF shows, as data: what its /ID is derived from."""
        return {
            "apiVersion": "opsdsl/v1",
            "kind": "ComplianceReport",
            "title": self.title,
            "since": iso(self.since),
            "until": iso(self.until),
            "summary": self.summary_sentences(),
            "figures": self.report.to_dict(),
            "incidents": [incident.to_dict() for incident in self.incidents],
            "escalations": {"levels": list(self.levels), "reached": dict(self.reached)},
            "people": self.people.to_dict(),
            "ledger": self.basis.to_dict(),
            "extra": dict(self.extra),
        }


def compute_compliance(
    entries: Iterable[dict],
    *,
    since: float,
    until: float,
    basis: LedgerBasis | None = None,
    levels: Sequence[str] = DEFAULT_LEVEL_NAMES,
    title: str = "Compliance report",
    extra: Mapping[str, Any] | None = None,
) -> ComplianceReport:
    """The compliance report of the incidents detected in [since, until) (epoch seconds, UTC).

    `entries`: the ledger's ({seq, ts, run, kind, data}); those written at or after `until`
    are not read. `basis`: the ledger's verification (runtime/compliance.py); without it
    the report says the ledger was not checked. `levels`: the escalation levels configured,
    in order (levels found in the entries are added).
    """
    if until <= since:
        raise ValueError("the period is empty: its end must come after its start")
    window = sorted((entry for entry in entries if float(entry["ts"]) < until), key=lambda entry: entry["seq"])
    report = compute_report(window, since=since, until=until, now=until)
    by_run: dict[str, list[dict]] = {}
    for entry in window:
        if entry.get("run") is not None:
            by_run.setdefault(entry["run"], []).append(entry)
    summaries: dict[str, RunSummary] = {}
    parents: dict[str, str] = {}
    for run, run_entries in by_run.items():
        try:
            summary = summarize_run(run_entries)
        except ValueError:
            continue
        if summary.parent_run:
            parents[run] = summary.parent_run
        elif not summary.dry_run and since <= summary.detected < until:
            summaries[run] = summary

    def incident_of(run: str) -> str | None:
        seen = set()
        while run in parents and run not in seen:  # a child run's decisions belong to its incident
            seen.add(run)
            run = parents[run]
        return run if run in summaries else None

    escalated: dict[str, dict[str, dict]] = {run: {} for run in summaries}
    opened: dict[str, int] = dict.fromkeys(summaries, 0)
    counts = dict.fromkeys(People.__dataclass_fields__, 0)
    for entry in window:
        run = incident_of(entry["run"]) if entry.get("run") is not None else None
        if run is None:
            continue
        kind, data = entry["kind"], entry["data"]
        if kind == kinds.INCIDENT_ESCALATED and run == entry["run"]:
            escalated[run].setdefault(str(data.get("level")), data)
        elif kind == kinds.INCIDENT_FOLLOW_UP_OPENED:
            opened[run] += 1
        elif kind == kinds.POLICY_DECISION and data.get("decision") == "deny":
            counts["policy_denials"] += 1
        elif kind == kinds.APPROVAL_REQUESTED:
            counts["approvals_requested"] += 1
        elif kind == kinds.APPROVAL_RECORDED:
            counts["approved" if data.get("decision") == "approve" else "denied"] += 1
        elif kind == kinds.APPROVAL_TIMED_OUT:
            counts["timed_out"] += 1
        elif kind == kinds.STEP_DECIDED:
            counts["decisions"] += 1
        elif kind == kinds.RUN_ACKNOWLEDGED:
            counts["acknowledgements"] += 1

    names = list(levels)
    for seen in escalated.values():
        for name, _data in sorted(seen.items(), key=lambda item: _index(item[1])):
            if name not in names:
                names.append(name)
    incidents = []
    for run, summary in summaries.items():
        seen = escalated[run]
        order = sorted(seen, key=lambda name: (_index(seen[name]), name))
        last = any(_index(data) >= _of(data) > 0 for data in seen.values())
        review = summary.review or {}
        incidents.append(
            Incident(
                summary=summary,
                incident_id=str(by_run[run][0]["data"].get("incident_id") or run),
                levels=tuple(order),
                reached_last=last,
                follow_ups_opened=opened[run],
                follow_ups_listed=len(review.get("follow_ups") or []),
            )
        )
    incidents.sort(key=lambda incident: (incident.summary.detected, incident.summary.run))
    reached = {name: sum(name in incident.levels for incident in incidents) for name in names}
    if basis is None:
        basis = ledger_basis(window, verified=None, verdict="the ledger was not verified for this report")
    return ComplianceReport(
        since=float(since),
        until=float(until),
        report=report,
        incidents=tuple(incidents),
        levels=tuple(names),
        reached=reached,
        people=People(**counts),
        basis=basis,
        title=title,
        extra=dict(extra or {}),
    )


def ledger_basis(
    window: Sequence[dict],
    *,
    verified: bool | None,
    verdict: str,
    checkpoint: dict[str, Any] | None = None,
    problems: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> LedgerBasis:
    """The basis of a report from the entries it read (in seq order) and the ledger's verification."""
    from opsdsl.audit.incident.record import entries_digest

    return LedgerBasis(
        first_seq=window[0]["seq"] if window else None,
        last_seq=window[-1]["seq"] if window else None,
        entries=len(window),
        digest=entries_digest(window) if window else None,
        verified=verified,
        verdict=verdict,
        checkpoint=checkpoint,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def _index(data: Mapping[str, Any]) -> int:
    value = data.get("index")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _of(data: Mapping[str, Any]) -> int:
    value = data.get("of")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- the executive summary ------------------------------------------------------------


def executive_summary(report: ComplianceReport) -> list[str]:
    """Three to five plain sentences from the figures: what happened, how fast people were,
    how far it escalated, the targets, and what the figures rest on."""
    period = f"between {day(report.since)} and {day(report.until)} (UTC)"
    incidents = report.incidents
    sentences = []
    if not incidents:
        sentences.append(f"No incidents were detected {period}.")
    else:
        per = [
            f"{count} {severity}"
            for severity in (*SEVERITIES, *sorted({i.summary.severity for i in incidents} - set(SEVERITIES)))
            if (count := sum(i.summary.severity == severity for i in incidents))
        ]
        resolved = sum(i.summary.status == "succeeded" for i in incidents)
        failed = sum(i.summary.status in ("failed", "refused", "cancelled") for i in incidents)
        still = len(incidents) - resolved - failed
        sentences.append(
            f"{_count(len(incidents), 'incident')} {'was' if len(incidents) == 1 else 'were'} detected {period} "
            f"({', '.join(per)}): {resolved} resolved, {failed} ended without resolution"
            f"{f' and {still} still open' if still else ''}."
        )
        timed = [i for i in incidents if i.response_time is not None]
        in_time = sum(i.acknowledged_in_time is True for i in timed)
        never = sum(i.summary.acknowledged is None for i in timed)
        if timed:
            sentences.append(
                f"{in_time} of {len(timed)} {'was' if len(timed) == 1 else 'were'} acknowledged by a person within "
                f"their severity's response time; {never} {'was' if never == 1 else 'were'} never acknowledged."
            )
        escalated = [i for i in incidents if i.levels]
        last = report.reached_last
        if not escalated:
            sentences.append("No incident escalated.")
        else:
            top = report.levels[-1] if report.levels else "the last level"
            tail = (
                f"; {_count(len(last), 'incident')} reached the last level ({top}): "
                + ", ".join(i.incident_id for i in last[:5])
                + (f" and {len(last) - 5} more" if len(last) > 5 else "")
                if last
                else f"; none reached the last level ({top})"
            )
            sentences.append(f"{_count(len(escalated), 'incident')} escalated{tail}.")
    verdicts = report.report.verdicts
    met = [v.target.label for v in verdicts if v.verdict == "met"]
    missed = [v.target.label for v in verdicts if v.verdict == "missed"]
    if met or missed:
        parts = []
        if met:
            parts.append(f"met {len(met)} ({'; '.join(met)})")
        if missed:
            parts.append(f"missed {len(missed)} ({'; '.join(missed)})")
        nodata = len(verdicts) - len(met) - len(missed)
        tail = f"; {nodata} had no data" if nodata else ""
        sentences.append(f"Of the runbook's {len(verdicts)} targets, the period {' and '.join(parts)}{tail}.")
    else:
        sentences.append(f"None of the runbook's {len(verdicts)} targets could be measured in this period.")
    sentences.append(basis_sentence(report.basis))
    return sentences[:5]


def basis_sentence(basis: LedgerBasis) -> str:
    read = (
        f"{basis.entries} ledger {'entry' if basis.entries == 1 else 'entries'} (seq {basis.first_seq}–{basis.last_seq})"
        if basis.entries
        else "no ledger entries"
    )
    if basis.verified is True:
        state = "the ledger verified intact"
    elif basis.verified is False:
        state = "the ledger did NOT verify (see the last page)"
    else:
        state = "the ledger could not be verified"
    point = basis.checkpoint
    anchor = f", and its last signed checkpoint is at seq {point['seq']}" if point else ", with no signed checkpoint"
    return f"These figures rest on {read}; {state}{anchor}."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def day(ts: float) -> str:
    """`7 Dec 2026`, or `7 Dec 2026 10:04` when not at midnight: how people write a period's ends."""
    moment = datetime.fromtimestamp(ts, UTC)
    text = f"{moment.day} {moment:%b %Y}"
    return text if (moment.hour, moment.minute, moment.second) == (0, 0, 0) else f"{text} {moment:%H:%M}"


def when(ts: float | None) -> str:
    """`2026-12-07 10:04 UTC` for tables, or an en dash."""
    if ts is None:
        return "–"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def after(seconds: float | None) -> str:
    return "–" if seconds is None else format_duration(seconds)
