"""Escalation levels and response clocks (the seed runbook's sections 3 and 8).

Every incident a server owns starts a clock: its severity's initial response time (SEV-1
5 minutes … SEV-4 24 hours). A level may page at once for some severities (L1 "auto-page
for SEV-1/2"). When the clock runs out and no person has acknowledged the incident (an
`opsdsl ack`, an approval or a decision: the same acknowledgements MTTA counts), the
incident escalates to the next level, and the clock starts again for that level; after
the last level nothing more happens. Each escalation is an `incident.escalated` ledger
entry (level, who, notifiers, why), which the announcer (runtime/announce.py) delivers
through the level's notifiers; an acknowledgement closes it there.

The clock is a durable timer (`timers` row of kind `escalate`), so it fires with nobody at
a shell and after a restart; the server's driver calls `Escalator.fire` when it is due.
An incident whose run ended `succeeded` before anyone acknowledged it stops escalating: it
was mitigated automatically, nobody needs to be woken for it (the report still counts it
as never acknowledged). One a person cancelled stops too: someone looked, and decided. An
acknowledgement anywhere in the run's family (an approval in a sub-run) counts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.audit.metrics import RESPONSE_TIMES, first_acknowledgement, format_duration
from opsdsl.errors import UsageError
from opsdsl.runtime import store as S

TIMER = "escalate"  # timers.kind of the response clock


@dataclass(frozen=True)
class Level:
    name: str  # "L1"
    who: str  # "On-call SRE": who the level reaches, as people read it
    notifiers: tuple[str, ...] = ()  # names of the service's [[notifiers]]
    page_at_start: tuple[str, ...] = ()  # severities this level is paged for when the incident opens


# The seed runbook's section 8. Without notifiers the levels are recorded in the ledger only.
DEFAULT_LEVELS = (
    Level("L1", "On-call SRE (PagerDuty / Slack)", page_at_start=("SEV-1", "SEV-2")),
    Level("L2", "Engineering leads (e-mail / incident room)"),
    Level("L3", "Executives / legal (compliance report)"),
)


@dataclass(frozen=True)
class EscalationPolicy:
    levels: tuple[Level, ...] = DEFAULT_LEVELS
    response: Mapping[str, float] | None = None  # severity -> seconds; None: the seed's section 3

    def response_time(self, severity: str) -> float | None:
        return (self.response or RESPONSE_TIMES).get(severity)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": level.name,
                "who": level.who,
                "notifiers": list(level.notifiers),
                "page_at_start": list(level.page_at_start),
            }
            for level in self.levels
        ]


def policy_from_table(table: Mapping[str, Any], notifier_names: Sequence[str] = ()) -> EscalationPolicy:
    """The `[escalation]` table of the service configuration (docs/serve.md):

        [escalation]
        response = { "SEV-1" = "5m", "SEV-2" = "15m" }   # optional: the seed's times otherwise
        [[escalation.levels]]
        name = "L1"
        who = "On-call SRE"
        notifiers = ["oncall-slack"]
        page_at_start = ["SEV-1", "SEV-2"]

    UsageError naming the key for anything wrong (the config loader adds file:line)."""
    from opsdsl.lang.durations import parse_duration

    unknown = sorted(set(table) - {"response", "levels"})
    if unknown:
        raise UsageError(f"escalation.{unknown[0]}: unknown key (expected response, levels)")
    response = None
    if "response" in table:
        if not isinstance(table["response"], Mapping):
            raise UsageError("escalation.response: a table of severity = duration")
        response = {}
        for severity, text in table["response"].items():
            if severity not in RESPONSE_TIMES:
                raise UsageError(f"escalation.response.{severity}: not a severity ({', '.join(RESPONSE_TIMES)})")
            try:
                seconds = parse_duration(text) / 1000 if isinstance(text, str) else None
            except Exception:
                seconds = None
            if not seconds or seconds <= 0:
                raise UsageError(f'escalation.response.{severity}: a duration such as "15m", not {text!r}')
            response[severity] = seconds
        response = {**RESPONSE_TIMES, **response}
    levels = DEFAULT_LEVELS
    if "levels" in table:
        raw = table["levels"]
        if not isinstance(raw, list) or not raw or not all(isinstance(item, Mapping) for item in raw):
            raise UsageError("escalation.levels: one or more [[escalation.levels]] tables")
        levels = tuple(_level(index, item, notifier_names) for index, item in enumerate(raw))
        names = [level.name for level in levels]
        if len(set(names)) != len(names):
            raise UsageError("escalation.levels: two levels have the same name")
    return EscalationPolicy(levels, response)


def _level(index: int, item: Mapping[str, Any], notifier_names: Sequence[str]) -> Level:
    where = f"escalation.levels[{index}]"
    unknown = sorted(set(item) - {"name", "who", "notifiers", "page_at_start"})
    if unknown:
        raise UsageError(f"{where}.{unknown[0]}: unknown key (expected name, who, notifiers, page_at_start)")
    name, who = item.get("name"), item.get("who", "")
    if not isinstance(name, str) or not name.strip() or len(name) > 40:
        raise UsageError(f'{where}.name: a short name such as "L1"')
    if not isinstance(who, str) or len(who) > 200:
        raise UsageError(f"{where}.who: text of at most 200 characters")
    notifiers = item.get("notifiers", [])
    if not isinstance(notifiers, list) or not all(isinstance(n, str) for n in notifiers):
        raise UsageError(f"{where}.notifiers: a list of notifier names")
    missing = [n for n in notifiers if n not in notifier_names]
    if missing:
        known = ", ".join(notifier_names) or "none"
        raise UsageError(f"{where}.notifiers: no [[notifiers]] named {missing[0]!r} (configured: {known})")
    pages = item.get("page_at_start", [])
    if not isinstance(pages, list) or not all(p in RESPONSE_TIMES for p in pages):
        raise UsageError(f"{where}.page_at_start: a list of severities ({', '.join(RESPONSE_TIMES)})")
    return Level(name.strip(), who, tuple(notifiers), tuple(pages))


class Escalator:
    """Starts each incident's response clock and escalates it when the clock runs out."""

    def __init__(self, store: S.Store, policy: EscalationPolicy, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock

    def start(self, run: S.RunRow) -> None:
        """A new incident (a top-level run), inside the transaction that creates it: page the
        levels that page at once for its severity, and start its clock."""
        now = self.clock()
        response = self.policy.response_time(run.severity)
        paged = 0
        for index, level in enumerate(self.policy.levels):
            if run.severity in level.page_at_start:
                self._escalate(run, index, f"auto-page for {run.severity}", now)
                paged = index + 1
        if response is not None and paged < len(self.policy.levels):
            self.store.set_timer(run.id, "", TIMER, run.created_at + response)

    def fire(self, run_id: str) -> Any:
        """The clock of `run_id` ran out: escalate one level, unless a person acknowledged it
        or it needs nobody any more; then start the next level's clock. Returns the
        incident.escalated entry (None when it did not escalate). Reaching the last level
        names the compliance report the server then writes (`compliance_report`, a path
        under the state directory: runtime/compliance.py, service.py)."""
        try:
            run = self.store.run(run_id)
        except S.StateError:
            return None
        family = self.store.family(run.id)  # an approval in a sub-run acknowledges the incident too
        entries = [e.to_dict() for member in family for e in self.store.ledger.entries(run=member)]
        if first_acknowledgement(entries) is not None or run.status in (S.SUCCEEDED, S.CANCELLED):
            return None
        response = self.policy.response_time(run.severity)
        level = self._next_level(run.id)
        if response is None or level >= len(self.policy.levels):
            return None
        now = self.clock()
        waited = format_duration(now - run.created_at)
        last = level + 1 == len(self.policy.levels)
        with self.store.transaction():
            entry = self._escalate(
                run,
                level,
                f"not acknowledged within {format_duration(response)} ({waited} since it opened)",
                now,
                report=last,
            )
            if not last:
                self.store.set_timer(run.id, "", TIMER, now + response)
        return entry

    def _escalate(self, run: S.RunRow, index: int, reason: str, now: float, report: bool = False) -> Any:
        level = self.policy.levels[index]
        data = {
            "level": level.name,
            "index": index + 1,
            "of": len(self.policy.levels),
            "who": level.who,
            "notifiers": list(level.notifiers),
            "reason": reason,
            "severity": run.severity,
            "incident_id": run.incident_id,
            "response_seconds": self.policy.response_time(run.severity),
        }
        if report:
            from opsdsl.runtime.compliance import REPORTS_DIR, report_name

            data["compliance_report"] = f"{REPORTS_DIR}/{report_name(now)}"
        return self.store.ledger.append(E.INCIDENT_ESCALATED, run.id, data, ts=now)

    def _next_level(self, run_id: str) -> int:
        """How far the incident has escalated: the index of the next level."""
        if self.store.ledger.journaled:  # the last escalation may still wait in the journal
            found = [e.data for e in self.store.ledger.entries(run=run_id) if e.kind == E.INCIDENT_ESCALATED]
            return max((int(data.get("index", 0)) for data in found), default=0)
        rows = self.store.conn.execute(
            "SELECT data FROM ledger WHERE run = ? AND kind = ?", (run_id, E.INCIDENT_ESCALATED)
        ).fetchall()
        if not rows:
            return 0
        return max(int(json.loads(data).get("index", 0)) for (data,) in rows)
