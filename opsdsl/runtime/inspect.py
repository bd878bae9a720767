"""Looking inside runs: find a run by a short name, list runs, and tell one run's whole story.

`opsdsl show`, `opsdsl runs`, `opsdsl ledger show` and the operator API (`/v1/runs`) all
answer from here, so a run reads the same wherever it is looked at. A step's status is
the live view's (`opsdsl.runtime.board`): the run's ledger entries folded through the same
`Board`, so `show`, the API and the rich table never disagree about a step.

Everything shown comes from the state database: the `runs` and `steps` rows (the
scheduler's working state) and the run's ledger entries (the audit trail), which are
redacted before they are written. Params, inputs and the event are taken from the
run's `run.created` entry, which holds them redacted; a `secret: true` param is `***`
whatever the row says. Rendering as text escapes every control character, so output an
action reported (hostile, like all event data) cannot drive the reader's terminal.

Queries use indexes only: the run by primary key, its steps by the steps key, its ledger
entries by `ledger_run`, sub-runs and the newest runs by two indexes created here
(`runs_created`, `runs_parent`) on first use.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.errors import UsageError
from opsdsl.runtime import board as B
from opsdsl.runtime import store as S

LATEST = "latest"
MIN_PREFIX = 4  # shorter prefixes are almost never unique, and a typo would still match something
MAX_RUN_TEXT = 200  # a run id is 28 characters; anything this long is not one
MAX_LIMIT = 1_000_000
MAX_CURSOR = 512
RUN_STATUSES = (S.RUNNING, S.PAUSED, S.INTERRUPTED, *S.FINAL_RUN_STATUSES)
_CANDIDATES = 5  # how many matches an ambiguous prefix names

# The columns a summary needs: never `envelope` (the signed plan, kilobytes a row), so that
# listing 50 of 10,000 runs reads 50 small rows.
_SUMMARY_COLUMNS = (
    "id",
    "incident_id",
    "pack",
    "playbook",
    "severity",
    "status",
    "phase",
    "created_at",
    "updated_at",
    "finished_at",
    "parent_run",
    "parent_step",
    "error",
    "requested_by",
    "owner",
    "hook",
    "trig",
)

_INDEXES = (
    # newest first (runs, `latest`, cursor paging), and a run's sub-runs
    "CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at, id)",
    "CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run)",
)


# ---- finding a run -----------------------------------------------------------------------


def resolve_run(store: S.Store, text: str) -> str:
    """The full id of the run `text` names: a full id, a unique prefix of at least 4
    characters, or `latest` (the newest top-level run). UsageError (exit 2) otherwise,
    naming a few candidates when the prefix is ambiguous.

    The prefix is matched as a range of the primary key, never with LIKE, so `%`, `_` or
    quotes in it are characters like any other.
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError("name a run: its id, a unique prefix of it (4 characters or more), or `latest`")
    _ensure_indexes(store)
    conn = store.conn
    if text == LATEST:
        row = conn.execute(
            "SELECT id FROM runs WHERE parent_run IS NULL ORDER BY created_at DESC, id DESC LIMIT 1"
        ).fetchone()
        if row is None:
            raise UsageError(f"no runs in {store.root} yet, so no `latest` run")
        return row[0]
    if len(text) > MAX_RUN_TEXT or not _encodable(text):
        raise UsageError(f"{_quoted(text)} is not a run id (run ids are 28 characters)")
    if conn.execute("SELECT 1 FROM runs WHERE id = ?", (text,)).fetchone():
        return text
    if len(text) < MIN_PREFIX:
        raise UsageError(
            f"no run {_quoted(text)}: a prefix of a run id needs {MIN_PREFIX} characters or more (see `opsdsl runs`)"
        )
    rows = conn.execute(
        "SELECT id FROM runs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
        (text, text + "\U0010ffff", _CANDIDATES + 1),
    ).fetchall()
    matches = [row[0] for row in rows if row[0].startswith(text)]
    if not matches:
        raise UsageError(f"no run {_quoted(text)} in {store.root} (see `opsdsl runs`)")
    if len(matches) > 1:
        shown = ", ".join(matches[:_CANDIDATES]) + (", …" if len(matches) > _CANDIDATES else "")
        raise UsageError(f"{_quoted(text)} names several runs ({shown}); give more of the id")
    return matches[0]


