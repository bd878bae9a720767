"""The `notify` action: the three payload shapes, as a real server receives them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_action_http import RecordingServer

from opsdsl.runtime.actions import load_action
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.notify import PAGERDUTY_EVENTS_URL, NotifyAction


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


def request(inputs: dict[str, Any], severity: str = "SEV-2", attempt: int = 1) -> ActionRequest:
    return ActionRequest(
        run_id="run-42",
        step_id="page_oncall",
        action="notify",
        inputs=inputs,
        attempt=attempt,
        idempotency_key="run-42:page_oncall",
        timeout=10.0,
        severity=severity,
        playbook="respond",
        pack="sqlx",
    )


def run_notify(
    inputs: dict[str, Any], severity: str = "SEV-2", attempt: int = 1, secret: str | None = None
) -> dict[str, Any]:
    redact = (lambda text: text.replace(secret, "***")) if secret else (lambda text: text)
    context = ActionContext(evidence_dir=Path("unused"), redact=redact)
    return asyncio.run(NotifyAction().run(request(inputs, severity, attempt), context))


def test_registry_returns_the_notify_action() -> None:
    assert isinstance(load_action("notify"), NotifyAction)


def test_webhook_payload(server: RecordingServer) -> None:
    server.reply("/hook", 204)
    outputs = run_notify({"url": server.url("/hook"), "message": "p95 over SLO", "fields": {"cluster": "eu-1"}})
    assert outputs == {"status": 204}
    (seen,) = server.requests
    assert seen.method == "POST"
    assert seen.headers["idempotency-key"] == "run-42:page_oncall"
    assert seen.json() == {
        "message": "p95 over SLO",
        "severity": "error",  # SEV-2
        "run_id": "run-42",
        "step_id": "page_oncall",
        "playbook": "respond",
        "pack": "sqlx",
        "fields": {"cluster": "eu-1"},
    }


def test_slack_payload(server: RecordingServer) -> None:
    server.reply("/services/T0/B0/x", 200, "ok")
    run_notify(
        {
            "kind": "slack",
            "url": server.url("/services/T0/B0/x"),
            "message": "Rotating keys on eu-1",
            "severity": "warning",
            "fields": {"cluster": "eu-1", "nodes": [3, 5]},
        }
    )
    payload = server.requests[0].json()
    assert payload["text"] == "Rotating keys on eu-1"
    (attachment,) = payload["attachments"]
    assert attachment["fallback"] == "Rotating keys on eu-1"
    assert attachment["color"].startswith("#")
    fields = {field["title"]: field["value"] for field in attachment["fields"]}
    assert fields == {
        "Severity": "warning",
        "Playbook": "respond",
        "Run": "run-42",
        "cluster": "eu-1",
        "nodes": "[3, 5]",
    }
    assert all(isinstance(field["short"], bool) for field in attachment["fields"])


def test_pagerduty_events_v2_payload(server: RecordingServer) -> None:
    server.reply("/v2/enqueue", 202, {"status": "success", "dedup_key": "run-42"})
    outputs = run_notify(
        {
            "kind": "pagerduty",
            "url": server.url("/v2/enqueue"),
            "routing_key": "R0UTINGKEY",
            "message": "SEV-1: driver connection failures on eu-1",
            "fields": {"cluster": "eu-1"},
        },
        severity="SEV-1",
    )
    assert outputs == {"status": 202}
    assert server.requests[0].json() == {
        "routing_key": "R0UTINGKEY",
        "event_action": "trigger",
        "dedup_key": "run-42",
        "client": "opsdsl",
        "payload": {
            "summary": "SEV-1: driver connection failures on eu-1",
            "source": "sqlx/respond",
            "severity": "critical",
            "custom_details": {"run_id": "run-42", "step_id": "page_oncall", "cluster": "eu-1"},
        },
    }
    assert server.requests[0].headers["idempotency-key"] == "run-42:page_oncall"


def test_pagerduty_dedup_key_and_default_url(server: RecordingServer) -> None:
    assert PAGERDUTY_EVENTS_URL == "https://events.pagerduty.com/v2/enqueue"
    server.reply("/v2/enqueue", 202)
    inputs = {"kind": "pagerduty", "url": server.url("/v2/enqueue"), "routing_key": "k", "message": "m"}
    run_notify({**inputs, "dedup_key": "eu-1-outage"}, severity="SEV-4")
    payload = server.requests[0].json()
    assert payload["dedup_key"] == "eu-1-outage"
    assert payload["payload"]["severity"] == "info"


@pytest.mark.parametrize(("severity", "expected"), [("SEV-1", "critical"), ("SEV-3", "warning"), ("SEV-4", "info")])
def test_severity_defaults_from_the_playbook(server: RecordingServer, severity: str, expected: str) -> None:
    server.reply("/hook", 200)
    run_notify({"url": server.url("/hook"), "message": "m"}, severity=severity)
    assert server.requests[0].json()["severity"] == expected


def test_a_refused_notification_fails_with_the_redacted_answer(server: RecordingServer) -> None:
    server.reply("/v2/enqueue", 400, {"status": "invalid event", "errors": ["bad routing key S3CRETKEY"]})
    inputs = {"kind": "pagerduty", "url": server.url("/v2/enqueue"), "routing_key": "S3CRETKEY", "message": "m"}
    with pytest.raises(ActionFailed) as caught:
        run_notify(inputs, secret="S3CRETKEY")
    assert not caught.value.retryable
    assert caught.value.outputs["status"] == 400
    assert "S3CRETKEY" not in caught.value.outputs["body"]
    assert "***" in caught.value.outputs["body"]


def test_a_server_error_is_retryable_with_the_same_key(server: RecordingServer) -> None:
    server.reply("/hook", 502)
    server.reply("/hook", 200)
    with pytest.raises(ActionFailed) as caught:
        run_notify({"url": server.url("/hook"), "message": "m"}, attempt=1)
    assert caught.value.retryable
    assert run_notify({"url": server.url("/hook"), "message": "m"}, attempt=2) == {"status": 200}
    assert {seen.headers["idempotency-key"] for seen in server.requests} == {"run-42:page_oncall"}


def test_pagerduty_requires_a_routing_key() -> None:
    with pytest.raises(ActionFailed) as caught:
        run_notify({"kind": "pagerduty", "message": "m"})
    assert not caught.value.retryable
    assert "routing_key" in caught.value.message
