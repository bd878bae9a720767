"""What `event` holds under each trigger kind, and the rule that reads a field it never has.

The shapes are those the runtime produces (opsdsl.runtime.triggers.event_kind and the
Alertmanager unwrapping of `fire`, `watch`, `serve` and `run --event`): an `alert` is one
alert of an Alertmanager webhook, with the notification's receiver, groupKey and
externalURL; a `metric` is a sample; a `log` a record. `event` events are whatever was sent.
`timestamp` and `time` are the fields the runtime reads an event's detection time from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from opsdsl.errors import Diagnostic
from opsdsl.lang.checks.context import Scope, Unit
from opsdsl.lang.sites import HOOK, TRIGGER

if TYPE_CHECKING:  # either model: pydantic's (compile) or the checked one (lint)
    from opsdsl.lang.model import Pack

EVENT_FIELDS: dict[str, frozenset[str] | None] = {
    "alert": frozenset(
        {
            "kind",
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
            "receiver",
            "groupKey",
            "externalURL",
        }
    ),
    "metric": frozenset({"kind", "name", "value", "labels", "timestamp", "time"}),
    "log": frozenset({"kind", "message", "level", "labels", "timestamp", "time"}),
    "event": None,  # anything the sender sent
}


def trigger_kind_of_site(pack: Pack, path: tuple) -> str | None:
    """The `on:` kind whose events an expression at `path` reads: a trigger's own, or the
    kind of the trigger a hook listens to."""
    if path[0] == "triggers" and path[1] in pack.triggers:
        return pack.triggers[path[1]].on
    if path[0] == "hooks" and path[1] in pack.hooks:
        trigger = pack.triggers.get(pack.hooks[path[1]].trigger)
        return trigger.on if trigger is not None else None
    return None


def check_event_fields(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    """OPS052: `event.FIELD` where the trigger's kind never carries FIELD (say `event.value`
    under `on: alert`): the condition can never hold for a real event of that kind."""
    pack = unit.model
    if pack.kind != "Pack":
        return
    parsed, _ = unit.parsed_sites
    for item in parsed:
        if item.site.context not in (TRIGGER, HOOK):
            continue
        kind = trigger_kind_of_site(pack, item.site.path)
        fields = EVENT_FIELDS.get(kind or "event")
        if fields is None:
            continue
        for expression, base in item.expressions:
            for ref in expression.references():
                if ref.root != "event" or not ref.path or ref.path[0] in fields:
                    continue
                span = unit.document.expression_span(item.site.path, base + ref.offset, base + ref.end)
                yield unit.at_span(
                    "OPS052",
                    span,
                    f"`on: {kind}` events never carry `event.{ref.path[0]}`",
                    f"a label is `event.labels.{ref.path[0]}`; {kind} events have"
                    f" {', '.join(f'`{f}`' for f in sorted(fields, key=str.lower))}"
                    " (`on: event` takes events of any shape)",
                )
