from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden") or os.environ.get("OPSDSL_UPDATE_GOLDEN"))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with the working directory in a fresh temporary folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


MINIMAL_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: minimal, version: 1.0.0, owner: sre}
params:
  kernel_url: {type: string, default: "http://127.0.0.1:8080"}
triggers:
  latency:
    on: alert
    when: event.labels.alertname == "SqlxExecLatencyHigh"
hooks:
  onLatency: {trigger: latency, run: respond, cooldown: 10m, dedupe: event.labels.cluster}
playbooks:
  respond:
    severity: SEV-2
    inputs: {cluster: {type: string, from: event.labels.cluster}}
    steps:
      - id: inspect
        action: http.request
        with: {method: GET, url: "${{ params.kernel_url }}/v1/latency?cluster=${{ inputs.cluster }}"}
        timeout: 10s
"""


@pytest.fixture
def minimal_pack() -> str:
    return MINIMAL_PACK


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "kills_runs: the test SIGKILLs opsdsl on purpose; a run it leaves `running` is the point"
    )


@pytest.fixture(autouse=True)
def no_run_left_running(request: pytest.FixtureRequest):
    """The invariant of issue 12: whatever a test does to a run (bad input, a failing action,
    an exception of ours), once its processes are gone no run is `running` with no owner.
    Checked on every state database the test left in its tmp_path."""
    watched = "tmp_path" in request.fixturenames and not request.node.get_closest_marker("kills_runs")
    base = request.getfixturevalue("tmp_path") if watched else None
    yield
    if base is None:
        return
    import sqlite3

    orphans = []
    for database in base.rglob("state.db"):
        try:
            conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
            try:
                rows = conn.execute("SELECT id, owner_pid FROM runs WHERE status = 'running'").fetchall()
            finally:
                conn.close()
        except sqlite3.Error:
            continue  # not ours, or a test's deliberately broken file
        orphans += [f"{database}: run {run_id} (owner pid {pid})" for run_id, pid in rows if not _alive(pid)]
    assert orphans == [], "runs left `running` with no owner:\n" + "\n".join(orphans)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    if pid == os.getpid():
        return False  # in-process runs end with their test
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- PostgreSQL (issue 16): a real server of the session's own, one clean database per test ---


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server started for this test session (tests/pgserver.py); skips, saying
    why, only where no server binary is installed."""
    import pgserver

    reason = pgserver.why_not()
    if reason is not None:
        pytest.skip(reason)
    with pgserver.temporary_server() as server:
        yield server


@pytest.fixture(scope="session")
def pg_migrated(pg_server) -> str:
    """The URL of a database migrated to this opsdsl's schema (`opsdsl db migrate`)."""
    from opsdsl.runtime.migrate import migrate

    url = pg_server.create_database("opsdsl_tests")
    migrate(url)
    return url


@pytest.fixture
def pg_url(pg_migrated: str) -> str:
    """A migrated database with no rows: every table emptied before the test."""
    import psycopg

    with psycopg.connect(pg_migrated, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'"
            )
        ]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
    return pg_migrated
