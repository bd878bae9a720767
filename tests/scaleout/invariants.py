"""What must hold after every fault scenario (issue 16, "Fault tests"), whatever was killed.

`check(url, states, api, accepted, non_idempotent=...)` reads the database at `url` (a
PostgreSQL URL, or None for the SQLite file of the first state dir), the Kernel API
stand-in's request log and the ids of the events that got a 202, and asserts:

1. no idempotent key was applied twice, by the stand-in's own per-key semantics: a
   `POST /v1/pool/reconnect` moves its cluster's generation once per Idempotency-Key, so
   each pool's generation is the number of distinct keys that reconnected it;
2. no non-idempotent step was sent again unless a person decided `retry` for it: the
   requests carrying the key `RUN:STEP` of a step in `non_idempotent` number at most one
   plus the `step.decided` entries with decision `retry` for that run and step;
3. every 202'd event reached a run or a recorded suppression: its row is `done`, and the
   ledger has a `trigger.fired` (with its run, which exists and has a `run.created`) or a
   `hook.suppressed` for it;
4. every run ended, or waits for a person: `paused` with a step `awaiting_approval` or
   `in_doubt`;
5. no run is `running` without a live lease (lease_until in the future by the database's
   clock);
6. `opsdsl ledger verify` exits 0 on every state dir.

It returns what it read (runs by status, requests per key) for the scenario's own checks.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FINAL = ("succeeded", "failed", "cancelled", "timed_out")
WAITS_FOR_A_PERSON = ("awaiting_approval", "in_doubt")
ROOT = Path(__file__).resolve().parents[2]


class Violation(AssertionError):
    """An invariant that does not hold, with every one found."""


def _query(url: str | None, state: Path, sql: str, *args: Any) -> list[tuple]:
    if url:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), args).fetchall()]
    conn = sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _now(url: str | None, state: Path) -> float:
    if url:
        return float(_query(url, state, "SELECT EXTRACT(EPOCH FROM clock_timestamp())")[0][0])
    import time

    return time.time()


def ledger_verifies(url: str | None, state: Path) -> str | None:
    """None when `opsdsl ledger verify` exits 0 for this state, else its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_")}
    if url:
        env["OPSDSL_DATABASE"] = url
    command = [sys.executable, "-m", "opsdsl", "ledger", "verify", "--state-dir", str(state)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else f"exit {done.returncode}: {done.stdout}{done.stderr}"


def _wait_for_incident_records(url: str | None, state: Path, timeout: float = 30.0) -> None:
    """Until every finished run's record.json exists, or `timeout` passed (verify then says which is gone)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        rows = _query(url, state, "SELECT incident_dir FROM runs WHERE status IN ('succeeded', 'failed')")
        if all(folder and (Path(folder) / "record.json").is_file() for (folder,) in rows):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.1)


def check(
    url: str | None,
    states: Sequence[Path],
    api: Any,
    accepted: Iterable[int],
    *,
    non_idempotent: Iterable[str] = (),
    verify: bool = True,
) -> dict[str, Any]:
    """Assert the invariants above; raises Violation listing every one that fails."""
    state = states[0]
    problems: list[str] = []
    accepted = sorted(set(accepted))

    # 1. idempotent keys applied once (the stand-in's reconnect semantics)
    if api is not None:
        reconnect_keys: dict[str, set[str]] = {}
        for request in api.seen("POST", "/v1/pool/reconnect"):
            body = request.json() if isinstance(request.json(), dict) else {}
            cluster = request.query.get("cluster") or body.get("cluster") or "c1"
            if request.key:
                reconnect_keys.setdefault(cluster, set()).add(request.key)
        for cluster, keys in reconnect_keys.items():
            generation = api.pool(cluster).generation
            if generation > len(keys):
                problems.append(f"pool {cluster}: reconnected {generation} times for {len(keys)} keys")

    # 2. non-idempotent steps sent again only on a decided retry
    decided = Counter()
    for run, data in _query(url, state, "SELECT run, data FROM ledger WHERE kind = 'step.decided'"):
        entry = json.loads(data)
        if entry.get("decision") == "retry":
            decided[f"{run}:{entry.get('step')}"] += 1
    sent = Counter(r.key for r in api.seen()) if api is not None else Counter()
    once = set(non_idempotent)
    for key, count in sent.items():
        if key and key.rpartition(":")[2] in once and count > 1 + decided[key]:
            problems.append(f"non-idempotent {key} sent {count} times with {decided[key]} decided retries")

    # 3. every 202'd event reached a run or a recorded suppression
    if accepted:
        marks = ", ".join("?" for _ in accepted)
        rows = _query(url, state, f"SELECT id, status FROM events WHERE id IN ({marks})", *accepted)
        statuses = dict(rows)
        outcomes: dict[int, list[tuple[str, dict]]] = {}
        for kind, data in _query(
            url, state, "SELECT kind, data FROM ledger WHERE kind IN ('trigger.fired', 'hook.suppressed')"
        ):
            entry = json.loads(data)
            outcomes.setdefault(entry.get("event_id"), []).append((kind, entry))
        created = {row[0] for row in _query(url, state, "SELECT run FROM ledger WHERE kind = 'run.created'")}
        runs = {row[0] for row in _query(url, state, "SELECT id FROM runs")}
        for event_id in accepted:
            if statuses.get(event_id) != "done":
                problems.append(f"event {event_id}: status {statuses.get(event_id)!r}, not done")
            found = outcomes.get(event_id, [])
            if not found:
                problems.append(f"event {event_id}: neither trigger.fired nor hook.suppressed in the ledger")
            for kind, entry in found:
                if kind == "trigger.fired" and entry.get("run") and entry["run"] not in runs & created:
                    problems.append(f"event {event_id}: fired run {entry['run']} has no row or no run.created")

    # 4. every run ended or waits for a person; 5. no run running without a live lease
    now = _now(url, state)
    by_status: Counter[str] = Counter()
    for run_id, status, lease_until in _query(url, state, "SELECT id, status, lease_until FROM runs"):
        by_status[status] += 1
        if status in FINAL:
            continue
        if status == "running":
            if lease_until is None or lease_until <= now:
                problems.append(f"run {run_id}: running without a live lease (lease_until {lease_until})")
            continue
        waiting = [
            row[0]
            for row in _query(url, state, "SELECT status FROM steps WHERE run_id = ?", run_id)
            if row[0] in WAITS_FOR_A_PERSON
        ]
        if status != "paused" or not waiting:
            problems.append(f"run {run_id}: {status}, neither ended nor waiting for a person")

    # 6. the ledger verifies, once the incident folders of the runs that ended are written:
    # a worker writes a run's folder on a thread of its own after the run's end commits
    if verify:
        _wait_for_incident_records(url, state)
        for folder in states:
            failed = ledger_verifies(url, folder)
            if failed:
                problems.append(f"ledger verify ({folder}): {failed}")

    if problems:
        raise Violation("invariants broken:\n  " + "\n  ".join(problems))
    return {"runs": by_status, "sent": sent}
