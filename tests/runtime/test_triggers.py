"""Trigger evaluation: matches, count windows, `for:` durations, resolved alerts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from opsdsl.runtime.triggers import TriggerEngine, event_kind, series_key


def plan(**triggers) -> dict:
    return {"triggers": triggers}


def metric(value: float, cluster: str = "eu1", name: str = "errors") -> dict:
    return {"kind": "metric", "name": name, "value": value, "labels": {"cluster": cluster}}


def alert(status: str = "firing", fingerprint: str = "f1", **labels) -> dict:
    return {"status": status, "labels": {"alertname": "X", **labels}, "fingerprint": fingerprint, "startsAt": "t"}


def fired(engine: TriggerEngine, event: dict, now: float) -> list[str]:
    return [f.trigger for f in engine.observe(event, now).firings]


def test_event_kinds_are_declared_or_inferred():
    assert event_kind({"kind": "log", "name": "x", "value": 1}) == "log"
    assert event_kind(alert()) == "alert"
    assert event_kind(metric(3)) == "metric"
    assert event_kind({"message": "disk full"}) == "log"
    assert event_kind({"name": "deploy"}) == "event"
    assert event_kind({"name": "m", "value": True}) == "event"  # a boolean is not a sample


def test_series_are_alert_fingerprints_or_name_and_labels():
    assert series_key(alert(fingerprint="abc"), "alert") == "fp:abc"
    assert series_key(metric(1, "a"), "metric") != series_key(metric(1, "b"), "metric")
    assert series_key(metric(1, "a"), "metric") == series_key(metric(9, "a"), "metric")


def test_plain_trigger_fires_on_each_matching_event_of_its_kind():
    engine = TriggerEngine([plan(high={"on": "metric", "when": "event.value > params.limit"})], [{"limit": 5}])
    assert fired(engine, metric(6), 0) == ["high"]
    assert fired(engine, metric(4), 1) == []
    assert fired(engine, {"kind": "log", "message": "x", "value": 9}, 2) == []  # wrong kind


def test_a_when_that_fails_is_no_match_and_is_reported():
    engine = TriggerEngine([plan(t={"on": "event", "when": 'event.labels.team == "db"'})])
    result = engine.observe({"name": "x"}, 0)
    assert result.firings == [] and result.errors[0][1] == "t"


def test_threshold_fires_at_the_nth_match_inside_the_window_then_starts_again():
    engine = TriggerEngine([plan(spike={"on": "metric", "threshold": {"count": 3, "within": 10_000}})])
    assert fired(engine, metric(1), 0) == []
    assert fired(engine, metric(1), 1) == []
    assert fired(engine, metric(1), 2) == ["spike"]
    assert fired(engine, metric(1), 3) == []  # counting again from zero
    assert fired(engine, metric(1), 20) == []  # the earlier ones left the window
    assert fired(engine, metric(1), 21) == []
    assert fired(engine, metric(1), 22) == ["spike"]


def test_for_fires_once_the_condition_held_long_enough_and_once_per_episode():
    engine = TriggerEngine([plan(slow={"on": "metric", "when": "event.value > 250", "for": 300_000})])
    assert fired(engine, metric(300), 0) == []
    assert fired(engine, metric(310), 200) == []
    assert fired(engine, metric(320), 300) == ["slow"]
    assert fired(engine, metric(330), 400) == []  # same episode
    assert fired(engine, metric(100), 500) == []  # the condition breaks
    assert fired(engine, metric(300), 600) == []
    assert fired(engine, metric(300), 900) == ["slow"]


def test_for_is_kept_per_series():
    engine = TriggerEngine([plan(slow={"on": "metric", "when": "event.value > 250", "for": 60_000})])
    assert fired(engine, metric(300, "a"), 0) == []
    assert fired(engine, metric(300, "b"), 30) == []
    assert fired(engine, metric(100, "b"), 40) == []  # b breaks, a holds
    assert fired(engine, metric(300, "a"), 60) == ["slow"]
    assert fired(engine, metric(300, "b"), 61) == []


def test_a_resolved_alert_never_fires_and_clears_its_series():
    engine = TriggerEngine([plan(down={"on": "alert", "when": 'event.labels.alertname == "X"', "for": 60_000})])
    assert fired(engine, alert(), 0) == []
    assert engine.observe(alert("resolved"), 30).resolved
    assert fired(engine, alert(), 61) == []  # the clock started again at 61
    assert fired(engine, alert(), 121) == ["down"]


def test_resolved_alerts_take_their_counted_events_out_of_the_window():
    engine = TriggerEngine([plan(flap={"on": "alert", "threshold": {"count": 2, "within": 60_000}})])
    assert fired(engine, alert(fingerprint="a"), 0) == []
    engine.observe(alert("resolved", fingerprint="a"), 1)
    assert fired(engine, alert(fingerprint="b"), 2) == []
    assert fired(engine, alert(fingerprint="c"), 3) == ["flap"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=30, allow_nan=False), min_size=1, max_size=60))
def test_threshold_matches_a_hand_count(gaps):
    """The engine fires exactly when a brute-force count of the window reaches `count`."""
    count, within = 4, 10.0
    engine = TriggerEngine([plan(t={"on": "metric", "threshold": {"count": count, "within": int(within * 1000)}})])
    now, kept = 0.0, []
    for gap in gaps:
        now += gap
        kept = [t for t in kept if t > now - within] + [now]
        expected = len(kept) >= count
        if expected:
            kept = []
        assert bool(fired(engine, metric(1), now)) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", None]),
            st.integers(0, 400),
            st.sampled_from(["eu1", "eu2"]),
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        max_size=40,
    )
)
def test_the_name_index_changes_no_outcome(stream):
    """Skipping triggers that require another `event.name` gives the same firings and errors."""
    specs = {
        "a_high": {"on": "metric", "when": 'event.name == "a" && event.value > 200'},
        "b_count": {"on": "metric", "when": '"b" == event.name', "threshold": {"count": 2, "within": 60_000}},
        "a_for": {"on": "metric", "when": 'event.name == "a" && event.labels.cluster == "eu1"', "for": 30_000},
        "any_low": {"on": "metric", "when": "event.value < 100"},
    }
    indexed, full = TriggerEngine([plan(**specs)]), TriggerEngine([plan(**specs)])
    full._named = lambda kind, name: full._by_kind[kind]
    now = 0.0
    for name, value, cluster, gap in stream:
        now += gap
        event = {"kind": "metric", "value": value, "labels": {"cluster": cluster}}
        if name is not None:
            event["name"] = name
        one, two = indexed.observe(event, now), full.observe(event, now)
        assert one.firings == two.firings
        assert one.errors == two.errors


def test_a_threshold_per_series_key_counts_each_cluster_apart():
    """Issue 13 #16: `threshold.per` gives each value its own window."""
    spec = {
        "on": "metric",
        "when": 'event.name == "errors"',
        "threshold": {"count": 3, "within": 60_000, "per": "event.labels.cluster"},
    }
    engine = TriggerEngine([plan(spike=spec)])
    assert fired(engine, metric(1, "eu1"), 0) == []
    assert fired(engine, metric(1, "us1"), 1) == []
    assert fired(engine, metric(1, "eu1"), 2) == []
    assert fired(engine, metric(1, "us1"), 3) == []  # four events in all, but two per cluster
    firings = engine.observe(metric(1, "eu1"), 4).firings
    assert [(f.trigger, f.reason) for f in firings] == [("spike", "threshold 3 within 1m per eu1")]
    assert fired(engine, metric(1, "us1"), 5) == ["spike"]
    assert fired(engine, metric(1, "eu1"), 6) == []  # eu1 starts again from zero


