"""The RCA report as PDF: the record's content in an HTML+CSS template, laid out by WeasyPrint.

The template (rca.html.jinja, rca.css beside this file) is rendered by Jinja2 with
autoescaping on, so text from a run or a person (errors, comments, a review) reaches the
PDF as text, never as markup. Section 8's timeline marks and section 3's response target
are drawn as an inline SVG (marks.py), so a missed mark shows at once.

WeasyPrint takes about a second to import, so it is imported here, inside `pdf_bytes`,
and only by the commands that make a PDF (docs/decisions.md, "RCA PDFs are rendered on
demand"). For the same record, the same WeasyPrint and the same fonts, the bytes are the
same: the document's dates come from the record and its /ID from the record's digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from opsdsl.audit.incident._common import IncidentError, _brief, _canonical
from opsdsl.audit.incident.marks import Mark, incident_marks, offset, short_duration
from opsdsl.audit.incident.rca import DEFAULT_SECTIONS, RCA_SECTIONS, _clamp_note, default_title, headline
from opsdsl.audit.incident.record import run_entries
from opsdsl.audit.metrics import format_duration

MAX_ROWS = 1000  # per list in the PDF; a record with more says how many are left out (rca.md has them all)
_HERE = Path(__file__).parent
_COLOURS = {"met": "#1a7f37", "late": "#cf222e", "missed": "#cf222e", "open": "#8c959f"}


class PdfUnavailable(IncidentError):
    """WeasyPrint, or the system libraries it needs (Pango), cannot be loaded here."""

    exit_code = 2


def pdf_bytes(html: str, *, title: str, created: str | None, modified: str | None, identifier: bytes) -> bytes:
    """Lay `html` out as a PDF; the metadata WeasyPrint would otherwise take from the clock is given."""
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: Pango or its friends missing (cffi's dlopen)
        raise PdfUnavailable(
            f"cannot render the RCA as PDF: WeasyPrint is not usable here ({exc}); install it with its "
            "system libraries (Debian: libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core)"
        ) from None
    document = weasyprint.HTML(string=html, base_url=str(_HERE), url_fetcher=_no_fetcher(weasyprint)).render()
    metadata = document.metadata
    metadata.title = title
    metadata.authors = ["opsdsl"]
    metadata.created = created
    metadata.modified = modified
    return document.write_pdf(pdf_identifier=identifier)


def _no_fetcher(weasyprint: Any) -> Any:
    """A URL fetcher that fetches nothing: the template needs no resource, so a file:// or
    http:// reference that got into the document anyway (it cannot: autoescaping) reads nothing."""
    urls = weasyprint.urls
    base = getattr(urls, "URLFetcher", None)
    if base is None:  # WeasyPrint before the URLFetcher class took plain functions

        def refuse(url: str, *_args: Any, **_kwargs: Any) -> Any:
            raise ValueError(f"the RCA fetches nothing ({url})")

        return refuse

    class NoFetch(base):
        def fetch(self, url: str, headers: Any = None) -> Any:
            raise urls.URLFetchingError(f"the RCA fetches nothing ({url})")

    return NoFetch()


def render_rca_pdf(
    entries: list[dict],
    record: dict,
    *,
    title: str | None = None,
    summary: str | None = None,
    include: Sequence[str] = DEFAULT_SECTIONS,
    links: Mapping[str, Mapping[str, Any]] | None = None,
) -> bytes:
    """The RCA report as PDF bytes, from the same record and settings as rca.md."""
    html = render_rca_html(entries, record, title=title, summary=summary, include=include, links=links)
    times = record["times"]
    review = record.get("review") or {}
    stamps = [stamp for stamp in (times.get("finished"), review.get("ts"), times.get("created")) if stamp]
    identifier = hashlib.sha256(b"opsdsl.rca.pdf\0" + _canonical(record)).hexdigest()[:32].encode("ascii")
    return pdf_bytes(
        html,
        title=_brief(title or default_title(record), 200),
        created=times.get("created"),
        modified=max(stamps) if stamps else None,
        identifier=identifier,
    )


