"""`opsdsl serve` as a real process: auth, statuses, metrics, storms, shutdown and crashes.

Each test starts the server on 127.0.0.1, port 0, with a fresh state directory and
tests/fixtures/serve/serve.yaml (its `python` and `helper` params pointed at this
interpreter and the fixture's helper), and talks to it with httpx.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "serve"
TOKEN = "test-token-5f2a9c"
SECRET = b"hmac-secret-8d1e"


def write_pack(folder: Path) -> Path:
    """The fixture pack, with its programs pointed at this interpreter and the helper script."""
    text = (FIXTURES / "serve.yaml").read_text(encoding="utf-8")
    text = text.replace("default: python3}", f"default: {json.dumps(sys.executable)}}}")
    text = text.replace("default: serve_helper.py}", f"default: {json.dumps(str(FIXTURES / 'serve_helper.py'))}}}")
    path = folder / "serve.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Server:
    """One `opsdsl serve` process and an httpx client for it."""

    def __init__(
        self,
        tmp: Path,
        *args: str,
        env: dict[str, str | None] | None = None,
        state: Path | None = None,
        python: tuple[str, ...] = ("-m", "opsdsl"),
        pack: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.python = python
        self.state = state or tmp / "state"
        self.args = args
        self.env = {**os.environ, "OPSDSL_TOKEN": TOKEN, **(env or {})}
        self.env = {k: v for k, v in self.env.items() if v is not None}
        self.pack = pack or write_pack(tmp)
        self.stderr_path = tmp / f"serve-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> Server:
        return self.spawn().listening()

    def spawn(self) -> Server:
        """Start the process without waiting for it to listen."""
        command = [sys.executable, *self.python, "serve", "--pack", str(self.pack), "--state-dir", str(self.state)]
        command += ["--host", "127.0.0.1", "--port", "0", *self.args]
        with open(self.stderr_path, "w", encoding="utf-8") as stderr:
            self.process = subprocess.Popen(
                command, cwd=self.tmp, env=self.env, stdout=subprocess.DEVNULL, stderr=stderr
            )
        return self

    def listening(self) -> Server:
        """Wait for the listening line; fails if the process exits first."""

        def listening() -> int | None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log())
            if found:
                return int(found.group(1))
            assert self.process is not None and self.process.poll() is None, f"serve exited:\n{self.log()}"
            return None

        self.port = wait_until(listening, 60, "the listening line")
        self.client = httpx.Client(base_url=self.url, timeout=30)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8") if self.stderr_path.exists() else ""

    def post(self, path: str, body: Any = None, token: str | None = TOKEN, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        return self.client.post(path, headers=headers, **kwargs)

    def metrics(self) -> str:
        response = self.client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.text
        return response.text

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a graceful stop: runs end or are interrupted
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if hasattr(self, "client"):
            self.client.close()

    # the state database, read-only ---------------------------------------------------------

    def query(self, sql: str, *args: Any) -> list[tuple]:
        with sqlite3.connect(f"file:{self.state / 'state.db'}?mode=ro", uri=True, timeout=10) as conn:
            return conn.execute(sql, args).fetchall()

    def event_ids(self) -> set[int]:
        return {row[0] for row in self.query("SELECT id FROM events")}

    def all_events_done(self) -> bool:
        return not self.query("SELECT 1 FROM events WHERE status != 'done'")

    def ledger(self, kind: str) -> list[dict]:
        return [json.loads(row[0]) for row in self.query("SELECT data FROM ledger WHERE kind = ? ORDER BY seq", kind)]

    def runs(self) -> list[dict]:
        """`opsdsl runs --format json`, as a user would read it."""
        command = [sys.executable, "-m", "opsdsl", "runs", "--format", "json", "--state-dir", str(self.state)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """start(*args, env=..., state=...) → a running Server (listen=False: only spawned);
    every one is stopped at the end."""
    servers: list[Server] = []

    def starter(*args: str, listen: bool = True, **kwargs: Any) -> Server:
        server = Server(tmp_path, *args, **kwargs)
        servers.append(server)
        return server.start() if listen else server.spawn()

    yield starter
    for server in servers:
        server.close()


def job(key: str) -> dict:
    return {"name": "job", "labels": {"key": key}}


def slow_job(seconds: float) -> dict:
    return {"name": "slow-job", "labels": {"seconds": str(seconds)}}


def alertmanager_body(*instances: str, status: str = "firing") -> dict:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="ServeDiskPressure"}',
        "status": status,
        "receiver": "opsdsl",
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": "ServeDiskPressure", "instance": instance, "severity": "warning"},
                "annotations": {"summary": f"disk almost full on {instance}"},
                "startsAt": "2026-11-27T08:00:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": hashlib.sha256(instance.encode()).hexdigest()[:16],
            }
            for instance in instances
        ],
    }


def succeeded(server: Server, count: int) -> Callable[[], list[dict] | None]:
    def check() -> list[dict] | None:
        runs = [r for r in server.runs() if r["status"] == "succeeded"]
        return runs if len(runs) >= count else None

    return check


# ---- accepted events run -------------------------------------------------------------------


def test_an_accepted_event_is_stored_and_its_run_finishes(start):
    server = start()
    response = server.post("/v1/events", job("k1"))
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1 and len(body["ids"]) == 1
    assert server.query("SELECT source FROM events WHERE id = ?", body["ids"][0]) == [("http",)]
    (run,) = wait_until(succeeded(server, 1), what="the run to succeed")
    assert run["pack"] == "serve-fixture" and run["playbook"] == "job"
    (fired,) = server.ledger("trigger.fired")
    assert fired["hook"] == "onJob" and fired["event_id"] == body["ids"][0] and fired["run"] == run["id"]
    steps = server.query("SELECT step_id, status FROM steps WHERE run_id = ? ORDER BY step_id", run["id"])
    assert steps == [("check", "succeeded"), ("record", "succeeded")]


def test_an_alertmanager_webhook_gives_one_event_per_alert(start):
    server = start()
    response = server.post("/v1/alertmanager", alertmanager_body("web-1", "web-2"))
    assert response.status_code == 202 and response.json()["accepted"] == 2
    runs = wait_until(succeeded(server, 2), what="two runs")
    assert {r["playbook"] for r in runs} == {"triage"}
    stored = [json.loads(row[0]) for row in server.query("SELECT body FROM events WHERE source = 'alertmanager'")]
    assert sorted(e["labels"]["instance"] for e in stored) == ["web-1", "web-2"]
    assert all(e["kind"] == "alert" and e["receiver"] == "opsdsl" for e in stored)


# ---- refusals --------------------------------------------------------------------------------


def test_a_missing_or_wrong_token_is_401_with_a_bearer_challenge(start):
    server = start()
    missing = server.post("/v1/events", job("a"), token=None)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = server.post("/v1/events", job("a"), token=TOKEN + "x")
    assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = server.post("/v1/events", job("a"), token=None, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401
    assert server.client.get("/metrics").status_code == 401
    assert server.query("SELECT COUNT(*) FROM events") == [(0,)]
    assert TOKEN not in server.log()
    assert server.log().count("refused POST /v1/events from 127.0.0.1: 401") == 3


def test_bad_json_and_bad_shapes_are_400_with_a_message(start):
    server = start()

    def raw(path: str, content: bytes) -> httpx.Response:
        return server.post(path, content=content, headers={"Content-Type": "application/json"})

    assert raw("/v1/events", b'{"name": "job",').status_code == 400
    assert "not JSON" in raw("/v1/events", b"{nope}").json()["error"]
    assert raw("/v1/events", b"\xff\xfe{}").status_code == 400  # not UTF-8
    assert raw("/v1/events", b'{"value": NaN}').status_code == 400
    assert raw("/v1/events", b'{"value": 1e999}').status_code == 400
    assert raw("/v1/events", b"42").status_code == 400
    assert raw("/v1/events", b'[{"name": "job"}, 3]').status_code == 400
    # events the ledger could not record are refused at the door, not in the worker
    too_big = raw("/v1/events", b'{"name": "x", "n": 123456789012345678901234567890}')
    assert too_big.status_code == 400 and too_big.json()["error"].startswith("event 0:")
    assert raw("/v1/events", b'{"name": "x", "s": "\\ud800"}').status_code == 400
    assert raw("/v1/events", b'{"a": ' * 100 + b"1" + b"}" * 100).status_code == 400
    no_alerts = server.post("/v1/alertmanager", {"version": "4", "status": "firing"})
    assert no_alerts.status_code == 400 and "`alerts`" in no_alerts.json()["error"]
    assert server.post("/v1/alertmanager", {"alerts": []}).status_code == 400
    assert server.post("/v1/alertmanager", {"version": "3", "alerts": []}).status_code == 400
    assert server.post("/v1/alertmanager", job("a")).status_code == 400
    assert server.query("SELECT COUNT(*) FROM events") == [(0,)]
    # free-form events: unknown fields are fine
    assert server.post("/v1/events", {**job("b"), "anything": {"else": [1, 2]}}).status_code == 202
    assert server.post("/v1/events", [job("c"), job("d")]).json()["accepted"] == 2


def test_a_body_that_is_not_json_is_415(start):
    server = start()
    text = server.post("/v1/events", content=b"{}", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    assert server.post("/v1/events", content=b"{}").status_code == 415  # no content type
    latin = server.post("/v1/events", content=b"{}", headers={"Content-Type": "application/json; charset=latin-1"})
    assert latin.status_code == 415
    gzipped = server.post("/v1/events", job("a"), headers={"Content-Encoding": "gzip"})
    assert gzipped.status_code == 415
    utf8 = server.post("/v1/events", job("a"), headers={"Content-Type": "application/json; charset=utf-8"})
    assert utf8.status_code == 202


def test_a_body_over_the_limit_is_413_even_without_a_length(start):
    server = start("--max-body", "1024")
    event = job("a")
    event["pad"] = ""
    event["pad"] = "x" * (1024 - len(json.dumps(event)))
    exact = json.dumps(event).encode()
    assert len(exact) == 1024
    assert server.post("/v1/events", content=exact, headers={"Content-Type": "application/json"}).status_code == 202
    over = exact[:-1] + b" }"
    assert len(over) == 1025
    response = server.post("/v1/events", content=over, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    # chunked, no Content-Length: refused while reading
    chunked = server.post(
        "/v1/events", content=iter([over[:600], over[600:]]), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413
    # a Content-Length over the limit is refused before reading any of the body
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {1 << 40}\r\n\r\n{{"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(head.encode())
        assert connection.recv(4096).startswith(b"HTTP/1.1 413 ")
    assert server.query("SELECT COUNT(*) FROM events") == [(1,)]


def test_a_full_backlog_is_429_with_retry_after(start):
    server = start("--queue-size", "1", "--max-runs", "1", "--drain-timeout", "1")
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: server.post("/v1/events", slow_job(5)), range(8)))
    statuses = [r.status_code for r in responses]
    assert 202 in statuses and 429 in statuses, statuses
    assert set(statuses) <= {202, 429}
    busy = next(r for r in responses if r.status_code == 429)
    assert int(busy.headers["Retry-After"]) >= 1
    accepted = {i for r in responses if r.status_code == 202 for i in r.json()["ids"]}
    assert accepted == server.event_ids()
    assert f'opsdsl_events_rejected_total{{status="429"}} {statuses.count(429)}' in server.metrics()
    # Alertmanager gives up on a 4xx but retries a 5xx: it is told 503
    alertmanager = server.post("/v1/alertmanager", alertmanager_body("web-9"))
    assert alertmanager.status_code == 503 and alertmanager.headers["Retry-After"] == "1"
    # more events in one request than the queue holds could never fit: 413, not 429
    assert server.post("/v1/events", [slow_job(1), slow_job(1)]).status_code == 413


def test_unknown_paths_are_404_and_wrong_methods_405(start):
    server = start()
    assert server.client.get("/v2/events").status_code == 404
    wrong = server.client.get("/v1/events")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    assert server.client.post("/healthz").status_code == 405


def test_healthz_needs_no_auth(start):
    server = start()
    response = server.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "queue": 0, "runs_live": 0}


# ---- HMAC signatures -------------------------------------------------------------------------


def signed(
    body: bytes, timestamp: int | None = None, secret: bytes = SECRET, path: str = "/v1/events", method: str = "POST"
) -> dict[str, str]:
    """The headers of a v2 signature, computed as docs/serve.md tells a sender to."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    message = f"opsdsl-v2\n{method}\n{path}\n{stamp}\n".encode() + body
    digest = hmac.new(secret, message, hashlib.sha256).hexdigest()
    return {"X-Opsdsl-Timestamp": stamp, "X-Opsdsl-Signature": f"v2={digest}", "Content-Type": "application/json"}


