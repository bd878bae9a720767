"""What an approval announcement says, and to whom (the announcer is `opsdsl.runtime.announce`).

Notifier specs (`notifier_problem`, for the service config too), text from the run made fit
to show (approval messages and inputs can carry event data, which is hostile: cut to size,
control and bidi characters out, escaped for Slack so it can neither hide a link nor mention
a channel), and the bodies: one line for a webhook's `message` and PagerDuty's summary, the
structured facts for a webhook's `fields` and PagerDuty's `custom_details`, text and fields
for Slack, and the HMAC signature of a webhook's body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opsdsl.errors import UsageError
from opsdsl.runtime.actions.notify import NOTIFY_KINDS

REQUEST, REMINDER, OUTCOME = "request", "reminder", "outcome"
SEND_TIMEOUT = 10.0  # seconds per send unless the notifier says `timeout`
REMINDER_SHARE = 0.8  # remind at 80% of the approval's time ...
REMINDER_LEAD = 300.0  # ... or 5 minutes before its deadline, whichever is later
REMINDER_MIN_TIMEOUT = 120.0  # an approval with less time than this gets no reminder
REMINDER_WITHOUT_DEADLINE = 1800.0  # an approval with no deadline: one reminder after 30 minutes

MESSAGE_LIMIT = 2000  # characters of the approval message
TEXT_LIMIT = 300  # characters of any other text from the run (names, descriptions, policy messages)
ITEMS_LIMIT = 20  # inputs, policies, approvers listed

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_COMMON_KEYS = {"kind", "name", "timeout", "packs"}
_KIND_KEYS = {
    "slack": {"url", "url_secret"},
    "webhook": {"url", "url_secret", "hmac_secret"},
    "pagerduty": {"url", "routing_key", "routing_key_secret"},
}
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f"))


# --- notifier specs ------------------------------------------------------------------------


def notifier_problem(spec: Any) -> str | None:
    """What is wrong with one notifier spec (a `[[notifiers]]` table of the service config), or None.

    kind: slack | pagerduty | webhook. slack and webhook: `url`, or `url_secret` (the name
    of a secret holding it). webhook: optional `hmac_secret` (a secret's name): the body is
    signed as `opsdsl serve` checks signatures (v2). pagerduty: `routing_key` or
    `routing_key_secret`; optional `url` (the Events v2 endpoint by default). Any kind:
    optional `name` (unique; default the kind), `timeout` (seconds, 1 to 60), `packs` (only
    these packs' approvals)."""
    if not isinstance(spec, Mapping):
        return f"a notifier must be a table, not {type(spec).__name__}"
    kind = spec.get("kind")
    if kind not in NOTIFY_KINDS:
        return f"kind: {kind!r} is not a notifier kind: expected one of {', '.join(sorted(NOTIFY_KINDS))}"
    unknown = sorted(set(spec) - _COMMON_KEYS - _KIND_KEYS[kind])
    if unknown:
        allowed = ", ".join(sorted(_COMMON_KEYS | _KIND_KEYS[kind]))
        return f"a {kind} notifier has no key {unknown[0]!r} (keys: {allowed})"
    name = spec.get("name")
    if name is not None and not (isinstance(name, str) and _NAME.fullmatch(name)):
        return "name: 1 to 64 letters, digits, `_`, `.` or `-`"
    timeout = spec.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
        return "timeout: a number of seconds"
    if timeout is not None and not 1 <= timeout <= 60:
        return "timeout: between 1 and 60 seconds"
    packs = spec.get("packs")
    if packs is not None and not (isinstance(packs, list) and all(isinstance(p, str) and p for p in packs)):
        return "packs: a list of pack names"
    for key in ("url_secret", "routing_key_secret", "hmac_secret"):
        if key in spec and not (isinstance(spec[key], str) and _NAME.fullmatch(spec[key])):
            return f"{key}: the name of a secret (letters, digits, `_`, `.`, `-`; not a value)"
    if "url" in spec:
        problem = url_problem(spec["url"])
        if problem:
            return f"url: {problem}"
    if kind == "pagerduty":
        if ("routing_key" in spec) == ("routing_key_secret" in spec):
            return "a pagerduty notifier needs one of routing_key or routing_key_secret"
        if "routing_key" in spec and not (isinstance(spec["routing_key"], str) and spec["routing_key"].strip()):
            return "routing_key: a non-empty string"
    elif ("url" in spec) == ("url_secret" in spec):
        return f"a {kind} notifier needs one of url or url_secret"
    return None


def url_problem(url: Any) -> str | None:
    """None for an absolute http(s) URL with a host and nothing unprintable, else why not."""
    import httpx

    if not isinstance(url, str) or not url or len(url) > 2048:
        return "an http:// or https:// URL (at most 2048 characters)"
    if any(ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf") for ch in url):
        return "no spaces or control characters in a URL"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "not a valid URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "only http:// and https:// URLs with a host"
    return None


@dataclass(frozen=True)
class Notifier:
    name: str
    kind: str
    spec: Mapping[str, Any]

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeout") or SEND_TIMEOUT)

    def takes(self, pack: str) -> bool:
        packs = self.spec.get("packs")
        return packs is None or pack in packs


def notifiers_from_specs(specs: Sequence[Mapping[str, Any]]) -> tuple[Notifier, ...]:
    """Checked notifiers with unique names (a kind used twice without names: kind-1, kind-2)."""
    for index, spec in enumerate(specs, 1):
        problem = notifier_problem(spec)
        if problem:
            raise UsageError(f"notifier {index}: {problem}")
    counts: dict[str, int] = {}
    for spec in specs:
        counts[spec["kind"]] = counts.get(spec["kind"], 0) + 1
    seen: dict[str, int] = {}
    built: list[Notifier] = []
    for spec in specs:
        kind = spec["kind"]
        seen[kind] = seen.get(kind, 0) + 1
        name = spec.get("name") or (kind if counts[kind] == 1 else f"{kind}-{seen[kind]}")
        if any(n.name == name for n in built):
            raise UsageError(f"two notifiers are named {name!r}: give each a unique `name`")
        built.append(Notifier(name, kind, dict(spec)))
    return tuple(built)


# --- hostile text --------------------------------------------------------------------------


def clean_text(value: Any, limit: int = TEXT_LIMIT, lines: bool = False) -> str:
    """`value` as text fit to show: control and bidi characters out (newlines too, unless
    `lines`), at most `limit` characters (cut with `…`)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    text = text.translate(_BIDI)
    keep = "\n" if lines else ""
    text = "".join(ch if ch in keep or unicodedata.category(ch) != "Cc" else " " for ch in text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def slack_escape(text: str) -> str:
    """Text Slack shows as written: `&`, `<`, `>` escaped as Slack asks (so no `<url|label>`
    link, `<!channel>` or `<@user>` survives) and a word joiner after `@` (no `@channel`)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"@(?=\w)", "@\u2060", text)


# --- what an announcement says ---------------------------------------------------------------


def reminder_time(requested: float, deadline: float | None) -> float | None:
    """When to remind: at 80% of the approval's time or 5 minutes before its deadline,
    whichever is later; none for less than 2 minutes; 30 minutes in without a deadline."""
    if deadline is None:
        return requested + REMINDER_WITHOUT_DEADLINE
    span = deadline - requested
    if not math.isfinite(span) or span < REMINDER_MIN_TIMEOUT:
        return None
    return max(requested + REMINDER_SHARE * span, deadline - REMINDER_LEAD)


def public_facts(facts: dict[str, Any]) -> dict[str, Any]:
    """The structured announcement a webhook (its `fields`) and PagerDuty (`custom_details`) get."""
    return {key: value for key, value in facts.items() if key != "requested_at"}


def origin_fields(facts: dict[str, Any]) -> tuple[str, str, str, str]:
    return facts["run"], facts["step"]["id"], facts["playbook"], facts["pack"]


def headline(facts: dict[str, Any]) -> str:
    """ "Approval needed", "Reminder: decision still needed", "Approved by alice", …"""
    if facts["what"] == OUTCOME:
        return outcome_line(facts["outcome"])
    if facts["kind"] == "opsdsl.escalation":
        return f"Escalated to {facts['escalation']['level']}"
    asked = "decision" if facts["kind"] == "opsdsl.decision" else "approval"
    return f"Reminder: {asked} still needed" if facts["what"] == REMINDER else f"{asked.capitalize()} needed"


def plain_summary(facts: dict[str, Any]) -> str:
    """One line: what happened to which approval (the webhook's `message`, PagerDuty's summary)."""
    step = facts["step"]["name"]
    where = f"{facts['pack']}/{facts['playbook']} ({facts['severity']}), run {facts['run']}"
    if facts["what"] == OUTCOME:
        return f"{headline(facts)}: {step} in {where}"
    prefix = headline(facts)
    deadline = facts["deadline"]
    by = f", by {deadline['iso']} (then {deadline['on_timeout']})" if deadline else ""
    return f"{prefix}: {step} in {where}{by}: {clean_text(facts['ask']['message'], 300)}"


def outcome_line(outcome: dict[str, Any]) -> str:
    decision = outcome.get("decision")
    if decision == "approved":
        return "Approved by " + ", ".join(outcome.get("by") or ["?"])
    if decision == "denied":
        return "Denied by " + ", ".join(outcome.get("by") or ["?"])
    if decision == "timed_out":
        return f"Timed out, so on_timeout decided: {outcome.get('on_timeout')}"
    if decision == "acknowledged":
        return f"Acknowledged by {', '.join(outcome.get('by') or ['?'])}"
    if decision == "decided":
        return f"Decided by {', '.join(outcome.get('by') or ['?'])}: {outcome.get('choice')}"
    return f"No longer needed: the run ended {outcome.get('run_status')}"


def slack_text(facts: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(text, attachment fields) for Slack, every piece from the run escaped; the approval
    message quoted line by line, so it cannot pose as our own lines (a fake "Approve:")."""
    e = slack_escape
    step = facts["step"]
    what = facts["what"]
    lines = [
        f"*{e(headline(facts))}*: {e(step['name'])} (`{e(step['id'])}`) in {e(facts['pack'])}/{e(facts['playbook'])}"
    ]
    message = facts["ask"]["message"]
    if message:
        lines += ["> " + e(line) for line in message.split("\n")]
    comment = (facts.get("outcome") or {}).get("comment")
    if comment:
        lines.append(f"Comment: {e(comment)}")
    fields: dict[str, str] = {}
    if facts["kind"] == "opsdsl.escalation":
        escalation = facts["escalation"]
        fields["Level"] = e(f"{escalation['level']} ({escalation['index']} of {escalation['of']}): {escalation['who']}")
        fields["Why"] = e(escalation["reason"])
        fields["Severity"] = e(facts["severity"])
        if what != OUTCOME:
            fields["Acknowledge"] = _where_to_answer(facts)
        return "\n".join(lines), fields
    if facts["kind"] == "opsdsl.decision":
        fields["Why"] = "a crash caught the step mid-flight, and it is not idempotent"
        fields["Choices"] = "retry, succeeded, failed"
        if what != OUTCOME:
            fields["Decide"] = _where_to_answer(facts)
        return "\n".join(lines), fields
    why = facts["why"]
    policies = "; ".join(f"{p['id']}: {p['message']}" if p["message"] else p["id"] for p in why["policies"])
    fields["Why"] = e(policies or "the playbook's approval step")
    if facts["ask"]["inputs"]:
        fields["Answers asked"] = e(", ".join(f"{n} ({s['type']})" for n, s in facts["ask"]["inputs"].items()))
    approvals = facts["approvals"]
    who = ", ".join(approvals["approvers"]) or "anyone allowed to approve"
    needed = f"{approvals['needed']} from {who}"
    if "received" in approvals:
        needed += f" ({len(approvals['received'])} so far)"
    fields["Approvals"] = e(needed)
    deadline = facts["deadline"]
    fields["Deadline"] = e(f"{deadline['iso']}, then {deadline['on_timeout']}" if deadline else "none")
    if what != OUTCOME:
        fields["Approve"] = _where_to_answer(facts)
    return "\n".join(lines), fields


def _where_to_answer(facts: dict[str, Any]) -> str:
    """Our link (the only one in the message), or the CLI command on the server."""
    link = facts["approve"]["url"]
    if link:
        return f"<{link}|Open run {slack_escape(facts['run'])}>"
    return slack_escape(f"on the server: {facts['approve']['cli']}")


def sign(secret: str, url: str, body: bytes, ts: int) -> dict[str, str]:
    """The headers of an HMAC v2 signature, exactly as `opsdsl serve` checks them: over
    "opsdsl-v2", the method, the path (with its query), the timestamp and the body."""
    import httpx

    path = httpx.URL(url).raw_path.decode("ascii")
    message = b"\n".join([b"opsdsl-v2", b"POST", path.encode(), str(ts).encode(), b""]) + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return {"X-Opsdsl-Timestamp": str(ts), "X-Opsdsl-Signature": f"v2={digest}"}


def input_spec(spec: Any) -> dict[str, Any]:
    spec = spec if isinstance(spec, dict) else {}
    shown = {"type": clean_text(spec.get("type", "string"), 20)}
    if spec.get("description"):
        shown["description"] = clean_text(spec["description"])
    if "default" in spec:
        shown["default"] = clean_text(spec["default"], 200)
    return shown


def comment_of(data: dict[str, Any]) -> str | None:
    return clean_text(data["comment"], 500, lines=False) if data.get("comment") else None


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
