"""Approval requests reach people: the server announces them through its notifiers.

`Announcer` tails the ledger from a durable cursor and, for every `approval.requested`,
tells each configured notifier (a Slack incoming webhook, PagerDuty Events v2, a generic
JSON webhook; the `notify` action's payloads and sending) what is asked, why, by when,
how many people must answer and where to answer; then a reminder before the deadline
while nobody has decided; then the outcome (approved by whom, denied, timed out, or no
longer needed because the run ended). A step a crash left in doubt (`step.in_doubt`) is
announced the same way, as a decision to make, closed by `step.decided`. Every attempt is
an `approval.announced` ledger entry, delivered or not.

It works as an outbox. Reading the ledger turns entries into rows of the `announcements`
table (what to send to whom, and when) in the same transaction that moves the cursor
(table `announcement_cursor`), so a restart neither loses an announcement nor starts
again from the first entry. Sending comes after: a row is marked sent in the transaction
that records its ledger entry. A server killed between the receiver's answer and that
transaction sends that one announcement again after the restart (at least once), with
the same Idempotency-Key. A failed send is retried with back-off, a bounded number of
times; nothing here waits on a run, or a run on it.

What an announcement says, the notifier specs, and how text from the run (hostile: it can
carry event data) is made fit to show, are in `announce_text`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from opsdsl.audit import entries as E
from opsdsl.errors import OpsdslError, UsageError
from opsdsl.lang.names import same_person_key
from opsdsl.runtime import store as S
from opsdsl.runtime.actions.base import ActionFailed
from opsdsl.runtime.actions.http import check_status
from opsdsl.runtime.actions.notify import SEVERITY_BY_PLAYBOOK, encode_payload, notification, send_notification
from opsdsl.runtime.announce_text import (  # noqa: F401  (notifier_problem: the service config's check)
    ITEMS_LIMIT,
    MESSAGE_LIMIT,
    OUTCOME,
    REMINDER,
    REQUEST,
    Notifier,
    clean_text,
    comment_of,
    input_spec,
    iso_time,
    notifier_problem,
    notifiers_from_specs,
    origin_fields,
    plain_summary,
    public_facts,
    reminder_time,
    sign,
    slack_escape,
    slack_text,
    url_problem,
)
from opsdsl.runtime.secrets import ENV_PREFIX, Redactor, Secrets

# Under "opsdsl.serve" so that `opsdsl serve`'s log set-up shows these lines.
log = logging.getLogger("opsdsl.serve.announce")

POLL_SECONDS = 0.5  # how often the ledger is read when nobody calls wake()
BATCH = 500  # ledger entries read per transaction
SEND_BATCH = 50  # announcements sent per pass
MAX_ATTEMPTS = 5  # sends of one announcement to one notifier, then it is given up
BACKOFF_FIRST, BACKOFF_MAX = 5.0, 300.0  # seconds before the 2nd attempt, doubling, capped
DETAIL_LIMIT = 300  # characters of a failure recorded in the ledger

_DDL = """
CREATE TABLE IF NOT EXISTS announcements (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    topic TEXT NOT NULL,                      -- approval | decision:ATTEMPT (a step left in doubt)
    what TEXT NOT NULL,                       -- request | reminder | outcome
    notifier TEXT NOT NULL,                   -- the notifier's name
    facts TEXT NOT NULL,                      -- JSON: what the announcement says
    due_at REAL NOT NULL,                     -- when to send it (again)
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending',   -- pending | sent | failed | dropped
    seq INTEGER NOT NULL,                     -- the ledger entry it comes from
    PRIMARY KEY (run_id, step_id, topic, what, notifier)
);
CREATE INDEX IF NOT EXISTS announcements_due ON announcements(status, due_at);
CREATE TABLE IF NOT EXISTS announcement_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL                      -- the last ledger entry read
);
"""

_KINDS_READ = (
    E.APPROVAL_REQUESTED,
    E.APPROVAL_RECORDED,
    E.APPROVAL_TIMED_OUT,
    E.STEP_IN_DOUBT,
    E.STEP_DECIDED,
    E.RUN_FINISHED,
    E.INCIDENT_ESCALATED,
    E.RUN_ACKNOWLEDGED,
)
APPROVAL = "approval"  # the topic of an approval; a decision's is "decision:ATTEMPT"
ESCALATION = "escalation:"  # the topic of an escalation is "escalation:LEVEL" (step "": the whole run)


# --- the announcer ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    """What the notify payloads say a message comes from (notify's `Origin`)."""

    run_id: str
    step_id: str
    playbook: str
    pack: str


class _Undeliverable(Exception):
    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.message, self.retryable = message, retryable


class Announcer:
    """Announces approval requests, reminders and outcomes to `notifiers` (see module doc).

    `store` is the state's `Store` (its connection is used from the event loop that runs
    `run`); `notifiers` the specs (`notifier_problem` says what a valid one is; a bad one
    is a UsageError here); `public_url` where people reach the server (links are
    `{public_url}/v1/runs/{run}`; None: the announcement says how to approve with the CLI).
    `secrets` resolves the specs' `*_secret` names (default: the state directory's
    sources, `OPSDSL_SECRET_NAME` and `STATE/secrets/NAME`). `clock` is for tests.

    In `opsdsl serve`: `Announcer(service.store, options.notifiers, options.public_url,
    secrets=service.secrets)` before listening (a bad spec is exit 2), then
    `asyncio.create_task(announcer.run(stop))` beside the event worker, and `stop.set()`
    plus an await of the task after the drain, so outcomes of runs ending in it go out.
    """

    def __init__(
        self,
        store: S.Store,
        notifiers: Sequence[Mapping[str, Any]],
        public_url: str | None,
        clock: Callable[[], float] = time.time,
        *,
        secrets: Mapping[str, str] | None = None,
    ) -> None:
        if public_url is not None:
            problem = url_problem(public_url)
            if problem or any(ch in public_url for ch in "<>|"):
                raise UsageError(f"public URL {public_url!r}: {problem or 'no <, > or | in it'}")
            public_url = public_url.rstrip("/")
        self.store = store
        self.notifiers = notifiers_from_specs(notifiers)
        self.public_url = public_url
        self.clock = clock
        self._secrets = secrets if secrets is not None else Secrets(store.root)
        self._redactor = Redactor(
            str(n.spec[key]) for n in self.notifiers for key in ("url", "routing_key") if key in n.spec
        )
        self._wake = asyncio.Event()
        self._ready = False
        self._cursor: int | None = None  # the cursor as last committed (one announcer per state dir)

    # running -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Read the ledger now rather than at the next poll (call after appending to it)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Announce until `stop` is set; never raises for a failed pass (logs it and goes on).

        A send in flight when `stop` is set is cancelled, unrecorded: it is sent again at
        the next start."""
        if not self.notifiers:
            return
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                passing = asyncio.ensure_future(self._safe_tick())
                await asyncio.wait({passing, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not passing.done():
                    passing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await passing
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            stopping.cancel()

    async def _safe_tick(self) -> None:
        try:
            await self.tick()
        except Exception as error:  # the loop outlives any one bad pass (a locked database, a bug)
            log.warning("announcements: a pass failed and is retried: %s: %s", type(error).__name__, error)

    async def tick(self) -> None:
        """One pass: read the new ledger entries into the outbox, then send what is due."""
        while self.read_ledger():
            pass
        await self.send_due()

    # reading the ledger ----------------------------------------------------------------------

    def read_ledger(self) -> int:
        """Turn up to BATCH new ledger entries into announcements; how many entries were read."""
        self._prepare()
        if self._cursor is not None and self.store.ledger.head()[0] <= self._cursor:
            return 0  # nothing new: no write transaction (intake's commits need the lock more)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT seq FROM announcement_cursor WHERE id = 1").fetchone()
            if row is None:  # first use: what waits now, not the whole history
                cursor = self.store.ledger.head()[0]
                self._catch_up(conn)
                conn.execute("INSERT INTO announcement_cursor (id, seq) VALUES (1, ?)", (cursor,))
            else:
                cursor = row[0]
            rows = conn.execute(
                "SELECT seq, ts, run, kind, data FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?", (cursor, BATCH)
            ).fetchall()
            for seq, ts, run, kind, data in rows:
                if kind in _KINDS_READ and run:
                    self._read_entry(conn, seq, ts, run, kind, data)
            if rows:
                cursor = rows[-1][0]
                conn.execute("UPDATE announcement_cursor SET seq = ? WHERE id = 1", (cursor,))
        self._cursor = cursor
        return len(rows)

    def _prepare(self) -> None:
        """Create the tables on first use (outside a transaction: executescript commits one)."""
        if not self._ready:
            self.store.conn.executescript(_DDL)
            self._ready = True

    def _catch_up(self, conn) -> None:
        """Announce what live runs wait for now (the first start on a used state dir)."""
        waiting = conn.execute(
            "SELECT s.run_id, s.step_id, s.status FROM steps s JOIN runs r ON r.id = s.run_id"
            f" WHERE s.status IN (?, ?) AND r.status NOT IN ({','.join('?' * len(S.FINAL_RUN_STATUSES))})",
            (S.AWAITING_APPROVAL, S.IN_DOUBT, *S.FINAL_RUN_STATUSES),
        ).fetchall()
        for run, step, status in waiting:
            kind = E.APPROVAL_REQUESTED if status == S.AWAITING_APPROVAL else E.STEP_IN_DOUBT
            for seq, ts, data in conn.execute(
                "SELECT seq, ts, data FROM ledger WHERE run = ? AND kind = ? ORDER BY seq DESC", (run, kind)
            ).fetchall():
                if json.loads(data).get("step") == step:
                    self._read_entry(conn, seq, ts, run, kind, data)
                    break

    def _read_entry(self, conn, seq: int, ts: float, run: str, kind: str, text: str) -> None:
        """One entry into the outbox; an entry that cannot be read is skipped (logged), so
        that it cannot stop every announcement after it."""
        conn.execute("SAVEPOINT announce_entry")
        try:
            self._read_data(conn, seq, float(ts), run, kind, json.loads(text))
        except Exception as error:
            conn.execute("ROLLBACK TO announce_entry")
            log.warning("announcements: ledger entry %s (%s) skipped: %s: %s", seq, kind, type(error).__name__, error)
        conn.execute("RELEASE announce_entry")

    def _read_data(self, conn, seq: int, ts: float, run: str, kind: str, data: dict[str, Any]) -> None:
        step = str(data.get("step"))
        if kind in (E.RUN_ACKNOWLEDGED, E.APPROVAL_RECORDED, E.STEP_DECIDED) and data.get("by"):
            self._acknowledged(conn, seq, run, data)  # a person looked: escalations are closed
        if kind == E.INCIDENT_ESCALATED:
            self._escalated(conn, seq, ts, run, data)
        elif kind in (E.APPROVAL_REQUESTED, E.STEP_IN_DOUBT):
            self._requested(conn, seq, ts, run, kind, data)
        elif kind == E.RUN_FINISHED:
            status = clean_text(data.get("status"), 40)
            for open_step, topic in conn.execute(
                "SELECT DISTINCT step_id, topic FROM announcements WHERE run_id = ? AND what = ?", (run, REQUEST)
            ).fetchall():
                self._settled(conn, seq, run, open_step, topic, {"decision": "closed", "run_status": status})
        elif kind == E.APPROVAL_TIMED_OUT:
            outcome = {"decision": "timed_out", "on_timeout": clean_text(data.get("outcome"), 40)}
            self._settled(conn, seq, run, step, APPROVAL, outcome)
        elif kind == E.APPROVAL_RECORDED:
            self._recorded(conn, seq, run, data)
        elif kind == E.STEP_DECIDED:
            outcome = {
                "decision": "decided",
                "by": [clean_text(data.get("by"))],
                "choice": clean_text(data.get("decision"), 40),
            }
            for (topic,) in conn.execute(
                "SELECT DISTINCT topic FROM announcements WHERE run_id = ? AND step_id = ? AND what = ? AND topic != ?",
                (run, step, REQUEST, APPROVAL),
            ).fetchall():
                self._settled(conn, seq, run, step, topic, outcome)

    def _requested(self, conn, seq: int, ts: float, run_id: str, kind: str, data: dict[str, Any]) -> None:
        try:
            run = self.store.run(run_id)
        except S.StateError:
            return
        if kind == E.APPROVAL_REQUESTED:
            facts = self._request_facts(conn, seq, ts, run, data)
        else:
            facts = self._decision_facts(ts, run, data)
        step, topic = facts["step"]["id"], facts["topic"]
        now = self.clock()
        remind_at = reminder_time(ts, facts["deadline"]["at"] if facts["deadline"] else None)
        for notifier in self.notifiers:
            if not notifier.takes(run.pack):
                continue
            self._enqueue(conn, run_id, step, topic, REQUEST, notifier.name, facts, now, seq)
            if remind_at is not None and remind_at > now:
                self._enqueue(conn, run_id, step, topic, REMINDER, notifier.name, facts, remind_at, seq)

    def _escalated(self, conn, seq: int, ts: float, run_id: str, data: dict[str, Any]) -> None:
        """An escalation (runtime/escalation.py), to the notifiers its level names."""
        try:
            run = self.store.run(run_id)
        except S.StateError:
            return
        level = clean_text(data.get("level"), 40)
        names = {str(n) for n in data.get("notifiers") or []}
        topic = ESCALATION + level
        facts = {
            "kind": "opsdsl.escalation",
            "topic": topic,
            "run": run.id,
            "incident": run.incident_id,
            "pack": run.pack,
            "playbook": run.playbook,
            "severity": run.severity,
            "step": {"id": "", "name": f"incident {run.incident_id}"},
            "ask": {
                "message": clean_text(
                    f"Incident {run.incident_id} ({run.severity}, {run.pack}/{run.playbook}) escalated to "
                    f"{level} ({data.get('who') or 'no one named'}): {data.get('reason')}. Acknowledge it."
                    + _report_note(data),
                    MESSAGE_LIMIT,
                ),
                "inputs": {},
            },
            "why": {"reason": "escalation", "policies": []},
            "escalation": {
                "level": level,
                "index": data.get("index"),
                "of": data.get("of"),
                "who": clean_text(data.get("who") or ""),
                "reason": clean_text(data.get("reason") or ""),
            },
            "approvals": {"needed": 1, "approvers": []},
            "deadline": None,
            "requested_at": ts,
            "approve": {
                "url": self._link(run.id),
                "cli": f"opsdsl ack {run.id} --by NAME",
            },
        }
        now = self.clock()
        for notifier in self.notifiers:
            if notifier.name in names and notifier.takes(run.pack):
                self._enqueue(conn, run.id, "", topic, REQUEST, notifier.name, facts, now, seq)

    def _acknowledged(self, conn, seq: int, run: str, data: dict[str, Any]) -> None:
        topics = conn.execute(
            "SELECT DISTINCT topic FROM announcements WHERE run_id = ? AND step_id = '' AND what = ? AND topic LIKE ?",
            (run, REQUEST, ESCALATION + "%"),
        ).fetchall()
        for (topic,) in topics:
            self._settled(conn, seq, run, "", topic, {"decision": "acknowledged", "by": [clean_text(data.get("by"))]})

    def _recorded(self, conn, seq: int, run: str, data: dict[str, Any]) -> None:
        step = str(data.get("step"))
        request = self._request_row(conn, run, step)
        if request is None:
            return
        if data.get("decision") == "deny":
            outcome = {"decision": "denied", "by": [clean_text(data.get("by"))], "comment": comment_of(data)}
            return self._settled(conn, seq, run, step, APPROVAL, outcome)
        votes = [
            json.loads(row[0])
            for row in conn.execute(
                "SELECT data FROM ledger WHERE run = ? AND kind = ? AND seq <= ? ORDER BY seq",
                (run, E.APPROVAL_RECORDED, seq),
            )
        ]
        people: dict[str, str] = {}
        for vote in votes:
            if vote.get("step") == step and vote.get("decision") == "approve" and isinstance(vote.get("by"), str):
                people.setdefault(same_person_key(vote["by"]), clean_text(vote["by"]))
        if len(people) >= max(1, int(request["approvals"]["needed"])):
            outcome = {"decision": "approved", "by": list(people.values()), "comment": comment_of(data)}
            self._settled(conn, seq, run, step, APPROVAL, outcome)

    def _settled(self, conn, seq: int, run: str, step: str, topic: str, outcome: dict[str, Any]) -> None:
        """The outcome, to every notifier that was told of the request; reminders are off."""
        requests = conn.execute(
            "SELECT notifier, facts FROM announcements WHERE run_id = ? AND step_id = ? AND topic = ? AND what = ?",
            (run, step, topic, REQUEST),
        ).fetchall()
        if not requests or _has_outcome(conn, run, step, topic):
            return
        now = self.clock()
        for notifier, facts in requests:
            told = {**json.loads(facts), "outcome": outcome}
            self._enqueue(conn, run, step, topic, OUTCOME, notifier, told, now, seq)
        conn.execute(
            "UPDATE announcements SET status = 'dropped' WHERE run_id = ? AND step_id = ? AND topic = ?"
            " AND what != ? AND status = 'pending'",
            (run, step, topic, OUTCOME),
        )

    @staticmethod
    def _enqueue(
        conn, run: str, step: str, topic: str, what: str, notifier: str, facts: dict, due: float, seq: int
    ) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO announcements (run_id, step_id, topic, what, notifier, facts, due_at, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run, step, topic, what, notifier, json.dumps({**facts, "what": what}, sort_keys=True), due, seq),
        )

    @staticmethod
    def _request_row(conn, run: str, step: str) -> dict[str, Any] | None:
        row = conn.execute(
            "SELECT facts FROM announcements WHERE run_id = ? AND step_id = ? AND topic = ? AND what = ? LIMIT 1",
            (run, step, APPROVAL, REQUEST),
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def _request_facts(self, conn, seq: int, ts: float, run: S.RunRow, data: dict[str, Any]) -> dict[str, Any]:
        """What a request says, from its ledger entry, the gate's decision before it, and the plan."""
        step = str(data.get("step"))
        node = _plan_node(run, step)
        policies = _policy_messages(conn, run.id, step, seq, data.get("policies") or [])
        deadline = None
        if node and node.get("action") == "approval" and isinstance(node.get("timeout"), int | float):
            on_timeout = (node.get("with") or {}).get("on_timeout", "deny")
            if not isinstance(on_timeout, str) or "${{" in on_timeout:
                on_timeout = "decided when it times out"
            at = ts + node["timeout"] / 1000
            deadline = {"at": at, "iso": iso_time(at), "seconds": node["timeout"] / 1000, "on_timeout": on_timeout}
        inputs = data.get("inputs") if isinstance(data.get("inputs"), dict) else {}
        approvers = data.get("approvers") if isinstance(data.get("approvers"), list) else []
        needed = data.get("min_approvals")
        return {
            "kind": "opsdsl.approval",
            "topic": APPROVAL,
            "run": run.id,
            "incident": run.incident_id,
            "pack": run.pack,
            "playbook": run.playbook,
            "severity": run.severity,
            "step": {"id": step, "name": clean_text((node or {}).get("name") or step)},
            "ask": {
                "message": clean_text(data.get("message") or "", MESSAGE_LIMIT, lines=True),
                "inputs": {clean_text(name, 64): input_spec(spec) for name, spec in list(inputs.items())[:ITEMS_LIMIT]},
            },
            "why": {"reason": "action" if data.get("reason") == "action" else "policy", "policies": policies},
            "approvals": {
                "needed": needed if isinstance(needed, int) and not isinstance(needed, bool) and needed > 0 else 1,
                "approvers": [clean_text(a, 100) for a in approvers[:ITEMS_LIMIT]],
            },
            "deadline": deadline,
            "requested_at": ts,
            "approve": {"url": self._link(run.id), "cli": f"opsdsl approve {run.id} {step} --by NAME"},
        }

    def _decision_facts(self, ts: float, run: S.RunRow, data: dict[str, Any]) -> dict[str, Any]:
        """What the announcement of a step left in doubt says: a crash caught it mid-flight,
        it is not idempotent, and a person must say what happened."""
        step = str(data.get("step"))
        node = _plan_node(run, step) or {}
        attempt = data.get("attempt") if isinstance(data.get("attempt"), int) else 0
        name = clean_text(node.get("name") or step)
        return {
            "kind": "opsdsl.decision",
            "topic": f"decision:{attempt}",
            "run": run.id,
            "incident": run.incident_id,
            "pack": run.pack,
            "playbook": run.playbook,
            "severity": run.severity,
            "step": {"id": step, "name": name},
            "ask": {
                "message": (
                    f"{name} was interrupted mid-flight (attempt {attempt}) and is not idempotent, so it may or may"
                    " not have taken effect: check, then retry it or record it as succeeded or failed."
                ),
                "inputs": {},
                "choices": ["retry", "succeeded", "failed"],
            },
            "why": {"reason": "in_doubt", "policies": []},
            "approvals": {"needed": 1, "approvers": []},
            "deadline": None,
            "requested_at": ts,
            "approve": {
                "url": self._link(run.id),
                "cli": f"opsdsl decide {run.id} {step} --as retry|succeeded|failed --by NAME",
            },
        }

    def _link(self, run: str) -> str | None:
        return f"{self.public_url}/v1/runs/{quote(run, safe='')}" if self.public_url else None

    # sending ---------------------------------------------------------------------------------

    async def send_due(self) -> int:
        """Send the announcements that are due (concurrently); record each attempt. How many were tried."""
        now = self.clock()
        rows = self.store.conn.execute(
            "SELECT run_id, step_id, topic, what, notifier, facts, attempts FROM announcements"
            " WHERE status = 'pending' AND due_at <= ? ORDER BY due_at, seq LIMIT ?",
            (now, SEND_BATCH),
        ).fetchall()
        by_name = {n.name: n for n in self.notifiers}
        tried = []
        for run, step, topic, what, name, facts, attempts in rows:
            notifier = by_name.get(name)
            facts = json.loads(facts)
            if notifier is None or not self._still_relevant(run, step, topic, what):
                self._drop(run, step, topic, what, name)
                continue
            tried.append((notifier, facts, attempts + 1))
        results = await asyncio.gather(*(self._send(n, facts) for n, facts, _ in tried))
        if tried:
            self._record([(*sent, *result) for sent, result in zip(tried, results, strict=True)])
        return len(tried)

    def _still_relevant(self, run: str, step: str, topic: str, what: str) -> bool:
        """An outcome always is; a request or reminder while the step still waits, undecided."""
        if what == OUTCOME:
            return True
        conn = self.store.conn
        if _has_outcome(conn, run, step, topic):
            return False
        if topic.startswith(ESCALATION):  # until a person acknowledges (then it has an outcome)
            return True
        row = conn.execute(
            "SELECT s.status, r.status FROM steps s JOIN runs r ON r.id = s.run_id WHERE s.run_id = ? AND s.step_id = ?",
            (run, step),
        ).fetchone()
        waits = S.AWAITING_APPROVAL if topic == APPROVAL else S.IN_DOUBT
        return row is not None and row[0] == waits and row[1] not in S.FINAL_RUN_STATUSES

    def _drop(self, run: str, step: str, topic: str, what: str, notifier: str) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE announcements SET status = 'dropped' WHERE run_id = ? AND step_id = ? AND topic = ?"
                " AND what = ? AND notifier = ? AND status = 'pending'",
                (run, step, topic, what, notifier),
            )

    async def _send(self, notifier: Notifier, facts: dict[str, Any]) -> tuple[bool, str, bool]:
        """(delivered, detail, retryable) of one attempt; never raises but for cancellation."""
        response = None
        try:
            if facts["what"] == REMINDER and facts["topic"] == APPROVAL:
                facts = {**facts, "approvals": {**facts["approvals"], "received": self._received(facts)}}
            url, payload, headers = self._message(notifier, facts)
            body = encode_payload(payload)
            if notifier.spec.get("hmac_secret"):
                headers.update(sign(self._secret(notifier.spec["hmac_secret"]), url, body, int(time.time())))
            key = ":".join(("opsdsl-announce", facts["run"], facts["step"]["id"], facts["topic"], facts["what"]))
            key += f":{notifier.name}"
            response = await send_notification(
                url, body, idempotency_key=key, timeout=notifier.timeout, headers=headers
            )
            check_status(f"{notifier.kind} notifier {notifier.name}", response, None, {})
            return True, f"HTTP {response.status}", False
        except ActionFailed as failure:
            return False, self._detail(failure.message, response), failure.retryable
        except _Undeliverable as failure:
            return False, self._detail(failure.message, None), failure.retryable
        except (ValueError, TypeError, KeyError) as error:  # a fact of the wrong shape: no retry helps
            return False, self._detail(f"cannot build the message: {type(error).__name__}: {error}", None), False

    def _detail(self, message: str, response: Any) -> str:
        if response is not None and response.body:
            message += f": {response.text()[:120]}"
        return clean_text(self._redactor.text(message), DETAIL_LIMIT)

    def _record(self, attempts: list[tuple[Notifier, dict, int, bool, str, bool]]) -> None:
        """One pass's attempts, in one transaction: an approval.announced entry each, and the
        outbox row sent, due again after its back-off, or given up."""
        now = self.clock()
        with self.store.transaction():
            for notifier, facts, attempt, delivered, detail, retry in attempts:
                self._record_one(notifier, facts, attempt, delivered, detail, retry, now)

    def _record_one(
        self, notifier: Notifier, facts: dict, attempt: int, delivered: bool, detail: str, retry: bool, now: float
    ) -> None:
        run, step, topic, what = facts["run"], facts["step"]["id"], facts["topic"], facts["what"]
        if delivered:
            status, due = "sent", now
        elif retry and attempt < MAX_ATTEMPTS:
            wait = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (attempt - 1))
            status, due = "pending", now + wait
            detail = clean_text(f"{detail}; attempt {attempt} of {MAX_ATTEMPTS}, retrying in {wait:g}s", DETAIL_LIMIT)
        else:
            status, due = "failed", now
            why = f"gave up after {attempt} attempts" if retry else "not retried: it would fail again"
            detail = clean_text(f"{detail}; {why}", DETAIL_LIMIT)
        data = {
            "step": step,
            "asks": APPROVAL if topic == APPROVAL else "decision",
            "notifier": notifier.name,
            "notifier_kind": notifier.kind,
            "what": what,
            "delivered": delivered,
            "attempt": attempt,
            "detail": detail,
        }
        self.store.ledger.append(E.APPROVAL_ANNOUNCED, run, data, ts=float(now))
        self.store.conn.execute(
            "UPDATE announcements SET status = ?, attempts = ?, due_at = ? WHERE run_id = ? AND step_id = ?"
            " AND topic = ? AND what = ? AND notifier = ?",
            (status, attempt, due, run, step, topic, what, notifier.name),
        )
        if not delivered:
            log.warning(
                "announcement to %s not delivered (%s %s of run %s): %s", notifier.name, what, step, run, detail
            )

    def _received(self, facts: dict[str, Any]) -> list[str]:
        votes = self.store.approvals(facts["run"], facts["step"]["id"])
        return [clean_text(v["by"], 100) for v in votes if v["decision"] == "approve"][:ITEMS_LIMIT]

    def _secret(self, name: str) -> str:
        try:
            value = self._secrets[name]
        except KeyError:
            raise _Undeliverable(
                f"secret `{name}` has no value: set {ENV_PREFIX}{name.upper()} or write it to STATE/secrets/{name}"
            ) from None
        except OpsdslError as error:  # an unreadable secret file
            raise _Undeliverable(error.message) from None
        self._redactor.add(value)
        return value

    def _message(self, notifier: Notifier, facts: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
        """(URL, payload, extra headers) of one announcement to one notifier."""
        spec = notifier.spec
        url = spec.get("url") or (self._secret(spec["url_secret"]) if spec.get("url_secret") else None)
        if url is not None and url_problem(url):
            raise _Undeliverable(f"the notifier's URL is refused: {url_problem(url)}", retryable=False)
        severity = SEVERITY_BY_PLAYBOOK.get(facts["severity"], "info")
        if notifier.kind == "slack":
            origin = _Origin(*(slack_escape(clean_text(v, 100)) for v in origin_fields(facts)))
            text, fields = slack_text(facts)
            url, payload = notification("slack", origin, text, severity, fields, url=url)
        elif notifier.kind == "pagerduty":
            url, payload = notification(
                "pagerduty",
                _Origin(*origin_fields(facts)),
                plain_summary(facts),
                severity,
                public_facts(facts),
                url=url,
                routing_key=spec.get("routing_key") or self._secret(spec["routing_key_secret"]),
                dedup_key=f"opsdsl-{facts['topic']}:{facts['run']}:{facts['step']['id']}",
                event_action="resolve" if facts["what"] == OUTCOME else "trigger",
            )
        else:
            origin = _Origin(*origin_fields(facts))
            url, payload = notification("webhook", origin, plain_summary(facts), severity, public_facts(facts), url=url)
        return url, payload, {}


# --- reading the run ------------------------------------------------------------------------------


def _report_note(data: dict[str, Any]) -> str:
    """The last level's escalation names the compliance report the server writes for it
    (runtime/compliance.py; `compliance.report_written` in the ledger once it is there)."""
    path = data.get("compliance_report")
    if not isinstance(path, str):
        return ""
    return (
        f" A compliance report of the 30 days up to now is being written to {clean_text(path, 120)}"
        " in the state directory, signed (.sig.json beside it)."
    )


def _has_outcome(conn, run: str, step: str, topic: str) -> bool:
    query = "SELECT 1 FROM announcements WHERE run_id = ? AND step_id = ? AND topic = ? AND what = ? LIMIT 1"
    return conn.execute(query, (run, step, topic, OUTCOME)).fetchone() is not None


def _policy_messages(conn, run: str, step: str, seq: int, ids: list[Any]) -> list[dict[str, str]]:
    """The policies that asked for the approval, with their messages, from the gate's
    decision just before the request."""
    messages: dict[str, str] = {}
    for (data,) in conn.execute(
        "SELECT data FROM ledger WHERE run = ? AND kind = ? AND seq < ? ORDER BY seq DESC LIMIT 50",
        (run, E.POLICY_DECISION, seq),
    ):
        decision = json.loads(data)
        if decision.get("step") == step:
            for policy in decision.get("policies") or []:
                if isinstance(policy, dict):
                    messages.setdefault(str(policy.get("id")), clean_text(policy.get("message") or ""))
            break
    return [{"id": clean_text(i, 100), "message": messages.get(str(i), "")} for i in ids[:ITEMS_LIMIT]]


def _plan_node(run: S.RunRow, step: str) -> dict[str, Any] | None:
    from opsdsl.runtime.plans import _payload_of

    try:
        plan = json.loads(_payload_of(run.envelope))
        return next((n for n in plan["playbooks"][run.playbook]["nodes"] if n["id"] == step), None)
    except (ValueError, KeyError, TypeError):
        return None
