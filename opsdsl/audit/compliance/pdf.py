"""The compliance report as PDF: an HTML+CSS template (compliance.html.jinja, compliance.css)
laid out by WeasyPrint, the way the RCA is (audit/incident/pdf.py: its `pdf_bytes`, with the
URL fetcher that fetches nothing, and its soft breaks for long words are reused).

Text from runs (incident ids, pack names, people's names) is escaped by Jinja2's
autoescaping: it reaches the PDF as text, never as markup. Marks are colour-blind safe:
each verdict is a word and a shape (✓ met, ✗ missed, – no data) and its colour is from
the Okabe–Ito palette (blue and vermilion), so nothing depends on telling red from green.

Same ledger, same period, same WeasyPrint and fonts: same bytes. The document's dates are
the period's end and its /ID is derived from the report's content; no clock is read.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from opsdsl.audit.compliance.figures import (
    ComplianceReport,
    Incident,
    after,
    day,
    iso,
    when,
)
from opsdsl.audit.incident._common import _brief, _canonical
from opsdsl.audit.metrics import RESPONSE_TIMES, Verdict, format_duration

# Rows of the incident table (each costs WeasyPrint ~45 ms: bench/compliance_pdf.py). Past it,
# the incidents that need a reader's eye come first: reached the last level, not acknowledged
# in time, or not resolved; the rest are counted.
MAX_INCIDENTS = 250
MAX_LAST_LEVEL = 50  # incidents named in the list of those that reached the last level
_HERE = Path(__file__).parent
_LEFT_OUT = {
    "dry_run": "dry run(s)",
    "child": "child run(s) of playbook.call",
    "incomplete": "run(s) without run.created",
}
MARKS = {"met": "✓", "missed": "✗", "no data": "–", "late": "✗", "never": "✗", "in time": "✓", "open": "–"}


def render_compliance_pdf(report: ComplianceReport) -> bytes:
    """The report as PDF bytes; PdfUnavailable (exit 2) where WeasyPrint cannot be loaded."""
    from opsdsl.audit.incident.pdf import pdf_bytes

    html = render_compliance_html(report)
    identifier = hashlib.sha256(b"opsdsl.compliance.pdf\0" + _canonical(report.to_dict())).hexdigest()[:32]
    return pdf_bytes(
        html,
        title=_brief(f"{report.title}, {day(report.since)} – {day(report.until)}", 200),
        created=iso(report.until),
        modified=iso(report.until),
        identifier=identifier.encode("ascii"),
    )


def render_compliance_html(report: ComplianceReport) -> str:
    """The report as one HTML document (CSS inlined): what the PDF is made from."""
    figures = {f.severity: f for f in report.report.severities}
    severities = [f for f in report.report.severities if f.runs or f.severity in RESPONSE_TIMES]
    shown = _shown(report.incidents)
    rows = [_incident_row(incident) for incident in shown]
    listed = {id(incident) for incident in shown}
    left = [incident for incident in report.incidents if id(incident) not in listed]
    context = {
        "title": report.title,
        "period": f"{day(report.since)} – {day(report.until)}",
        "since": when(report.since),
        "until": when(report.until),
        "summary": report.summary_sentences(),
        "severities": [_severity_row(f) for f in severities],
        "overall": _severity_row(report.report.overall),
        "targets": [_target_row(verdict) for verdict in report.report.verdicts],
        "excluded": ", ".join(
            f"{count} {_LEFT_OUT[what]}" for what, count in sorted(report.report.excluded.items()) if count
        ),
        "levels": [{"name": name, "count": report.reached.get(name, 0)} for name in report.levels],
        "last_level": report.levels[-1] if report.levels else None,
        "reached_last": [_incident_row(incident) for incident in report.reached_last[:MAX_LAST_LEVEL]],
        "reached_last_left_out": max(0, len(report.reached_last) - MAX_LAST_LEVEL),
        "incidents": rows,
        "left_out": len(left),
        "left_out_plain": all(not _notable(incident) for incident in left),
        "people": report.people,
        "basis": report.basis,
        "basis_checkpoint": _checkpoint(report.basis.checkpoint),
        "extra": report.extra,
        "has_severity": bool(figures),
        "css": (_HERE / "compliance.css").read_text("utf-8"),
    }
    return _template().render(**context)


def _notable(incident: Incident) -> bool:
    return incident.reached_last or incident.acknowledged_in_time is not True or incident.summary.status != "succeeded"


def _shown(incidents: tuple[Incident, ...]) -> list[Incident]:
    """The incidents the table lists, in order of detection: all of them up to MAX_INCIDENTS,
    else the notable ones first (`_notable`), then the others, up to it."""
    if len(incidents) <= MAX_INCIDENTS:
        return list(incidents)
    ranked = [i for i in incidents if _notable(i)] + [i for i in incidents if not _notable(i)]
    chosen = {id(incident) for incident in ranked[:MAX_INCIDENTS]}
    return [incident for incident in incidents if id(incident) in chosen]


@cache
def _template():
    from opsdsl.audit.incident.pdf import jinja_environment

    return jinja_environment(_HERE).get_template("compliance.html.jinja")


def _mark(status: str) -> dict[str, str]:
    """A verdict as a word, a mark and a CSS class: never colour alone."""
    css = {"met": "ok", "in time": "ok", "missed": "bad", "late": "bad", "never": "bad"}.get(status, "none")
    return {"word": status, "sign": MARKS.get(status, "–"), "css": css}


def _severity_row(f) -> dict[str, Any]:
    target = RESPONSE_TIMES.get(f.severity)
    late = f.acknowledged - f.ack_in_time
    if not f.runs or target is None:
        response = _mark("no data")
    elif f.ack_in_time == f.runs:
        response = _mark("met")
    else:
        response = _mark("missed")
    return {
        "name": "All" if f.severity == "all" else f.severity,
        "runs": f.runs,
        "resolved": f.resolved,
        "failed": f.failed + f.refused,
        "open": f.runs - f.finished,
        "mtta": "–" if f.mtta is None else format_duration(f.mtta),
        "mttr": "–" if f.mttr is None else format_duration(f.mttr),
        "target": f"< {_as_runbook(target)}" if target is not None else "–",
        "in_time": f.ack_in_time,
        "late": late,
        "never": f.unacknowledged,
        "response": response,
    }


def _as_runbook(seconds: float) -> str:
    """`5 min`, `1 h`, `24 h`: a response time as seed section 3 writes it."""
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return format_duration(seconds)


def _target_row(verdict: Verdict) -> dict[str, Any]:
    from opsdsl.audit.metrics import _verdict_value

    return {"label": verdict.target.label, "value": _verdict_value(verdict), "mark": _mark(verdict.verdict)}


def _incident_row(incident: Incident) -> dict[str, Any]:
    s = incident.summary
    if s.acknowledged is None:
        ack = "not acknowledged"
        ack_mark = _mark("never") if incident.response_time is not None else _mark("no data")
    else:
        ack = f"{_brief(s.acknowledged_by or '?', 80)}, {after(s.acknowledge_delay)} after detection"
        ack_mark = _mark("in time" if incident.acknowledged_in_time else "late")
        if incident.acknowledged_in_time is None:
            ack_mark = _mark("no data")
    review = s.review or {}
    return {
        "id": _brief(incident.incident_id, 120),
        "run": s.run,
        "severity": _brief(s.severity, 20),
        "where": _brief(f"{s.pack}/{s.playbook}", 160),
        "detected": when(s.detected),
        "ack": ack,
        "ack_mark": ack_mark,
        "outcome": s.status,
        "resolved": f"{when(s.resolved)} ({after(s.resolve_delay)})" if s.resolved is not None else "–",
        "levels": " → ".join(incident.levels) or "–",
        "reached_last": incident.reached_last,
        "rca": f"reviewed by {_brief(review.get('by'), 80)}" if s.reviewed is not None else "not reviewed",
        "rca_mark": _mark("met" if s.reviewed is not None else "open"),
        "follow_ups": f"{incident.follow_ups_opened} opened"
        + (f" of {incident.follow_ups_listed} listed" if incident.follow_ups_listed else ""),
    }


def _checkpoint(point: dict[str, Any] | None) -> dict[str, Any] | None:
    if not point:
        return None
    ts = point.get("ts")
    return {
        "seq": point.get("seq"),
        "head": str(point.get("head") or ""),
        "keyid": str(point.get("keyid") or "")[:16],
        "when": when(float(ts)) if isinstance(ts, int | float) else "–",
    }
