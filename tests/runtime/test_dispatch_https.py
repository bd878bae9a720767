"""Runners that cannot reach the database (issue 16): `opsdsl runner --server URL` makes its
claim, heartbeat and result calls to `opsdsl serve` with a runner token, and never opens
the database (it has no $OPSDSL_DATABASE and a state directory of its own). Real
processes on 127.0.0.1, on both state backends; hostile calls refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kernel_api import FIXTURES, ROOT, KernelAPI, cli_env, ledger_rows, opsdsl, param_args, shell_params, state_db

PACK = FIXTURES / "dispatch.yaml"
SECRET = "edge-s3cret-over-https"
SERVE = (sys.executable, "-m", "opsdsl", "serve")
RUNNER = (sys.executable, "-m", "opsdsl", "runner", "--pool", "edge")


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """A running `opsdsl serve` on the test's state directory: its URL."""
    log = tmp_path / "serve.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [*SERVE, "--pack", str(PACK), "--state-dir", str(tmp_path / "state"), "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            env=cli_env(OPSDSL_TOKEN="operator-token-for-tests"),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            if found:
                break
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield found.group(1)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def new_token(state: Path, pool: str, label: str) -> str:
    made = opsdsl("runner-token", "--pool", pool, "--label", label, "--state-dir", state)
    assert made.code == 0, made.stderr
    return made.stdout.strip()


def test_a_runner_over_https_executes_the_pool_steps(tmp_path, serve, api):
    state = tmp_path / "state"
    token = new_token(state, "edge", "vpc-1")
    assert token.startswith("opsr_")
    env = {k: v for k, v in cli_env(secrets={"edge_token": SECRET}).items() if k != "OPSDSL_DATABASE"}
    env["OPSDSL_RUNNER_TOKEN"] = token
    log = tmp_path / "runner.log"
    with open(log, "w") as out:
        runner = subprocess.Popen(
            [*RUNNER, "--server", serve, "--state-dir", str(tmp_path / "runner-state"), "--id", "r1", "--lease", "3s"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        result = opsdsl(
            "run",
            "--pack",
            PACK,
            "--playbook",
            "remote",
            "--state-dir",
            state,
            "--log-format",
            "json",
            *param_args(**shell_params(api)),
        )
        assert result.code == 0, result.stdout + result.stderr + log.read_text()
    finally:
        runner.terminate()
        assert runner.wait(20) == 0, log.read_text()  # SIGTERM drains, exit 0
    assert api.seen("POST", "/v1/echo")[0].headers["authorization"] == f"Bearer {SECRET}"
    conn = state_db(state)
    try:
        rows = conn.execute(
            "SELECT step_id, state, claimant, inputs, result, error FROM dispatch ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    assert [(r[0], r[1], r[2]) for r in rows] == [("probe", "done", "r1@vpc-1"), ("show", "done", "r1@vpc-1")]
    assert SECRET not in json.dumps([list(r) for r in rows]) and SECRET not in json.dumps(ledger_rows(state))
    assert not (tmp_path / "runner-state" / "state.db").exists()  # it never opened a database
    assert "claimed dispatch" in log.read_text()


def test_hostile_runner_calls_are_refused(tmp_path, serve):
    state = tmp_path / "state"
    token = new_token(state, "edge", "vpc-1")
    other = new_token(state, "core", "dc-1")
    claim = f"{serve}/v1/runners/edge/claim"
    good = {"runner": "r1", "limit": 1, "lease": 5}

    def post(url: str, body: object, bearer: str | None = token) -> httpx.Response:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.post(url, content=json.dumps(body), headers=headers, timeout=10)

    assert post(claim, good, None).status_code == 401
    assert post(claim, good, "opsr_not-a-token").status_code == 401
    assert post(claim, good, other).status_code == 403  # another pool's token
    assert post(claim, [1, 2]).status_code == 400
    assert post(claim, {**good, "runner": "../../etc"}).status_code == 400
    assert post(claim, {**good, "limit": 10**9}).status_code == 400
    assert post(claim, {**good, "lease": True}).status_code == 400
    assert post(claim, {**good, "lease": float("inf")}).status_code == 400
    assert httpx.post(claim, content=b"\xff{", headers={"Authorization": f"Bearer {token}"}).status_code == 400
    assert post(claim, good).json() == {"claims": []}
    result = f"{serve}/v1/runners/edge/dispatch/1/result"
    forged = {"runner": "r1", "epoch": 1, "state": "done", "outputs": {}, "error": None, "retryable": False}
    assert post(result, forged).json() == {"ok": False}  # no such claim: nothing written
    assert post(result, {**forged, "state": "queued"}).status_code == 400
    assert (
        post(f"{serve}/v1/runners/edge/dispatch/x1/heartbeat", {"runner": "r1", "epoch": 1, "lease": 5}).status_code
        == 400
    )
    revoked = opsdsl("runner-token", "--label", "vpc-1", "--revoke", "--state-dir", state)
    assert revoked.code == 0, revoked.stderr
    assert post(claim, good).status_code == 401
    assert os.environ.get("OPSDSL_DATABASE") or (state / "state.db").exists()


def test_a_large_result_is_taken_and_one_too_large_fails_its_step(tmp_path, serve):
    """A result is bigger than an event: 300 KiB of control characters (six bytes each in
    JSON, over serve's --max-body) is taken; one past the runner calls' own limit is written
    as a failure saying so, not dropped (which would re-run or doubt a finished step)."""
    import asyncio

    from opsdsl.runtime import dispatch as D
    from opsdsl.runtime.pool_runner import TRUNCATED, HttpQueue, PoolRunner
    from opsdsl.runtime.secrets import Secrets
    from opsdsl.runtime.store import Store

    state = tmp_path / "state"
    token = new_token(state, "edge", "vpc-1")
    store = Store(state)
    try:
        D.prepare(store)
        with store.transaction():
            for step in ("big", "huge"):
                store.conn.execute(
                    "INSERT INTO dispatch (run_id, step_id, attempt, pool, action, inputs, secrets, request,"
                    " idempotency_key, idempotent, timeout, state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    ("r1", step, 1, "edge", "shell", "{}", "{}", "{}", f"r1:{step}", 1, None, "queued", 0),
                )
        logs: list[str] = []
        runner_state = tmp_path / "runner-state"
        queue = HttpQueue(serve, token)
        runner = PoolRunner(queue, "edge", "r1", 30, 2, Secrets(runner_state), runner_state / "e", logs.append)
        big, huge = "\x01" * 300 * 1024, "\x02" * 3 * 1024 * 1024

        async def scenario() -> None:
            first, second = await queue.claim("edge", "r1", 2, 30)
            await runner.finish(first, D.DONE, {"stdout": big, "exit_code": 0}, None, False)
            await runner.finish(second, D.DONE, {"stdout": huge, "exit_code": 0}, None, False)

        asyncio.run(scenario())
        rows = store.conn.execute(
            "SELECT step_id, state, result, error, retryable FROM dispatch ORDER BY id"
        ).fetchall()
    finally:
        store.close()
    (_, state1, result1, error1, _), (_, state2, result2, error2, retryable2) = rows
    assert (state1, error1) == (D.DONE, None) and json.loads(result1)["stdout"] == big, logs
    assert state2 == D.FAILED and re.fullmatch(r"result too large \(\d{8} bytes\)", error2) and not retryable2
    assert json.loads(result2) == {"stdout": "\x02" * TRUNCATED + "…", "exit_code": 0}
