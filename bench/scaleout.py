"""Scale-out on PostgreSQL (issue 16 "Speed"): two `serve --no-drive`, two `worker`, two
`runner --pool bench` and a private PostgreSQL, all on this machine, beside single-node
`opsdsl serve` on SQLite, in the same run.

    python bench/scaleout.py                                  # rates 20,35,50 /s, 60 s each, 2 rounds
    python bench/scaleout.py --rates 35 --duration 30 --rounds 1 --configs sqlite,pg-inline
    python bench/scaleout.py --append                         # also append the table to bench/RESULTS.md

What it does:

1. Starts a private PostgreSQL 15 (tests/pgserver.py: fsync and synchronous_commit on, on
   this machine's disk) and a loopback HTTP target (a process of its own, counting requests
   per Idempotency-Key).
2. Measures the server's raw commit rate with pgbench: one-row INSERT transactions with 1
   and 4 clients, and 4 clients that each take one advisory lock first (what opsdsl's
   global writer lock makes of every transaction).
3. For each round, rate and configuration (interleaved: the order flips each round):
   - `sqlite`: one `opsdsl serve` on a fresh state directory, driving its own runs; the
     pack's two steps are `http.request`s to the target, run in process;
   - `pg-inline` / `pg-journal`: a fresh database (`opsdsl db migrate`), two `opsdsl serve
     --no-drive` on different ports, two `opsdsl worker`, two `opsdsl runner --pool bench`;
     the pack's two steps carry `runner: bench` (dispatched through the outbox). The ledger
     mode (`$OPSDSL_LEDGER_MODE`) is `inline` or `journal` in every process (in journal
     mode the serves' sequencer thread chains).
   Load: one Alertmanager webhook (one firing alert) per request, at a fixed rate (open
   loop, like bench/serve_load.py), alternating between the serves, for --duration
   seconds; then it waits (at most --drain seconds) for every event to be evaluated and
   every run to end.
4. Reads the figures from the database: runs succeeded, completed runs per minute over the
   window from the first 202 to the last run's end, dispatch rows done per second, the
   backlog when the load stopped, and on PostgreSQL the transactions of the whole test
   (pg_stat_database.xact_commit, write transactions = xids drawn, WAL fsyncs from
   pg_stat_wal) per completed run.
5. Prints one markdown table (medians over the rounds), with the load average, and with
   --append adds it to bench/RESULTS.md.

`--profile SECONDS` runs `py-spy dump` on a worker, a runner and a serve in the middle of
each PostgreSQL measurement and keeps the output in the work folder (py-spy must be in the
venv: `pip install py-spy`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # pgserver: the private PostgreSQL of the tests
sys.path.insert(0, str(HERE))  # serve_load: the open-loop HTTP client

from serve_load import TOKEN, Connection, percentile  # noqa: E402

CONFIGS = ("sqlite", "pg-inline", "pg-journal")

PACK = """\
# bench/scaleout.py: every firing BenchLoad alert starts a run of two idempotent HTTP steps
# against the loopback target{where}.
apiVersion: opsdsl/v1
kind: Pack
metadata: {{name: bench-scaleout, version: 1.0.0, owner: sre}}
params:
  target_url: {{type: string, default: "http://127.0.0.1:9"}}
triggers:
  load:
    on: alert
    when: event.labels.alertname == "BenchLoad"
hooks:
  # opsdsl: ignore[OPS042]: the bench wants a run per event
  onLoad: {{trigger: load, run: handle}}
playbooks:
  handle:
    severity: SEV-4
    inputs:
      seq: {{type: string, from: event.labels.seq}}
    steps:
      - id: look
        action: http.request
        idempotent: true{runner}
        with: {{url: "${{{{ params.target_url }}}}/look?seq=${{{{ inputs.seq }}}}"}}
        timeout: 10s
      - id: act
        needs: [look]
        action: http.request
        idempotent: true{runner}
        with: {{method: POST, url: "${{{{ params.target_url }}}}/act", json: {{seq: "${{{{ inputs.seq }}}}"}}}}
        timeout: 10s