def test_hmac_signed_requests_are_accepted_once_and_fresh_only(start, tmp_path):
    secret_file = tmp_path / "hmac.secret"
    secret_file.write_bytes(SECRET + b"\n")
    server = start("--hmac-secret-file", str(secret_file), "--metrics-no-auth", env={"OPSDSL_TOKEN": None})
    body = json.dumps(job("signed")).encode()
    headers = signed(body)
    ok = server.post("/v1/events", content=body, token=None, headers=headers)
    assert ok.status_code == 202
    replay = server.post("/v1/events", content=body, token=None, headers=headers)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    other = json.dumps(job("other")).encode()
    bad = server.post("/v1/events", content=other, token=None, headers=signed(other, secret=b"wrong"))
    assert bad.status_code == 401 and "WWW-Authenticate" in bad.headers
    tampered = server.post("/v1/events", content=other, token=None, headers=signed(body))
    assert tampered.status_code == 401
    stale = server.post("/v1/events", content=other, token=None, headers=signed(other, int(time.time()) - 301))
    assert stale.status_code == 401 and "300 s" in stale.json()["error"]
    future = server.post("/v1/events", content=other, token=None, headers=signed(other, int(time.time()) + 301))
    assert future.status_code == 401
    unsigned = server.post("/v1/events", content=other, token=None, headers={"Content-Type": "application/json"})
    assert unsigned.status_code == 401
    assert server.post("/v1/events", content=other, token=None, headers=signed(other)).status_code == 202
    assert len(server.event_ids()) == 2
    assert metric(server.client.get("/metrics").text, 'opsdsl_events_rejected_total{status="401"}') == 6
    assert SECRET.decode() not in server.log()


