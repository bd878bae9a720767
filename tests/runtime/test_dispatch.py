"""Runner pools end to end (issue 16): steps with `runner: edge` run in an `opsdsl runner
--pool edge` subprocess, never in the worker (`opsdsl run`), against the loopback Kernel
API, on both state backends.

What must hold: the run completes with the runner's outputs; a step without a runner for
its pool waits, and the run's timeout applies; a runner killed between its side effect and
its result has its idempotent step re-sent with the same key (applied once), its
non-idempotent step put in doubt, re-sent only when a person decides `retry`; a runner
whose lease was taken has its late result refused; a worker that crashes while its
dispatch is outstanding waits on it after a restart rather than sending it again; and
the secret, which only the runner knows, is in no column of the dispatch table, nor in
the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_api import FIXTURES, ROOT, KernelAPI, cli_env, ledger_rows, opsdsl, param_args, shell_params, state_db

PACK = FIXTURES / "dispatch.yaml"
SECRET = "edge-s3cret-Zq7Kx9"
LEASE = "2s"


class Processes:
    """The test's subprocesses (runners, workers), killed at its end whatever happened."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, *args: object, name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = self.tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "opsdsl", *map(str, args)],
            cwd=ROOT,
            env=env or cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=open(log, "w"),  # noqa: SIM115  (closed with the process)
            stderr=subprocess.STDOUT,
        )
        self.started.append((process, log))
        return process

    def runner(self, state: Path, name: str) -> subprocess.Popen:
        env = cli_env(secrets={"edge_token": SECRET})
        return self.start(
            "runner", "--pool", "edge", "--state-dir", state, "--id", name, "--lease", LEASE, name=name, env=env
        )

    def worker(self, state: Path, api: KernelAPI, playbook: str, **params: str) -> subprocess.Popen:
        return self.start(
            "run",
            "--pack",
            PACK,
            "--playbook",
            playbook,
            "--state-dir",
            state,
            "--log-format",
            "json",
            *param_args(**{**shell_params(api), **params}),
            name=f"worker-{playbook}",
        )

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def close(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            if process.stdout:
                process.stdout.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


def dispatch_rows(state: Path) -> list[dict]:
    conn = state_db(state)
    try:
        cursor = conn.execute("SELECT * FROM dispatch ORDER BY id")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()


def finished(process: subprocess.Popen, timeout: float = 40) -> int:
    return process.wait(timeout)


def end_of(procs: Processes, name: str) -> dict:
    events = [json.loads(line) for line in procs.log(name).splitlines() if line.startswith("{")]
    return next(e for e in reversed(events) if e.get("event") == "end")


def test_runner_executes_the_pool_steps_and_the_secret_stays_there(tmp_path, procs, api):
    state = tmp_path / "state"
    procs.runner(state, "edge-1")
    worker = procs.worker(state, api, "remote")
    assert finished(worker) == 0, procs.log("worker-remote") + procs.log("edge-1")
    run_id = end_of(procs, "worker-remote")["run"]

    # The runner resolved the secret: the Kernel API got it, with the step's key.
    echo = api.seen("POST", "/v1/echo")
    assert len(echo) == 1
    assert echo[0].headers["authorization"] == f"Bearer {SECRET}"
    assert echo[0].key == f"{run_id}:probe"
    # Its outputs came back, redacted at the runner; the worker ran its own step.
    succeeded = {e["data"]["step"]: e["data"] for e in ledger_rows(state, "step.succeeded")}
    assert succeeded["show"]["outputs"]["stdout"].strip() == "***"
    assert succeeded["probe"]["outputs"]["status"] == 200
    assert "status 200" in succeeded["local"]["outputs"]["stdout"]
    rows = dispatch_rows(state)
    assert [(r["step_id"], r["state"], r["claimant"], r["claim_epoch"]) for r in rows] == [
        ("probe", "done", "edge-1", 1),
        ("show", "done", "edge-1", 1),
    ]
    assert {r["idempotency_key"] for r in rows} == {f"{run_id}:probe", f"{run_id}:show"}
    # No piece of the secret in any column of any dispatch row, nor in the ledger.
    for row in rows:
        for column, value in row.items():
            assert SECRET not in str(value), column
            assert SECRET[:8] not in str(value), column
    assert SECRET not in json.dumps(ledger_rows(state))
    assert "opsdsl-secret.edge_token." in rows[0]["inputs"]  # a reference, resolved at the runner


def test_a_pool_without_a_runner_waits_and_the_runs_timeout_applies(tmp_path, procs, api):
    state = tmp_path / "state"
    started = time.monotonic()
    worker = procs.worker(state, api, "nobody")
    assert finished(worker) == 1, procs.log("worker-nobody")
    assert time.monotonic() - started >= 3  # not the step's own 1 s: it never started anywhere
    failed = ledger_rows(state, "step.failed")
    assert [e["data"]["step"] for e in failed] == ["far"]
    assert "timeout" in failed[0]["data"]["error"]
    (row,) = dispatch_rows(state)
    assert row["state"] == "lost" and row["claimant"] is None  # withdrawn: no runner will take it later
    assert api.seen() == []


def kill_runner_after_its_side_effect(procs: Processes, api: KernelAPI, runner: subprocess.Popen) -> None:
    assert api.wait_for(1, timeout=30), "the runner never sent the request"
    runner.send_signal(signal.SIGKILL)
    runner.wait(10)


def test_a_killed_runners_idempotent_step_is_sent_again_with_the_same_key(tmp_path, procs, api):
    state = tmp_path / "state"
    first = procs.runner(state, "edge-1")
    worker = procs.worker(state, api, "reconnect-again", sleep="3")
    kill_runner_after_its_side_effect(procs, api, first)
    procs.runner(state, "edge-2")
    assert finished(worker) == 0, procs.log("worker-reconnect-again") + procs.log("edge-2")
    run_id = end_of(procs, "worker-reconnect-again")["run"]
    assert api.keys() == {f"{run_id}:reconnect": 2}  # sent twice, with one key …
    assert api.pool("c1").generation == 1  # … applied once
    (row,) = dispatch_rows(state)  # the same row went back to the queue
    assert (row["state"], row["claimant"], row["claim_epoch"], row["attempt"]) == ("done", "edge-2", 2, 1)
    assert not ledger_rows(state, "step.in_doubt")


def test_a_killed_runners_non_idempotent_step_waits_in_doubt_until_decided(tmp_path, procs, api):
    state = tmp_path / "state"
    first = procs.runner(state, "edge-1")
    worker = procs.worker(state, api, "reconnect-once", sleep="3")
    kill_runner_after_its_side_effect(procs, api, first)
    assert finished(worker) == 4, procs.log("worker-reconnect-once")  # paused: a person decides
    run_id = end_of(procs, "worker-reconnect-once")["run"]
    (doubt,) = ledger_rows(state, "step.in_doubt")
    assert doubt["data"]["step"] == "reconnect" and "lease" in doubt["data"]["reason"]
    assert [r["state"] for r in dispatch_rows(state)] == ["lost"]
    time.sleep(3)  # nothing re-sends it by itself
    assert len(api.seen("POST", "/v1/pool/reconnect")) == 1

    decided = opsdsl("decide", run_id, "reconnect", "--as", "retry", "--by", "oncall", "--state-dir", state)
    assert decided.code == 0, decided.stderr
    procs.runner(state, "edge-2")
    resumed = opsdsl("resume", run_id, "--state-dir", state, timeout=60)
    assert resumed.code == 0, resumed.stdout + resumed.stderr
    assert api.keys() == {f"{run_id}:reconnect": 2}  # re-sent on the decision, with the same key
    assert [(r["attempt"], r["state"]) for r in dispatch_rows(state)] == [(1, "lost"), (2, "done")]


def test_a_late_result_from_a_runner_whose_lease_was_taken_is_refused(tmp_path, procs, api):
    state = tmp_path / "state"
    first = procs.runner(state, "edge-1")
    worker = procs.worker(state, api, "reconnect-again", sleep="1")
    assert api.wait_for(1, timeout=30)
    first.send_signal(signal.SIGSTOP)  # partitioned: alive, silent past its lease
    try:
        procs.runner(state, "edge-2")
        assert finished(worker) == 0, procs.log("worker-reconnect-again") + procs.log("edge-2")
        (done,) = dispatch_rows(state)
        assert (done["state"], done["claimant"], done["claim_epoch"]) == ("done", "edge-2", 2)
    finally:
        first.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 15
    silent = re.compile(r"no result written|result is not written|result refused")
    while time.monotonic() < deadline and not silent.search(procs.log("edge-1")):
        time.sleep(0.2)
    # Continued, it finds its lease past by its own clock (or its heartbeat refused): it stops.
    assert re.search(r"lease is past|no longer ours", procs.log("edge-1")), procs.log("edge-1")
    assert silent.search(procs.log("edge-1")), procs.log("edge-1")
    assert dispatch_rows(state) == [done]  # its late word changed nothing


@pytest.mark.kills_runs  # the worker is killed -9 mid-step (and resumed)
def test_a_restarted_worker_waits_on_its_outstanding_dispatch(tmp_path, procs, api):
    state = tmp_path / "state"
    procs.runner(state, "edge-1")
    worker = procs.worker(state, api, "reconnect-once", sleep="2")
    assert api.wait_for(1, timeout=30)
    worker.send_signal(signal.SIGKILL)  # crashes with the step started and its dispatch claimed
    worker.wait(10)
    run_id = dispatch_rows(state)[0]["run_id"]
    resumed = opsdsl("resume", run_id, "--state-dir", state, timeout=60)
    assert resumed.code == 0, resumed.stdout + resumed.stderr
    assert len(api.seen("POST", "/v1/pool/reconnect")) == 1  # not sent again
    assert [(r["attempt"], r["state"]) for r in dispatch_rows(state)] == [(1, "done")]
    assert not ledger_rows(state, "step.in_doubt")


def test_a_stale_epoch_changes_nothing(tmp_path):
    """The fence itself, in process: a result or heartbeat of an older claim is refused."""
    from opsdsl.runtime import dispatch as D
    from opsdsl.runtime.pool_runner import PoolRunner, claim_rows
    from opsdsl.runtime.secrets import Secrets
    from opsdsl.runtime.store import Store

    store = Store(tmp_path / "state")
    try:
        D.prepare(store)
        with store.transaction():
            store.conn.execute(
                "INSERT INTO dispatch (run_id, step_id, attempt, pool, action, inputs, secrets, request,"
                " idempotency_key, idempotent, timeout, state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                ("r1", "s1", 1, "edge", "shell", "{}", "{}", "{}", "r1:s1", 1, None, D.QUEUED, store.now()),
            )
        logs: list[str] = []
        one = PoolRunner(store, "edge", "a", 30, 1, Secrets(tmp_path), tmp_path, logs.append)
        two = PoolRunner(store, "edge", "b", 30, 1, Secrets(tmp_path), tmp_path, logs.append)
        (old,) = claim_rows(store, "edge", "a", 5, 30)
        store.conn.execute("UPDATE dispatch SET state = ?, claimant = NULL WHERE id = ?", (D.QUEUED, old.row_id))
        (new,) = claim_rows(store, "edge", "b", 5, 30)
        assert (old.epoch, new.epoch) == (1, 2)
        asyncio.run(one.finish(old, D.DONE, {"late": True}, None, False))
        assert any("result refused" in line for line in logs)
        row = store.conn.execute("SELECT state, claimant, result FROM dispatch").fetchone()
        assert tuple(row) == (D.CLAIMED, "b", None)
        asyncio.run(two.finish(new, D.DONE, {"ok": True}, None, False))
        assert store.conn.execute("SELECT state, result FROM dispatch").fetchone()[1] == '{"ok": true}'
    finally:
        with contextlib.suppress(Exception):
            store.close()
    assert os.environ.get("OPSDSL_DATABASE") or (tmp_path / "state" / "state.db").exists()
