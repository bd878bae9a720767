"""Follow-ups in an issue tracker: what each issue says, and the signed amendment that keeps the links.

`opsdsl incident follow-ups ID --to github|gitlab|jira` (opsdsl.runtime.followups) opens
one issue per open follow-up of a record and appends an `incident.follow_up_opened`
ledger entry for each; the incident folder is then rewritten, and `follow-ups.json`, a
signed amendment bound to record.json by its digest, lists every link. This module is
the pure part: keys, payloads (as each tracker documents them) and the amendment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opsdsl.audit import entries as kinds
from opsdsl.audit.incident._common import _brief, _canonical, iso_time


def follow_up_key(item: Mapping) -> str:
    """A follow-up's stable name: `fu-` and 16 hex digits of the sha256 of its kind, step and summary.

    The same follow-up of the same record always has the same key, so a link recorded for
    it is found again however often the record is rewritten.
    """
    body = {"kind": item.get("kind"), "step": item.get("step"), "summary": item.get("summary")}
    return "fu-" + hashlib.sha256(b"opsdsl.follow-up\0" + _canonical(body)).hexdigest()[:16]


FOLLOW_UPS_PAYLOAD_TYPE = "application/vnd.opsdsl.follow-ups+json"
TRACKERS = ("github", "gitlab", "jira")
_TITLE_LIMIT = 200  # Jira's summary stops at 255 characters; the prefix needs room


def follow_up_links(entries: Iterable[Mapping]) -> dict[str, dict]:
    """`{key: link}` from a run's incident.follow_up_opened entries; the first link of a key wins."""
    links: dict[str, dict] = {}
    for entry in entries:
        if entry.get("kind") != kinds.INCIDENT_FOLLOW_UP_OPENED:
            continue
        data = entry.get("data") or {}
        key = data.get("key")
        if isinstance(key, str) and key not in links:
            links[key] = {
                "key": key,
                "tracker": data.get("tracker"),
                "url": data.get("url"),
                "id": data.get("id"),
                "summary": data.get("summary"),
                "opened": iso_time(float(entry["ts"])),
                "by": data.get("by"),
            }
    return links


def follow_ups_amendment(record: Mapping, record_bytes: bytes, links: Mapping[str, Mapping]) -> dict:
    """The body of follow-ups.json: which tracker issue each follow-up became, bound to the record.

    `record` names the record.json it amends by the sha256 of its bytes, so an amendment
    cannot be carried over to another incident or another version of this one.
    """
    return {
        "incident_id": record["incident_id"],
        "run": record["run"],
        "record": "sha256:" + hashlib.sha256(record_bytes).hexdigest(),
        "links": [dict(links[key]) for key in sorted(links)],
    }


def open_follow_ups(record: Mapping, links: Mapping[str, Mapping]) -> list[dict]:
    """The record's follow-ups that no tracker issue has been opened for yet, each with its key."""
    pending, seen = [], set()
    for item in record.get("follow_ups") or []:
        key = follow_up_key(item)
        if key not in links and key not in seen:
            seen.add(key)
            pending.append(dict(item) | {"key": key})
    return pending


def issue_text(record: Mapping, item: Mapping) -> tuple[str, list[str]]:
    """(title, body lines) of the issue for one follow-up: plain text, one line per fact.

    Follow-up text may carry what an event's sender wrote (a step's error); the trackers'
    payload builders put it where their markup cannot act on it.
    """
    title = _brief(f"[{record['incident_id']}] {item['summary']}", _TITLE_LIMIT)
    body = [
        _brief(item["summary"], 2000),
        "",
        f"Incident: {record['incident_id']} (run {record['run']})",
        f"Severity: {record.get('severity')}; playbook: {record.get('playbook')}; status: {record.get('status')}",
        f"Why listed: {item.get('kind')}" + (f" (step {item['step']})" if item.get("step") else ""),
        f"Detected: {(record.get('times') or {}).get('detected')}",
        f"opsdsl-follow-up: {record['incident_id']}/{item['key']}",
    ]
    return title, body


def _fenced(lines: list[str]) -> str:
    """Markdown with every line of `lines` inside a code fence longer than any backtick run in it.

    In a fence, `@team` mentions, links, images and HTML are shown, not acted on.
    """
    text = "\n".join(lines)
    longest = max((len(run) for run in text.replace("\n", " ").split() if set(run) == {"`"}), default=0)
    fence = "`" * max(3, longest + 1)
    for line in lines:  # a backtick run inside a word counts too
        run = 0
        for char in line:
            run = run + 1 if char == "`" else 0
            if run >= len(fence):
                fence = "`" * (run + 1)
    return f"{fence}text\n{text}\n{fence}"


def github_payload(record: Mapping, item: Mapping, labels: Sequence[str]) -> dict:
    """POST /repos/{owner}/{repo}/issues: {title, body, labels} (GitHub REST API, "Create an issue")."""
    title, body = issue_text(record, item)
    return {"title": title, "body": _fenced(body), "labels": list(labels)}


def gitlab_payload(record: Mapping, item: Mapping, labels: Sequence[str]) -> dict:
    """POST /projects/:id/issues: {title, description, labels} (labels comma-separated, GitLab REST API)."""
    title, body = issue_text(record, item)
    return {"title": title, "description": _fenced(body), "labels": ",".join(labels)}


def jira_payload(
    record: Mapping, item: Mapping, labels: Sequence[str], project: str, issue_type: str, api: int
) -> dict:
    """POST /rest/api/{2|3}/issue: {fields: {project: {key}, summary, description, issuetype: {name}, labels}}.

    v2 takes the description as wiki markup, shown here inside {noformat} (whose closing
    tag is taken out of the text); v3 takes an Atlassian Document Format document, whose
    text nodes are never markup.
    """
    title, body = issue_text(record, item)
    if api == 3:
        description: Any = {
            "type": "doc",
            "version": 1,
            "content": [{"type": "codeBlock", "content": [{"type": "text", "text": "\n".join(body)}]}],
        }
    else:
        description = "{noformat}\n" + "\n".join(body).replace("{noformat}", "{ noformat }") + "\n{noformat}"
    return {
        "fields": {
            "project": {"key": project},
            "summary": title,
            "description": description,
            "issuetype": {"name": issue_type},
            "labels": [label.replace(" ", "-") for label in labels],  # Jira labels hold no spaces
        }
    }