# ---- metrics ---------------------------------------------------------------------------------


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in metrics:\n{text}"
    return float(found.group(1))


def test_metrics_count_events_firings_suppressions_and_runs(start):
    server = start()
    assert server.post("/v1/events", job("same")).status_code == 202
    assert server.post("/v1/events", job("same")).status_code == 202  # same dedupe key: suppressed
    assert server.post("/v1/events", {"name": "unrelated"}).status_code == 202
    server.post("/v1/events", job("x"), token=None)
    wait_until(succeeded(server, 1), what="the run")
    wait_until(server.all_events_done, what="every event handled")
    text = server.metrics()
    assert metric(text, 'opsdsl_events_received_total{source="http"}') == 3
    assert metric(text, 'opsdsl_triggers_fired_total{pack="serve-fixture",trigger="job"}') == 2
    assert metric(text, 'opsdsl_hooks_suppressed_total{hook="onJob",reason="cooldown"}') == 1
    assert metric(text, 'opsdsl_runs_started_total{hook="onJob"}') == 1
    assert metric(text, 'opsdsl_runs_finished_total{status="succeeded"}') == 1
    assert metric(text, 'opsdsl_events_rejected_total{status="401"}') == 1
    assert metric(text, "opsdsl_intake_seconds_count") == 3
    assert "# TYPE opsdsl_queue_depth gauge" in text and "# TYPE opsdsl_runs_live gauge" in text
    assert server.client.get("/metrics").status_code == 401


