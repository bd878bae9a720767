"""The incident folder of a run whose end committed but whose folder was never written (its
process was killed in between) is written again by `serve` and `worker` (both backends,
tests/runtime/conftest.py; runtime/incident_sweep.py):

- a serve start writes it, byte for byte what the run wrote, and `ledger verify` is intact;
- a living worker's periodic pass writes a folder another process left;
- a folder whose record.json exists is left alone, byte for byte;
- a hostile incident_dir (outside the root, through `..`, a symlinked year or folder)
  never makes the sweep write outside the incidents root;
- never two writers of one folder at once (PostgreSQL: the folder's advisory lock).
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path

import pytest
from kernel_api import opsdsl
from owned_harness import started, stop
from test_lease import PACK as LEASED
from test_lease import until

from opsdsl.runtime import incident_sweep as sweep_module
from opsdsl.runtime import runner
from opsdsl.runtime import store as S
from opsdsl.runtime.incident_sweep import IncidentSweep, folder_lock
from opsdsl.runtime.service import Service
from opsdsl.runtime.worker import Worker

PACK = """apiVersion: opsdsl/v1
kind: Pack
metadata: {name: swept, version: 1.0.0, owner: tests}
playbooks:
  swept:
    severity: SEV-4
    steps:
      - {id: a, action: assert, with: {that: 'true'}}
    finally:
      - {id: rca, action: report.rca, with: {title: Swept Again, summary: written by the run}}
