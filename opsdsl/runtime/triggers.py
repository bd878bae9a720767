"""Triggers: which events fire which triggers, with count windows and `for:` durations.

`TriggerEngine.observe(event, now)` tests one event against every trigger of the loaded
plans whose `on:` is the event's kind and returns the firings. It keeps, in memory:

- per trigger with `threshold`, the sliding window of matching events' times (and the
  series each came from, so a resolved alert can take its own events out again); with
  `threshold.per`, one window per value of that expression (say one per cluster);
- per trigger with `for` and per series, when the condition started holding.

A series is what Prometheus would call one: an alert's fingerprint (else its labels), or
`event.name` plus `event.labels`. An Alertmanager `status: resolved` event never fires a
trigger; it clears the pending `for` state and the counted events of its series.

With `for`, a trigger fires once per episode: when the condition has held for the
duration, and not again until the condition breaks (a non-matching event of the series,
or a resolve) and builds up again. Hooks' cooldowns handle repeats beyond that.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opsdsl.errors import EvalError

KINDS = ("alert", "metric", "log", "event")
MAX_GROUPS = 10_000  # `threshold.per` windows kept per trigger


def event_kind(event: Mapping[str, Any]) -> str:
    """The `on:` kind an event belongs to: its `kind` field, else inferred from its shape.

    alert: Alertmanager's alert objects (labels with an `alertname`, or labels plus startsAt,
    fingerprint or a firing / resolved status); metric: a `name` and a numeric `value`;
    log: a `message`; else event.
    """
    kind = event.get("kind")
    if kind in KINDS:
        return kind
    labels = event.get("labels")
    if isinstance(labels, Mapping) and (
        "alertname" in labels
        or "startsAt" in event
        or "fingerprint" in event
        or event.get("status") in ("firing", "resolved")
    ):
        return "alert"
    value = event.get("value")
    if "name" in event and isinstance(value, (int, float)) and not isinstance(value, bool):
        return "metric"
    if "message" in event:
        return "log"
    return "event"


def series_key(event: Mapping[str, Any], kind: str) -> str:
    """The identity of the time series an event belongs to (see the module doc)."""
    if kind == "alert" and isinstance(event.get("fingerprint"), str):
        return "fp:" + event["fingerprint"]
    labels = event.get("labels") if isinstance(event.get("labels"), Mapping) else {}
    try:
        text = json.dumps(labels, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        text = repr(sorted(labels.items()))
    return f"{event.get('name', '')}|{text}"


@dataclass(frozen=True)
class Firing:
    """One trigger fired by one event."""

    plan: int  # index of the plan in the engine
    trigger: str
    series: str
    reason: str  # "match", "threshold 50 in 5m", "held for 5m"


@dataclass
class Evaluation:
    """What one event did: the firings, and the triggers whose `when` failed to evaluate."""

    kind: str
    firings: list[Firing] = field(default_factory=list)
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (plan, trigger, message)
    resolved: bool = False


@dataclass
class _Trigger:
    plan: int
    pack: str
    name: str
    predicate: Callable[[Mapping[str, Any]], Any] | None
    count: int | None
    within: float | None  # seconds
    hold: float | None  # `for`, seconds
    event_name: str | None = None  # `event.name == "X"` is a conjunct of `when`: only events named X match
    window: deque = field(default_factory=deque)  # (time, series)
    per: Callable[[Mapping[str, Any]], Any] | None = None  # `threshold.per`: the window's key
    windows: dict[str, deque] = field(default_factory=dict)  # with `per`: key → (time, series)
    since: dict[str, float] = field(default_factory=dict)  # series → when the condition started holding
    fired: set[str] = field(default_factory=set)  # series whose current episode already fired


class TriggerEngine:
    """The triggers of one or more plans, with their window state."""

    def __init__(self, plans: Iterable[Mapping[str, Any]], params: Iterable[Mapping[str, Any]] | None = None) -> None:
        from opsdsl.lang.expr import compile_expr, parse

        self.plans = list(plans)
        self.params = list(params) if params is not None else [{} for _ in self.plans]
        self._by_kind: dict[str, list[_Trigger]] = {kind: [] for kind in KINDS}
        for index, plan in enumerate(self.plans):
            for name, spec in sorted((plan.get("triggers") or {}).items()):
                threshold = spec.get("threshold") or {}
                expression = parse(spec["when"]) if spec.get("when") else None
                per = compile_expr(parse(threshold["per"])) if threshold.get("per") else None
                trigger = _Trigger(
                    plan=index,
                    pack=(plan.get("pack") or {}).get("name", str(index)),
                    name=name,
                    predicate=compile_expr(expression) if expression is not None else None,
                    count=threshold.get("count"),
                    within=threshold["within"] / 1000 if threshold.get("within") else None,
                    hold=spec["for"] / 1000 if spec.get("for") else None,
                    event_name=_required_name(expression.root) if expression is not None else None,
                    per=per,
                )
                self._by_kind[spec["on"]].append(trigger)
        self.dirty: set[tuple[str, str]] = set()  # (pack, trigger) whose state changed since `take_dirty`
        self._by_name: dict[tuple[str, str], list[_Trigger]] = {}

    # ---- persistence: window state survives restarts (kept in the state database) ------

    def snapshot(self) -> dict[tuple[str, str], str]:
        """The state of every stateful trigger, as JSON text by (pack, trigger)."""
        return {(t.pack, t.name): _dump(t) for t in self._stateful()}

    def take_dirty(self) -> dict[tuple[str, str], str]:
        """The state of the triggers changed since the last call."""
        changed = {(t.pack, t.name): _dump(t) for t in self._stateful() if (t.pack, t.name) in self.dirty}
        self.dirty.clear()
        return changed

    def restore(self, states: Mapping[tuple[str, str], str]) -> None:
        """Take the stored state as it is (a trigger with none stored starts empty)."""
        for trigger in self._stateful():
            text = states.get((trigger.pack, trigger.name))
            state = json.loads(text) if text is not None else {}
            trigger.window = deque((float(t), str(k)) for t, k in state.get("window", []))
            trigger.windows = {
                str(group): deque((float(t), str(k)) for t, k in items)
                for group, items in state.get("windows", {}).items()
            }
            trigger.since = {str(k): float(v) for k, v in state.get("since", {}).items()}
            trigger.fired = set(state.get("fired", []))
        self.dirty.clear()

    def _stateful(self):
        for triggers in self._by_kind.values():
            for trigger in triggers:
                if trigger.count is not None or trigger.hold is not None:
                    yield trigger

    def observe(self, event: Mapping[str, Any], now: float) -> Evaluation:
        kind = event_kind(event)
        result = Evaluation(kind)
        triggers = self._by_kind.get(kind, ())
        if not triggers:
            return result
        name = event.get("name")
        if type(name) is str and not (kind == "alert" and event.get("status") == "resolved"):
            triggers = self._named(kind, name)
        series = series_key(event, kind)
        if kind == "alert" and event.get("status") == "resolved":
            result.resolved = True
            for trigger in triggers:
                self._clear(trigger, series)
                if trigger.count is not None or trigger.hold is not None:
                    self.dirty.add((trigger.pack, trigger.name))
            return result
        activation: dict[str, Any] = {"event": event, "now": now}
        for trigger in triggers:
            activation["params"] = self.params[trigger.plan]
            if trigger.predicate is None:
                matched = True
            else:
                try:
                    matched = trigger.predicate(activation) is True
                except EvalError as error:
                    result.errors.append((trigger.plan, trigger.name, error.message))
                    matched = False
            group = ""
            if matched and trigger.per is not None:
                try:
                    group = _group_key(trigger.per(activation))
                except EvalError as error:  # the event has no such series: it counts nowhere
                    result.errors.append((trigger.plan, trigger.name, f"threshold.per: {error.message}"))
                    matched = False
            reason = self._step(trigger, series, matched, now, group)
            if trigger.count is not None or trigger.hold is not None:
                self.dirty.add((trigger.pack, trigger.name))
            if reason is not None:
                result.firings.append(Firing(trigger.plan, trigger.name, series, reason))
        return result

    def _named(self, kind: str, name: str) -> list[_Trigger]:
        """The triggers an event named `name` can match: a trigger whose `when` requires another
        name evaluates to false for it (CEL's `false && x` is false), and a `for:` series is
        per name, so skipping it changes nothing."""
        found = self._by_name.get((kind, name))
        if found is None:
            found = [t for t in self._by_kind[kind] if t.event_name is None or t.event_name == name]
            if len(self._by_name) < 10_000:
                self._by_name[(kind, name)] = found
        return found

    def _step(self, trigger: _Trigger, series: str, matched: bool, now: float, group: str = "") -> str | None:
        """Advance one trigger's state by one event (of `group`, the `threshold.per` value);
        the firing reason, or None."""
        if trigger.count is None and trigger.hold is None:
            return "match" if matched else None
        holding = matched
        if matched and trigger.count is not None:
            window = trigger.window if trigger.per is None else self._window_of(trigger, group, now)
            window.append((now, series))
            horizon = now - (trigger.within or 0)
            while window and window[0][0] <= horizon:
                window.popleft()
            holding = len(window) >= trigger.count
            if holding and trigger.hold is None:
                window.clear()  # the count starts again from zero
                reason = f"threshold {trigger.count} within {_seconds(trigger.within)}"
                return reason if trigger.per is None else f"{reason} per {group}"
        if trigger.hold is None:
            return None
        # A count window is the trigger's (or its `per` group's), not a series'.
        key = series if trigger.count is None else group
        if not holding:
            if not matched or trigger.count is None:
                trigger.since.pop(key, None)
                trigger.fired.discard(key)
            return None
        started = trigger.since.setdefault(key, now)
        if now - started >= trigger.hold and key not in trigger.fired:
            trigger.fired.add(key)
            if trigger.count is not None:
                (trigger.window if trigger.per is None else trigger.windows.get(group, deque())).clear()
            return f"held for {_seconds(trigger.hold)}"
        return None

    @staticmethod
    def _window_of(trigger: _Trigger, group: str, now: float) -> deque:
        """The window of one `per` group. Groups that went quiet are dropped once there are
        many, so a label with ever new values cannot grow the state without bound."""
        if group not in trigger.windows and len(trigger.windows) >= MAX_GROUPS:
            horizon = now - (trigger.within or 0)
            for stale in [g for g, w in trigger.windows.items() if not w or w[-1][0] <= horizon]:
                del trigger.windows[stale]
            if len(trigger.windows) >= MAX_GROUPS:  # all busy: forget the quietest
                del trigger.windows[min(trigger.windows, key=lambda g: trigger.windows[g][-1][0])]
        return trigger.windows.setdefault(group, deque())

    @staticmethod
    def _clear(trigger: _Trigger, series: str) -> None:
        trigger.since.pop(series, None)
        trigger.fired.discard(series)
        if trigger.window:
            trigger.window = deque(item for item in trigger.window if item[1] != series)
        for group, window in list(trigger.windows.items()):
            kept = deque(item for item in window if item[1] != series)
            if kept:
                trigger.windows[group] = kept
            else:
                del trigger.windows[group]


def _required_name(node: Any) -> str | None:
    """X when the expression is a conjunction with `event.name == "X"` (either way round) in it."""
    from opsdsl.lang.expr.nodes import Binary, Ident, Literal, Select

    if isinstance(node, Binary) and node.op == "&&":
        return _required_name(node.left) or _required_name(node.right)
    if isinstance(node, Binary) and node.op == "==":
        for side, other in ((node.left, node.right), (node.right, node.left)):
            if (
                isinstance(side, Select)
                and side.field == "name"
                and isinstance(side.operand, Ident)
                and side.operand.name == "event"
                and isinstance(other, Literal)
                and other.kind == "string"
            ):
                return other.value
    return None


def _group_key(value: Any) -> str:
    """A `threshold.per` value as a window key: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except (TypeError, ValueError):
        return repr(value)


def _dump(trigger: _Trigger) -> str:
    state: dict[str, Any] = {"window": list(trigger.window), "since": trigger.since, "fired": sorted(trigger.fired)}
    if trigger.per is not None:
        state["windows"] = {group: list(window) for group, window in sorted(trigger.windows.items())}
    return json.dumps(state, separators=(",", ":"))


def _seconds(value: float | None) -> str:
    from opsdsl.lang.durations import format_duration

    return format_duration(round((value or 0) * 1000))
