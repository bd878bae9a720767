"""The PostgreSQL connection's guarantees beside its SQL translation (opsdsl.runtime.database).

PostgreSQL only (a real server: the `pg_url` fixture); the runtime suite, which runs on
both backends, is tests/runtime."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest

from opsdsl.runtime.database import WRITER_LOCK, PgConnection, PgError

INSERT = "INSERT INTO timers (run_id, step_id, kind, due_at) VALUES (?, ?, ?, ?)"


@pytest.fixture
def conn(pg_url: str):
    connection = PgConnection(pg_url)
    yield connection
    connection.close()


def _kill(pg_url: str, conn: PgConnection) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (conn.raw.info.backend_pid,))


def _timers(pg_url: str) -> list[str]:
    with psycopg.connect(pg_url) as check:
        return [row[0] for row in check.execute("SELECT step_id FROM timers ORDER BY step_id")]


def test_no_half_of_a_transaction_commits_after_the_connection_is_lost(pg_url: str, conn: PgConnection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT, ("r", "a", "first", 1.0))
    _kill(pg_url, conn)
    with pytest.raises(PgError):
        conn.execute(INSERT, ("r", "b", "second", 1.0))
    with pytest.raises(PgError, match="lost in this transaction"):
        conn.execute(INSERT, ("r", "c", "third", 1.0))  # never on a new connection, in autocommit
    with pytest.raises(PgError, match="did not commit"):
        conn.execute("COMMIT")
    assert _timers(pg_url) == []
    conn.execute(INSERT, ("r", "d", "after", 1.0))  # the next statement reconnects
    assert _timers(pg_url) == ["d"]


def test_a_rollback_after_the_loss_ends_the_transaction_quietly(pg_url: str, conn: PgConnection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    _kill(pg_url, conn)
    with pytest.raises(PgError):
        conn.execute(INSERT, ("r", "a", "x", 1.0))
    conn.execute("ROLLBACK")
    assert not conn.in_transaction
    conn.execute(INSERT, ("r", "b", "y", 1.0))
    assert _timers(pg_url) == ["b"]


def test_a_connection_dropped_between_transactions_is_opened_again(pg_url: str, conn: PgConnection) -> None:
    conn.execute(INSERT, ("r", "a", "x", 1.0))
    _kill(pg_url, conn)
    # The statement that finds the connection gone fails (it may or may not have run: never
    # sent twice); the next one opens a new connection.
    with pytest.raises(PgError):
        conn.execute(INSERT, ("r", "b", "y", 1.0))
    conn.execute(INSERT, ("r", "c", "z", 1.0))
    assert _timers(pg_url) == ["a", "c"]


def _begin_killed_while_it_waits(pg_url: str, conn: PgConnection, begin) -> None:
    """`begin` waits for the writer lock another session holds; its connection is killed
    while it waits, so BEGIN succeeded and the lock statement after it failed."""
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (WRITER_LOCK,))
        failed: list[BaseException] = []

        def attempt() -> None:
            try:
                begin()
            except BaseException as error:
                failed.append(error)

        waiter = threading.Thread(target=attempt)
        pid = conn.raw.info.backend_pid
        waiter.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND wait_event_type = 'Lock'", (pid,)
            ).fetchone()[0]
            if waiting:
                break
            time.sleep(0.02)
        holder.execute("SELECT pg_terminate_backend(%s)", (pid,))
        waiter.join(10)
        assert failed and isinstance(failed[0], PgError), failed


@pytest.mark.parametrize("how", ["BEGIN IMMEDIATE", "begin_run"])
def test_a_begin_whose_lock_fails_leaves_the_connection_usable(pg_url: str, conn: PgConnection, how: str) -> None:
    # CI once saw a worker fail every transaction after a PostgreSQL restart: its BEGIN had
    # succeeded, the lock after it failed, and nobody rolled back a `with` that never began.
    def begin() -> None:
        if how == "begin_run":
            conn.begin_run("run-1")
        else:
            conn.execute("BEGIN IMMEDIATE")

    _begin_killed_while_it_waits(pg_url, conn, begin)
    assert not conn.in_transaction
    begin()
    conn.execute(INSERT, ("r", "a", "after", 1.0))
    conn.execute("COMMIT")
    assert _timers(pg_url) == ["a"]


@pytest.mark.parametrize("how", ["BEGIN IMMEDIATE", "begin_run"])
def test_a_begin_after_a_lost_transaction_nobody_rolled_back_starts_afresh(
    pg_url: str, conn: PgConnection, how: str
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT, ("r", "a", "lost", 1.0))
    _kill(pg_url, conn)
    with pytest.raises(PgError):
        conn.execute(INSERT, ("r", "b", "lost", 1.0))
    if how == "begin_run":  # a worker's next transaction of a run (the reviewer's case)
        conn.begin_run("run-1")
    else:
        conn.execute("BEGIN IMMEDIATE")  # no ROLLBACK before it
    conn.execute(INSERT, ("r", "c", "kept", 1.0))
    conn.execute("COMMIT")
    assert _timers(pg_url) == ["c"]


def test_a_commit_that_fails_ends_the_transaction(pg_url: str, conn: PgConnection) -> None:
    # Store.transaction runs COMMIT outside its try: a COMMIT that fails must leave nothing
    # open, or every later statement of the connection fails.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT, ("r", "a", "lost", 1.0))
    _kill(pg_url, conn)
    with pytest.raises(PgError):
        conn.execute("COMMIT")
    assert not conn.in_transaction
    conn.execute(INSERT, ("r", "b", "after", 1.0))
    assert _timers(pg_url) == ["b"]


def test_a_rollback_to_a_savepoint_keeps_the_transaction(pg_url: str, conn: PgConnection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(INSERT, ("r", "a", "kept", 1.0))
    conn.execute("SAVEPOINT one")
    conn.execute(INSERT, ("r", "b", "undone", 1.0))
    conn.execute("ROLLBACK TO one")
    assert conn.in_transaction
    conn.execute("RELEASE one")
    conn.execute("COMMIT")
    assert _timers(pg_url) == ["a"]


@pytest.mark.parametrize(
    "text",
    [
        "it's 100% done",
        "what? :name ?",
        "-- not a comment",
        "'; DROP TABLE runs; --",
        "a\0b",
        "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    ],
)
def test_parameters_are_values_never_sql(conn: PgConnection, text: str) -> None:
    conn.execute(INSERT, ("r", text, "k", 1.0))
    conn.execute("INSERT OR REPLACE INTO timers (run_id, step_id, kind, due_at) VALUES (:r, :s, :k, :d)",
                 {"r": "r", "s": text, "k": "k", "d": 2.0})  # fmt: skip
    (stored,) = conn.execute("SELECT step_id FROM timers WHERE due_at = 2.0").fetchone()
    assert stored == text.replace("\0", "\ufffd")
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)


def test_a_run_whose_database_connection_is_cut_says_so_and_stays_resumable(pg_url: str, tmp_path) -> None:
    """The first step cuts every other session to the database (as a PostgreSQL restart
    does): `opsdsl run` says what failed and what to do, never "internal error", and the run
    is left `interrupted` for `opsdsl resume`, which finishes it."""
    import sys

    from kernel_api import FIXTURES, cli_env, opsdsl, param_args

    env = {**cli_env(), "OPSDSL_DATABASE": pg_url}
    state = tmp_path / "state"
    pack = FIXTURES / "cut_connection.yaml"
    result = opsdsl(
        "run", "--pack", pack, "--state-dir", state, "--log-format", "json",
        *param_args(python=sys.executable, url=pg_url, marker=tmp_path / "cut-once"), env=env,
    )  # fmt: skip
    assert result.code == 2, result.stdout + result.stderr
    assert "the state database failed" in result.stderr and "opsdsl resume RUN" in result.stderr
    assert "internal error" not in result.stdout + result.stderr
    listed = opsdsl("runs", "--format", "json", "--state-dir", state, env=env)
    (run,) = json.loads(listed.stdout)
    assert run["status"] == "interrupted"
    resumed = opsdsl("resume", run["id"], "--state-dir", state, env=env)
    assert resumed.code == 0, resumed.stdout + resumed.stderr
    assert opsdsl("ledger", "verify", "--state-dir", state, env=env).code == 0
