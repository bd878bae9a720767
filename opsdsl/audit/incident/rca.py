"""The RCA report: the record in Markdown, for people; the same entries give the same bytes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime

from opsdsl.audit import entries as kinds
from opsdsl.audit.incident._common import (
    _brief,
)
from opsdsl.audit.incident.record import (
    build_record,
    run_entries,
)
from opsdsl.audit.metrics import format_duration

DEFAULT_SECTIONS = ("timeline", "steps", "policy_decisions", "evidence")
RCA_SECTIONS = (*DEFAULT_SECTIONS, "context")  # context: params, inputs and the event


def render_rca(
    entries: list[dict],
    record: dict | None = None,
    *,
    title: str | None = None,
    summary: str | None = None,
    include: Sequence[str] = DEFAULT_SECTIONS,
    links: Mapping[str, Mapping] | None = None,
) -> str:
    """The RCA report in Markdown; the same entries give the same bytes.

    Failures, compensations and follow-ups always appear (when there are any); `include`
    picks the other sections from RCA_SECTIONS. `record` saves rebuilding it from `entries`.
    `links` ({follow-up key: {url, ...}}) names the tracker issue a follow-up became.
    """
    unknown = [name for name in include if name not in RCA_SECTIONS]
    if unknown:
        raise ValueError(f"unknown RCA section(s) {', '.join(unknown)}; known: {', '.join(RCA_SECTIONS)}")
    if record is None:
        record = build_record(entries, checkpoint=None, evidence_dir=None)
    elif entries and run_entries(entries)[0]["run"] != record["run"]:
        raise ValueError(f"the record is of run {record['run']}, the entries of another run")
    out = [f"# {_md_line(title) if title else default_title(record)}", "", f"**{headline(record)}**", ""]
    out += _overview(record)
    if summary:
        out += ["## Summary", "", summary.strip(), ""]
    if "timeline" in include:
        out += ["## Timeline", ""] + [_timeline_line(item) for item in record["timeline"]] + [""]
    if "steps" in include and record["steps"]:
        out += [
            "## Steps",
            "",
            "| Step | Action | Status | Attempts | Started | Took | Error |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [_step_row(step) for step in record["steps"]] + [""]
    if "policy_decisions" in include and (record["policy_decisions"] or record["approvals"]):
        out += ["## Decisions", "", *_decision_lines(record), ""]
    if record["failures"]:
        out += ["## Failures", ""] + [_failure_line(failure) for failure in record["failures"]] + [""]
    if record["compensations"]:
        out += ["## Compensations", ""]
        out += [
            f"- `{item['step']}` undone by `{item['compensation']}`: {item['status']}"
            + (f" — {_md_line(item['error'])}" if item["error"] else "")
            for item in record["compensations"]
        ] + [""]
    if "evidence" in include and record["evidence"]:
        out += ["## Evidence", "", "| File | SHA-256 | Size | Step | Status |", "|---|---|---|---|---|"]
        out += [
            f"| `{_cell(item['path'])}` | `{item['sha256']}` | {item['size']} | {_cell(item['step'] or '–')} | {item['status']} |"
            for item in record["evidence"]
        ] + [""]
    if "context" in include:
        for field in ("params", "inputs", "event"):
            out += [
                f"## {field.capitalize()}",
                "",
                "```json",
                json.dumps(record[field], indent=2, sort_keys=True, ensure_ascii=False),
                "```",
                "",
            ]
    out += _review_lines(record)
    out += ["## Follow-ups", ""]
    out += [_follow_up_line(item, links or {}) for item in record["follow_ups"]] or ["None."]
    ledger = record["ledger"]
    checkpoint = ledger["checkpoint"]
    sealed = (
        f"; checkpoint at seq {checkpoint['seq']}, head `{checkpoint['head']}`" if checkpoint else "; no checkpoint"
    )
    out += [
        "",
        "---",
        "",
        f"Ledger entries {ledger['first_seq']}–{ledger['last_seq']} ({ledger['entries']}), digest `{ledger['entries_digest']}`{sealed}.",
    ]
    return "\n".join(out) + "\n"


def _follow_up_line(item: dict, links: Mapping[str, Mapping]) -> str:
    from opsdsl.audit.incident.followups import follow_up_key

    link = links.get(follow_up_key(item)) or {}
    url = link.get("url")
    shown = isinstance(url, str) and url.startswith(("https://", "http://")) and len(url) <= 2000
    return f"- [ ] {_md_line(item['summary'])}" + (f" — <{_md_line(url)}>" if shown else "")


def default_title(record: dict) -> str:
    return f"Incident {record['incident_id']}: {record['playbook']}"


def headline(record: dict) -> str:
    """One sentence: "SEV-2 query-latency-regression on sqlx-sev2 succeeded in 4m12s after 1 retry; 0 steps denied."."""
    durations = record["durations"]
    if record["status"] in ("succeeded", "failed", "refused", "cancelled"):
        outcome = f"{record['status']} in {format_duration(durations['total'] or 0)}"
    else:
        outcome = f"is {record['status']}"
    retries = record["retries"]
    tries = "with no retries" if not retries else f"after {retries} retr{'y' if retries == 1 else 'ies'}"
    denied = sum(step["status"] == "denied" for step in record["steps"])
    prefix = "Dry run: " if record["dry_run"] else ""
    pack = record["pack"]["name"]
    return f"{prefix}{record['severity']} {record['playbook']} on {pack} {outcome} {tries}; {denied} step{'s' if denied != 1 else ''} denied."


def _overview(record: dict) -> list[str]:
    times, pack = record["times"], record["pack"]
    rows = [
        ("Incident", f"`{record['incident_id']}`"),
        ("Run", f"`{record['run']}`"),
        ("Pack", f"{pack['name']} {pack['version']} (`{pack['digest']}`)"),
        ("Plan", f"`{record['plan_digest']}`"),
        ("Trigger", (record["trigger"] or "manual run") + (f" (hook {record['hook']})" if record["hook"] else "")),
        ("Detected", times["detected"] + _clamp_note(record)),
        ("Acknowledged", f"{times['acknowledged']} by {record['acknowledged_by']}" if times["acknowledged"] else "–"),
        ("Mitigated", times["mitigated"] or "–"),
        ("Resolved", times["resolved"] or "–"),
        ("Finished", times["finished"] or "–"),
        ("Reviewed", f"{review['ts']} by {review['by']}" if (review := record.get("review")) else "not yet"),
    ]
    return ["| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows), ""]


def _clamp_note(record: dict) -> str:
    detection = record.get("detection") or {}
    if not detection.get("clamped"):
        return ""
    claimed = detection.get("claimed")
    said = f"the event said {claimed}" if claimed else "the event gave no usable time"
    return f" (when opsdsl received it; {said}, more than 24 h earlier or in the future)"


def _review_lines(record: dict) -> list[str]:
    """The person's review; until there is one, a template saying how to record it."""
    review = record.get("review")
    if review is None:
        return [
            "## Review",
            "",
            "_Not reviewed yet._ A person records the root cause, the impact and the follow-up actions with:",
            "",
            f"    opsdsl incident review {record['incident_id']} --by NAME --root-cause TEXT --impact TEXT [--follow-up TEXT]...",
            "",
            "- **Root cause:** _to be written_",
            "- **Impact:** _to be written_",
            "- **Follow-up actions:** _to be written_",
            "",
        ]
    amended = f", revision {review['revision']}" if review["revision"] > 1 else ""
    out = ["## Review", "", f"Reviewed by {_md_line(review['by'])} at {review['ts']}{amended}.", ""]
    out += ["### Root cause", "", *_paragraphs(review["root_cause"]), "### Impact", "", *_paragraphs(review["impact"])]
    out += ["### Follow-up actions", ""]
    out += [f"- [ ] {_md_line(item)}" for item in review["follow_ups"]] or ["None."]
    return [*out, ""]


