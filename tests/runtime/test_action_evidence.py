"""The `evidence.collect` action: real files, a real HTTP server and real commands."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_action_http import RecordingServer

from opsdsl.runtime.actions import load_action
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.evidence import EvidenceCollectAction

PY = sys.executable
SECRET = "hunter2"


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


def request(inputs: dict[str, Any], step_id: str = "collect") -> ActionRequest:
    return ActionRequest(
        run_id="run-9",
        step_id=step_id,
        action="evidence.collect",
        inputs=inputs,
        attempt=1,
        idempotency_key=f"run-9:{step_id}",
        timeout=30.0,
    )


def context(evidence_dir: Path) -> ActionContext:
    """Files may come from the folder around the evidence folder (the test's tmp_path)."""
    return ActionContext(
        evidence_dir=evidence_dir,
        redact=lambda text: text.replace(SECRET, "***"),
        redact_bytes=lambda data: data.replace(SECRET.encode(), b"***"),
        evidence_roots=(evidence_dir.parent,),
    )


def collect(evidence_dir: Path, inputs: dict[str, Any], step_id: str = "collect") -> dict[str, Any]:
    return asyncio.run(EvidenceCollectAction().run(request(inputs, step_id), context(evidence_dir)))


def assert_manifest_matches_disk(evidence_dir: Path, files: list[dict[str, Any]]) -> None:
    for entry in files:
        data = (evidence_dir / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data)


def test_registry_returns_the_evidence_action() -> None:
    assert isinstance(load_action("evidence.collect"), EvidenceCollectAction)


def test_files_urls_and_commands_are_collected_with_a_manifest(tmp_path: Path, server: RecordingServer) -> None:
    log = tmp_path / "kernel.log"
    log.write_text("boot ok\nOOM killer woke up\n")
    server.reply("/metrics", 200, {"p95_ms": 420}, headers={"Content-Type": "application/json; charset=utf-8"})
    evidence = tmp_path / "evidence"
    outputs = collect(
        evidence,
        {
            "name": "db-state",
            "files": [str(log)],
            "urls": [server.url("/metrics")],
            "commands": [[PY, "-c", "import sys; print('locks: 3'); sys.stderr.write('warn'); sys.exit(4)"]],
        },
    )
    paths = [entry["path"] for entry in outputs["files"]]
    assert paths == [
        "db-state/file-01-kernel.log",
        "db-state/url-01-127.0.0.1.json",
        "db-state/command-01-" + Path(PY).name + ".stdout",
        "db-state/command-01-" + Path(PY).name + ".stderr",
        "db-state/sources.json",
    ]
    assert outputs["name"] == "db-state"
    assert_manifest_matches_disk(evidence, outputs["files"])
    assert (evidence / paths[0]).read_text() == log.read_text()
    assert json.loads((evidence / paths[1]).read_text()) == {"p95_ms": 420}
    assert (evidence / paths[2]).read_text() == "locks: 3\n"
    assert (evidence / paths[3]).read_text() == "warn"
    sources = json.loads((evidence / "db-state" / "sources.json").read_text())
    assert sources["step_id"] == "collect"
    assert [source["kind"] for source in sources["sources"]] == ["file", "url", "command"]
    assert sources["sources"][1]["status"] == 200
    assert sources["sources"][2]["exit_code"] == 4  # a failing command is evidence, not a failure


def test_every_byte_is_redacted(tmp_path: Path, server: RecordingServer) -> None:
    secret_file = tmp_path / "env.txt"
    secret_file.write_text(f"DB_PASSWORD={SECRET}\n")
    server.reply("/config", 200, f"token: {SECRET}")
    evidence = tmp_path / "evidence"
    outputs = collect(
        evidence,
        {
            "name": "config",
            "files": [str(secret_file)],
            "urls": [server.url(f"/config?token={SECRET}")],
            "commands": [[PY, "-c", "import sys; print(sys.argv[1])", SECRET]],
        },
    )
    assert_manifest_matches_disk(evidence, outputs["files"])
    for entry in outputs["files"]:
        assert SECRET.encode() not in (evidence / entry["path"]).read_bytes(), entry["path"]
    assert (evidence / "config" / "file-01-env.txt").read_text() == "DB_PASSWORD=***\n"


def test_a_missing_file_fails_but_keeps_what_was_collected(tmp_path: Path) -> None:
    present = tmp_path / "present.txt"
    present.write_text("here")
    evidence = tmp_path / "evidence"
    with pytest.raises(ActionFailed) as caught:
        collect(evidence, {"name": "logs", "files": [str(tmp_path / "absent.log"), str(present)]})
    assert not caught.value.retryable
    assert "absent.log" in caught.value.message
    files = caught.value.outputs["files"]
    assert [entry["path"] for entry in files] == ["logs/file-02-present.txt", "logs/sources.json"]
    assert_manifest_matches_disk(evidence, files)


def test_a_failing_url_fails_retryably_and_keeps_the_error_page(tmp_path: Path, server: RecordingServer) -> None:
    server.reply("/health", 503, "overloaded")
    evidence = tmp_path / "evidence"
    with pytest.raises(ActionFailed) as caught:
        collect(evidence, {"name": "health", "urls": [server.url("/health")]})
    assert caught.value.retryable
    assert "503" in caught.value.message
    assert (evidence / "health" / "url-01-127.0.0.1.body").read_text() == "overloaded"


def test_a_missing_program_fails(tmp_path: Path) -> None:
    with pytest.raises(ActionFailed) as caught:
        collect(tmp_path / "evidence", {"name": "cmd", "commands": [["opsdsl-no-such-program-xyz"]]})
    assert not caught.value.retryable
    assert "not found" in caught.value.message


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "a\\b", "/abs"])
def test_names_with_path_separators_are_refused(tmp_path: Path, name: str) -> None:
    log = tmp_path / "x.log"
    log.write_text("x")
    with pytest.raises(ActionFailed) as caught:
        collect(tmp_path / "evidence", {"name": name, "files": [str(log)]})
    assert not caught.value.retryable
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "evidence").exists()


