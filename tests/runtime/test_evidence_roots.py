"""`evidence.collect` against hostile paths and URLs: each attack from the "event data is
hostile" findings, on real files, a real FIFO and real HTTP servers on 127.0.0.1.

Whoever sets an alert label controls `files: ["${{ event.labels.path }}"]`; these tests
give the action such paths directly and check that nothing outside the operator's
evidence roots, and nothing secret inside them, is ever copied.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_action_http import RecordingServer

from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.evidence import ROOTS_ENV, EvidenceCollectAction

PY = sys.executable


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


@pytest.fixture
def other_server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """A state directory (database, dev key, an incident's evidence folder) and, apart from
    it, the operator's log folder (the one evidence root) and a private folder outside it."""
    state = tmp_path / "state"
    (state / "keys").mkdir(parents=True)
    (state / "state.db").write_bytes(b"SQLite format 3\0runs and params")
    (state / "keys" / "dev.key").write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n")
    evidence = state / "incidents" / "2026" / "INC-1" / "evidence"
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("started\nOOM\n")
    private = tmp_path / "private"
    private.mkdir()
    (private / "passwd").write_text("root:x:0:0\n")
    return {"state": state, "evidence": evidence, "logs": logs, "private": private}


def request(inputs: dict[str, Any]) -> ActionRequest:
    return ActionRequest(
        run_id="run-1",
        step_id="collect",
        action="evidence.collect",
        inputs=inputs,
        attempt=1,
        idempotency_key="run-1:collect",
        timeout=10.0,
    )


def collect(layout: dict[str, Path], inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    context.setdefault("evidence_roots", (layout["logs"],))
    action_context = ActionContext(evidence_dir=layout["evidence"], **context)
    return asyncio.run(asyncio.wait_for(EvidenceCollectAction().run(request(inputs), action_context), 10))


def refused(layout: dict[str, Path], path: str | Path, **context: Any) -> str:
    """The failure message for collecting `path`; nothing but sources.json was written."""
    with pytest.raises(ActionFailed) as caught:
        collect(layout, {"name": "item", "files": [str(path)]}, **context)
    assert not caught.value.retryable
    assert [entry["path"] for entry in caught.value.outputs["files"]] == ["item/sources.json"]
    return caught.value.message


def evidence_bytes(layout: dict[str, Path]) -> bytes:
    return b"".join(path.read_bytes() for path in layout["evidence"].rglob("*") if path.is_file())


# ---- roots ----------------------------------------------------------------------------------


def test_a_file_under_a_root_is_collected(layout: dict[str, Path]) -> None:
    outputs = collect(layout, {"name": "logs", "files": [str(layout["logs"] / "app.log")]})
    assert [entry["path"] for entry in outputs["files"]] == ["logs/file-01-app.log", "logs/sources.json"]
    assert (layout["evidence"] / "logs" / "file-01-app.log").read_text() == "started\nOOM\n"


def test_without_roots_no_file_is_read(layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ROOTS_ENV, raising=False)
    message = refused(layout, layout["logs"] / "app.log", evidence_roots=None)
    assert "no evidence roots are configured" in message
    assert ROOTS_ENV in message


def test_roots_come_from_the_environment(layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_ENV, f"{layout['private']}{os.pathsep}{layout['logs']}")
    outputs = collect(layout, {"name": "logs", "files": [str(layout["logs"] / "app.log")]}, evidence_roots=None)
    assert outputs["files"][0]["path"] == "logs/file-01-app.log"


def test_a_relative_root_is_refused(layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOTS_ENV, "logs")
    with pytest.raises(ActionFailed, match="not an absolute path") as caught:
        collect(layout, {"name": "logs", "files": [str(layout["logs"] / "app.log")]}, evidence_roots=None)
    assert not caught.value.retryable


def test_a_file_outside_the_roots_is_refused(layout: dict[str, Path]) -> None:
    message = refused(layout, layout["private"] / "passwd")
    assert "outside the evidence roots" in message
    assert b"root:x" not in evidence_bytes(layout)


def test_a_relative_path_is_refused(layout: dict[str, Path]) -> None:
    assert "absolute path" in refused(layout, "logs/app.log")


# ---- the findings --------------------------------------------------------------------------


def test_proc_self_environ_is_never_read_whatever_the_roots(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSDSL_TOKEN", "serve-bearer-token-123456")
    message = refused(layout, "/proc/self/environ", evidence_roots=(Path("/"),))
    assert "never collected" in message
    assert b"serve-bearer-token" not in evidence_bytes(layout)


def test_dotdot_from_a_root_to_proc_is_refused(layout: dict[str, Path]) -> None:
    # The label `../../proc/self/environ` appended to a root.
    message = refused(layout, f"{layout['logs']}/../../../../../../proc/self/environ")
    assert "`..`" in message


def test_dotdot_within_the_roots_is_refused_too(layout: dict[str, Path]) -> None:
    (layout["logs"] / "sub").mkdir()
    assert "`..`" in refused(layout, layout["logs"] / "sub" / ".." / "app.log")


def test_the_state_dirs_private_key_is_never_read(layout: dict[str, Path]) -> None:
    key = layout["state"] / "keys" / "dev.key"
    # The roots even include the state directory: it is refused anyway.
    assert "never collected" in refused(layout, key, evidence_roots=(layout["state"],))
    assert b"PRIVATE KEY" not in evidence_bytes(layout)


def test_the_state_database_is_never_read(layout: dict[str, Path]) -> None:
    message = refused(layout, layout["state"] / "state.db", evidence_roots=(layout["state"].parent,))
    assert "never collected" in message


def test_the_state_dir_named_by_the_runtime_is_never_read(layout: dict[str, Path], tmp_path: Path) -> None:
    elsewhere = tmp_path / "other-state"
    elsewhere.mkdir()
    (elsewhere / "runs.txt").write_text("params")
    message = refused(layout, elsewhere / "runs.txt", evidence_roots=(tmp_path,), state_dir=elsewhere)
    assert "never collected" in message


@pytest.mark.parametrize("name", ["server.key", "TLS.KEY", "id_rsa", "id_ed25519"])
def test_key_files_are_never_read_even_inside_a_root(layout: dict[str, Path], name: str) -> None:
    (layout["logs"] / name).write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert "private key" in refused(layout, layout["logs"] / name)
    assert b"PRIVATE KEY" not in evidence_bytes(layout)


def test_a_symlink_in_a_root_to_a_file_outside_is_refused(layout: dict[str, Path]) -> None:
    (layout["logs"] / "innocent.log").symlink_to(layout["state"] / "keys" / "dev.key")
    assert "symlink" in refused(layout, layout["logs"] / "innocent.log")
    assert b"PRIVATE KEY" not in evidence_bytes(layout)


def test_a_symlinked_folder_in_a_root_is_refused(layout: dict[str, Path]) -> None:
    (layout["logs"] / "more").symlink_to(layout["private"])
    assert "symlink" in refused(layout, layout["logs"] / "more" / "passwd")
    assert b"root:x" not in evidence_bytes(layout)


def test_a_symlink_to_proc_in_a_root_is_refused(layout: dict[str, Path]) -> None:
    (layout["logs"] / "env").symlink_to("/proc/self/environ")
    assert "symlink" in refused(layout, layout["logs"] / "env")


def test_a_hard_link_to_a_file_outside_the_roots_is_refused(layout: dict[str, Path]) -> None:
    os.link(layout["private"] / "passwd", layout["logs"] / "copy.log")
    assert "hard links" in refused(layout, layout["logs"] / "copy.log")
    assert b"root:x" not in evidence_bytes(layout)


def test_a_fifo_is_refused_without_hanging(layout: dict[str, Path]) -> None:
    fifo = layout["logs"] / "pipe.log"
    os.mkfifo(fifo)
    assert "FIFO" in refused(layout, fifo)  # collect() gives up after 10 s: it must not block


def test_a_device_is_refused(layout: dict[str, Path]) -> None:
    assert "never collected" in refused(layout, "/dev/zero", evidence_roots=(Path("/dev"),))


def test_a_directory_is_refused(layout: dict[str, Path]) -> None:
    (layout["logs"] / "sub").mkdir()
    assert "is a directory" in refused(layout, layout["logs"] / "sub")


def test_a_root_that_is_itself_a_symlink_is_the_operators_choice(layout: dict[str, Path], tmp_path: Path) -> None:
    alias = tmp_path / "logs-alias"
    alias.symlink_to(layout["logs"])
    outputs = collect(layout, {"name": "logs", "files": [str(alias / "app.log")]}, evidence_roots=(alias,))
    assert outputs["files"][0]["path"] == "logs/file-01-app.log"


def test_refusals_do_not_stop_the_other_sources(layout: dict[str, Path]) -> None:
    with pytest.raises(ActionFailed) as caught:
        collect(
            layout,
            {
                "name": "mixed",
                "files": ["/proc/self/environ", str(layout["logs"] / "app.log")],
                "commands": [[PY, "-c", "print('ok')"]],
            },
        )
    paths = [entry["path"] for entry in caught.value.outputs["files"]]
    assert "mixed/file-02-app.log" in paths
    assert "mixed/command-01-" + Path(PY).name + ".stdout" in paths


# ---- what is written -----------------------------------------------------------------------


def test_evidence_is_written_0600_in_0700_folders(layout: dict[str, Path]) -> None:
    collect(layout, {"name": "logs", "files": [str(layout["logs"] / "app.log")], "commands": [[PY, "-V"]]})
    folder = layout["evidence"] / "logs"
    assert stat.S_IMODE(layout["evidence"].stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = list(folder.iterdir())
    assert files
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}


def test_a_secret_in_a_source_path_does_not_name_the_evidence_file(layout: dict[str, Path]) -> None:
    secret = "tok-5f4e3d2c1b0a"
    (layout["logs"] / f"{secret}.log").write_text("x")
    outputs = collect(
        layout,
        {"name": "logs", "files": [str(layout["logs"] / f"{secret}.log")]},
        redact=lambda text: text.replace(secret, "***"),
    )
    assert secret not in outputs["files"][0]["path"]
    assert all(secret not in path.name for path in (layout["evidence"] / "logs").iterdir())


# ---- commands ------------------------------------------------------------------------------


@pytest.mark.parametrize("commands", [["cat /etc/passwd; echo pwned"], [[]], "echo hi"])
def test_commands_must_be_argument_vectors(layout: dict[str, Path], commands: Any) -> None:
    with pytest.raises(ActionFailed, match="invalid inputs") as caught:
        collect(layout, {"name": "cmd", "commands": commands})
    assert not caught.value.retryable
    assert not (layout["evidence"] / "cmd").exists()


def test_a_command_argument_is_never_run_by_a_shell(layout: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    outputs = collect(layout, {"name": "cmd", "commands": [["echo", f"x; touch {marker}"]]})
    assert not marker.exists()
    stdout = next(entry for entry in outputs["files"] if entry["path"].endswith(".stdout"))
    assert (layout["evidence"] / stdout["path"]).read_text() == f"x; touch {marker}\n"


# ---- urls ----------------------------------------------------------------------------------


def test_a_redirect_to_another_origin_is_not_followed(
    layout: dict[str, Path], server: RecordingServer, other_server: RecordingServer
) -> None:
    other_server.reply("/steal", 200, "internal metadata")
    # Same host, another port: another origin.
    server.reply("/metrics", 302, "", headers={"Location": other_server.url("/steal")})
    with pytest.raises(ActionFailed, match="another origin") as caught:
        collect(layout, {"name": "web", "urls": [server.url("/metrics")]})
    assert not caught.value.retryable
    assert other_server.requests == []
    assert b"internal metadata" not in evidence_bytes(layout)


def test_a_same_origin_redirect_is_followed(layout: dict[str, Path], server: RecordingServer) -> None:
    server.reply("/old", 301, "", headers={"Location": "/new"})
    server.reply("/new", 200, "moved here")
    outputs = collect(layout, {"name": "web", "urls": [server.url("/old")]})
    (saved,) = [entry for entry in outputs["files"] if entry["path"].startswith("web/url-01")]
    assert (layout["evidence"] / saved["path"]).read_text() == "moved here"
    assert [request.path for request in server.requests] == ["/old", "/new"]


def test_a_redirect_loop_stops_after_a_few_hops(layout: dict[str, Path], server: RecordingServer) -> None:
    server.reply("/loop", 302, "", headers={"Location": "/loop"})
    with pytest.raises(ActionFailed, match="redirected more than 3 times"):
        collect(layout, {"name": "web", "urls": [server.url("/loop")]})
    assert len(server.requests) == 4