def _paragraphs(text: object) -> list[str]:
    """Text a person wrote, paragraph by paragraph (blank lines kept), each on one safe line."""
    parts = [_md_line(part) for part in str(text or "").split("\n\n")]
    out = []
    for part in parts:
        if part:
            out += [part, ""]
    return out or ["–", ""]


def _offset(seconds: float) -> str:
    return "T0" if seconds <= 0 else f"T+{format_duration(seconds)}"


def _timeline_line(item: dict) -> str:
    return f"- {_offset(item['t'])} ({item['ts']}) {_md_line(item['summary'])}"


def _step_row(step: dict) -> str:
    took = "–"
    if step["started"] and step["finished"]:
        took = format_duration(_parse_iso(step["finished"]) - _parse_iso(step["started"]))
    error = _cell(_brief(step["error"], 120)) if step["error"] else ""
    status = step["status"] + (f" ({step['denied_by']})" if step["denied_by"] else "")
    return f"| `{step['id']}` | {step['action'] or '–'} | {_cell(status)} | {step['attempts']} | {step['started'] or '–'} | {took} | {error} |"


def _decision_lines(record: dict) -> list[str]:
    lines = []
    for decision in record["policy_decisions"]:
        if decision["decision"] == "allow" and not decision["policies"] and not decision["errors"]:
            continue  # nothing applied: no decision worth reading
        lines.append(f"- `{decision['step']}` ({decision['action']}): **{decision['decision']}**")
        lines += [
            f"  - policy `{p['id']}` ({p['effect']}): {_md_line(p.get('message') or '')}" for p in decision["policies"]
        ]
        lines += [
            f"  - policy `{e['id']}` failed to evaluate (counted as applying): {_md_line(e['error'])}"
            for e in decision["errors"]
        ]
    for approval in record["approvals"]:
        responses = "; ".join(
            f"{r['decision']} by {r['by']} at {r['ts']}" + (f" ({_md_line(r['comment'])})" if r["comment"] else "")
            for r in approval["responses"]
        )
        timed_out = " (timed out)" if approval["timed_out"] else ""
        lines.append(
            f"- approval of `{approval['step']}`: {approval['outcome'] or 'pending'}{timed_out}"
            + (f" — {responses}" if responses else "")
        )
    return lines or ["No policy applied and no approval was asked for."]


def _failure_line(failure: dict) -> str:
    what = "step failed" if failure["final"] else f"attempt {failure['attempt']} failed"
    return f"- {failure['ts']} `{failure['step']}` {what}: {_md_line(_brief(failure['error'], 400))}"


def _md_line(text: object) -> str:
    """One line of text from the run (errors, comments): no HTML reaches whoever renders the report."""
    return " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: object) -> str:
    return _md_line(text).replace("|", "\\|")


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rca_settings(entries: Sequence[dict]) -> dict:
    """The `with:` of the run's latest report.rca intent ({title, summary, include}), else {}."""
    intent = next(
        (e for e in reversed(entries) if e["kind"] == kinds.STEP_INTENT and e["data"].get("action") == "report.rca"),
        None,
    )
    inputs = intent["data"].get("with") if intent else None
    return inputs if isinstance(inputs, dict) else {}