def test_without_per_the_window_is_the_triggers():
    spec = {"on": "metric", "when": 'event.name == "errors"', "threshold": {"count": 3, "within": 60_000}}
    engine = TriggerEngine([plan(spike=spec)])
    assert [fired(engine, metric(1, c), t) for t, c in enumerate(["eu1", "us1", "ap1"])] == [[], [], ["spike"]]


def test_per_windows_survive_a_restart_and_an_event_without_the_key_counts_nowhere():
    spec = {
        "on": "metric",
        "when": 'event.name == "errors"',
        "threshold": {"count": 2, "within": 60_000, "per": "event.labels.cluster"},
    }
    first = TriggerEngine([plan(spike=spec)])
    assert fired(first, metric(1, "eu1"), 0) == []
    evaluation = first.observe({"kind": "metric", "name": "errors", "value": 1, "labels": {}}, 1)
    assert evaluation.firings == [] and "threshold.per" in evaluation.errors[0][2]
    second = TriggerEngine([plan(spike=spec)])
    second.restore(first.snapshot())
    assert fired(second, metric(1, "us1"), 2) == []
    assert fired(second, metric(1, "eu1"), 3) == ["spike"]


def test_per_with_for_holds_per_group():
    spec = {
        "on": "metric",
        "when": 'event.name == "errors"',
        "threshold": {"count": 2, "within": 60_000, "per": "event.labels.cluster"},
        "for": 10_000,
    }
    engine = TriggerEngine([plan(spike=spec)])
    for t in (0, 1):
        assert fired(engine, metric(1, "eu1"), t) == []
    assert fired(engine, metric(1, "us1"), 12) == []  # us1 has one event: not holding
    assert fired(engine, metric(1, "eu1"), 12) == ["spike"]
