"""`opsdsl serve` owns its runs: it continues them when people act, fires their timers by
itself, and recovers what a killed server left — with nobody typing `opsdsl resume`.

Real processes throughout: the server (tests/serve/test_serve.py's harness), the CLI that
records approvals and decisions on the same state directory, and the Kernel API stand-in
(tests/kernel_api.py) that counts the calls per Idempotency-Key. Time is the test's to
move: the server runs under libfaketime (Debian's `faketime` package) with an offset file
the test rewrites, so a 30-second wait and a one-minute deadline pass when the test says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kernel_api import KernelAPI
from test_serve import Server, wait_until

PACK = Path(__file__).resolve().parents[1] / "fixtures" / "serve" / "owned" / "owned.yaml"
FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

needs_faketime = pytest.mark.skipif(
    not FAKETIME.exists(), reason="libfaketime is not installed (Debian package `faketime`; .ci/run installs it)"
)


class Clock:
    """The server's clock: real time plus an offset the test sets (libfaketime's file)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "faketime"
        self.set(0)

    def set(self, seconds: float) -> None:
        self.path.write_text(f"{seconds:+.0f}\n", encoding="utf-8")

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(FAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
        }


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path, api: KernelAPI) -> Iterator[Callable[..., Server]]:
    """serve(state=None, env=None) → a running `opsdsl serve` of the pack above; all stopped at the end."""
    servers: list[Server] = []

    def starter(*args: str, state: Path | None = None, env: dict[str, str] | None = None) -> Server:
        server = Server(tmp_path, "--param", f"kernel_url={api.url}", *args, pack=PACK, state=state, env=env)
        servers.append(server)
        return server.start()

    yield starter
    for server in servers:
        server.close()


def fire(server: Server, name: str) -> str:
    """Post one event; the id of the run it started."""
    response = server.post("/v1/events", {"name": name})
    assert response.status_code == 202, response.text
    (event,) = response.json()["ids"]
    found = wait_until(lambda: server.query("SELECT id FROM runs WHERE event_id = ?", event), what="the run")
    return found[0][0]


def status(server: Server, run: str) -> str:
    return server.query("SELECT status FROM runs WHERE id = ?", run)[0][0]


def entries(server: Server, run: str, kind: str) -> list[dict[str, Any]]:
    rows = server.query("SELECT ts, data FROM ledger WHERE run = ? AND kind = ? ORDER BY seq", run, kind)
    return [{"ts": ts, **json.loads(data)} for ts, data in rows]


def until_status(server: Server, run: str, *wanted: str, timeout: float = 30) -> str:
    return wait_until(lambda: status(server, run) in wanted and status(server, run), timeout, f"run {run} {wanted}")