def render_rca_html(
    entries: list[dict],
    record: dict,
    *,
    title: str | None = None,
    summary: str | None = None,
    include: Sequence[str] = DEFAULT_SECTIONS,
    links: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The RCA report as one HTML document (CSS inlined): what the PDF is made from."""
    unknown = [name for name in include if name not in RCA_SECTIONS]
    if unknown:
        raise ValueError(f"unknown RCA section(s) {', '.join(unknown)}; known: {', '.join(RCA_SECTIONS)}")
    run = run_entries(entries)
    if run[0]["run"] != record["run"]:
        raise ValueError(f"the record is of run {record['run']}, the entries of another run")
    marks, response = incident_marks(run)
    context = {
        "title": " ".join((title or default_title(record)).split()),
        "headline": headline(record),
        "overview": _overview(record),
        "summary": _paragraphs(summary) if summary else None,
        "include": set(include),
        "marks": [_mark_row(mark) for mark in (*marks, *([response] if response else []))],
        "response": response,
        "chart": _chart(marks, response),
        "timeline": _capped([_timeline_row(item) for item in record["timeline"]]),
        "steps": _capped([_step_row(step) for step in record["steps"]]),
        "decisions": _capped(_decisions(record)),
        "failures": _capped(record["failures"]),
        "compensations": _capped(record["compensations"]),
        "evidence": _capped(record["evidence"]),
        "context": [
            (field.capitalize(), json.dumps(record[field], indent=2, sort_keys=True, ensure_ascii=False)[:20000])
            for field in ("params", "inputs", "event")
        ],
        "review": _review(record),
        "incident_id": record["incident_id"],
        "follow_ups": _capped(_follow_ups(record, links or {})),
        "ledger": record["ledger"],
        "css": (_HERE / "rca.css").read_text("utf-8"),
    }
    return _template().render(**context)


def jinja_environment(folder: Path):
    """Where the PDFs' templates (the RCA's, the compliance report's) are rendered: every
    value autoescaped, long words breakable, an undefined name an error."""
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        autoescape=True,  # every value is text; only the template itself is markup
        finalize=_soft_breaks,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@cache
def _template():
    return jinja_environment(_HERE).get_template("rca.html.jinja")


def _mark_row(mark: Mark) -> dict:
    return {
        "label": mark.label,
        "meaning": mark.meaning,
        "deadline": "T0" if not mark.deadline else f"T+{short_duration(mark.deadline)}",
        "reached": offset(mark.reached),
        "how": mark.how or "–",
        "verdict": mark.verdict,
        "status": mark.status,
    }


class _Url(str):
    """A link target: written as it is (escaped), never given soft breaks."""


_LONG_WORD = re.compile(r"[^\s\u200b]{48,}")


def _soft_breaks(value: object) -> object:
    """Text with a zero-width space every 48 characters of a longer word.

    WeasyPrint's `overflow-wrap: anywhere` on one 20,000-character word takes a minute;
    with break opportunities given it takes milliseconds. A reader sees no difference.
    """
    if not isinstance(value, str) or isinstance(value, _Url) or hasattr(value, "__html__") or len(value) < 48:
        return value
    return _LONG_WORD.sub(lambda match: "\u200b".join(_chunks(match.group(0), 48)), value)


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _capped(rows: list) -> dict:
    return {"rows": rows[:MAX_ROWS], "left_out": max(0, len(rows) - MAX_ROWS)}


def _overview(record: dict) -> list[tuple[str, str]]:
    times, pack = record["times"], record["pack"]
    review = record.get("review")
    return [
        ("Incident", record["incident_id"]),
        ("Run", record["run"]),
        ("Severity", str(record["severity"])),
        ("Pack", f"{pack['name']} {pack['version']} ({pack['digest']})"),
        ("Plan", str(record["plan_digest"])),
        ("Trigger", (record["trigger"] or "manual run") + (f" (hook {record['hook']})" if record["hook"] else "")),
        ("Detected", str(times["detected"]) + _clamp_note(record)),
        ("Acknowledged", f"{times['acknowledged']} by {record['acknowledged_by']}" if times["acknowledged"] else "–"),
        ("Mitigated", times["mitigated"] or "–"),
        ("Resolved", times["resolved"] or "–"),
        ("Finished", times["finished"] or "–"),
        ("Reviewed", f"{review['ts']} by {review['by']}" if review else "not yet"),
    ]


def _paragraphs(text: object) -> list[str]:
    return [" ".join(part.split()) for part in str(text or "").split("\n\n") if part.strip()] or ["–"]


def _timeline_row(item: dict) -> dict:
    return {"offset": offset(item["t"]), "ts": item["ts"], "summary": _brief(item["summary"], 400)}


def _step_row(step: dict) -> dict:
    took = "–"
    if step["started"] and step["finished"]:
        took = format_duration(_parse_iso(step["finished"]) - _parse_iso(step["started"]))
    status = step["status"] + (f" ({step['denied_by']})" if step["denied_by"] else "")
    return {
        "id": step["id"],
        "action": step["action"] or "–",
        "status": status,
        "attempts": step["attempts"],
        "started": step["started"] or "–",
        "took": took,
        "error": _brief(step["error"], 120) if step["error"] else "",
    }


def _decisions(record: dict) -> list[dict]:
    lines = []
    for decision in record["policy_decisions"]:
        if decision["decision"] == "allow" and not decision["policies"] and not decision["errors"]:
            continue
        details = [
            f"policy {p['id']} ({p['effect']}): {_brief(p.get('message') or '', 400)}" for p in decision["policies"]
        ]
        details += [
            f"policy {e['id']} failed to evaluate (counted as applying): {_brief(e['error'], 400)}"
            for e in decision["errors"]
        ]
        lines.append({"text": f"{decision['step']} ({decision['action']}): {decision['decision']}", "details": details})
    for approval in record["approvals"]:
        responses = "; ".join(
            f"{r['decision']} by {r['by']} at {r['ts']}" + (f" ({_brief(r['comment'], 400)})" if r["comment"] else "")
            for r in approval["responses"]
        )
        timed_out = " (timed out)" if approval["timed_out"] else ""
        lines.append(
            {
                "text": f"approval of {approval['step']}: {approval['outcome'] or 'pending'}{timed_out}"
                + (f" — {responses}" if responses else ""),
                "details": [],
            }
        )
    return lines


def _review(record: dict) -> dict | None:
    review = record.get("review")
    if review is None:
        return None
    return {
        "by": review["by"],
        "ts": review["ts"],
        "revision": review["revision"],
        "root_cause": _paragraphs(review["root_cause"]),
        "impact": _paragraphs(review["impact"]),
        "follow_ups": [_brief(item, 400) for item in review["follow_ups"]],
    }


def _follow_ups(record: dict, links: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    from opsdsl.audit.incident.followups import follow_up_key

    rows = []
    for item in record["follow_ups"]:
        link = links.get(follow_up_key(item)) or {}
        url = link.get("url")
        url = url if isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 2000 else None
        rows.append(
            {"summary": _brief(item["summary"], 400), "url": _Url(url) if url else None, "tracker": link.get("tracker")}
        )
    return rows


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- the chart of marks -------------------------------------------------------------------

_LEFT, _WIDTH, _ROW, _TOP = 175.0, 320.0, 24.0, 30.0


def _chart(marks: list[Mark], response: Mark | None) -> dict:
    """Geometry of the marks chart: one row per mark, a log-time axis from T0 to at least T+24h.

    Each row shades the window the template allows (T0 to the mark's deadline) and puts a
    dot where the mark was reached: green in time, red late; a hollow red ring at the
    deadline for a mark missed, a grey ring for one still open.
    """
    rows = [*marks, *([response] if response else [])]
    span = max([86400.0, *(mark.reached or 0.0 for mark in rows)])

    def x(seconds: float) -> float:
        import math

        return round(_LEFT + _WIDTH * math.log1p(max(0.0, seconds) / 60) / math.log1p(span / 60), 2)

    drawn = []
    for index, mark in enumerate(rows):
        y = _TOP + index * _ROW
        at = mark.reached if mark.reached is not None else mark.deadline
        drawn.append(
            {
                "label": mark.label,
                "meaning": mark.meaning,
                "y": y,
                "deadline_x": x(mark.deadline),
                "dot_x": x(at),
                "hollow": mark.reached is None,
                "colour": _COLOURS[mark.status],
                "verdict": mark.verdict,
                "status": mark.status,
            }
        )
    ticks = [{"x": x(seconds), "label": label} for label, seconds in _TICKS if seconds <= span]
    return {
        "rows": drawn,
        "ticks": ticks,
        "left": _LEFT,
        "right": _LEFT + _WIDTH,
        "height": _TOP + len(rows) * _ROW + 6,
        "axis_y": _TOP - 12,
    }


_TICKS = (("T0", 0.0), ("5m", 300.0), ("10m", 600.0), ("20m", 1200.0), ("1h", 3600.0), ("24h", 86400.0))