def test_metrics_can_be_open(start):
    server = start("--metrics-no-auth")
    assert server.client.get("/metrics").status_code == 200
    assert server.post("/v1/events", job("a"), token=None).status_code == 401  # the events still need the token


# ---- storms, shutdown, crashes ---------------------------------------------------------------


def test_a_storm_for_one_dedupe_key_starts_exactly_one_run(start):
    server = start()
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: server.post("/v1/events", job("storm")), range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    ids = {i for r in responses for i in r.json()["ids"]}
    assert len(ids) == 200 and ids <= server.event_ids()
    wait_until(server.all_events_done, 60, "every event handled")
    assert [r["hook"] for r in server.ledger("trigger.fired")] == ["onJob"]
    suppressed = server.ledger("hook.suppressed")
    assert len(suppressed) == 199 and {s["dedupe_key"] for s in suppressed} == {"storm"}
    assert {s["event_id"] for s in suppressed} | {server.ledger("trigger.fired")[0]["event_id"]} == ids
    wait_until(succeeded(server, 1), what="the one run")
    assert len(server.runs()) == 1
    assert server.client.get("/healthz").status_code == 200


def test_sigterm_refuses_new_events_drains_the_rest_and_exits_0(start):
    server = start()
    ids = [server.post("/v1/events", slow_job(1.5)).json()["ids"][0] for _ in range(3)]
    ids += server.post("/v1/events", [job(f"k{n}") for n in range(5)]).json()["ids"]
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "refusing new events" in server.log(), 10, "the shutdown to begin")
    late = server.post("/v1/events", job("late"))
    assert late.status_code == 503 and "Retry-After" in late.headers
    assert server.client.get("/healthz").status_code == 503
    assert server.process.wait(timeout=60) == 0
    assert server.all_events_done() and set(ids) == server.event_ids()
    runs = server.runs()
    assert len(runs) == 8 and {r["status"] for r in runs} == {"succeeded"}
    assert "stopped" in server.log()