def stays(server: Server, run: str, wanted: str, seconds: float = 1.5) -> None:
    """The run keeps `wanted` for a while (the server had every chance to act too early)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert status(server, run) == wanted
        time.sleep(0.1)


def cli(server: Server, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "opsdsl", *args, "--state-dir", str(server.state)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def kill(server: Server) -> None:
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)


# ---- people ------------------------------------------------------------------------------


def test_two_approvals_recorded_from_the_cli_continue_the_run_in_the_server(serve, api):
    server = serve()
    run = fire(server, "needs-two")
    until_status(server, run, "paused")
    first = cli(server, "approve", run, "agree", "--by", "alice")
    assert first.returncode == 0, first.stderr
    stays(server, run, "paused")  # one of two: still waiting
    assert api.seen("POST") == []
    second = cli(server, "approve", run, "agree", "--by", "bob", "--comment", "checked the dashboards")
    assert second.returncode == 0, second.stderr
    assert "`opsdsl serve` continues the run now" in second.stdout
    until_status(server, run, "succeeded")
    assert [r.path for r in api.seen("POST")] == ["/v1/migrations/rollback"]
    started = entries(server, run, "run.started")
    assert [s["reason"] for s in started] == ["start", "approval"]  # no `opsdsl resume` anywhere


def test_the_log_has_one_json_line_per_accepted_event_and_run_milestone(serve):
    server = serve("--log-format", "json")
    run = fire(server, "needs-two")
    until_status(server, run, "paused")
    for person in ("alice", "bob"):
        assert cli(server, "approve", run, "agree", "--by", person).returncode == 0
    until_status(server, run, "succeeded")
    server.stop(timeout=30)
    lines = [json.loads(line) for line in server.log().splitlines()]
    milestones = [(line["event"], line.get("run")) for line in lines if line["logger"] == "opsdsl.runs"]
    assert milestones[0][0] == "event.accepted"
    assert [event for event, _ in milestones[1:]] == [
        "run.created", "run.started", "run.paused", "approval.recorded", "approval.recorded",
        "run.started", "run.finished",
    ]  # fmt: skip
    assert {r for _, r in milestones[1:]} == {run}
    votes = [line for line in lines if line.get("event") == "approval.recorded"]
    assert [(v["by"], v["via"], v["decision"]) for v in votes] == [
        ("local:alice", "local", "approve"),
        ("local:bob", "local", "approve"),
    ]
    assert lines[-1]["message"] == "stopped"
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)


def test_the_cli_refuses_to_resume_a_run_the_server_owns(serve):
    server = serve()
    run = fire(server, "needs-two")
    until_status(server, run, "paused")
    refused = cli(server, "resume", run)
    assert refused.returncode == 2
    assert "owned by `opsdsl serve`" in refused.stderr and "opsdsl approve" in refused.stderr
    assert status(server, run) == "paused"


def test_cancelling_a_paused_run_from_the_cli_ends_it_cancelled_in_the_server(serve, api):
    server = serve()
    run = fire(server, "needs-two")
    until_status(server, run, "paused")
    cancelled = cli(server, "cancel", run, "--by", "carol", "--reason", "false alarm")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "the run" in cancelled.stdout and "serve" in cancelled.stdout
    until_status(server, run, "cancelled")
    (asked,) = entries(server, run, "run.cancel_requested")
    assert (asked["by"], asked["via"], asked["reason"]) == ("local:carol", "local", "false alarm")
    (finished,) = entries(server, run, "run.finished")
    assert finished["status"] == "cancelled" and finished["error"] == "cancelled by local:carol"
    assert api.seen("POST") == []  # the step behind the approval never ran
    again = cli(server, "cancel", run, "--by", "carol")
    assert again.returncode == 2 and "already cancelled" in again.stderr


# ---- the clock ---------------------------------------------------------------------------


@needs_faketime
def test_a_wait_fires_on_time_by_itself(serve, api, tmp_path):
    clock = Clock(tmp_path)
    server = serve(env=clock.env())
    run = fire(server, "settle")
    until_status(server, run, "paused")  # parked: no task holds it
    (intent,) = entries(server, run, "step.intent")
    clock.set(28)
    stays(server, run, "paused")
    assert api.seen("GET") == []
    clock.set(31)
    until_status(server, run, "succeeded")
    waited = next(e for e in entries(server, run, "step.succeeded") if e["step"] == "settle")
    assert 30 <= waited["ts"] - intent["ts"] < 34
    assert [r.path for r in api.seen("GET")] == ["/v1/pool"]


@needs_faketime
def test_a_wait_due_while_the_server_was_killed_fires_at_the_next_start(serve, api, tmp_path):
    clock = Clock(tmp_path)
    server = serve(env=clock.env())
    run = fire(server, "settle")
    until_status(server, run, "paused")
    kill(server)
    clock.set(45)  # the wait ends while no server runs
    again = serve(state=server.state, env=clock.env())
    until_status(again, run, "succeeded")
    assert [r.path for r in api.seen("GET")] == ["/v1/pool"]
    assert [s["reason"] for s in entries(again, run, "run.started")] == ["start", "timer"]


@needs_faketime
def test_an_approval_deadline_with_on_timeout_approve_fires_on_time(serve, api, tmp_path):
    clock = Clock(tmp_path)
    server = serve(env=clock.env())
    run = fire(server, "quiet-window")
    until_status(server, run, "paused")
    (asked,) = entries(server, run, "approval.requested")
    clock.set(55)
    stays(server, run, "paused")
    clock.set(62)
    until_status(server, run, "succeeded")
    (expired,) = entries(server, run, "approval.timed_out")
    assert expired["outcome"] == "approve"
    assert 60 <= expired["ts"] - asked["ts"] < 65
    assert [r.path for r in api.seen("POST")] == ["/v1/caches/warm"]


@needs_faketime
def test_an_approval_deadline_passed_while_the_server_was_killed_fires_at_start(serve, api, tmp_path):
    clock = Clock(tmp_path)
    server = serve(env=clock.env())
    run = fire(server, "quiet-window")
    until_status(server, run, "paused")
    kill(server)
    clock.set(120)
    again = serve(state=server.state, env=clock.env())
    until_status(again, run, "succeeded")
    (expired,) = entries(again, run, "approval.timed_out")
    assert expired["outcome"] == "approve"
    assert [r.path for r in api.seen("POST")] == ["/v1/caches/warm"]


# ---- crashes -----------------------------------------------------------------------------


@pytest.mark.kills_runs
def test_a_server_killed_mid_step_reruns_an_idempotent_step_with_its_key_at_start(serve, api):
    server = serve()
    run = fire(server, "reconnect")
    wait_until(lambda: api.seen("POST"), what="the reconnect to arrive")
    kill(server)  # the API is still answering the first call
    again = serve(state=server.state)
    until_status(again, run, "succeeded", timeout=60)
    calls = api.seen("POST")
    assert len(calls) == 2 and {c.key for c in calls} == {f"{run}:reconnect"}
    assert api.pools["eu1"].generation == 1  # applied once: the second call was a replay
    (recovered,) = [s for s in entries(again, run, "run.started") if s["reason"] == "recover"]
    assert recovered["rerun"] == ["reconnect"] and recovered["in_doubt"] == []


@pytest.mark.kills_runs
def test_a_server_killed_mid_step_puts_a_non_idempotent_step_in_doubt_and_a_decision_continues_it(serve, api):
    server = serve()
    run = fire(server, "freeze")
    wait_until(lambda: api.seen("POST"), what="the freeze to arrive")
    kill(server)
    again = serve(state=server.state)
    until_status(again, run, "paused")
    assert entries(again, run, "step.in_doubt")[0]["step"] == "freeze"
    decided = cli(again, "decide", run, "freeze", "--as", "succeeded", "--by", "dana")
    assert decided.returncode == 0, decided.stderr
    until_status(again, run, "succeeded")
    paths = [r.path for r in api.seen("POST")]
    assert paths == ["/v1/writes/freeze", "/v1/echo"]  # the freeze was never sent twice


# ---- signals -----------------------------------------------------------------------------


def test_sighup_stops_the_server_as_sigterm_does(serve):
    server = serve()
    assert server.process is not None
    server.process.send_signal(signal.SIGHUP)
    assert server.process.wait(timeout=30) == 0
    assert "SIGHUP: refusing new events, draining" in server.log()


def test_a_closed_stdout_interrupts_a_cli_run_and_leaves_it_resumable(tmp_path, api):
    """`opsdsl run … | head -1`: the reader goes away; the run must not stay `running`."""
    state = tmp_path / "state"
    command = [
        sys.executable, "-m", "opsdsl", "run", "--pack", str(PACK), "--playbook", "settle",
        "--state-dir", str(state), "--log-format", "json", "--param", f"kernel_url={api.url}",
    ]  # fmt: skip
    reader, writer = os.pipe()
    process = subprocess.Popen(command, stdout=writer, stderr=subprocess.PIPE)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        pipe.readline()  # the first line, then the reader is gone
    assert process.wait(timeout=60) == 130  # interrupted, as on SIGTERM
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", "runs", "--format", "json", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (row,) = json.loads(done.stdout)
    assert row["status"] == "interrupted"


def test_sighup_interrupts_a_cli_run_and_leaves_it_resumable(tmp_path, api):
    state = tmp_path / "state"
    command = [
        sys.executable, "-m", "opsdsl", "run", "--pack", str(PACK), "--playbook", "settle",
        "--state-dir", str(state), "--log-format", "quiet", "--param", f"kernel_url={api.url}",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    database = state / "state.db"

    def waiting() -> bool:
        import sqlite3

        if not database.exists():
            return False
        try:
            with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as conn:
                query = "SELECT 1 FROM steps WHERE step_id = 'settle' AND status = 'waiting'"
                return bool(conn.execute(query).fetchall())
        except sqlite3.OperationalError:  # the tables are not there yet
            return False

    wait_until(waiting, 60, "the wait step")
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=30) == 130
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", "runs", "--format", "json", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    (row,) = json.loads(done.stdout)
    assert row["status"] == "interrupted"
