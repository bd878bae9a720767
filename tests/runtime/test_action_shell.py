"""The `shell` action against real subprocesses: argv, environment, limits, cancellation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opsdsl.runtime.actions import load_action
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.shell import ShellAction

PY = sys.executable


def request(inputs: dict[str, Any], attempt: int = 1) -> ActionRequest:
    return ActionRequest(
        run_id="run-1",
        step_id="check",
        action="shell",
        inputs=inputs,
        attempt=attempt,
        idempotency_key="run-1:check",
        timeout=None,
    )


def context(tmp_path: Path, secret: str | None = None) -> ActionContext:
    if secret is None:
        return ActionContext(evidence_dir=tmp_path / "evidence")
    return ActionContext(evidence_dir=tmp_path / "evidence", redact=lambda text: text.replace(secret, "***"))


def run_shell(tmp_path: Path, inputs: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    return asyncio.run(ShellAction().run(request(inputs), context(tmp_path, secret)))


def process_gone(pid: int, within: float = 5.0) -> bool:
    """Whether `pid` no longer runs: absent, or a zombie nobody has reaped yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state = "?"
        if state == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


async def wait_for_file(path: Path, within: float = 20.0) -> str:
    deadline = time.monotonic() + within
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} was never written")
        await asyncio.sleep(0.02)
    return path.read_text()


def test_registry_returns_the_shell_action() -> None:
    assert isinstance(load_action("shell"), ShellAction)


def test_arguments_are_never_parsed_by_a_shell(tmp_path: Path) -> None:
    hostile = "$(touch pwned); `touch pwned` && echo no"
    outputs = run_shell(tmp_path, {"argv": [PY, "-c", "import sys; print(sys.argv[1])", hostile], "cwd": str(tmp_path)})
    assert outputs == {"exit_code": 0, "stdout": hostile + "\n", "stderr": "", "truncated": False}
    assert not (tmp_path / "pwned").exists()


def test_unexpected_exit_code_fails_with_outputs(tmp_path: Path) -> None:
    script = "import sys; print('partial'); sys.stderr.write('boom: disk full\\n'); sys.exit(3)"
    with pytest.raises(ActionFailed) as caught:
        run_shell(tmp_path, {"argv": [PY, "-c", script]})
    failure = caught.value
    assert failure.retryable
    assert failure.outputs["exit_code"] == 3
    assert failure.outputs["stdout"] == "partial\n"
    assert "exited with 3 (expected 0)" in failure.message
    assert failure.message.endswith("boom: disk full")


def test_expect_exit_accepts_listed_codes(tmp_path: Path) -> None:
    outputs = run_shell(tmp_path, {"argv": [PY, "-c", "raise SystemExit(1)"], "expect_exit": [0, 1]})
    assert outputs["exit_code"] == 1


def test_environment_is_an_allowlist_plus_env_and_run_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSDSL_TEST_PARENT_ONLY", "must-not-leak")
    monkeypatch.setenv("HOME", str(tmp_path))
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    outputs = run_shell(tmp_path, {"argv": [PY, "-c", script], "env": {"CLUSTER": "eu-1"}})
    env = json.loads(outputs["stdout"])
    assert "OPSDSL_TEST_PARENT_ONLY" not in env
    assert env["CLUSTER"] == "eu-1"
    assert env["HOME"] == str(tmp_path)
    assert env["OPSDSL_RUN_ID"] == "run-1"
    assert env["OPSDSL_STEP_ID"] == "check"
    assert env["OPSDSL_IDEMPOTENCY_KEY"] == "run-1:check"
    allowed = {"PATH", "HOME", "LANG", "CLUSTER", "OPSDSL_RUN_ID", "OPSDSL_STEP_ID", "OPSDSL_IDEMPOTENCY_KEY"}
    # The interpreter may add a few of its own (LC_CTYPE on some platforms); nothing from our env.
    assert {name for name in env if name not in allowed} <= {"LC_CTYPE", "__CF_USER_TEXT_ENCODING"}


def test_cwd_and_stdin(tmp_path: Path) -> None:
    script = "import os, sys; print(os.getcwd()); print(sys.stdin.read().upper())"
    outputs = run_shell(tmp_path, {"argv": [PY, "-c", script], "cwd": str(tmp_path), "stdin": "drain the node"})
    assert outputs["stdout"] == f"{tmp_path}\nDRAIN THE NODE\n"