def _encodable(text: str) -> bool:
    """Text SQLite can take: no lone surrogate (argv decodes undecodable bytes to those)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _filter_text(value: Any, what: str) -> str:
    text = str(value)
    if len(text) > MAX_RUN_TEXT or not _encodable(text):
        raise UsageError(f"{what} {_quoted(text)}: no such {what.lstrip('-')}")
    return text


def _quoted(text: str, limit: int = 60) -> str:
    """User text inside an error message: escaped, and cut so a 10 MB argument is not echoed."""
    shown = escape(text)
    return f"`{shown[:limit]}…`" if len(shown) > limit else f"`{shown}`"


def _ensure_indexes(store: S.Store) -> None:
    """Create the indexes the lookups here rely on, once per open store (cheap when present)."""
    if getattr(store, "_inspect_indexes", False):
        return
    for statement in _INDEXES:
        try:
            store.conn.execute(statement)
        except sqlite3.OperationalError:  # a read-only database: the queries still work, more slowly
            break
    store._inspect_indexes = True  # type: ignore[attr-defined]


# ---- listing runs --------------------------------------------------------------------------


def run_summary(row: S.RunRow | Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """One run as `opsdsl runs --format json` and `GET /v1/runs` list it.

    `row` is a `RunRow` or a mapping of the runs columns. `pending_approvals` (steps a
    paused run waits for) is filled in by `list_runs`; here it is empty.
    """
    get = row.get if isinstance(row, Mapping) else lambda name, default=None: getattr(row, name, default)
    created, finished = get("created_at"), get("finished_at")
    now = time.time() if now is None else now
    return {
        "id": get("id"),
        "incident_id": get("incident_id"),
        "pack": get("pack"),
        "playbook": get("playbook"),
        "severity": get("severity"),
        "status": get("status"),
        "phase": get("phase"),
        "created_at": created,
        "updated_at": get("updated_at"),
        "finished_at": finished,
        "started": iso_time(created),
        "finished": iso_time(finished),
        "age_seconds": None if created is None else round(max(0.0, now - created), 3),
        "duration_seconds": None if created is None or finished is None else round(finished - created, 3),
        "parent_run": get("parent_run"),
        "parent_step": get("parent_step"),
        "error": get("error"),
        "requested_by": get("requested_by"),
        "owner": get("owner"),
        "hook": get("hook"),
        "trigger": get("trig"),
        "pending_approvals": [],
    }


def list_runs(
    store: S.Store,
    *,
    status: str | None = None,
    pack: str | None = None,
    playbook: str | None = None,
    severity: str | None = None,
    since: float | None = None,
    limit: int | None = 50,
    cursor: str | None = None,
    now: float | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Runs newest first, filtered; and the cursor of the next page (None on the last page).

    `since` is epoch seconds (runs created at or after it); `limit` None means all. The
    cursor is opaque text (the position after the page's last run); one that was not
    made here is a UsageError, never a query.
    """
    if status is not None and status not in RUN_STATUSES:
        raise UsageError(f"unknown run status {_quoted(str(status))} (one of {', '.join(RUN_STATUSES)})")
    if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_LIMIT):
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT:,}, not {limit!r}")
    if since is not None and (
        isinstance(since, bool) or not isinstance(since, (int, float)) or not math.isfinite(since)
    ):
        raise UsageError(f"since must be a time in seconds since the epoch, not {since!r}")
    _ensure_indexes(store)
    where, args = [], []
    for column, value in (("status", status), ("pack", pack), ("playbook", playbook), ("severity", severity)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(_filter_text(value, column))
    if since is not None:
        where.append("created_at >= ?")
        args.append(float(since))
    if cursor is not None:
        created, run_id = decode_cursor(cursor)
        where.append("(created_at < ? OR (created_at = ? AND id < ?))")
        args += [created, created, run_id]
    query = f"SELECT {', '.join(_SUMMARY_COLUMNS)} FROM runs"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY created_at DESC, id DESC"
    if limit is not None:
        query += " LIMIT ?"
        args.append(limit + 1)  # one more tells whether there is a next page
    rows = [dict(zip(_SUMMARY_COLUMNS, row, strict=True)) for row in store.conn.execute(query, args)]
    more = limit is not None and len(rows) > limit
    rows = rows[:limit] if limit is not None else rows
    now = time.time() if now is None else now
    items = [run_summary(row, now=now) for row in rows]
    waiting = _waiting_steps(store, [item["id"] for item in items if item["status"] == S.PAUSED])
    for item in items:
        item["pending_approvals"] = waiting.get(item["id"], [])
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
    return items, next_cursor


def _waiting_steps(store: S.Store, run_ids: list[str]) -> dict[str, list[str]]:
    """The steps each of `run_ids` waits for (an approval, or a decision), in one query."""
    if not run_ids:
        return {}
    out: dict[str, list[str]] = {}
    for start in range(0, len(run_ids), 500):  # stay far below SQLite's bound on parameters
        chunk = run_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = store.conn.execute(
            f"SELECT run_id, step_id FROM steps WHERE run_id IN ({marks}) AND status IN (?, ?)"
            " ORDER BY run_id, step_id",
            (*chunk, S.AWAITING_APPROVAL, S.IN_DOUBT),
        )
        for run_id, step_id in rows:
            out.setdefault(run_id, []).append(step_id)
    return out


def encode_cursor(created_at: float, run_id: str) -> str:
    """The opaque position after a run: base64url of `[created_at, id]`."""
    raw = json.dumps([created_at, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """`encode_cursor`'s text read back; anything else is a UsageError that quotes none of it."""
    bad = UsageError("bad cursor: pass back the `next` cursor a listing returned, unchanged")
    if not isinstance(cursor, str) or not 0 < len(cursor) <= MAX_CURSOR or not cursor.isascii():
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, run_id = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise bad from None
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        raise bad
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_TEXT:
        raise bad
    return float(created), run_id


_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float | None = None) -> float:
    """`--since` as epoch seconds: a date (`2026-11-27`, midnight UTC), a time
    (`2026-11-27T08:00:00Z`; without an offset, UTC), or how long ago (`90s`, `15m`, `2h`,
    `7d`, `1w`)."""
    text = text.strip() if isinstance(text, str) else ""
    now = time.time() if now is None else now
    duration = _DURATION.fullmatch(text)
    if duration:
        return now - int(duration.group(1)) * _UNITS[duration.group(2)]
    try:
        if len(text) > 40:
            raise ValueError
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise UsageError(
            f"--since {_quoted(text)}: write a date (2026-11-27), a UTC time (2026-11-27T08:00:00Z)"
            " or how long ago (15m, 2h, 7d)"
        ) from None


# ---- one run in full ----------------------------------------------------------------------


def run_detail(store: S.Store, run_id: str, *, now: float | None = None) -> dict[str, Any]:
    """Everything about one run (a full id; see `resolve_run`), as `opsdsl show --format json`
    and `GET /v1/runs/{id}` give it: the run, its steps in plan order, approvals, decisions,
    policy decisions, what it waits for, and its ledger entries. StateError for no such run."""
    from opsdsl.runtime.plans import _payload_of

    _ensure_indexes(store)
    now = time.time() if now is None else now
    row = store.run(run_id)
    stored = store.steps(row.id)
    try:
        plan = json.loads(_payload_of(row.envelope))
        nodes = _ordered_nodes(plan["playbooks"][row.playbook])
    except Exception:  # a damaged row must not hide the rest of the story: steps by name, unordered
        plan, nodes = {}, [{"id": sid, "section": "steps"} for sid in sorted(stored)]
    entries = [entry.to_dict() for entry in store.ledger.entries(run=row.id)]
    board = B.Board(_run_head(row), nodes)
    for entry in entries:
        board.apply(entry)
    created = next((e["data"] for e in entries if e["kind"] == E.RUN_CREATED), {})
    detail = run_summary(row, now=now)
    detail["pending_approvals"] = sorted(
        sid for sid, step in stored.items() if step.status in (S.AWAITING_APPROVAL, S.IN_DOUBT)
    )
    detail.update(
        pack_version=created.get("pack_version"),
        plan_digest=row.plan_digest,
        trust=row.trust,
        incident_dir=row.incident_dir,
        params=_redacted_params(plan, created.get("params", row.params)),
        inputs=created.get("inputs", {}),
        event=created.get("event", {}),
        children=[_child(child) for child in _children(store, row.id)],
        steps=[_step(node_of, board.rows[sid], stored.get(sid), entries) for sid, node_of in _shown(board, nodes)],
        approvals=_approvals(entries),
        decisions=_decisions(entries),
        policy_decisions=_policy_decisions(entries),
        acknowledgements=[_with_ts(e, ("by", "via")) for e in entries if e["kind"] == E.RUN_ACKNOWLEDGED],
        ledger=[_ledger_item(e) for e in entries],
    )
    detail["waiting_for"] = _waiting_for(store, row, detail)
    return detail


def _run_head(row: S.RunRow) -> dict[str, Any]:
    return {"id": row.id, "incident_id": row.incident_id, "pack": row.pack, "playbook": row.playbook}


def _ordered_nodes(playbook: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Plan order (the compiled `order`), then compensations: the order the live view uses."""
    by_id = {node["id"]: node for node in playbook["nodes"]}
    ordered = [by_id[sid] for sid in playbook.get("order", []) if sid in by_id]
    seen = {node["id"] for node in ordered}
    return ordered + [node for node in playbook["nodes"] if node["id"] not in seen]


def _shown(board: B.Board, nodes: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Main and finally steps always; a compensation once something happened to it."""
    by_id = {node["id"]: node for node in nodes}
    return [(sid, by_id.get(sid, {"id": sid})) for sid in board.shown]


def _children(store: S.Store, run_id: str) -> list[tuple]:
    return store.conn.execute(
        "SELECT id, parent_step, status, playbook FROM runs WHERE parent_run = ? ORDER BY created_at, id", (run_id,)
    ).fetchall()


def _child(row: tuple) -> dict[str, Any]:
    return {"id": row[0], "step": row[1], "status": row[2], "playbook": row[3]}


def _redacted_params(plan: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as recorded, with every `secret: true` param `***` (the row and the entry
    already say so; this does not trust them to)."""
    declared = plan.get("params") or {}
    return {name: ("***" if (declared.get(name) or {}).get("secret") else value) for name, value in params.items()}


def _step(
    node: Mapping[str, Any], row: B.StepRow, stored: S.StepRow | None, entries: list[dict[str, Any]]
) -> dict[str, Any]:
    sid = row.id
    started = row.started if row.started is not None else (stored.started_at if stored else None)
    finished = row.finished if row.finished is not None else (stored.finished_at if stored else None)
    if row.status in (B.RUNNING, B.AWAITING, B.PENDING):
        finished = None
    requested = [e["data"] for e in entries if e["kind"] == E.APPROVAL_REQUESTED and e["data"].get("step") == sid]
    policy = [e["data"] for e in entries if e["kind"] == E.POLICY_DECISION and e["data"].get("step") == sid]
    request = requested[-1] if requested else None
    retried = [
        {**_with_ts(e, ("attempt", "error")), "retry_in": e["data"].get("retry_in")}
        for e in entries
        if e["kind"] == E.ATTEMPT_FAILED and e["data"].get("step") == sid
    ]
    return {
        "id": sid,
        "name": node.get("name"),
        "action": node.get("action") or row.action,
        "section": node.get("section", row.section),
        "risk": node.get("risk"),
        "status": row.status,
        "stored_status": stored.status if stored else None,
        "attempts": max(row.attempts, stored.attempts if stored else 0),
        "max_attempts": row.max_attempts,
        "started_at": started,
        "finished_at": finished,
        "duration_seconds": None if started is None or finished is None else round(max(0.0, finished - started), 3),
        "outputs": (stored.outputs if stored else None) or {},
        "error": stored.error if stored else None,
        "failed_attempts": retried,
        "note": row.note,
        "policy": policy[-1].get("decision") if policy else None,
        "approvals_needed": (stored.approvals_needed if stored else 0) or (request or {}).get("min_approvals", 0),
        "approval_reason": (stored.approval_reason if stored else None) or (request or {}).get("reason"),
        "approvers": (stored.approvers if stored else None) or (request or {}).get("approvers") or [],
        "approval_message": (request or {}).get("message"),
        "wake_at": stored.wake_at if stored else None,
    }


def _with_ts(entry: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    data = entry["data"]
    out = {name: data.get(name) for name in fields}
    out.update(ts=entry["ts"], at=iso_time(entry["ts"]), seq=entry["seq"])
    return out


def _approvals(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        if entry["kind"] == E.APPROVAL_RECORDED:
            item = _with_ts(entry, ("step", "by", "via", "decision", "answers", "comment"))
            out.append({**item, "answers": item["answers"] or {}, "timed_out": False})
        elif entry["kind"] == E.APPROVAL_TIMED_OUT:
            item = _with_ts(entry, ("step",))
            out.append(
                {**item, "by": None, "via": None, "decision": entry["data"].get("outcome"), "answers": {},
                 "comment": None, "timed_out": True}
            )  # fmt: skip
    return out


def _decisions(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [_with_ts(e, ("step", "by", "via", "decision")) for e in entries if e["kind"] == E.STEP_DECIDED]


def _policy_decisions(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        if entry["kind"] == E.POLICY_DECISION:
            item = _with_ts(entry, ("step", "action", "decision", "approvals"))
            item["policies"] = entry["data"].get("policies") or []
            item["errors"] = entry["data"].get("errors") or []
            out.append(item)
    return out


def _ledger_item(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"seq": entry["seq"], "ts": entry["ts"], "kind": entry["kind"], "data": entry["data"], "hash": entry["hash"]}


def _waiting_for(store: S.Store, row: S.RunRow, detail: Mapping[str, Any]) -> list[dict[str, Any]]:
    """What the run waits for now: people (an approval, a decision), a sub-run, a timer.
    Empty for a run that is finished or running."""
    if row.status in S.FINAL_RUN_STATUSES:
        return []
    timers = _timers(store, row.id)
    given: dict[str, list[str]] = {}
    for approval in detail["approvals"]:
        if approval["decision"] == "approve" and approval["by"]:
            given.setdefault(approval["step"], []).append(approval["by"])
    out: list[dict[str, Any]] = []
    for step in detail["steps"]:
        sid = step["id"]
        if step["stored_status"] == S.AWAITING_APPROVAL or step["status"] == B.AWAITING:
            deadline = next((t["due_at"] for t in timers if t["step"] == sid), None)
            out.append(
                {
                    "kind": "approval",
                    "step": sid,
                    "needed": max(1, step["approvals_needed"] or 1),
                    "approved_by": given.get(sid, []),
                    "approvers": step["approvers"],
                    "reason": step["approval_reason"],
                    "message": step["approval_message"],
                    "deadline": deadline,
                }
            )
        elif step["stored_status"] == S.IN_DOUBT or step["status"] == B.IN_DOUBT:
            out.append({"kind": "decision", "step": sid})
    for child in detail["children"]:
        if child["status"] not in S.FINAL_RUN_STATUSES:
            out.append({"kind": "run", "step": child["step"], "run": child["id"], "status": child["status"]})
    claimed = {(item.get("step"), item["kind"]) for item in out}
    for timer in timers:
        if (timer["step"], "approval") not in claimed:
            out.append({"kind": "timer", "step": timer["step"], "timer": timer["kind"], "due_at": timer["due_at"]})
    if row.status == S.INTERRUPTED and not out:
        out.append({"kind": "resume"})
    return out


def _timers(store: S.Store, run_id: str) -> list[dict[str, Any]]:
    try:
        rows = store.conn.execute(
            "SELECT step_id, kind, due_at FROM timers WHERE run_id = ? ORDER BY due_at", (run_id,)
        ).fetchall()
    except sqlite3.OperationalError:  # a state database from before timers
        return []
    return [{"step": step or None, "kind": kind, "due_at": due} for step, kind, due in rows]


# ---- the ledger ----------------------------------------------------------------------------


def ledger_entries(
    store: S.Store, *, run: str | None = None, kind: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Ledger entries in seq order (each `Entry.to_dict()`): all, one run's, one kind's; with
    `limit`, the last `limit` of them."""
    return list(iter_ledger_entries(store, run=run, kind=kind, limit=limit))


def iter_ledger_entries(
    store: S.Store, *, run: str | None = None, kind: str | None = None, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """`ledger_entries`, streamed: a whole ledger of millions of entries is never in memory
    (with `limit`, at most `limit` rows are)."""
    if limit is not None and (type(limit) is not int or not 1 <= limit <= MAX_LIMIT):
        raise UsageError(f"limit must be a whole number from 1 to {MAX_LIMIT:,}, not {limit!r}")
    where, args = [], []
    if run is not None:
        where.append("run = ?")
        args.append(_filter_text(run, "run"))
    if kind is not None:
        where.append("kind = ?")
        args.append(_filter_text(kind, "kind"))
    query = "SELECT seq, ts, run, kind, data, prev, hash FROM ledger"
    if where:
        query += " WHERE " + " AND ".join(where)
    query += " ORDER BY seq DESC" if limit is not None else " ORDER BY seq"
    if limit is not None:
        query += " LIMIT ?"
        args.append(limit)
    rows: Iterable[tuple] = store.conn.execute(query, args)
    if limit is not None:
        rows = reversed(list(rows))
    for seq, ts, run_id, k, data, prev, digest in rows:
        yield {
            "seq": seq,
            "ts": ts,
            "run": run_id,
            "kind": k,
            "data": json.loads(data),
            "prev": bytes(prev).hex(),
            "hash": bytes(digest).hex(),
        }


# ---- words ------------------------------------------------------------------------------------

# C0 and C1 controls, DEL, and the format characters that reorder or hide text (bidi
# overrides and isolates, zero-width characters), plus line and paragraph separators and
# lone surrogates: none of them may reach a terminal from event data.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff]"
)


def escape(text: Any) -> str:
    """`text` safe to print: each control or invisible format character written as `\\xNN`,
    `\\uNNNN` (a newline as `\\n`), so an ESC from an action's output shows as `\\x1b`."""
    return _UNSAFE.sub(_escaped, str(text))


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def iso_time(ts: float | None) -> str | None:
    """UTC, ISO 8601, to the second: `2026-11-27T07:58:27Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def age_text(seconds: float | None) -> str:
    """`5s`, `12m`, `3h`, `2d` ago: how long since something, at a glance."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def duration_text(seconds: float | None) -> str:
    """`0.4s`, `12.3s`, `2m05s`, `1h02m` (the live view's words)."""
    from opsdsl.runtime.view import format_elapsed

    return format_elapsed(seconds)


def cut(text: str, limit: int) -> str:
    """`text` (already escaped) cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit:,} more characters; --format json has all)"


def compact(value: Any) -> str:
    """A JSON value on one line, escaped: strings without quotes at top level."""
    if isinstance(value, str):
        return escape(value) if value else '""'
    return escape(json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": ")))


# ---- text -----------------------------------------------------------------------------------

OUTPUT_LIMIT = 400  # characters of one output value in `show`'s text; JSON has all of it
OUTPUT_LINES = 12  # lines of one multi-line output value
LINE_LIMIT = 240  # characters of any other value


def render_runs(items: list[dict[str, Any]], next_cursor: str | None = None) -> str:
    """`opsdsl runs` as a table: id, status, severity, pack/playbook, started (UTC), age, waiting."""
    if not items:
        return "no runs"
    head = ("RUN", "STATUS", "SEVERITY", "PACK/PLAYBOOK", "STARTED (UTC)", "AGE", "WAITING FOR")
    rows = [
        (
            escape(item["id"]),
            escape(item["status"]),
            escape(item["severity"]),
            cut(escape(f"{item['pack']}/{item['playbook']}"), 60),
            item["started"] or "",
            age_text(item["age_seconds"]).removesuffix(" ago"),
            cut(escape(", ".join(item["pending_approvals"])), 60),
        )
        for item in items
    ]
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in (head, *rows)]
    if next_cursor:
        lines.append("… more runs: raise --limit to see them")
    return "\n".join(lines)


_STEP_ICONS = {
    B.PENDING: "·",
    B.RUNNING: "▶",
    B.SUCCEEDED: "✓",
    B.FAILED: "✗",
    B.SKIPPED: "↷",
    B.AWAITING: "⏸",
    B.IN_DOUBT: "?",
    B.INTERRUPTED: "⊘",
}


def render_detail(detail: Mapping[str, Any]) -> str:
    """`opsdsl show RUN` as text: the run, then a block per step, then approvals, decisions,
    policy decisions and what it waits for. Long values are cut; control characters escaped."""
    lines: list[str] = []
    add = lines.append
    add(f"run {escape(detail['id'])}  {escape(detail['status'])}")
    field = _field_writer(lines, "  ", 12)
    version = f" {detail['pack_version']}" if detail.get("pack_version") else ""
    field("pack", f"{detail['pack']}{version} / {detail['playbook']} / {detail['severity']}")
    field("incident", detail["incident_id"])
    started = f"{detail['started']} ({age_text(detail['age_seconds'])})"
    if detail.get("requested_by"):
        started += f" by {detail['requested_by']}"
    field("started", started)
    if detail.get("finished"):
        field("finished", f"{detail['finished']} (took {duration_text(detail['duration_seconds'])})")
    if detail.get("owner"):
        field("owner", detail["owner"])
    if detail.get("hook"):
        field("hook", f"{detail['hook']} (trigger {detail.get('trigger') or '?'})")
    if detail.get("parent_run"):
        field("parent", f"{detail['parent_run']} (step {detail.get('parent_step') or '?'})")
    for child in detail.get("children", []):
        field("sub-run", f"{child['id']} {child['status']} (step {child['step']}, playbook {child['playbook']})")
    for label in ("params", "inputs"):
        values = detail.get(label) or {}
        field(label, ", ".join(f"{k}={compact(v)}" for k, v in sorted(values.items())) or "none")
    if detail.get("error"):
        field("error", detail["error"])
    field("folder", detail.get("incident_dir"))
    for wait in detail.get("waiting_for", []):
        field("waiting for", _wait_text(wait, detail["id"]))
    add("")
    add("steps")
    approvals_by_step: dict[str, list[Mapping[str, Any]]] = {}
    for approval in detail.get("approvals", []):
        approvals_by_step.setdefault(approval["step"], []).append(approval)
    policies_by_step: dict[str, list[Mapping[str, Any]]] = {}
    for decision in detail.get("policy_decisions", []):
        policies_by_step.setdefault(decision["step"], []).append(decision)
    over = detail["status"] in S.FINAL_RUN_STATUSES
    for step in detail.get("steps", []):
        lines.extend(
            _step_block(step, approvals_by_step.get(step["id"], []), policies_by_step.get(step["id"], []), over)
        )
    if detail.get("decisions"):
        add("")
        add("decisions")
        for decision in detail["decisions"]:
            via = f" via {decision['via']}" if decision.get("via") else ""
            add(
                f"  {decision['at']}  {escape(decision['step'])}: {escape(decision['decision'])} by {escape(decision['by'])}{via}"
            )
    if detail.get("acknowledgements"):
        add("")
        add("acknowledged")
        for ack in detail["acknowledgements"]:
            via = f" via {ack['via']}" if ack.get("via") else ""
            add(f"  {ack['at']}  by {escape(ack['by'])}{via}")
    add("")
    add(f"ledger: {len(detail.get('ledger', []))} entries (opsdsl ledger show --run {escape(detail['id'])})")
    return "\n".join(lines)


def _field_writer(lines: list[str], indent: str, width: int) -> Callable[[str, Any], None]:
    def field(label: str, value: Any, limit: int = LINE_LIMIT) -> None:
        lines.append(f"{indent}{label:<{width}}{cut(escape(value), limit)}")

    return field


def _wait_text(wait: Mapping[str, Any], run_id: str) -> str:
    kind = wait["kind"]
    if kind == "approval":
        text = f"approval of {wait['step']}: {len(wait['approved_by'])} of {wait['needed']}"
        if wait["approved_by"]:
            text += f" (approved by {', '.join(wait['approved_by'])})"
        if wait.get("approvers"):
            text += f"; approvers: {', '.join(wait['approvers'])}"
        if wait.get("deadline"):
            text += f"; deadline {iso_time(wait['deadline'])}"
        return text
    if kind == "decision":
        return f"a decision on {wait['step']} (opsdsl decide {run_id} {wait['step']} --as retry|succeeded|failed)"
    if kind == "run":
        return f"sub-run {wait['run']} ({wait['status']}) of step {wait['step']}"
    if kind == "timer":
        return f"{wait['timer']} timer of {wait['step'] or 'the run'} at {iso_time(wait['due_at'])}"
    return f"opsdsl resume {run_id}"


def _step_block(
    step: Mapping[str, Any], approvals: list[Mapping[str, Any]], policies: list[Mapping[str, Any]], over: bool
) -> list[str]:
    status = "not run" if step["status"] == B.PENDING and over else step["status"]
    about = ", ".join(part for part in (step.get("action"), f"risk {step['risk']}" if step.get("risk") else "") if part)
    head = f"  {_STEP_ICONS.get(step['status'], '·')} {escape(step['id'])}"
    if about:
        head += f" ({escape(about)})"
    head += f"  {status}"
    if step.get("section") not in (None, "steps"):
        head += f"  [{escape(step['section'])}]"
    lines = [head]
    field = _field_writer(lines, "      ", 11)
    if step.get("name") and step["name"] != step["id"]:
        field("name", step["name"])
    if step["attempts"]:
        most = step.get("max_attempts") or 1
        field("attempts", f"{step['attempts']} of {most}" if most > 1 else str(step["attempts"]))
    if step.get("started_at") is not None:
        when = iso_time(step["started_at"])
        if step.get("finished_at") is not None:
            when += f" → {iso_time(step['finished_at'])} ({duration_text(step['duration_seconds'])})"
        field("time", when)
    for decision in policies:
        if decision["decision"] != "allow" or decision["policies"] or decision["errors"]:
            named = ", ".join(p.get("id", "?") for p in decision["policies"]) or "no policy"
            field("policy", f"{decision['decision']} ({named})")
    if step.get("approvals_needed"):
        text = f"{step['approvals_needed']} needed"
        if step.get("approval_reason"):
            text += f" ({step['approval_reason']})"
        if step.get("approvers"):
            text += f"; approvers: {', '.join(step['approvers'])}"
        field("approval", text)
        if step.get("approval_message"):
            field("asks", step["approval_message"])
    for approval in approvals:
        if approval["timed_out"]:
            field("answer", f"{approval['at']} timed out: {approval['decision']}")
            continue
        via = f" via {approval['via']}" if approval.get("via") else ""
        word = {"approve": "approved", "deny": "denied"}.get(approval["decision"], approval["decision"])
        text = f"{approval['at']} {word} by {approval['by']}{via}"
        if approval.get("answers"):
            text += " with " + ", ".join(f"{k}={compact(v)}" for k, v in sorted(approval["answers"].items()))
        if approval.get("comment"):
            text += f": {approval['comment']}"
        field("answer", text)
    for failed in step.get("failed_attempts") or []:
        retry = f"; retried in {float(failed['retry_in'] or 0):.1f}s" if failed.get("retry_in") is not None else ""
        field("attempt", f"{failed['attempt']} failed at {failed['at']}: {failed['error']}{retry}")
    outputs = step.get("outputs") or {}
    for i, (name, value) in enumerate(sorted(outputs.items())):
        lines.extend(_output_lines("outputs" if i == 0 else "", name, value))
    if step.get("error"):
        field("error", step["error"])
    if step.get("note") and step["status"] in (B.SKIPPED, B.IN_DOUBT, B.INTERRUPTED):
        field("note", step["note"])
    return lines


def _output_lines(label: str, name: str, value: Any) -> list[str]:
    """One output: a line, or for text of several lines (a command's stdout) its first
    `OUTPUT_LINES` lines under the name, each escaped; cut either way."""
    indent = f"      {label:<11}"
    if not isinstance(value, str) or "\n" not in value.rstrip("\n"):
        return [f"{indent}{escape(name)}: {cut(compact(value), OUTPUT_LIMIT)}"]
    text_lines = value.rstrip("\n").split("\n")
    out = [f"{indent}{escape(name)}:"]
    budget = OUTPUT_LIMIT
    for i, line in enumerate(text_lines):
        if i == OUTPUT_LINES or budget <= 0:
            out.append(f"{' ' * 17}… ({len(text_lines) - i:,} more lines; --format json has all)")
            break
        shown = escape(line)
        out.append(f"{' ' * 17}| {cut(shown, budget)}")
        budget -= len(shown)
    return out


def render_entries(entries: list[Mapping[str, Any]]) -> str:
    """`opsdsl ledger show` as text: one line per entry, its data as one line of JSON (cut)."""
    if not entries:
        return "no ledger entries"
    width = len(str(entries[-1]["seq"]))
    return "\n".join(entry_line(entry, width) for entry in entries)


def entry_line(entry: Mapping[str, Any], width: int = 0) -> str:
    """One ledger entry on one line: seq (right-aligned to `width`), UTC time to the
    millisecond, run, kind, data as JSON (cut, escaped)."""
    stamp = datetime.fromtimestamp(entry["ts"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    run = escape(entry["run"]) if entry.get("run") else "-"
    data = cut(compact(entry["data"]), LINE_LIMIT)
    return f"{entry['seq']:>{width}}  {stamp}  {run}  {escape(entry['kind'])}  {data}"
