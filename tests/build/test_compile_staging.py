"""A build's staged plans (d2e296c: the workers sign each plan into a hidden temporary file
beside its plan file): whatever stops a build, failure, exception, Ctrl-C or SIGTERM, it
leaves no staged file and no folder it made; a build killed outright leaves them to the next."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.build import plans

ROOT = Path(__file__).resolve().parents[2]


def _tree(tmp_path: Path, count: int = 20) -> Path:
    shutil.copytree(ROOT / "packs", tmp_path / "packs")
    sev4 = (tmp_path / "packs" / "sev4.yaml").read_text()
    for i in range(count):
        text = sev4.replace("name: sqlx-sev4", f"name: sqlx-extra-{i:02}", 1)
        (tmp_path / "packs" / f"extra-{i:02}.yaml").write_text(text)
    return tmp_path


def _left(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def test_a_worker_failing_to_stage_one_plan_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    tree = _tree(tmp_path)
    real = plans._signed

    def failing(target: Path, payload: bytes, keys):  # inherited by the forked workers
        if target.name == "sqlx-extra-07.plan.dsse.json":
            raise OSError(28, "No space left on device")
        return real(target, payload, keys)

    monkeypatch.setattr(plans, "_signed", failing)
    out = tree / "build"
    with pytest.raises(OSError):
        plans.compile_paths([tree / "packs"], out, keys=[Ed25519PrivateKey.generate()], jobs=2)
    assert _left(out) == []  # the other worker's staged plans are removed too, and the new folder
    assert not out.exists()


def test_a_worker_failing_leaves_an_earlier_build_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    tree = _tree(tmp_path)
    out = tree / "build"
    key = Ed25519PrivateKey.generate()
    assert not plans.compile_paths([tree / "packs"], out, keys=[key], jobs=2).failed
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for path in (tree / "packs").glob("extra-*.yaml"):  # every plan changes
        path.write_text(path.read_text().replace("sqlx", "sqly"))
    real = plans._signed

    def failing(target: Path, payload: bytes, keys):
        if target.name == "sqly-extra-07.plan.dsse.json":
            raise OSError(28, "No space left on device")
        return real(target, payload, keys)

    monkeypatch.setattr(plans, "_signed", failing)
    with pytest.raises(OSError):
        plans.compile_paths([tree / "packs"], out, keys=[key], jobs=2)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_an_interrupt_while_planning_in_process_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    tree = _tree(tmp_path)
    real = plans.plan_file

    def interrupted(path: Path, *args, **kwargs):
        if path.name == "extra-10.yaml":
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(plans, "plan_file", interrupted)
    out = tree / "build"
    with pytest.raises(KeyboardInterrupt):
        plans.compile_paths([tree / "packs"], out, keys=[Ed25519PrivateKey.generate()], jobs=1)
    assert _left(out) == []


@pytest.mark.parametrize("how", ["sigterm-to-the-parent", "sigint-to-the-group"])
def test_a_compile_stopped_by_a_signal_leaves_no_temp_file_and_no_worker(tmp_path: Path, how: str):
    """`timeout`, a CI runner or a supervisor sends SIGTERM to opsdsl's own pid; Ctrl-C sends
    SIGINT to the whole process group. Either way the build removes what its workers staged,
    and no worker outlives it, staging plans into hidden files nobody removes."""
    tree = _tree(tmp_path, count=60)
    assert subprocess.run([sys.executable, "-m", "opsdsl", "keygen", "--out", "ci.key"], cwd=tree).returncode == 0
    out = tree / "build"
    proc = subprocess.Popen(
        [sys.executable, "-m", "opsdsl", "compile", "packs", "-o", "build", "--key", "ci.key", "-j", "2"],
        cwd=tree,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()):
            break
        time.sleep(0.005)
    else:
        pytest.skip("no plan was staged before the build ended")
    if how == "sigterm-to-the-parent":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=30) == (128 + signal.SIGTERM if how == "sigterm-to-the-parent" else 130)
    gone = False
    while time.monotonic() < deadline:  # until every process of the build has gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            gone = True
            break
        time.sleep(0.05)
    assert gone, "a planning worker outlived the build"
    assert _left(out) == []  # a first build: no staged file, and no folder


def test_a_worker_whose_build_has_gone_stops_and_removes_what_it_staged(tmp_path: Path):
    tree = _tree(tmp_path, count=4)
    out = tree / "build"
    out.mkdir()
    plans._SIGNING_KEYS = (Ed25519PrivateKey.generate(),)
    try:
        files = sorted((tree / "packs").glob("extra-*.yaml"))
        gone = 2**22 + 12345  # neither this process nor its parent
        assert gone not in (os.getpid(), os.getppid())
        args = (files, [], "", out, {}, (), 1, "0123456789abcdef", gone)
        with pytest.raises(SystemExit):
            plans._plan_chunk(args)
        assert _left(out) == []
        # its own build still there: it plans and stages
        done = plans._plan_chunk((*args[:-1], os.getpid()))
        assert [r.status for r in done] == ["planned"] * 4
        staged = _left(out)
        assert len(staged) == 4 and all(name.endswith(".0123456789abcdef.tmp") for name in staged)
    finally:
        plans._SIGNING_KEYS = ()


def test_the_next_compile_removes_staged_files_of_a_killed_build_and_nothing_else(tmp_path: Path):
    tree = _tree(tmp_path, count=2)
    out = tree / "build"
    key = Ed25519PrivateKey.generate()
    assert not plans.compile_paths([tree / "packs"], out, keys=[key]).failed
    stale = [
        ".sqlx-sev1.plan.dsse.json.4294967.0badf00d.0123456789abcdef.tmp",  # a killed build's
        ".sqlx-gone.plan.dsse.json.4294967.0badf00d.0123456789abcdef.tmp",
        ".sqlx-sev2.plan.dsse.json.4294967.deadbeef.tmp",  # as d2e296c named them
    ]
    kept = [
        f".sqlx-sev2.plan.dsse.json.{os.getpid()}.0badf00d.0123456789abcdef.tmp",  # its worker runs
        ".notes.tmp",
        "mine.plan.dsse.json.4294967.0badf00d.0123456789abcdef.tmp",  # not hidden
        ".sqlx-sev1.plan.dsse.json.x.0badf00d.tmp",
        ".sqlx-sev1.plan.dsse.json.4294967.0badf00d.0123456789abcdef.tmp.keep",
    ]
    for name in stale + kept:
        (out / name).write_bytes(b"x")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    link = ".sqlx-sev3.plan.dsse.json.4294967.0badf00d.0123456789abcdef.tmp"
    (out / link).symlink_to(outside)
    folder = ".sqlx-sev4.plan.dsse.json.4294967.0badf00d.0123456789abcdef.tmp"
    (out / folder).mkdir()
    assert not plans.compile_paths([tree / "packs"], out, keys=[key]).failed
    names = set(_left(out))
    assert not names & set(stale)
    assert set(kept) | {link, folder} <= names
    assert outside.read_text() == "keep"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_killed_worker_not_yet_reaped_counts_as_gone(tmp_path: Path):
    """Killed with its build (SIGKILL to the group), a worker may stay a zombie for a while,
    or for good under a container init that does not reap: its staged files are stale."""
    tree = _tree(tmp_path, count=1)
    out = tree / "build"
    key = Ed25519PrivateKey.generate()
    assert not plans.compile_paths([tree / "packs"], out, keys=[key]).failed
    zombie = subprocess.Popen(["sleep", "30"])
    try:
        zombie.kill()
        deadline = time.monotonic() + 10
        while b") Z" not in Path(f"/proc/{zombie.pid}/stat").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        name = f".sqlx-sev1.plan.dsse.json.{zombie.pid}.0badf00d.0123456789abcdef.tmp"
        (out / name).write_bytes(b"x")
        assert not plans.compile_paths([tree / "packs"], out, keys=[key]).failed
        assert name not in _left(out)
    finally:
        zombie.wait()


def test_compile_restores_the_sigterm_handler_after_a_build(tmp_path: Path):
    tree = _tree(tmp_path, count=1)
    assert not plans.compile_paths([tree / "packs"], tree / "build", keys=[Ed25519PrivateKey.generate()]).failed
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_failed_first_build_leaves_no_parent_folders(tmp_path: Path):
    """Before d2e296c a failed build created nothing; d2e296c made OUT before planning and
    removed only OUT itself again, so `-o nest/a/b` left `nest/a` behind."""
    (tmp_path / "bad.yaml").write_text("apiVersion: opsdsl/v1\nkind: Pack\n")
    result = plans.compile_paths([tmp_path / "bad.yaml"], tmp_path / "nest" / "a" / "b")
    assert result.failed
    assert not (tmp_path / "nest").exists()


def test_a_failed_build_keeps_parent_folders_it_did_not_make(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text("apiVersion: opsdsl/v1\nkind: Pack\n")
    (tmp_path / "nest").mkdir()
    result = plans.compile_paths([tmp_path / "bad.yaml"], tmp_path / "nest" / "a" / "b")
    assert result.failed
    assert _left(tmp_path / "nest") == []
    assert (tmp_path / "nest").is_dir()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
def test_a_worker_reports_staged_plans_only_once_each_is_flushed_to_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The build renames what a worker reports into place: by then each staged file must be
    on disk in full (the worker flushes them together once its chunk is planned)."""
    tree = _tree(tmp_path, count=6)
    out = tree / "build"
    out.mkdir()
    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, os.fstat(fd).st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    plans._SIGNING_KEYS = (Ed25519PrivateKey.generate(),)
    try:
        files = sorted((tree / "packs").glob("extra-*.yaml"))
        done = plans._plan_chunk((files, [], "", out, {}, (), 1, "0123456789abcdef", os.getpid()))
    finally:
        plans._SIGNING_KEYS = ()
    temps = [r.temp for r in done]
    assert len(temps) == 6 and all(temps)
    assert {path for path, _ in synced} >= set(temps)
    for path, size in synced:
        assert size == os.path.getsize(path) > 0