def test_a_drain_timeout_leaves_runs_interrupted_and_the_next_start_continues_them(start):
    server = start("--drain-timeout", "1")
    assert server.post("/v1/events", slow_job(30)).status_code == 202
    wait_until(
        lambda: server.query("SELECT 1 FROM steps WHERE step_id = 'sleep' AND status = 'running'"), what="the step"
    )
    began = time.monotonic()
    assert server.stop(timeout=30) == 0
    assert time.monotonic() - began < 15
    (run,) = server.runs()
    assert run["status"] == "interrupted"
    again = start("--drain-timeout", "1", state=server.state)
    wait_until(
        lambda: again.query("SELECT 1 FROM ledger WHERE kind = 'run.started' AND data LIKE '%\"recover\"%'"),
        what="the run continued with no `opsdsl resume`",
    )
    assert "continuing 1 runs an earlier process left unfinished" in again.log()


def post_until_killed(server: Server, enough: int) -> list[int]:
    """Two threads post an alert storm (one dedupe key, 100 events a request) until `enough`
    events are acknowledged; then the server is killed with SIGKILL. The acknowledged ids."""
    accepted: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while not stop.is_set():
                try:
                    response = client.post("/v1/events", json=[job("crash") for _ in range(100)])
                except httpx.HTTPError:
                    continue  # refused connections once the server is gone
                if response.status_code == 202:
                    accepted.extend(response.json()["ids"])

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(accepted) >= enough, 60, f"{enough} acknowledged events")
        server.process.kill()
        server.process.wait(timeout=10)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    return accepted


@pytest.mark.kills_runs
def test_kill_9_loses_no_accepted_event_and_a_restart_handles_the_rest(start, tmp_path):
    state = tmp_path / "state"
    pending = 0
    for _ in range(5):  # until a kill lands while the worker is behind (nearly always the first)
        server = start(state=state)
        accepted = post_until_killed(server, 2000)
        stored = server.event_ids()
        assert set(accepted) <= stored, f"{len(set(accepted) - stored)} acknowledged events lost"
        pending = server.query("SELECT COUNT(*) FROM events WHERE status = 'accepted'")[0][0]
        if pending:
            break
    assert pending > 0, "no kill left events unhandled; the replay was not exercised"

    again = start(state=state)
    assert f"replaying {pending} events" in again.log()
    wait_until(again.all_events_done, 120, "the replayed events to be handled")
    assert again.client.get("/healthz").status_code == 200


# An engine whose worker fails on events named "boom" (as a run-id collision or a full disk would).
BROKEN_WORKER = """
import sys
from opsdsl.runtime import service

handle = service.Service.handle

async def broken(self, event_id, received, event):
    if event.get("name") == "boom":
        raise RuntimeError("boom")
    return await handle(self, event_id, received, event)

service.Service.handle = broken
from opsdsl.cli.main import main
main(sys.argv[1:])
"""


