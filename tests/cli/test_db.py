"""`opsdsl db migrate|status|copy` and the choice of backend, against a real PostgreSQL
(the `pg_server` fixture) and the real CLI."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from kernel_api import FIXTURES, KernelAPI, cli_env, opsdsl, param_args

PACK = FIXTURES / "retries.yaml"


@pytest.fixture
def empty_db(pg_server) -> str:
    name = f"db_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.drop_database(name)


def sqlite_env() -> dict[str, str]:
    env = cli_env()
    env.pop("OPSDSL_DATABASE", None)
    return env


def test_migrate_creates_the_schema_once_and_status_agrees(empty_db: str) -> None:
    before = opsdsl("db", "status", "--database", empty_db, env=sqlite_env())
    assert before.code == 1 and "schema version 0" in before.stdout and "pending 0001_initial" in before.stdout
    first = opsdsl("db", "migrate", "--database", empty_db, env=sqlite_env())
    assert first.code == 0, first.stderr
    assert "applied 0001_initial" in first.stdout
    again = opsdsl("db", "migrate", "--database", empty_db, env=sqlite_env())
    assert again.code == 0 and "up to date" in again.stdout
    status = opsdsl("db", "status", "--database", empty_db, "--format", "json", env=sqlite_env())
    assert status.code == 0
    shown = json.loads(status.stdout)
    assert shown["version"] == shown["latest"] and shown["pending"] == []


def test_a_database_migrated_by_a_newer_opsdsl_is_refused_never_downgraded(empty_db: str, tmp_path: Path) -> None:
    assert opsdsl("db", "migrate", "--database", empty_db, env=sqlite_env()).code == 0
    from opsdsl.runtime.database import PgConnection

    conn = PgConnection(empty_db)
    conn.raw.execute("INSERT INTO schema_migrations (version, name) VALUES (999, 'from_the_future')")
    conn.close()
    migrate = opsdsl("db", "migrate", "--database", empty_db, env=sqlite_env())
    assert migrate.code == 2 and "refusing to downgrade" in migrate.stderr
    runs = opsdsl("--database", empty_db, "runs", "--state-dir", tmp_path, env=sqlite_env())
    assert runs.code == 2 and "newer than this opsdsl" in runs.stderr and "Traceback" not in runs.stderr


def test_an_unmigrated_database_says_what_to_run(empty_db: str, tmp_path: Path) -> None:
    runs = opsdsl("--database", empty_db, "runs", "--state-dir", tmp_path, env=sqlite_env())
    assert runs.code == 2
    assert "no opsdsl schema yet: run `opsdsl db migrate" in runs.stderr


def test_a_newer_sqlite_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert opsdsl("users", "add", "alice", "--role", "admin", "--state-dir", state, env=sqlite_env()).code == 0
    conn = sqlite3.connect(state / "state.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    runs = opsdsl("runs", "--state-dir", state, env=sqlite_env())
    assert runs.code == 2 and "newer opsdsl (schema version 99" in runs.stderr


@pytest.mark.parametrize(
    "url",
    ["mysql://root@127.0.0.1/x", "postgresql://nobody@127.0.0.1:1/none", "'; DROP TABLE runs; --"],
)
def test_a_bad_or_unreachable_database_is_a_clear_error(url: str, tmp_path: Path) -> None:
    result = opsdsl("--database", url, "runs", "--state-dir", tmp_path, env=sqlite_env())
    assert result.code == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "postgresql://" in result.stderr


def test_a_password_in_the_url_is_never_printed(tmp_path: Path) -> None:
    result = opsdsl(
        "--database", "postgresql://alice:hunter2@127.0.0.1:1/x", "runs", "--state-dir", tmp_path, env=sqlite_env()
    )
    assert result.code == 2 and "hunter2" not in result.stderr + result.stdout


def test_copy_moves_a_single_node_state_and_the_chain_verifies(empty_db: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with KernelAPI() as api:
        for _ in range(2):
            done = opsdsl(
                "run", "--pack", PACK, "--playbook", "reconnect-with-retries", "--state-dir", state,
                *param_args(kernel_url=api.url), env=sqlite_env(),
            )  # fmt: skip
            assert done.code == 0, done.stdout + done.stderr
    assert opsdsl("users", "add", "alice", "--role", "approver", "--state-dir", state, env=sqlite_env()).code == 0
    before = opsdsl("runs", "--format", "json", "--state-dir", state, env=sqlite_env())
    lite = sqlite3.connect(state / "state.db")
    (entries,) = lite.execute("SELECT COUNT(*) FROM ledger").fetchone()
    lite.close()

    copied = opsdsl("db", "copy", "--from", state, "--to", empty_db, env=sqlite_env())
    assert copied.code == 0, copied.stdout + copied.stderr
    assert f"the ledger's {entries} entries verify" in copied.stdout

    on_pg = {**sqlite_env(), "OPSDSL_DATABASE": empty_db}
    after = opsdsl("runs", "--format", "json", "--state-dir", state, env=on_pg)

    def steady(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "age_seconds"} for row in rows]

    assert steady(json.loads(after.stdout)) == steady(json.loads(before.stdout))
    verified = opsdsl("ledger", "verify", "--state-dir", state, env=on_pg)
    assert verified.code == 0, verified.stdout + verified.stderr
    users = opsdsl("users", "list", "--state-dir", state, env=on_pg)
    assert "alice" in users.stdout

    twice = opsdsl("db", "copy", "--from", state, "--to", empty_db, env=sqlite_env())
    assert twice.code == 2 and "copy only into a new, empty database" in twice.stderr


def test_copy_refuses_what_is_not_a_state(empty_db: str, tmp_path: Path) -> None:
    result = opsdsl("db", "copy", "--from", tmp_path, "--to", empty_db, env=sqlite_env())
    assert result.code == 2 and "no opsdsl state" in result.stderr


def test_after_a_copy_new_rows_get_new_ids(empty_db: str, tmp_path: Path) -> None:
    """Identity columns continue after the copied rows: events and the runner pools' outbox."""
    from opsdsl.runtime import dispatch as D
    from opsdsl.runtime.actions.base import ActionRequest
    from opsdsl.runtime.dbcopy import copy_state
    from opsdsl.runtime.store import Store

    source = Store(tmp_path, database="sqlite")
    D.prepare(source)  # the outbox's table, outside a transaction (SQLite)
    request = ActionRequest("r1", "s", "shell", {"argv": ["true"]}, 1, "r1:s", None)
    with source.transaction():
        source.add_events(['{"n": 1}'], "test", 1.0)
        D.Dispatcher(source, {"runner": "edge"}, "t" * 16).enqueue(request)
    source.close()
    copy_state(tmp_path, empty_db)

    target = Store(tmp_path, database=empty_db)
    with target.transaction():
        (event,) = target.add_events(['{"n": 2}'], "test", 2.0)
        D.Dispatcher(target, {"runner": "edge"}, "t" * 16).enqueue(
            ActionRequest("r2", "s", "shell", {"argv": ["true"]}, 1, "r2:s", None)
        )
    assert event == 2
    assert [row[0] for row in target.conn.execute("SELECT id FROM dispatch ORDER BY id")] == [1, 2]
    target.close()
