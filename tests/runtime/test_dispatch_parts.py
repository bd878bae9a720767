"""Runner pools in process (tests/runtime/test_dispatch.py runs them end to end): secret
references and the attacks on them, and a runner cut off from its database stopping its
action once its lease is past."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from kernel_api import HELPER

from opsdsl.runtime import dispatch as D
from opsdsl.runtime.pool_runner import PoolRunner, claim_rows
from opsdsl.runtime.secrets import Redactor, SecretError, Secrets
from opsdsl.runtime.store import Store

SECRET = "s3cret/va lue"


KEY = b"k" * 32


def deferred() -> D.DeferredSecrets:
    return D.DeferredSecrets("20261207-120000-abcdef", "probe", KEY)


def test_a_secret_read_as_it_is_becomes_a_reference_the_runner_resolves(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSDSL_SECRET_TOKEN", SECRET)
    view = deferred()
    rendered = {
        "url": f"https://{view['token']}@api.example/v1/{view['token']}?k={view['token']}",
        "headers": {"Authorization": f"Bearer {view['token']}"},
    }
    view.check(rendered, Redactor())
    refs = {"names": ["token"], "tokens": view.issued}
    resolved = D.resolve_references("http.request", rendered, refs, Secrets(tmp_path))
    encoded = "s3cret%2Fva%20lue"
    assert resolved["url"] == f"https://{SECRET}@api.example/v1/{encoded}?k={encoded}"  # encoded by position
    assert resolved["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_a_secret_an_expression_changes_cannot_be_deferred():
    view = deferred()
    rendered = {"text": f"len {len(view['token'])}"}  # size(secrets.token): the reference is gone
    with pytest.raises(SecretError, match="changed by an expression"):
        view.check(rendered, Redactor())


def test_a_reference_that_came_from_data_is_refused():
    """An event or an output carrying a reference (with the right tag) would have the runner
    put the secret where the event chose: refused, whatever the tag."""
    view = deferred()
    forged = D.reference_token(KEY, view.run_id, view.step_id, "token", 0)
    with pytest.raises(SecretError, match="no expression of the step read"):
        view.check({"body": f"from the event: {forged}"}, Redactor())
    view["token"]
    with pytest.raises(SecretError, match="no expression of the step read"):
        view.check({"a": view.issued[0], "b": forged}, Redactor())  # the one read, twice


def test_a_secret_value_the_worker_knows_never_reaches_the_row():
    with pytest.raises(SecretError, match="secret value"):
        deferred().check({"argv": ["login", SECRET]}, Redactor([SECRET]))


def test_a_name_that_is_not_a_plain_word_is_refused():
    with pytest.raises(SecretError, match="letters, digits"):
        deferred()["a.b/../c"]


def test_a_reference_the_driver_did_not_issue_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSDSL_SECRET_TOKEN", SECRET)
    view = deferred()
    view["token"]
    other = D.DeferredSecrets("another-run", "probe", KEY)["token"]
    out = D.resolve_references(
        "shell", {"argv": [other]}, {"names": ["token"], "tokens": view.issued}, Secrets(tmp_path)
    )
    assert out == {"argv": [other]}


def queue(store: Store, action: str, inputs: dict, refs: dict, timeout: float | None = None) -> None:
    D.prepare(store)
    with store.transaction():
        store.conn.execute(
            "INSERT INTO dispatch (run_id, step_id, attempt, pool, action, inputs, secrets, request,"
            " idempotency_key, idempotent, timeout, state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                "r1",
                "s1",
                1,
                "edge",
                action,
                json.dumps(inputs),
                json.dumps(refs),
                "{}",
                "r1:s1",
                1,
                timeout,
                "queued",
                0.0,
            ),
        )


def test_a_secret_the_runner_lacks_fails_the_step_unrun(tmp_path):
    store = Store(tmp_path / "state")
    try:
        token = deferred()["nothere"]
        queue(store, "shell", {"argv": ["true", token]}, {"names": ["nothere"], "tokens": [token]})
        runner = PoolRunner(store, "edge", "a", 30, 1, Secrets(tmp_path / "state"), tmp_path, lambda m: None)
        (claim,) = claim_rows(store, "edge", "a", 1, runner.lease)
        state, _, error, retryable = asyncio.run(runner.perform(claim))
        assert (state, retryable) == (D.FAILED, False)
        assert "nothere" in error
    finally:
        store.close()


def test_a_runner_cut_off_past_its_lease_stops_its_action(tmp_path):
    """The database goes away mid-action and a heartbeat never comes back (packets dropped):
    once the lease is past, the runner cancels the action (the shell step's process is
    killed) without waiting for the call, and writes nothing."""
    store = Store(tmp_path / "state")
    pid_file = tmp_path / "pid"
    try:
        queue(store, "shell", {"argv": [sys.executable, str(HELPER), "sleep", "30", str(pid_file)]}, {})
        logs: list[str] = []
        runner = PoolRunner(store, "edge", "a", 1.2, 1, Secrets(tmp_path / "state"), tmp_path, logs.append)
        (claim,) = claim_rows(store, "edge", "a", 1, runner.lease)
        cut = asyncio.Event()
        real = runner.queue.heartbeat

        async def heartbeat(*args):
            if cut.is_set():
                await asyncio.sleep(3600)  # a call that never returns
            return await real(*args)

        runner.queue.heartbeat = heartbeat

        async def scenario() -> float:
            work = asyncio.create_task(runner.work(claim))
            while not pid_file.exists() or not pid_file.read_text():
                await asyncio.sleep(0.05)
            cut.set()
            started = time.monotonic()
            await asyncio.wait_for(work, 10)
            return time.monotonic() - started

        took = asyncio.run(scenario())
        runner.queue.close()
        assert took < 2 * runner.lease
        pid = int(pid_file.read_text())
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert any("cancelling the action" in line for line in logs), logs
        row = store.conn.execute("SELECT state, result FROM dispatch").fetchone()
        assert tuple(row) == (D.CLAIMED, None)  # nothing written: the worker decides when the lease lapses
    finally:
        store.close()


def test_the_migration_and_the_sqlite_table_have_the_same_columns(tmp_path):
    migration = Path(D.__file__).parent / "migrations" / "postgresql" / "0003_dispatch.sql"
    text = migration.read_text()
    conn = sqlite3.connect(":memory:")
    conn.executescript(D._DDL)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(dispatch)")]
    body = text[text.index("CREATE TABLE dispatch") :]
    assert [c for c in columns if f"\n    {c} " in body] == columns


def test_a_rehearsal_runs_runner_steps_with_its_mocks():
    """`opsdsl test` gives its own executor (the mocks): nothing is dispatched, nothing waits
    for a runner that a rehearsal never has."""
    from kernel_api import FIXTURES, opsdsl

    result = opsdsl("test", FIXTURES / "dispatch.test.yaml", timeout=60)
    assert result.code == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