def test_output_is_capped_and_the_child_is_drained(tmp_path: Path) -> None:
    # 8 MiB on each stream: far beyond any pipe buffer, so a reader that stopped would hang.
    script = "import sys; [s.write('x' * 65536) for _ in range(128) for s in (sys.stdout, sys.stderr)]"
    inputs = {"argv": [PY, "-c", script], "output_limit": 1024}
    outputs = asyncio.run(asyncio.wait_for(ShellAction().run(request(inputs), context(tmp_path)), 60))
    assert outputs["exit_code"] == 0
    assert outputs["stdout"] == "x" * 1024
    assert outputs["stderr"] == "x" * 1024
    assert outputs["truncated"] is True


def test_missing_program_is_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(ActionFailed) as caught:
        run_shell(tmp_path, {"argv": ["opsdsl-no-such-program-xyz", "--help"]})
    assert not caught.value.retryable
    assert "'opsdsl-no-such-program-xyz' not found" in caught.value.message


def test_missing_cwd_is_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(ActionFailed) as caught:
        run_shell(tmp_path, {"argv": [PY, "-c", "pass"], "cwd": str(tmp_path / "absent")})
    assert not caught.value.retryable
    assert "is not a directory" in caught.value.message


def test_rendered_inputs_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ActionFailed) as caught:
        run_shell(tmp_path, {"argv": [PY, 5]})
    assert not caught.value.retryable
    assert "with.argv[1]: 5 is not of type 'string'" in caught.value.message


def test_secrets_in_output_and_failures_are_redacted(tmp_path: Path) -> None:
    script = "import sys; print('token=hunter2'); sys.stderr.write('bad token hunter2'); sys.exit(2)"
    with pytest.raises(ActionFailed) as caught:
        run_shell(tmp_path, {"argv": [PY, "-c", script]}, secret="hunter2")
    assert caught.value.outputs["stdout"] == "token=***\n"
    assert caught.value.outputs["stderr"] == "bad token ***"
    assert "hunter2" not in caught.value.message
    outputs = run_shell(tmp_path, {"argv": [PY, "-c", "print('hunter2')"]}, secret="hunter2")
    assert outputs["stdout"] == "***\n"


SPAWN_AND_SLEEP = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open(sys.argv[1] + ".tmp", "w") as handle:
    handle.write(f"{os.getpid()} {grandchild.pid}")
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"

    async def scenario() -> list[int]:
        action = ShellAction(term_grace=1.0)
        attempt = asyncio.ensure_future(
            action.run(request({"argv": [PY, "-c", SPAWN_AND_SLEEP, str(pidfile)]}), context(tmp_path))
        )
        pids = [int(pid) for pid in (await wait_for_file(pidfile)).split()]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(attempt, timeout=0.2)
        return pids

    child, grandchild = asyncio.run(scenario())
    assert process_gone(child), "the child survived its cancelled attempt"
    assert process_gone(grandchild), "the grandchild survived its cancelled attempt"


IGNORE_TERM_AND_SLEEP = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(120)
"""


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def scenario() -> tuple[int, float]:
        action = ShellAction(term_grace=0.3)
        attempt = asyncio.ensure_future(
            action.run(request({"argv": [PY, "-c", IGNORE_TERM_AND_SLEEP, str(pidfile)]}), context(tmp_path))
        )
        pid = int(await wait_for_file(pidfile))
        started = time.monotonic()
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
        return pid, time.monotonic() - started

    pid, took = asyncio.run(scenario())
    assert process_gone(pid, within=0.5)
    assert 0.3 <= took < 10


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"argv": [PY, "-c", "pass", "db\x00; touch pwned"]}, "argument 3 contains a NUL character"),
        ({"argv": ["echo\x00", "x"]}, "the program name contains a NUL character"),
        ({"argv": [PY, "-c", "pass"], "env": {"LABEL": "a\x00b"}}, "environment variable 'LABEL' has a NUL"),
        ({"argv": [PY, "-c", "pass"], "cwd": "/tmp\x00/x"}, "cwd contains a NUL character"),
    ],
)
def test_a_nul_from_event_data_fails_the_step_clearly_and_starts_nothing(
    tmp_path: Path, inputs: dict[str, Any], message: str
) -> None:
    # an alert label rendered into argv/env/cwd may hold a NUL: exec cannot pass it on
    with pytest.raises(ActionFailed) as caught:
        run_shell(tmp_path, {**inputs, "cwd": inputs.get("cwd", str(tmp_path))})
    assert not caught.value.retryable
    assert message in caught.value.message
    assert not (tmp_path / "pwned").exists()
