"""`notify`: tell people, as a generic JSON webhook, a Slack message or a PagerDuty event.

Each kind is one small function from where the message comes from (an `Origin`: the
step's request, or an approval the server announces, `opsdsl.runtime.announce`) to a JSON
payload; `notification` picks the function and the URL, and `send_notification` posts it
with an Idempotency-Key through `http.send`, like every other request a run makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from opsdsl.runtime.actions import builtin_schema, check_inputs
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.builtin import BuiltinAction
from opsdsl.runtime.actions.http import HttpResponse, check_status, send

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITY_BY_PLAYBOOK = {"SEV-1": "critical", "SEV-2": "error", "SEV-3": "warning", "SEV-4": "info"}
SLACK_COLORS = {"critical": "#b3261e", "error": "#e8590c", "warning": "#f2c744", "info": "#1c7ed6"}
PAGERDUTY_SUMMARY_LIMIT = 1024  # Events v2 refuses a longer summary
_ERROR_BODY_LIMIT = 2000
NOTIFY_KINDS = ("webhook", "slack", "pagerduty")


class Origin(Protocol):
    """Where a notification comes from: an `ActionRequest` is one, and so is an announcement."""

    run_id: str
    step_id: str
    playbook: str
    pack: str


def webhook_payload(request: Origin, message: str, severity: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Generic JSON: the message, where it comes from, and the step's `fields` as they are."""
    return {
        "message": message,
        "severity": severity,
        "run_id": request.run_id,
        "step_id": request.step_id,
        "playbook": request.playbook,
        "pack": request.pack,
        "fields": fields,
    }


def slack_payload(request: Origin, message: str, severity: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text`, and one attachment coloured by severity
    whose fields are the severity, playbook, run and the step's `fields`."""
    shown = {"Severity": severity, "Playbook": request.playbook or "-", "Run": request.run_id, **fields}
    return {
        "text": message,
        "attachments": [
            {
                "fallback": message,
                "color": SLACK_COLORS[severity],
                "fields": [
                    {"title": str(title), "value": _slack_value(value), "short": len(_slack_value(value)) <= 40}
                    for title, value in shown.items()
                ],
                "footer": f"opsdsl {request.pack or 'pack'} · step {request.step_id}",
            }
        ],
    }


def _slack_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def pagerduty_payload(
    request: Origin,
    message: str,
    severity: str,
    fields: dict[str, Any],
    routing_key: str,
    dedup_key: str,
    event_action: str = "trigger",
) -> dict[str, Any]:
    """A PagerDuty Events v2 event (a trigger unless `event_action` says "resolve");
    `dedup_key` makes every page of one run one incident."""
    source = "/".join(part for part in (request.pack, request.playbook) if part) or "opsdsl"
    if event_action != "trigger":  # acknowledge / resolve: Events v2 wants the key and nothing else
        return {"routing_key": routing_key, "event_action": event_action, "dedup_key": dedup_key}
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "client": "opsdsl",
        "payload": {
            "summary": message[:PAGERDUTY_SUMMARY_LIMIT],
            "source": source,
            "severity": severity,
            "custom_details": {"run_id": request.run_id, "step_id": request.step_id, **fields},
        },
    }


def notification(
    kind: str,
    origin: Origin,
    message: str,
    severity: str,
    fields: dict[str, Any],
    *,
    url: str | None = None,
    routing_key: str | None = None,
    dedup_key: str | None = None,
    event_action: str = "trigger",
) -> tuple[str, dict[str, Any]]:
    """(URL, JSON payload) of one notification of `kind`: webhook, slack or pagerduty.

    PagerDuty's URL defaults to the Events v2 endpoint and its `dedup_key` to the run id;
    the others need `url`."""
    if kind == "pagerduty":
        if not routing_key:
            raise ActionFailed("a pagerduty notification needs a routing_key", retryable=False)
        payload = pagerduty_payload(
            origin, message, severity, fields, routing_key, dedup_key or origin.run_id, event_action
        )
        return url or PAGERDUTY_EVENTS_URL, payload
    if not url:
        raise ActionFailed(f"a {kind} notification needs a url", retryable=False)
    build: Callable[..., dict[str, Any]] = slack_payload if kind == "slack" else webhook_payload
    return url, build(origin, message, severity, fields)


def encode_payload(payload: Any) -> bytes:
    """The JSON body as sent: UTF-8, compact; what a webhook signature covers."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


async def send_notification(
    url: str,
    body: bytes,
    *,
    idempotency_key: str,
    timeout: float | None,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """POST one encoded notification (`encode_payload`) with its Idempotency-Key.

    Raises ActionFailed for a URL that is not http(s) and for a failed connection; any
    status is a response (`check_status` judges it)."""
    return await send(
        "POST",
        url,
        headers={"Content-Type": "application/json", **(headers or {})},
        content=body,
        idempotency_key=idempotency_key,
        timeout=timeout,
    )


class NotifyAction(BuiltinAction):
    """Send one notification; the receiver's status is the output."""

    name = "notify"

    async def _run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        inputs = request.inputs
        check_inputs(self.name, builtin_schema(self.name), inputs, context.redact)
        kind = inputs.get("kind", "webhook")
        message: str = inputs["message"]
        severity = inputs.get("severity") or SEVERITY_BY_PLAYBOOK.get(request.severity, "info")
        fields: dict[str, Any] = inputs.get("fields", {})
        url, payload = notification(
            kind,
            request,
            message,
            severity,
            fields,
            url=inputs.get("url"),
            routing_key=inputs.get("routing_key"),
            dedup_key=inputs.get("dedup_key"),
        )
        response = await send_notification(
            url, encode_payload(payload), idempotency_key=request.idempotency_key, timeout=request.timeout
        )
        outputs: dict[str, Any] = {"status": response.status}
        if not 200 <= response.status < 300:
            outputs["body"] = context.redact(response.text()[:_ERROR_BODY_LIMIT])
        check_status(f"{kind} notification", response, None, outputs)
        return outputs