"""


def write_pack(folder: Path, pooled: bool) -> Path:
    path = folder / ("pack-pool.yaml" if pooled else "pack-local.yaml")
    runner = "\n        runner: bench" if pooled else ""
    where = ", both dispatched to the runner pool `bench`" if pooled else ", run in process"
    path.write_text(PACK.format(runner=runner, where=where), encoding="utf-8")
    return path


# ---- the loopback target ---------------------------------------------------------------


def target_main(port_queue: multiprocessing.Queue) -> None:
    """A tiny HTTP server: every request answers 200 and is counted (total, distinct keys)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # terminate() ends it quietly
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path == "/count":
                with lock:
                    body = json.dumps({"requests": sum(counts.values()), "keys": len(counts)}).encode()
            elif self.path == "/reset":
                with lock:
                    counts.clear()
                body = b"{}"
            else:
                key = self.headers.get("Idempotency-Key") or f"no-key {self.path}"
                with lock:
                    counts[key] = counts.get(key, 0) + 1
                body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 1024  # socketserver's 5 resets connections when many open at once

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that hangs up (a serve stopping, a step's timeout) is no news here

    server = Server(("127.0.0.1", 0), Handler)
    port_queue.put(server.server_address[1])
    server.serve_forever()


def target_get(port: int, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return json.loads(answer.read())


# ---- processes -------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_")}
    env.update(extra)
    return env


class Proc:
    """One opsdsl subprocess with its log."""

    def __init__(self, name: str, args: list[str], work: Path, env: dict[str, str], source: Path = ROOT) -> None:
        self.name = name
        self.log_path = work / f"{name}.log"
        self._log = open(self.log_path, "w+", encoding="utf-8")  # noqa: SIM115 (kept for the process' life)
        command = [sys.executable, "-m", "opsdsl", *args]
        self.process = subprocess.Popen(
            command,
            cwd=source,
            env={**env, "PYTHONPATH": str(source)},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 90) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        raise SystemExit(f"{self.name} did not log {pattern!r} within {timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code


# ---- the load --------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    reconnects: int = 0
    first_accept: float = 0.0  # epoch seconds
    end: float = 0.0


def alert_body(seq: int) -> bytes:
    now = datetime.now().astimezone().isoformat()
    alert = {
        "status": "firing",
        "labels": {"alertname": "BenchLoad", "severity": "warning", "seq": str(seq)},
        "annotations": {"summary": f"bench event {seq}"},
        "startsAt": now,
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph",
        "fingerprint": f"{seq:016x}",
    }
    notification = {
        "version": "4",
        "status": "firing",
        "receiver": "opsdsl",
        "groupKey": f'{{}}:{{alertname="BenchLoad", seq="{seq}"}}',
        "groupLabels": {"alertname": "BenchLoad"},
        "commonLabels": alert["labels"],
        "commonAnnotations": alert["annotations"],
        "externalURL": "http://alertmanager.example",
        "truncatedAlerts": 0,
        "alerts": [alert],
    }
    return json.dumps(notification).encode()


async def send_load(ports: list[int], rate: float, duration: float, connections: int) -> Tally:
    tally = Tally()
    pools: list[asyncio.Queue[Connection]] = []
    for port in ports:
        # Last in, first out: the connections in use stay warm, the rest idle out (the server
        # closes a connection idle past its --header-timeout, 10 s).
        pool: asyncio.Queue[Connection] = asyncio.LifoQueue()
        for _ in range(connections):
            pool.put_nowait(Connection(port))
        pools.append(pool)
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    start = loop.time() + 0.2

    async def one(seq: int) -> None:
        pool = pools[seq % len(pools)]
        connection = await pool.get()
        body = alert_body(seq)
        began = time.perf_counter()
        try:
            try:
                reused = connection.writer is not None
                status, payload = await connection.post("/v1/alertmanager", body)
            except (ConnectionError, asyncio.IncompleteReadError):
                if not reused:
                    raise
                # The server closed this idle keep-alive connection before our request reached
                # it (no answer came back): send it again on a new connection, once.
                connection.close()
                tally.reconnects += 1
                status, payload = await connection.post("/v1/alertmanager", body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            connection.close()
            tally.errors[type(error).__name__] = tally.errors.get(type(error).__name__, 0) + 1
            return
        finally:
            pool.put_nowait(connection)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            if not tally.first_accept:
                tally.first_accept = time.time()
            tally.latencies.append(time.perf_counter() - began)
            tally.ids.extend(json.loads(payload)["ids"])

    tasks = []
    for seq in range(total):
        delay = start + seq / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(seq)))
        tally.sent += 1
    tally.end = time.time()
    await asyncio.gather(*tasks)
    for pool in pools:
        while not pool.empty():
            pool.get_nowait().close()
    return tally


# ---- reading the state -----------------------------------------------------------------


class Db:
    """The few queries the bench makes, on either backend."""

    def __init__(self, url: str | None = None, path: Path | None = None) -> None:
        self.url, self.path = url, path

    def rows(self, sql: str) -> list[tuple]:
        if self.url:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute(sql).fetchall()
        assert self.path is not None
        if not self.path.exists():
            return []
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute(sql).fetchall()

    def one(self, sql: str) -> Any:
        found = self.rows(sql)
        return found[0][0] if found else 0

    def backlog(self) -> dict[str, int]:
        dispatch = 0
        if self.url:
            dispatch = self.one("SELECT COUNT(*) FROM dispatch WHERE state IN ('queued', 'claimed')")
        return {
            "events": self.one("SELECT COUNT(*) FROM events WHERE status = 'accepted'"),
            "runs": self.one("SELECT COUNT(*) FROM runs WHERE status IN ('running', 'interrupted')"),
            "dispatch": dispatch,
        }

    def pg_counters(self) -> dict[str, float]:
        assert self.url
        (commits,) = self.rows("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")[0]
        (xid,) = self.rows("SELECT pg_current_xact_id()::text::bigint")[0]
        syncs, records, wal_bytes = self.rows("SELECT wal_sync, wal_records, wal_bytes FROM pg_stat_wal")[0]
        return {
            "commits": commits,
            "xids": xid,
            "wal_sync": syncs,
            "wal_records": records,
            "wal_bytes": float(wal_bytes),
        }


def sample_waits(url: str, stop: threading.Event, every: float = 0.1) -> dict[str, Any]:
    """What the opsdsl sessions are doing, sampled every `every` seconds during the load
    (pg_stat_activity): per sample, each non-idle session's wait event (or `CPU`, running)
    and the statement; and who waits on whom (pg_locks, lock type). The shares say what
    contends: a session counts as waiting in a sample when it is not running."""
    import psycopg

    states: dict[str, int] = {}
    statements: dict[str, int] = {}
    samples = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(every):
            rows = conn.execute(
                "SELECT state, wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
                " FROM pg_stat_activity WHERE datname = current_database() AND pid != pg_backend_pid()"
                " AND backend_type = 'client backend'"
            ).fetchall()
            samples += 1
            for state, wtype, wevent, query in rows:
                if state == "idle":
                    continue
                key = f"{state}: {wtype}/{wevent}" if wtype else f"{state}: CPU"
                states[key] = states.get(key, 0) + 1
                if state == "active" and wtype == "Lock":
                    statements[f"{wevent}: {query}"] = statements.get(f"{wevent}: {query}", 0) + 1
    return {
        "samples": samples,
        "states": {k: round(n / max(samples, 1), 2) for k, n in sorted(states.items(), key=lambda kv: -kv[1])[:12]},
        "lock_waits": {
            k: round(n / max(samples, 1), 2) for k, n in sorted(statements.items(), key=lambda kv: -kv[1])[:10]
        },
    }


def wait_drained(db: Db, accepted: int, limit: float) -> tuple[float, dict[str, int]]:
    began = time.monotonic()
    left = db.backlog()
    while time.monotonic() - began < limit:
        left = db.backlog()
        handled = db.one("SELECT COUNT(*) FROM events WHERE status != 'accepted'")
        if not any(left.values()) and handled >= accepted:
            break
        time.sleep(0.5)
    return time.monotonic() - began, left


# ---- one measurement -------------------------------------------------------------------


def measure(config: str, rate: float, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"scaleout-{config}-", dir=ctx["work"]))
    token_file = work / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    target = f"target_url=http://127.0.0.1:{ctx['target_port']}"
    procs: list[Proc] = []
    result: dict[str, Any] = {"config": config, "rate": rate}
    profile_thread = None
    try:
        if config == "sqlite":
            state = work / "state"
            pack = write_pack(work, pooled=False)
            db = Db(path=state / "state.db")
            serve = Proc(
                "serve",
                ["serve", "--pack", str(pack), "--state-dir", str(state), "--port", "0", "--token-file",
                 str(token_file), "--param", target, "--max-runs", str(args.max_runs), "--drain-timeout", "5"],
                work, clean_env(), ctx["source"],
            )  # fmt: skip
            procs.append(serve)
            ports = [int(serve.wait_for(r"listening on http://[^:]+:(\d+)").group(1))]
            before = None
        else:
            mode = config.removeprefix("pg-")
            name = f"bench_{config.replace('-', '_')}_{ctx['counter']}"
            ctx["counter"] += 1
            url = ctx["pg"].create_database(name)
            env = clean_env(OPSDSL_LEDGER_MODE=mode)
            migrated = subprocess.run(
                [sys.executable, "-m", "opsdsl", "db", "migrate", "--database", url],
                cwd=ctx["source"], env={**env, "PYTHONPATH": str(ctx["source"])}, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
            if migrated.returncode != 0:
                raise SystemExit(f"opsdsl db migrate exited {migrated.returncode}: {migrated.stderr}")
            moded = subprocess.run(
                [sys.executable, "-m", "opsdsl", "db", "ledger-mode", mode, "--database", url],
                cwd=ctx["source"], env={**env, "PYTHONPATH": str(ctx["source"])}, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
            if moded.returncode != 0:  # an older tree: the mode is each process's $OPSDSL_LEDGER_MODE
                print(f"  (opsdsl db ledger-mode: {moded.stderr.strip()[-200:]})", file=sys.stderr)
            db = Db(url=url)
            with contextlib.suppress(Exception):
                result["ledger_mode"] = db.one("SELECT value FROM settings WHERE name = 'ledger_mode'")
            pack = write_pack(work, pooled=True)
            state = work / "state"
            common = ["--pack", str(pack), "--database", url, "--param", target]
            ports = []
            for n in (1, 2):
                serve = Proc(
                    f"serve{n}",
                    ["serve", "--no-drive", *common, "--state-dir", str(work / f"serve{n}"), "--port", "0",
                     "--token-file", str(token_file), "--drain-timeout", "5"],
                    work, env, ctx["source"],
                )  # fmt: skip
                procs.append(serve)
                ports.append(int(serve.wait_for(r"listening on http://[^:]+:(\d+)").group(1)))
            for n in (1, 2):
                worker = Proc(
                    f"worker{n}",
                    ["worker", *common, "--state-dir", str(state), "--id", f"w{n}", "--max-runs",
                     str(args.max_runs), "--drain-timeout", "5"],
                    work, env, ctx["source"],
                )  # fmt: skip
                procs.append(worker)
                worker.wait_for("driving runs")
            for n in (1, 2):
                runner = Proc(
                    f"runner{n}",
                    ["runner", "--pool", "bench", "--database", url, "--state-dir", str(state), "--id", f"r{n}",
                     "--concurrency", str(args.concurrency)],
                    work, env, ctx["source"],
                )  # fmt: skip
                procs.append(runner)
                runner.wait_for(r"runner r\d: pool bench")
            # The idle processes' own transactions (polls, heartbeats), to tell them from the load's.
            idle_before = db.pg_counters()
            time.sleep(3)
            idle_after = db.pg_counters()
            result["idle_commits_s"] = (idle_after["commits"] - idle_before["commits"]) / 3
            result["idle_xids_s"] = (idle_after["xids"] - idle_before["xids"]) / 3
            before = db.pg_counters()
            if args.profile:
                profile_thread = threading.Thread(
                    target=profile,
                    args=(procs, work, args.duration / 2, args.profile, not args.profile_cpu),
                    daemon=True,
                )
                profile_thread.start()

        target_get(ctx["target_port"], "/reset")
        uptime_before = os.getloadavg()[0]
        cpu_before = cpu_by_role(procs, ctx)
        waits: dict[str, Any] = {}
        sampling = threading.Event()
        sampler = None
        if db.url and args.waits:
            sampler = threading.Thread(
                target=lambda: waits.update(sample_waits(db.url, sampling)), name="waits", daemon=True
            )
            sampler.start()
        tally = asyncio.run(send_load(ports, rate, args.duration, args.connections))
        if sampler is not None:
            sampling.set()
            sampler.join(timeout=10)
            result["waits"] = waits
        backlog_at_end = db.backlog()
        drain_s, left = wait_drained(db, len(tally.ids), args.drain)
        time.sleep(1.5)  # pg_stat_database is flushed by the backends at most once a second
        after = db.pg_counters() if before is not None else None
        cpu_after = cpu_by_role(procs, ctx)
        if profile_thread is not None:
            profile_thread.join(timeout=60)

        succeeded, last_end = db.rows("SELECT COUNT(*), MAX(finished_at) FROM runs WHERE status = 'succeeded'")[0]
        other = dict(db.rows("SELECT status, COUNT(*) FROM runs WHERE status != 'succeeded' GROUP BY status"))
        within = db.one(f"SELECT COUNT(*) FROM runs WHERE status = 'succeeded' AND finished_at <= {tally.end}")
        accepted = sum(n for s, n in tally.statuses.items() if 200 <= s < 300)
        span = (last_end - tally.first_accept) if succeeded else float("nan")
        hits = target_get(ctx["target_port"], "/count")
        result.update(
            {
                "sent": tally.sent,
                "accepted": accepted,
                "accepted_s": accepted / args.duration,
                "non_2xx": {s: n for s, n in tally.statuses.items() if not 200 <= s < 300},
                "client_errors": dict(tally.errors),
                "reconnects": tally.reconnects,
                "p50_ms": percentile(tally.latencies, 0.5) * 1000,
                "p99_ms": percentile(tally.latencies, 0.99) * 1000,
                "succeeded": succeeded,
                "other_runs": other,
                "span_s": span,
                "runs_min": succeeded / span * 60 if succeeded else 0.0,
                "runs_min_in_window": within / args.duration * 60,
                "backlog_at_end": backlog_at_end,
                "drain_s": drain_s,
                "left": left,
                "target_requests": hits["requests"],
                "target_keys": hits["keys"],
                "load_avg": uptime_before,
                "cpu_ms_per_run": {
                    role: round((cpu_after[role] - cpu_before.get(role, 0.0)) * 1000 / max(succeeded, 1), 1)
                    for role in cpu_after
                },
            }
        )
        if db.url:
            done, first_created, last_finished = db.rows(
                "SELECT COUNT(*), MIN(created_at), MAX(finished_at) FROM dispatch WHERE state = 'done'"
            )[0]
            result["dispatch_done"] = done
            result["steps_s"] = done / (last_finished - first_created) if done else 0.0
            result["runs_by_worker"] = dict(db.rows("SELECT lease_owner, COUNT(*) FROM runs GROUP BY lease_owner"))
            result["steps_by_runner"] = dict(db.rows("SELECT claimant, COUNT(*) FROM dispatch GROUP BY claimant"))
            assert after is not None and before is not None
            for key in ("commits", "xids", "wal_sync", "wal_records", "wal_bytes"):
                result[f"{key}_per_run"] = (after[key] - before[key]) / max(succeeded, 1)
            result["xids_s"] = (after["xids"] - before["xids"]) / max(span, 1e-9)
            result["wal_sync_s"] = (after["wal_sync"] - before["wal_sync"]) / max(span, 1e-9)
        else:
            done = db.one(
                "SELECT COUNT(*) FROM ledger WHERE kind = 'step.succeeded'"
            )  # in-process steps: the ledger says
            result["dispatch_done"] = done
            result["steps_s"] = done / span if succeeded else 0.0
        return result
    finally:
        for proc in reversed(procs):
            code = proc.stop()
            result.setdefault("exit_codes", {})[proc.name] = code
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if config != "sqlite" and "url" in locals():
            ctx["pg"].drop_database(name)


def summarize(path: Path, top: int = 12) -> str:
    """A py-spy raw profile (--idle) in a few lines: the share of samples waiting on
    PostgreSQL (psycopg's Connection.wait), by the opsdsl frame that asked; and the
    functions where the rest of the samples were (self time)."""
    total, waiting, callers, leaves = 0, 0, {}, {}
    for line in path.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        if any(f.startswith("Connection.wait") or f.startswith("Connection._wait") for f in frames):
            waiting += n
            asking = [f for f in frames if "opsdsl/" in f and "database.py" not in f]
            where = asking[-1] if asking else "?"
            callers[where] = callers.get(where, 0) + n
        else:
            leaf = frames[-1] if frames else "?"
            leaves[leaf] = leaves.get(leaf, 0) + n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples; waiting on PostgreSQL {waiting / total:.0%}"]
    for where, n in sorted(callers.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  wait {n / total:6.1%}  {where}")
    for leaf, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  self {n / total:6.1%}  {leaf}")
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(procs: list[Proc], ctx: dict[str, Any]) -> dict[str, float]:
    """CPU seconds so far of the opsdsl processes by role (serve, worker, runner), of the
    PostgreSQL server's processes alive now (postmaster's children: backends of live
    connections, WAL writer, checkpointer) and of the loopback target."""
    roles: dict[str, float] = {}
    for proc in procs:
        role = proc.name.rstrip("0123456789")
        roles[role] = roles.get(role, 0.0) + cpu_seconds(proc.process.pid)
    server = ctx.get("pg")
    if server is not None and any(p.name.startswith("worker") for p in procs):
        postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        total = cpu_seconds(postmaster)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == postmaster:
                total += cpu_seconds(int(stat.parent.name))
        roles["postgres"] = total
    roles["target"] = cpu_seconds(ctx["target_pid"])
    roles["client"] = time.process_time()
    return roles


def profile(procs: list[Proc], work: Path, wait: float, seconds: float, idle: bool = True) -> None:
    """py-spy records of the processes in the middle of the load (kept in the work folder):
    wall time (`idle`: waiting counts) or CPU time only."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("no py-spy in the venv (pip install py-spy): not profiling", file=sys.stderr)
        return
    time.sleep(wait)
    spies = [threading.Thread(target=_spy, args=(spy, proc, work, seconds, idle)) for proc in procs]
    for thread in spies:
        thread.start()
    for thread in spies:
        thread.join()


def _spy(spy: Path, proc: Proc, work: Path, seconds: float, idle: bool) -> None:
    if proc.process.poll() is None:
        out = work.parent / f"profile-{work.name}-{proc.name}.txt"
        done = subprocess.run(
            [str(spy), "record", "--pid", str(proc.process.pid), "--duration", str(int(seconds)), "--format",
             "raw", "--output", str(out), *(["--idle"] if idle else []), "--rate", "100", "--nonblocking"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            print(f"py-spy on {proc.name}: {done.stderr.strip()[-300:]}", file=sys.stderr)


# ---- raw commit rate -------------------------------------------------------------------


def commit_rate(server: Any, seconds: float) -> dict[str, float]:
    """pgbench: one-row INSERT transactions, 1 and 4 clients, and 4 clients under one
    advisory lock (each transaction waits for the previous one's commit, as opsdsl's do)."""
    url = server.create_database("bench_commits")
    server.sql("CREATE TABLE bench_commit (id BIGSERIAL PRIMARY KEY, v INT)", "bench_commits")
    scripts = {
        "plain": "INSERT INTO bench_commit(v) VALUES (1);\n",
        "locked": "BEGIN;\nSELECT pg_advisory_xact_lock(42);\nINSERT INTO bench_commit(v) VALUES (1);\nEND;\n",
    }
    folder = Path(tempfile.mkdtemp(prefix="pgbench-"))
    figures = {}
    for label, script, clients in (
        ("1 client", "plain", 1),
        ("4 clients", "plain", 4),
        ("4 clients, one lock", "locked", 4),
    ):
        path = folder / f"{script}.sql"
        path.write_text(scripts[script], encoding="utf-8")
        path.chmod(0o644)
        folder.chmod(0o755)
        done = subprocess.run(
            [str(server.bin / "pgbench"), "-n", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
             "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-f", str(path), "bench_commits"],
            capture_output=True, text=True, timeout=seconds + 60,
        )  # fmt: skip
        found = re.search(r"tps = ([\d.]+)", done.stdout)
        figures[label] = float(found.group(1)) if found else float("nan")
        if not found:
            print(f"pgbench {label}: {done.stdout[-500:]} {done.stderr[-500:]}", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    server.drop_database("bench_commits")
    del url
    return figures


# ---- the table -------------------------------------------------------------------------


def med(results: list[dict], key: str) -> float:
    values = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else float("nan")


def spread(results: list[dict], key: str, fmt: str = "{:.0f}") -> str:
    values = [r[key] for r in results if isinstance(r.get(key), (int, float)) and r[key] == r[key]]
    if not values:
        return "—"
    shown = fmt.format(statistics.median(values))
    if len(values) > 1:
        shown += " (" + "…".join(fmt.format(v) for v in (min(values), max(values))) + ")"
    return shown


def table(
    results: list[dict], commits: list[dict[str, float]], args: argparse.Namespace, loads: list[float], head: str
) -> str:
    lines = [
        f"## Scale-out on PostgreSQL (issue 16), {datetime.now():%Y-%m-%d %H:%M}",
        "",
        f"`python bench/scaleout.py{' --rev ' + args.rev if getattr(args, 'rev', None) else ''} --rates {args.rates}"
        f" --duration {args.duration:g} --drain {args.drain:g} --rounds {args.rounds}"
        f" --configs {args.configs}` (tree at {head}): {os.cpu_count()} cores, shared with other sessions (load average"
        f" {min(loads):.1f}–{max(loads):.1f} at the start of the measurements). Medians of {args.rounds} round(s),"
        " (min…max) beside them. pg-*: 2 `serve --no-drive` + 2 `worker` + 2 `runner --pool bench`"
        " + PostgreSQL 15 (fsync on), every step dispatched to the pool; sqlite: one `opsdsl serve`"
        " driving its own runs, steps in process. Every run: two idempotent `http.request` steps to a"
        " loopback target; one Alertmanager webhook (one alert) per request.",
        "",
        "| config | rate /s | accepted/s | intake p50 ms | intake p99 ms | completed runs/min |"
        " runs/min within the load | steps/s | backlog at load end (events/runs/dispatch) |"
        f" drain s (bound {args.drain:g}) | left after the drain (events/runs) | errors (non-2xx, client, failed runs) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["config"], r["rate"]) for r in results}, key=lambda k: (CONFIGS.index(k[0]), k[1]))
    for config, rate in keys:
        group = [r for r in results if (r["config"], r["rate"]) == (config, rate)]
        backlog = "; ".join(f"{b['events']}/{b['runs']}/{b['dispatch']}" for b in (r["backlog_at_end"] for r in group))
        left = "; ".join(f"{b['events']}/{b['runs']}" for b in (r["left"] for r in group))
        errors = sum(
            sum(r["non_2xx"].values()) + sum(r["client_errors"].values()) + r["other_runs"].get("failed", 0)
            for r in group
        )
        lines.append(
            f"| {config} | {rate:g} | {spread(group, 'accepted_s', '{:.1f}')} | {spread(group, 'p50_ms')} |"
            f" {spread(group, 'p99_ms')} | {spread(group, 'runs_min')} | {spread(group, 'runs_min_in_window')} |"
            f" {spread(group, 'steps_s', '{:.1f}')} | {backlog} | {spread(group, 'drain_s')} | {left} | {errors} |"
        )
    pg = [r for r in results if r["config"] != "sqlite"]
    if pg:
        lines += [
            "",
            "PostgreSQL transactions per completed run (over the whole measurement, idle polling included) and"
            " the idle processes' own rate:",
            "",
            "| config | rate /s | xact_commit/run | write transactions (xids)/run | WAL fsyncs/run |"
            " write transactions/s | WAL fsyncs/s | idle commits/s (idle xids/s) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for config, rate in keys:
            group = [r for r in pg if (r["config"], r["rate"]) == (config, rate)]
            if group:
                lines.append(
                    f"| {config} | {rate:g} | {spread(group, 'commits_per_run', '{:.1f}')} |"
                    f" {spread(group, 'xids_per_run', '{:.1f}')} | {spread(group, 'wal_sync_per_run', '{:.1f}')} |"
                    f" {spread(group, 'xids_s')} | {spread(group, 'wal_sync_s')} |"
                    f" {spread(group, 'idle_commits_s')} ({spread(group, 'idle_xids_s')}) |"
                )
    with_cpu = [r for r in results if r.get("cpu_ms_per_run")]
    if with_cpu:
        roles = ["serve", "worker", "runner", "postgres", "target", "client"]
        lines += [
            "",
            "CPU time per completed run, by process (ms; user + system from /proc over the load and the drain;"
            " postgres: the server's processes alive at the end). On 2 cores, 2,000 ms of CPU a second is all"
            " there is: runs/s ≤ 2000 ÷ total (less what other sessions take).",
            "",
            "| config | rate /s | " + " | ".join(roles) + " | total | ceiling runs/min at 2 cores |",
            "| --- | --- | " + " | ".join("---" for _ in roles) + " | --- | --- |",
        ]
        for config, rate in keys:
            group = [r for r in with_cpu if (r["config"], r["rate"]) == (config, rate)]
            if not group:
                continue
            for r in group:
                r["cpu_total"] = sum(r["cpu_ms_per_run"].values())
                r["cpu_ceiling"] = 2000 / r["cpu_total"] * 60 if r["cpu_total"] else float("nan")
                for role in roles:
                    r[f"cpu_{role}"] = r["cpu_ms_per_run"].get(role, float("nan"))
            cells = " | ".join(spread(group, f"cpu_{role}", "{:.1f}") for role in roles)
            lines.append(
                f"| {config} | {rate:g} | {cells} | {spread(group, 'cpu_total', '{:.1f}')} |"
                f" {spread(group, 'cpu_ceiling')} |"
            )
    if commits:
        lines += [
            "",
            f"This disk's raw commit rate (pgbench, one-row INSERT transactions, {args.pgbench:g} s each, once a"
            " round, median (min…max)): "
            + "; ".join(f"{label}: {spread(commits, label, '{:,.0f}')}/s" for label in commits[0])
            + ".",
        ]
    checks = []
    for r in results:
        if r["target_keys"] and r["target_requests"] != r["target_keys"]:
            checks.append(f"{r['config']}@{r['rate']:g}: {r['target_requests'] - r['target_keys']} repeated keys")
        bad = {k: v for k, v in r.get("exit_codes", {}).items() if v != 0}
        if bad:
            checks.append(f"{r['config']}@{r['rate']:g}: exit codes {bad}")
    owners = [
        f"{r['config']}@{r['rate']:g}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["runs_by_worker"].items(), key=str))
        for r in results
        if r.get("runs_by_worker")
    ]
    if owners:
        lines += ["", "Runs driven by each worker (`runs.lease_owner`), per measurement: " + "; ".join(owners) + "."]
    lines += [
        "",
        "Checks: " + ("; ".join(checks) if checks else "every process exited 0; no key reached the target twice."),
    ]
    return "\n".join(lines)


def tree_state() -> str:
    """HEAD and how many files under opsdsl/ differ from it (others may be editing the tree)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    changed = subprocess.run([*git, "status", "--short", "opsdsl"], capture_output=True, text=True).stdout
    count = len(changed.splitlines())
    return head + (f" with {count} uncommitted file(s) in opsdsl/" if count else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="20,35,50", help="events per second to try (default 20,35,50)")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load per measurement (default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2; the order flips each round)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--drain", type=float, default=120, help="most seconds to wait for the backlog (default 120)")
    parser.add_argument("--connections", type=int, default=64, help="client connections per serve (default 64)")
    parser.add_argument("--max-runs", type=int, default=64, help="--max-runs of serve/worker (default 64)")
    parser.add_argument("--concurrency", type=int, default=16, help="--concurrency of each runner (default 16)")
    parser.add_argument("--pgbench", type=float, default=10, help="seconds per pgbench figure; 0 skips (default 10)")
    parser.add_argument("--profile", type=float, default=0, help="py-spy record SECONDS on each process (pg-*)")
    parser.add_argument("--profile-cpu", action="store_true", help="with --profile: CPU time only, not waits")
    parser.add_argument(
        "--waits", action="store_true", help="sample pg_stat_activity during the load (wait events, lock waits)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folders (logs, profiles)")
    parser.add_argument("--append", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--rev", help="run opsdsl from an export of this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--summarize", nargs="+", type=Path, help="summarize py-spy raw profiles and exit")
    args = parser.parse_args(argv)
    if args.summarize:
        print("\n\n".join(summarize(path) for path in args.summarize))
        return 0
    rates = [float(r) for r in args.rates.split(",")]
    configs = args.configs.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown config {sorted(unknown)}")

    import pgserver

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the finally blocks stop every process and the PostgreSQL server

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started in the background (SIGINT ignored there)
    work = Path(tempfile.mkdtemp(prefix="opsdsl-scaleout-"))
    os.chmod(work, 0o755)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    target = multiprocessing.Process(target=target_main, args=(queue,), daemon=True)
    target.start()
    ctx: dict[str, Any] = {"work": work, "target_port": queue.get(timeout=30), "counter": 0, "target_pid": target.pid}
    results: list[dict] = []
    loads: list[float] = []
    commits: list[dict[str, float]] = []
    if args.rev:
        # Run opsdsl from an export of one commit: others' half-made edits in the tree cannot leak in.
        export = work / "source"
        export.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive.stdout, check=True)
        ctx["source"] = export
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", args.rev], capture_output=True, text=True
        ).stdout.strip()
    else:
        ctx["source"] = ROOT
        head = tree_state()
    try:
        with pgserver.temporary_server() as server:
            ctx["pg"] = server
            for round_number in range(args.rounds):
                if args.pgbench and any(c != "sqlite" for c in configs):
                    commits.append(commit_rate(server, args.pgbench))
                    print(f"commit rate: {commits[-1]}", file=sys.stderr, flush=True)
                for rate in rates:
                    order = configs if round_number % 2 == 0 else list(reversed(configs))
                    for config in order:
                        loads.append(os.getloadavg()[0])
                        print(
                            f"round {round_number + 1} {config} {rate:g}/s (load {loads[-1]:.1f}) ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        found = measure(config, rate, args, ctx)
                        results.append(found)
                        brief = {k: found.get(k) for k in ("accepted_s", "p50_ms", "p99_ms", "runs_min", "steps_s",
                                                           "backlog_at_end", "drain_s", "xids_per_run", "exit_codes", "runs_by_worker", "cpu_ms_per_run", "waits")}  # fmt: skip
                        print(f"  {json.dumps(brief, default=str)}", file=sys.stderr, flush=True)
    finally:
        target.terminate()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "commits": commits}, indent=1, default=str))
    if not args.rev:
        head += " → " + tree_state()
    text = table(results, commits, args, loads or [os.getloadavg()[0]], head)
    print(text)
    if args.append:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as out:
            out.write("\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
