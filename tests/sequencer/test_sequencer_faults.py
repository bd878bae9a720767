"""Faults of the standalone `opsdsl sequencer`: kill -9 mid-batch (nothing of the batch or all
of it; a second one chains the rest), a standby taking over from a killed leader while
writers go on. After each, `opsdsl ledger verify` passes and every journaled entry is in the
ledger exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from journal_helpers import Writer, check_chain, journal_left

ROOT = Path(__file__).resolve().parents[2]


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_")}
    env["OPSDSL_DATABASE"] = url
    return env


def _sequencer(url: str, state: Path, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "opsdsl", "sequencer", "--state-dir", str(state), *args],
        cwd=ROOT,
        env=_env(url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def _wait_for(predicate, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def _verify(url: str, state: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", "ledger", "verify", "--state-dir", str(state), "--no-incidents"],
        cwd=ROOT,
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _every_entry_once(url: str, total: int) -> None:
    with psycopg.connect(url) as conn:
        found = sorted(json.loads(row[0])["g"] for row in conn.execute("SELECT data FROM ledger"))
    assert found == list(range(total))


@pytest.mark.kills_runs
def test_kill_9_mid_batch_leaves_nothing_of_it_and_a_second_sequencer_chains_all(
    journal_url: str, tmp_path: Path
) -> None:
    total, runs = 60_000, 20
    with psycopg.connect(journal_url, autocommit=True) as conn, conn.transaction():
        conn.execute(
            "INSERT INTO journal (run, run_order, ts, kind, data)"
            " SELECT 'run-' || (g %% %s), g / %s + 1, 1796644523.25, 'step.intent', '{\"g\":' || g || '}'"
            " FROM generate_series(0, %s) g",
            (runs, runs, total - 1),
        )
        conn.execute(
            "INSERT INTO journal_runs SELECT 'run-' || r, %s FROM generate_series(0, %s) r", (total // runs, runs - 1)
        )
    first = _sequencer(journal_url, tmp_path, tmp_path / "first.log", "--batch", "20000")
    try:
        with psycopg.connect(journal_url, autocommit=True) as watch:
            # Mid-batch: the sequencer's transaction has written (it has an xid) and not committed.
            def writing() -> bool:
                row = watch.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'opsdsl sequencer'"
                    " AND backend_xid IS NOT NULL"
                ).fetchone()
                return row is not None

            _wait_for(writing, what="the sequencer to write a batch")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            # The server ends the dead client's session: its transaction rolls back, its lock goes.
            _wait_for(
                lambda: (
                    watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opsdsl sequencer'"
                    ).fetchone()[0]
                    == 0
                ),
                what="the killed sequencer's session to end",
            )
            chained = watch.execute("SELECT count(*) FROM ledger").fetchone()[0]
        assert chained % 20_000 == 0 and chained < total  # whole batches only, and it was cut short
        assert chained + journal_left(journal_url) == total
        second = _sequencer(journal_url, tmp_path, tmp_path / "second.log", "--once")
        assert second.wait(120) == 0, (tmp_path / "second.log").read_text()
    finally:
        _kill(first)
    assert journal_left(journal_url) == 0
    _every_entry_once(journal_url, total)
    assert check_chain(journal_url) == total
    assert "ledger intact: 60000 entries" in _verify(journal_url, tmp_path)


@pytest.mark.kills_runs
def test_a_standby_takes_over_from_a_killed_leader_while_writers_go_on(journal_url: str, tmp_path: Path) -> None:
    leader = _sequencer(journal_url, tmp_path, tmp_path / "leader.log")
    standby = None
    written = [0, 0]  # entries committed by each writer
    stop = threading.Event()
    failures: list[BaseException] = []

    def write(number: int) -> None:
        writer = Writer(journal_url)
        try:
            while not stop.is_set():
                with_run = f"run-{number}-{written[number] % 7}"
                writer.conn.execute("BEGIN")
                writer.ledger.append_many(
                    [("step.intent", with_run, {"g": -1}), ("step.succeeded", with_run, {"g": -1})], ts=1796644523.25
                )
                writer.commit()
                written[number] += 2
        except BaseException as error:  # reported by the test
            failures.append(error)
        finally:
            writer.close()

    try:
        _wait_for(lambda: "leading" in (tmp_path / "leader.log").read_text(), what="the first to lead")
        standby = _sequencer(journal_url, tmp_path, tmp_path / "standby.log")
        _wait_for(lambda: "standing by" in (tmp_path / "standby.log").read_text(), what="the standby")
        threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        _wait_for(lambda: _count(journal_url) > 200, what="the leader to chain")
        time.sleep(0.1)
        assert "leading" not in (tmp_path / "standby.log").read_text()
        leader.send_signal(signal.SIGKILL)
        leader.wait(10)
        _wait_for(lambda: "leading" in (tmp_path / "standby.log").read_text(), what="the standby to take over")
        before = _count(journal_url)
        _wait_for(lambda: _count(journal_url) > before + 200, what="the new leader to chain")
        stop.set()
        for thread in threads:
            thread.join(10)
        assert failures == []
        _wait_for(lambda: journal_left(journal_url) == 0, what="the new leader to drain the journal")
    finally:
        stop.set()
        _kill(leader)
        if standby is not None:
            standby.send_signal(signal.SIGTERM)
            try:
                standby.wait(10)
            finally:
                _kill(standby)
    assert _count(journal_url) == sum(written)
    assert check_chain(journal_url) == sum(written)
    assert f"ledger intact: {sum(written)} entries" in _verify(journal_url, tmp_path)


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM ledger").fetchone()[0]


def test_a_sequencer_thread_that_fails_lets_go_of_the_lead(journal_url: str, signing_key) -> None:
    """A bad journal row (here: numbered before what its run already chained) makes a batch
    raise something that is not a connection error: the thread closes its session, so the
    leader lock is free for a standby, and stands by again instead of dying with it."""
    from opsdsl.runtime.database import PgConnection
    from opsdsl.runtime.sequencer import BackgroundSequencer, Sequencer, sequencer_running

    with psycopg.connect(journal_url, autocommit=True) as conn:
        conn.execute("INSERT INTO journal_chained (run, chained) VALUES ('x', 1)")
        conn.execute("INSERT INTO journal (run, run_order, ts, kind, data) VALUES ('x', 1, 1.0, 'k', '{}')")
    background = BackgroundSequencer(journal_url, signing_key).start()
    try:
        _wait_for(lambda: background.last_error is not None, 10, "the batch to fail")
        probe = PgConnection(journal_url)
        _wait_for(lambda: not sequencer_running(probe), 5, "the failed sequencer to let go of the lock")
        other = Sequencer(journal_url, signing_key)
        assert other.lead() is True
        other.close()
        probe.close()
        assert background._thread.is_alive()  # standing by again, not dead
    finally:
        background.stop()