def test_sources_never_choose_where_files_go(tmp_path: Path, server: RecordingServer) -> None:
    inner = tmp_path / "deep" / "dir"
    inner.mkdir(parents=True)
    (tmp_path / "..secret").write_text("s")
    server.reply("/b", 200, "b")  # httpx normalises the dot segments away
    evidence = tmp_path / "evidence"
    outputs = collect(
        evidence,
        {
            "name": "tricky",
            "files": [str(tmp_path / "..secret")],
            "urls": [server.url("/a/../../b")],
            "commands": [[PY, "-c", "print(1)"]],
        },
    )
    folder = (evidence / "tricky").resolve()
    for entry in outputs["files"]:
        assert (evidence / entry["path"]).resolve().parent == folder
    assert sorted(path.name for path in folder.iterdir())[0] == "command-01-" + Path(PY).name + ".stderr"
    assert (folder / "file-01-secret").read_text() == "s"


def test_a_second_step_cannot_reuse_an_item_name(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("x")
    evidence = tmp_path / "evidence"
    collect(evidence, {"name": "shared", "files": [str(log)]}, step_id="first")
    collect(evidence, {"name": "shared", "files": [str(log)]}, step_id="first")  # a retry may overwrite
    with pytest.raises(ActionFailed) as caught:
        collect(evidence, {"name": "shared", "files": [str(log)]}, step_id="second")
    assert not caught.value.retryable
    assert "'first'" in caught.value.message


def test_at_least_one_source_is_required(tmp_path: Path) -> None:
    with pytest.raises(ActionFailed) as caught:
        collect(tmp_path / "evidence", {"name": "nothing"})
    assert not caught.value.retryable
    assert "at least one of" in caught.value.message


def test_a_symlinked_item_folder_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("x")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    evidence = tmp_path / "evidence"
    evidence.mkdir()
    (evidence / "linked").symlink_to(elsewhere)
    with pytest.raises(ActionFailed, match="symlink") as caught:
        collect(evidence, {"name": "linked", "files": [str(log)]})
    assert not caught.value.retryable
    assert list(elsewhere.iterdir()) == []