"""


def finished_run(tmp_path: Path, state: Path | None = None) -> tuple[Path, Path, Path]:
    """(state, pack, incident folder) of one run of `swept` that ended and wrote its folder."""
    pack, state = tmp_path / "swept.yaml", state or tmp_path / "state"
    pack.write_text(PACK)
    before = set((state / "incidents").glob("*/*")) if state.exists() else set()
    result = opsdsl("run", "--pack", pack, "--playbook", "swept", "--state-dir", state)
    assert result.code == 0, result.stdout + result.stderr
    (folder,) = set((state / "incidents").glob("*/*")) - before
    return state, pack, folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file below `folder`: its bytes and modification time (ns)."""
    return {
        str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def verify(state: Path):
    return opsdsl("ledger", "verify", "--state-dir", state)


def test_a_serve_start_writes_the_folder_a_killed_process_left_as_the_run_wrote_it(tmp_path):
    state, pack, folder = finished_run(tmp_path)
    written = {name: data for name, (data, _) in snapshot(folder).items()}
    shutil.rmtree(folder)  # killed -9 between the run's end commit and its folder
    gone = verify(state)
    assert gone.code != 0 and "record.json is gone" in gone.stdout + gone.stderr

    async def main() -> None:
        service, _ = await started(state, pack)
        try:
            await asyncio.wrap_future(service.runtime.incident_writer.written())  # the sweep was queued first
        finally:
            await stop(service)

    asyncio.run(main())
    assert {name: data for name, (data, _) in snapshot(folder).items()} == written  # what the owner wrote
    intact = verify(state)
    assert intact.code == 0, intact.stdout + intact.stderr


def test_a_folder_with_its_record_is_left_byte_for_byte(tmp_path):
    state, _, folder = finished_run(tmp_path)
    (folder / "manifest.json").unlink()  # whatever else is wrong with it, a person's to look at
    (folder / "rca.md").write_text("edited by hand\n")
    before = snapshot(folder)
    time.sleep(0.01)
    report = IncidentSweep(state, state / "incidents").startup()
    assert (report.looked, report.written, report.refused) == (1, [], [])
    assert snapshot(folder) == before


def _one_missing(tmp_path: Path) -> tuple[Path, Path, str]:
    state, _, folder = finished_run(tmp_path)
    shutil.rmtree(folder)
    store = S.Store(state, create=False)
    try:
        (run_id,) = [run.id for run in store.runs()]
    finally:
        store.close()
    return state, folder, run_id


def _set_incident_dir(state: Path, run_id: str, incident_dir: str) -> None:
    store = S.Store(state, create=False)
    try:
        with store.transaction():
            store.update_run(run_id, incident_dir=incident_dir)
    finally:
        store.close()


def _files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize("attack", ["outside", "dotdot"])
def test_a_hostile_incident_dir_is_never_written(tmp_path, attack):
    state, folder, run_id = _one_missing(tmp_path)
    outside = tmp_path / "outside"
    year, incident = folder.parent.name, folder.name
    if attack == "outside":
        hostile = str(outside / year / incident)
    else:
        hostile = f"{state / 'incidents'}/{year}/../../../outside/{year}/{incident}"
    _set_incident_dir(state, run_id, hostile)
    report = IncidentSweep(state, state / "incidents").startup()
    assert (report.elsewhere, report.written, report.refused) == (1, [], [])
    assert _files_under(outside) == [] and not folder.exists()
    # the same row, named under the root but not the folder the ledger names for the run
    _set_incident_dir(state, run_id, str(state / "incidents" / year / "INC-someone-else"))
    report = IncidentSweep(state, state / "incidents").startup()
    assert (report.refused, report.written) == ([run_id], [])
    assert _files_under(state / "incidents") == [year] and _files_under(outside) == []


@pytest.mark.parametrize("link", ["year", "folder"])
def test_a_symlinked_year_or_folder_is_never_written_through(tmp_path, link):
    state, folder, run_id = _one_missing(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if link == "year":
        shutil.rmtree(folder.parent)
        folder.parent.symlink_to(elsewhere, target_is_directory=True)
    else:
        folder.symlink_to(elsewhere, target_is_directory=True)
    report = IncidentSweep(state, state / "incidents").startup()
    assert report.refused == [run_id] and report.written == []
    assert _files_under(elsewhere) == []


def test_a_living_workers_periodic_pass_writes_a_folder_a_dead_process_left(tmp_path):
    pack = tmp_path / "leased.yaml"
    pack.write_text(LEASED)
    state = tmp_path / "state"
    svc = Service(state, [runner.plan_from_pack(pack, [], state)])
    worker = Worker(svc, "w1", ttl=5, poll=0.05, incident_sweep=0.5)
    passes: list[sweep_module.SweepReport] = []
    real = IncidentSweep._pass

    def counted(self, window):
        report = real(self, window)
        passes.append(report)
        return report

    async def main() -> None:
        await worker.start()
        await until(lambda: len(passes) >= 1)  # its start-up pass: nothing to write yet
        _, _, folder = finished_run(tmp_path, state)  # another process ends a run ...
        shutil.rmtree(folder)  # ... and dies before its folder
        await until(lambda: folder.joinpath("manifest.json").is_file(), timeout=15)
        await worker.stop(5)
        assert any(report.written for report in passes[1:])

    setattr(IncidentSweep, "_pass", counted)  # noqa: B010
    try:
        asyncio.run(main())
    finally:
        IncidentSweep._pass = real
        svc.close()
    intact = verify(state)
    assert intact.code == 0, intact.stdout + intact.stderr


def test_a_run_whose_lease_is_held_waits_for_its_owner_then_the_next_pass(tmp_path):
    state, folder, run_id = _one_missing(tmp_path)
    store = S.Store(state, create=False)
    try:
        with store.transaction():
            store.conn.execute(
                "UPDATE runs SET lease_owner = 'w0', lease_until = ? WHERE id = ?", (store.now() + 30, run_id)
            )
        sweep = IncidentSweep(state, state / "incidents", grace=0)
        first = sweep.startup()
        assert first.busy == [run_id] and not folder.exists()  # its owner is alive: it writes the folder
        with store.transaction():
            store.conn.execute("UPDATE runs SET lease_until = ? WHERE id = ?", (store.now() - 1, run_id))
        second = sweep.periodic()  # the owner died (its lease lapsed): written, whatever the window
        assert second.written == [run_id] and (folder / "record.json").is_file()
    finally:
        store.close()


def test_two_sweeps_at_once_write_the_folder_once(tmp_path, monkeypatch, state_backend):
    state, folder, run_id = _one_missing(tmp_path)
    if state_backend == "postgresql":  # as on two machines: no shared lock file, only the database's lock
        import contextlib

        monkeypatch.setattr(runner.Runtime, "_lock", lambda self, run: contextlib.nullcontext())
    calls: list[tuple[float, float]] = []
    import opsdsl.audit.incident as incident

    real = incident.write_incident

    def slow_write(*args, **kwargs):
        start = time.monotonic()
        time.sleep(0.3)  # long enough for the other sweep to arrive meanwhile
        result = real(*args, **kwargs)
        calls.append((start, time.monotonic()))
        return result

    monkeypatch.setattr(incident, "write_incident", slow_write)
    barrier = threading.Barrier(2)
    reports: list[sweep_module.SweepReport] = []

    def one() -> None:
        barrier.wait()
        reports.append(IncidentSweep(state, state / "incidents").startup())

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1, calls
    assert [report.written for report in reports if report.written] == [[run_id]]
    assert (folder / "record.json").is_file()
    intact = verify(state)
    assert intact.code == 0, intact.stdout + intact.stderr


def test_the_sweep_waits_for_the_owners_write_and_then_leaves_it(tmp_path, state_backend):
    if state_backend != "postgresql":
        pytest.skip("SQLite: one process drives, and its sweep is queued behind its own writes")
    state, _, folder = finished_run(tmp_path)
    owners = {name: data for name, (data, _) in snapshot(folder).items()}
    shutil.rmtree(folder)
    store = S.Store(state, create=False)
    (run_id,) = [run.id for run in store.runs()]
    reports: list[sweep_module.SweepReport] = []
    try:
        with folder_lock(store, run_id):  # the owner's writer holds the folder's lock
            thread = threading.Thread(
                target=lambda: reports.append(IncidentSweep(state, state / "incidents").startup())
            )
            thread.start()
            thread.join(1.0)
            assert thread.is_alive() and not folder.exists()  # the sweep waits; it wrote nothing
            folder.mkdir(parents=True, mode=0o700)
            for name, data in owners.items():  # the owner writes its folder
                (folder / name).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                (folder / name).write_bytes(data)
        thread.join(30)
    finally:
        store.close()
    assert reports[0].written == [] and reports[0].refused == []
    assert {name: data for name, (data, _) in snapshot(folder).items()} == owners


def test_the_folder_lock_is_not_a_runs_transaction_lock():
    from opsdsl.runtime.database import WRITER_LOCK, _run_lock

    key = sweep_module.folder_lock_key("20261207-000000-abc")
    assert key not in (WRITER_LOCK, _run_lock("20261207-000000-abc")) and 0 < key < 2**63


def test_the_worker_flag_takes_a_duration_or_off():
    import click

    from opsdsl.cli.worker import _sweep_seconds

    assert _sweep_seconds(None, None, "60s") == 60.0 and _sweep_seconds(None, None, "0s") == 0.0
    assert _sweep_seconds(None, None, "off") is None  # each machine keeps its own folders
    with pytest.raises(click.BadParameter):
        _sweep_seconds(None, None, "soon")
