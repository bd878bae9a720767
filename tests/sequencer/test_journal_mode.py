"""Ledger mode `journal` through the Store and `opsdsl run`: the mode is chosen by
Store(ledger_mode=…) / $OPSDSL_LEDGER_MODE (PostgreSQL only), a run's incident record waits
for the sequencer and carries a checkpoint covering the run, and without a sequencer the
reader says what to start instead of hanging."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from journal_helpers import journal_left
from kernel_api import FIXTURES, KernelAPI, cli_env, opsdsl, param_args, shell_params

from opsdsl.audit.ledger import Ledger
from opsdsl.runtime.sequencer import NO_SEQUENCER, BackgroundSequencer, JournalLedger, SequencerError
from opsdsl.runtime.store import StateError, Store

ROOT = Path(__file__).resolve().parents[2]


def test_the_mode_is_the_databases_recorded_by_its_first_opener(
    journal_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inline unless journal is asked for, and then for every process: one process chaining
    inline beside journaling ones would chain a run's entries out of commit order."""
    from opsdsl.runtime.store import set_database_ledger_mode

    monkeypatch.delenv("OPSDSL_LEDGER_MODE", raising=False)
    monkeypatch.delenv("OPSDSL_DATABASE", raising=False)
    stores = [Store(tmp_path / "a", database=journal_url)]
    assert type(stores[-1].ledger) is Ledger  # the first opener asked for nothing: inline, recorded
    with pytest.raises(StateError, match="this database's ledger mode is inline, and this process asks for journal"):
        Store(tmp_path / "b", database=journal_url, ledger_mode="journal")
    set_database_ledger_mode(stores[0].conn, "journal")
    stores.append(Store(tmp_path / "b", database=journal_url))
    assert type(stores[-1].ledger) is JournalLedger  # the database's mode, asked for or not
    monkeypatch.setenv("OPSDSL_LEDGER_MODE", "journal")
    stores.append(Store(tmp_path / "c", database=journal_url))
    assert type(stores[-1].ledger) is JournalLedger
    with pytest.raises(StateError, match="asks for inline"):
        Store(tmp_path / "c", database=journal_url, ledger_mode="inline")
    stores.append(Store(tmp_path / "d"))  # SQLite: its file lock chains inline, always
    assert type(stores[-1].ledger) is Ledger
    with stores[1].transaction():
        stores[1].ledger.append("run.created", "run-1", {"pack": "p"})
    with pytest.raises(StateError, match="1 journaled entries wait for the sequencer"):
        set_database_ledger_mode(stores[0].conn, "inline")
    monkeypatch.setenv("OPSDSL_LEDGER_MODE", "sequenced")
    with pytest.raises(StateError, match="ledger mode 'sequenced' is not one of inline, journal"):
        Store(tmp_path / "e", database=journal_url)
    for store in stores:
        store.close()


def test_a_reader_without_a_sequencer_is_told_what_to_start(journal_url: str, tmp_path: Path) -> None:
    store = Store(tmp_path, database=journal_url, ledger_mode="journal")
    try:
        with store.transaction():
            store.ledger.append("run.created", "run-1", {"pack": "p"})
        (entry,) = store.ledger.entries(run="run-1")  # decisions see it at once, unchained
        assert (entry.seq, entry.kind) == (0, "run.created")
        started = time.monotonic()
        with pytest.raises(SequencerError) as raised:
            store.ledger.settle("run-1")
        assert raised.value.message == NO_SEQUENCER
        assert time.monotonic() - started < 5
        background = BackgroundSequencer(journal_url, _key(tmp_path)).start()
        try:
            store.ledger.settle("run-1", timeout=10)
        finally:
            background.stop()
        (entry,) = store.ledger.entries(run="run-1")
        assert entry.seq == 1 and len(entry.hash) == 32
        assert store.ledger.latest_checkpoint().seq == 1
    finally:
        store.close()


def _key(tmp_path: Path):
    from opsdsl.runtime.state_config import signer

    return signer(tmp_path).key


def test_a_run_in_journal_mode_signs_its_incident_with_a_checkpoint_covering_it(
    journal_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    env = cli_env(OPSDSL_DATABASE=journal_url, OPSDSL_LEDGER_MODE="journal")
    log = tmp_path / "sequencer.log"
    sequencer = subprocess.Popen(
        [sys.executable, "-m", "opsdsl", "sequencer", "--state-dir", str(state)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        with KernelAPI() as api:
            result = opsdsl(
                "run",
                "--pack",
                FIXTURES / "driver_failure.yaml",
                "--state-dir",
                state,
                "--log-format",
                "json",
                *param_args(**shell_params(api)),
                env=env,
            )
        assert result.code == 0, result.stdout + result.stderr
        record = json.loads((Path(result.end["incident_folder"]) / "record.json").read_text())["record"]
        checkpoint = record["ledger"]["checkpoint"]
        import psycopg

        with psycopg.connect(journal_url) as conn:
            (last,) = conn.execute("SELECT max(seq) FROM ledger WHERE run = %s", (result.run_id,)).fetchone()
        assert checkpoint["seq"] >= last  # the run.finished entry included
        verify = opsdsl("ledger", "verify", "--state-dir", state, env=env)
        assert verify.code == 0, verify.stdout + verify.stderr
        assert journal_left(journal_url) == 0
    finally:
        sequencer.terminate()
        sequencer.wait(10)


def test_serve_runs_a_sequencer_thread_in_journal_mode(
    journal_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from opsdsl.runtime.service import Service

    monkeypatch.setenv("OPSDSL_DATABASE", journal_url)
    monkeypatch.setenv("OPSDSL_LEDGER_MODE", "journal")
    service = Service(tmp_path / "state", [])

    async def start_and_journal() -> None:
        await service.start()
        with service.store.transaction():
            service.store.ledger.append("user.added", None, {"name": "ana"})
        service.store.ledger.settle(timeout=10)  # chained by the service's own sequencer
        await service.drain(1)

    try:
        asyncio.run(start_and_journal())
        assert service.sequencer is not None and service.sequencer.leading
        assert [entry.kind for entry in service.store.ledger.entries()] == ["user.added"]
    finally:
        service.close()
    assert not service.sequencer._thread.is_alive()