def test_an_event_that_breaks_the_engine_is_recorded_and_the_others_go_on(start):
    server = start(python=("-c", BROKEN_WORKER))
    boom = server.post("/v1/events", {"name": "boom"}).json()["ids"]
    assert server.post("/v1/events", job("after")).status_code == 202
    wait_until(server.all_events_done, what="both events handled")
    assert server.process.poll() is None  # still serving
    (note,) = server.query("SELECT note FROM events WHERE id = ?", boom[0])[0]
    assert note == "error: RuntimeError: boom"
    errors = server.query("SELECT data FROM ledger WHERE kind = 'event.error'")
    assert errors and json.loads(errors[0][0])["event_id"] == boom[0]


# ---- starting ------------------------------------------------------------------------------


def test_no_auth_configured_is_refused_unless_insecure(tmp_path, start):
    pack = write_pack(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "OPSDSL_TOKEN"}
    command = [sys.executable, "-m", "opsdsl", "serve", "--pack", str(pack), "--state-dir", str(tmp_path / "s")]
    refused = subprocess.run([*command, "--port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no authentication configured" in refused.stderr
    server = start("--insecure-no-auth", env={"OPSDSL_TOKEN": None})
    assert "--insecure-no-auth" in server.log()
    assert server.post("/v1/events", job("open"), token=None).status_code == 202
    assert server.client.get("/metrics").status_code == 200
    both = subprocess.run(
        [*command, "--insecure-no-auth"], env={**env, "OPSDSL_TOKEN": TOKEN}, capture_output=True, text=True, timeout=60
    )
    assert both.returncode == 2 and "choose one" in both.stderr


def test_a_port_in_use_is_exit_1(start, tmp_path):
    server = start()
    command = [sys.executable, "-m", "opsdsl", "serve", "--pack", str(server.pack), "--state-dir", str(tmp_path / "b")]
    taken = subprocess.run(
        [*command, "--port", str(server.port)], env=server.env, capture_output=True, text=True, timeout=60
    )
    assert taken.returncode == 1 and f"cannot listen on 127.0.0.1:{server.port}" in taken.stderr


# ---- retries: Idempotency-Key ------------------------------------------------------------------


def test_a_retried_request_with_its_idempotency_key_stores_and_runs_nothing_twice(start):
    """A client whose answer was lost sends the request again with the same key (to this
    replica or another on the same database): it gets the first request's ids back."""
    server = start()
    keyed = {"Idempotency-Key": "am-retry-1"}
    first = server.post("/v1/alertmanager", alertmanager_body("web-1", "web-2"), headers=keyed)
    again = server.post("/v1/alertmanager", alertmanager_body("web-1", "web-2"), headers=keyed)
    assert first.status_code == again.status_code == 202
    assert again.json()["ids"] == first.json()["ids"]
    assert server.query("SELECT COUNT(*) FROM events") == [(2,)]
    wait_until(succeeded(server, 2), what="two runs")
    time.sleep(0.5)
    assert len(server.query("SELECT id FROM runs")) == 2
    # The same key on the other intake path is another request; without a key, every POST counts.
    other = server.post("/v1/events", job("k1"), headers={"Idempotency-Key": "am-retry-1"})
    assert other.status_code == 202 and other.json()["ids"][0] not in first.json()["ids"]


@pytest.mark.parametrize("key", ["", "x" * 201, "tab\there", "two words"])
def test_a_malformed_idempotency_key_is_400(start, key):
    server = start()
    response = server.post("/v1/events", job("k1"), headers={"Idempotency-Key": key})
    assert response.status_code == 400 and "Idempotency-Key" in response.text
    assert server.query("SELECT COUNT(*) FROM events") == [(0,)]


def test_a_key_reused_for_other_events_is_422_and_spoils_no_other_request(start):
    server = start()
    assert server.post("/v1/events", job("k1"), headers={"Idempotency-Key": "k"}).status_code == 202
    reused = server.post("/v1/events", job("k2"), headers={"Idempotency-Key": "k"})
    assert reused.status_code == 422 and "already used" in reused.text
    assert server.post("/v1/events", job("k3")).status_code == 202
    assert server.query("SELECT COUNT(*) FROM events") == [(2,)]
