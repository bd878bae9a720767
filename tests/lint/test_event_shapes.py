"""OPS052's shapes are the runtime's: what `fire`/`serve` make of an Alertmanager webhook
and what `event_kind` calls a metric or a log carry only the fields the rule allows."""

from __future__ import annotations

from opsdsl.lang.checks.events import EVENT_FIELDS
from opsdsl.runtime.service import events_from_payload
from opsdsl.runtime.triggers import KINDS, event_kind

WEBHOOK = {
    "version": "4",
    "groupKey": '{}:{alertname="Down"}',
    "status": "firing",
    "receiver": "opsdsl",
    "groupLabels": {"alertname": "Down"},
    "commonLabels": {"alertname": "Down"},
    "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093",
    "truncatedAlerts": 0,
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "Down", "cluster": "eu-1"},
            "annotations": {"summary": "down"},
            "startsAt": "2026-01-01T00:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": "c0ffee",
        }
    ],
}


def test_every_kind_has_a_shape():
    assert set(EVENT_FIELDS) == set(KINDS)


def test_an_alertmanager_alert_carries_only_alert_fields():
    (alert,) = events_from_payload(WEBHOOK)
    assert event_kind(alert) == "alert"
    assert set(alert) <= EVENT_FIELDS["alert"]
    assert "value" not in EVENT_FIELDS["alert"]


def test_metric_and_log_shapes_are_what_event_kind_recognises():
    metric = {"name": "errors_total", "value": 3, "labels": {"cluster": "eu"}, "timestamp": 1.0}
    log = {"message": "panic", "level": "error", "labels": {}, "time": "2026-01-01T00:00:00Z"}
    assert event_kind(metric) == "metric" and set(metric) <= EVENT_FIELDS["metric"]
    assert event_kind(log) == "log" and set(log) <= EVENT_FIELDS["log"]
    assert EVENT_FIELDS["event"] is None
