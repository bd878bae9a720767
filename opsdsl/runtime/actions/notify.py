"""`notify`: tell people, as a generic JSON webhook, a Slack message or a PagerDuty event.

Each kind is one small function from the step to a JSON payload; sending is `http.send`
with the step's Idempotency-Key, like every other request a run makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from opsdsl.runtime.actions import builtin_schema, check_inputs
from opsdsl.runtime.actions.base import ActionContext, ActionRequest
from opsdsl.runtime.actions.builtin import BuiltinAction
from opsdsl.runtime.actions.http import check_status, send

PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITY_BY_PLAYBOOK = {"SEV-1": "critical", "SEV-2": "error", "SEV-3": "warning", "SEV-4": "info"}
SLACK_COLORS = {"critical": "#b3261e", "error": "#e8590c", "warning": "#f2c744", "info": "#1c7ed6"}
PAGERDUTY_SUMMARY_LIMIT = 1024  # Events v2 refuses a longer summary
_ERROR_BODY_LIMIT = 2000


def webhook_payload(request: ActionRequest, message: str, severity: str, fields: dict[str, Any]) -> dict[str, Any]:
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


def slack_payload(request: ActionRequest, message: str, severity: str, fields: dict[str, Any]) -> dict[str, Any]:
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
    request: ActionRequest, message: str, severity: str, fields: dict[str, Any], routing_key: str, dedup_key: str
) -> dict[str, Any]:
    """A PagerDuty Events v2 trigger; `dedup_key` makes every page of one run one incident."""
    source = "/".join(part for part in (request.pack, request.playbook) if part) or "opsdsl"
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
        if kind == "pagerduty":
            url = inputs.get("url", PAGERDUTY_EVENTS_URL)
            payload = pagerduty_payload(
                request, message, severity, fields, inputs["routing_key"], inputs.get("dedup_key", request.run_id)
            )
        else:
            build: Callable[..., dict[str, Any]] = slack_payload if kind == "slack" else webhook_payload
            url = inputs["url"]
            payload = build(request, message, severity, fields)
        response = await send(
            "POST", url, json=payload, idempotency_key=request.idempotency_key, timeout=request.timeout
        )
        outputs: dict[str, Any] = {"status": response.status}
        if not 200 <= response.status < 300:
            outputs["body"] = context.redact(response.text()[:_ERROR_BODY_LIMIT])
        check_status(f"{kind} notification", response, None, outputs)
        return outputs
