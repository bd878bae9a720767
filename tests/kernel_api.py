"""A stand-in for the SQLx Kernel API (a real HTTP server on 127.0.0.1), and the few helpers
the runtime's end-to-end tests share to drive `opsdsl` in a subprocess.

It keeps a little state (a connection pool per cluster), records every request it gets
(method, path, headers, body, Idempotency-Key, when it arrived and when it was answered),
and can be told to misbehave per route: fail the first N calls, always answer some
status, or sleep before answering. Tests start it in their own process and point a pack
at it with `--param kernel_url=...`.

Endpoints (anything else answers 200 with a small JSON acknowledgement):

- `GET  /v1/pool?cluster=C`        the pool's state: healthy, generation, connections, p95_ms
- `POST /v1/pool/reconnect`        reconnects the pool (`{"cluster": C}`); applied once per Idempotency-Key
- `POST /v1/pool/restore`          undoes a reconnect (a compensation)
- `POST /v1/echo`, `GET /v1/echo`  answers with the request's headers and JSON body
- `POST /v1/fail`                  always 500

Any request may carry `?sleep=SECONDS`: the server waits that long before answering.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    """One request as the server saw it."""

    seq: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    started: float  # time.monotonic() when it arrived
    finished: float | None = None  # when the answer was sent (None: still in flight)
    status: int | None = None

    @property
    def key(self) -> str | None:
        return self.headers.get("idempotency-key")

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None


@dataclass
class Rule:
    """How the server treats one route: the first `fail_first` calls get `fail_status`; after
    that `status` (None: the endpoint's own), after sleeping `delay` seconds."""

    fail_first: int = 0
    fail_status: int = 503
    status: int | None = None
    delay: float = 0.0
    calls: int = 0


@dataclass
class Pool:
    healthy: bool = False
    generation: int = 0
    connections: int = 0
    p95_ms: int = 480


class KernelAPI:
    """The server, its state and its request log; use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.pools: dict[str, Pool] = {}
        self.applied: Counter[str] = Counter()  # mutations applied, per Idempotency-Key
        self._rules: dict[tuple[str, str], Rule] = {}
        self._default_delay = 0.0
        self._cond = threading.Condition()
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> KernelAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # ---- configuration -------------------------------------------------------------

    def rule(
        self,
        method: str,
        path: str,
        *,
        fail_first: int = 0,
        fail_status: int = 503,
        status: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Make `method path` misbehave (see Rule)."""
        with self._cond:
            self._rules[(method.upper(), path)] = Rule(fail_first, fail_status, status, delay)

    def slow_everything(self, delay: float) -> None:
        """Sleep `delay` seconds before answering any request without a rule of its own."""
        self._default_delay = delay

    def pool(self, cluster: str) -> Pool:
        with self._cond:
            return self.pools.setdefault(cluster, Pool())

    # ---- what was seen -------------------------------------------------------------

    def seen(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self._cond:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (path is None or r.path == path)
            ]

    def paths(self) -> list[str]:
        """`METHOD /path` of every request, in arrival order."""
        return [f"{r.method} {r.path}" for r in self.seen()]

    def keys(self) -> Counter[str]:
        """How many requests carried each Idempotency-Key."""
        return Counter(r.key for r in self.seen() if r.key)

    def wait_for(self, count: int, timeout: float = 10.0, *, answered: bool = False) -> bool:
        """Block until `count` requests have arrived (or, with `answered`, been answered)."""

        def enough() -> bool:
            if answered:
                return sum(1 for r in self.requests if r.finished is not None) >= count
            return len(self.requests) >= count

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    # ---- serving -------------------------------------------------------------------

    def _arrive(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._cond:
            request = Request(len(self.requests) + 1, method, parts.path, query, headers, body, time.monotonic())
            self.requests.append(request)
            self._cond.notify_all()
        return request

    def _answer(self, request: Request) -> tuple[int, Any]:
        with self._cond:
            rule = self._rules.get((request.method, request.path))
            if rule is not None:
                rule.calls += 1
            delay = rule.delay if rule is not None and rule.delay else self._default_delay
        if "sleep" in request.query:
            delay = float(request.query["sleep"])
        if delay:
            time.sleep(delay)
        if rule is not None and rule.calls <= rule.fail_first:
            return rule.fail_status, {"error": f"failing call {rule.calls} of {rule.fail_first} on purpose"}
        status, body = self._endpoint(request)
        if rule is not None and rule.status is not None:
            status = rule.status
        return status, body

    def _endpoint(self, request: Request) -> tuple[int, Any]:
        body = request.json() or {}
        cluster = request.query.get("cluster") or (body.get("cluster") if isinstance(body, dict) else None) or "c1"
        route = (request.method, request.path)
        if route == ("GET", "/v1/pool"):
            pool = self.pool(cluster)
            return 200, {"cluster": cluster, **pool.__dict__}
        if route == ("POST", "/v1/pool/reconnect"):
            pool = self.pool(cluster)
            with self._cond:
                if request.key is None or not self.applied[request.key]:
                    pool.healthy, pool.generation, pool.connections = True, pool.generation + 1, 20
                    pool.p95_ms = 120
                if request.key:
                    self.applied[request.key] += 1
            return 200, {"cluster": cluster, "reconnected": True, "generation": pool.generation}
        if route == ("POST", "/v1/pool/restore"):
            pool = self.pool(cluster)
            with self._cond:
                pool.healthy, pool.connections = False, 0
            return 200, {"cluster": cluster, "restored": True}
        if request.path == "/v1/echo":
            return 200, {"headers": request.headers, "json": request.json()}
        if request.path == "/v1/fail":
            return 500, {"error": "the kernel refuses"}
        return 200, {"ok": True, "method": request.method, "path": request.path, "seq": request.seq}

    def _finish(self, request: Request, status: int) -> None:
        with self._cond:
            request.finished, request.status = time.monotonic(), status
            self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client killed mid-request (the crash tests do that) is not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(api: KernelAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = api._arrive(self.command, self.path, headers, body)
            status, answer = api._answer(request)
            payload = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client went away (a killed run, a timed-out attempt)
                pass
            finally:
                api._finish(request, status)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


# ---- the CLI, as the runtime tests drive it --------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runtime"
HELPER = FIXTURES / "ops_helper.py"


@dataclass
class Result:
    """A finished `opsdsl` command."""

    code: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines of `--log-format json` on stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    @property
    def end(self) -> dict[str, Any]:
        """The view's closing summary: run, exit_code, pending_approvals, error, incident_folder."""
        ends = [e for e in self.events() if e.get("event") == "end"]
        assert ends, f"no end event (exit {self.code}):\n{self.stdout}\n{self.stderr}"
        return ends[-1]

    @property
    def run_id(self) -> str:
        return self.end["run"]


# The state backend a test runs on (tests/runtime/conftest.py), passed to the CLI it starts.
BACKEND_SETTINGS = ("OPSDSL_DATABASE", "OPSDSL_LEDGER_MODE")


def cli_env(secrets: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Our environment without any OPSDSL_ setting but the state backend the test chose
    ($OPSDSL_DATABASE, see tests/runtime/conftest.py), plus secrets as OPSDSL_SECRET_NAME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_") or k in BACKEND_SETTINGS}
    env.update({f"OPSDSL_SECRET_{name.upper()}": value for name, value in (secrets or {}).items()})
    env.update(extra)
    return env


def opsdsl(*args: Any, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 60) -> Result:
    """Run `python -m opsdsl ARGS` in a real subprocess and wait for it."""
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", *map(str, args)],
        cwd=ROOT,
        env=env or cli_env(),
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def param_args(**params: Any) -> list[str]:
    return [arg for name, value in params.items() for arg in ("--param", f"{name}={value}")]


def shell_params(api: KernelAPI) -> dict[str, str]:
    """The params of a pack whose shell steps run ops_helper.py with this Python."""
    return {"kernel_url": api.url, "python": sys.executable, "helper": str(HELPER)}


def state_db(state: Path, database: str | None = None) -> Any:
    """A connection to the state database the test's opsdsl processes use, in autocommit:
    the PostgreSQL database `database` or $OPSDSL_DATABASE names (with sqlite3's surface,
    see opsdsl.runtime.database), else `state`/state.db with sqlite3 itself."""
    url = database or os.environ.get("OPSDSL_DATABASE")
    if url:
        from opsdsl.runtime.database import PgConnection

        return PgConnection(url, application="opsdsl tests")
    return sqlite3.connect(state / "state.db", isolation_level=None)


def dump_state(state: Path) -> str:
    """Every row of every table of the state database as text (SQLite's .dump, or the same
    read table by table from PostgreSQL), to search for what must never be stored."""
    conn = state_db(state)
    try:
        if not os.environ.get("OPSDSL_DATABASE"):
            return "\n".join(conn.iterdump())
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        lines = []
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                lines.append(
                    repr([bytes(v).decode("utf-8", "replace") if isinstance(v, bytes | memoryview) else v for v in row])
                )
        return "\n".join(lines)
    finally:
        conn.close()


def drop_ledger_guards(conn: Any) -> None:
    """What an attacker with the database does first: drop the append-only triggers."""
    from opsdsl.runtime.database import is_postgres

    for name in ("ledger_no_update", "ledger_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}" + (" ON ledger" if is_postgres(conn) else ""))


def ledger_rows(state: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The ledger table as the database reads it: seq, ts, run, kind, data (parsed)."""
    conn = state_db(state)
    try:
        rows = conn.execute("SELECT seq, ts, run, kind, data FROM ledger ORDER BY seq").fetchall()
    finally:
        conn.close()
    out = [{"seq": r[0], "ts": r[1], "run": r[2], "kind": r[3], "data": json.loads(r[4])} for r in rows]
    return [r for r in out if kind is None or r["kind"] == kind]


def runs_json(state: Path) -> list[dict[str, Any]]:
    result = opsdsl("runs", "--format", "json", "--state-dir", state)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def run_status(state: Path, run_id: str) -> dict[str, Any]:
    return next(r for r in runs_json(state) if r["id"] == run_id)
