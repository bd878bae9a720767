"""`shell`: run a program with an argument vector, never through a shell.

The child gets a small environment (PATH, HOME and LANG from ours, the step's `env:`, and
the run's identifiers), runs in its own process group so that a timeout or Ctrl-C can stop
it and everything it started, and its output is kept up to a limit while the rest is
drained, so a chatty program never blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.runtime.actions import builtin_schema, check_inputs
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.builtin import BuiltinAction

OUTPUT_LIMIT = 1024 * 1024
ENV_ALLOWLIST = ("PATH", "HOME", "LANG")
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when an attempt is cancelled
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: its exit code (negative: killed by that signal) and
    the first `limit` bytes of each stream."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool


def child_env(request: ActionRequest, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a step's program sees: the allowlist, then `extra`, then the run's ids."""
    env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
    env.update(extra or {})
    env["OPSDSL_RUN_ID"] = request.run_id
    env["OPSDSL_STEP_ID"] = request.step_id
    env["OPSDSL_IDEMPOTENCY_KEY"] = request.idempotency_key
    return env


def _refuse_nul(argv: Sequence[str], env: Mapping[str, str], cwd: str | None) -> None:
    """A NUL cannot reach a program (exec takes C strings): say which part holds one, as a
    step failure, before anything starts. It comes from data, e.g. an alert label."""
    for index, arg in enumerate(argv):
        if "\0" in arg:
            what = "the program name" if index == 0 else f"argument {index}"
            raise ActionFailed(f"{what} contains a NUL character, which no program can receive", retryable=False)
    for name, value in env.items():
        if "\0" in name or "\0" in value or "=" in name:
            raise ActionFailed(
                f"environment variable {name!r} has a NUL character (or `=` in its name), which no program can receive",
                retryable=False,
            )
    if cwd is not None and "\0" in cwd:
        raise ActionFailed("cwd contains a NUL character", retryable=False)


async def run_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    stdin: bytes | None = None,
    limit: int = OUTPUT_LIMIT,
    term_grace: float = TERM_GRACE,
) -> CommandResult:
    """Run `argv` to completion in a new process group; on cancellation stop the whole group
    (SIGTERM, `term_grace` seconds, SIGKILL), reap the child, and re-raise."""
    _refuse_nul(argv, env, cwd)
    if cwd is not None and not Path(cwd).is_dir():
        raise ActionFailed(f"cwd {cwd!r} is not a directory", retryable=False)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ActionFailed(
            f"program {argv[0]!r} not found (searched PATH={env.get('PATH', '')!r})", retryable=False
        ) from None
    except PermissionError:
        raise ActionFailed(f"program {argv[0]!r} is not executable", retryable=False) from None
    except OSError as exc:
        raise ActionFailed(f"cannot start {argv[0]!r}: {exc}", retryable=False) from None

    assert process.stdout is not None and process.stderr is not None
    tasks = [
        asyncio.ensure_future(_read_capped(process.stdout, limit)),
        asyncio.ensure_future(_read_capped(process.stderr, limit)),
    ]
    if stdin is not None:
        tasks.append(asyncio.ensure_future(_feed(process, stdin)))
    try:
        results = await asyncio.gather(*tasks)
        exit_code = await process.wait()
    except BaseException:
        for task in tasks:
            task.cancel()
        # Shielded: cancelled a second time, the group is still stopped (in the background).
        await asyncio.shield(_stop_group(process, term_grace))
        raise
    (stdout, stdout_truncated), (stderr, stderr_truncated) = results[0], results[1]
    return CommandResult(exit_code, stdout, stderr, stdout_truncated, stderr_truncated)


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Keep the first `limit` bytes of `stream`, and read (and drop) the rest to its end."""
    kept = bytearray()
    truncated = False
    while chunk := await stream.read(_CHUNK):
        room = limit - len(kept)
        if len(chunk) > room:
            truncated = True
        if room > 0:
            kept += chunk[:room]
    return bytes(kept), truncated


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """Write `data` to the child's stdin and close it; a child that stops reading early is fine."""
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.close()
        await process.stdin.wait_closed()


async def _stop_group(process: asyncio.subprocess.Process, term_grace: float) -> None:
    """SIGTERM the process group, give it `term_grace` seconds, SIGKILL what is left, reap."""
    _signal_group(process.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), term_grace)
    # Even when the leader went quietly, a grandchild in its group may not have.
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def decode_output(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class ShellAction(BuiltinAction):
    """Run `with.argv` and report its exit code and output; an unexpected exit code fails."""

    name = "shell"

    def __init__(self, term_grace: float = TERM_GRACE) -> None:
        self.term_grace = term_grace

    async def _run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        inputs = request.inputs
        check_inputs(self.name, builtin_schema(self.name), inputs, context.redact)
        argv: list[str] = inputs["argv"]
        expect_exit: list[int] = inputs.get("expect_exit", [0])
        stdin = inputs.get("stdin")
        result = await run_command(
            argv,
            env=child_env(request, inputs.get("env")),
            cwd=inputs.get("cwd"),
            stdin=stdin.encode("utf-8") if stdin is not None else None,
            limit=inputs.get("output_limit", OUTPUT_LIMIT),
            term_grace=self.term_grace,
        )
        outputs = {
            "exit_code": result.exit_code,
            "stdout": context.redact(decode_output(result.stdout)),
            "stderr": context.redact(decode_output(result.stderr)),
            "truncated": result.stdout_truncated or result.stderr_truncated,
        }
        if result.exit_code not in expect_exit:
            raise ActionFailed(
                f"{argv[0]} {_exit_description(result.exit_code)} (expected {_codes(expect_exit)})"
                + _last_line(outputs["stderr"]),
                outputs=outputs,
            )
        return outputs


def _exit_description(exit_code: int) -> str:
    if exit_code < 0:
        try:
            return f"was killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"was killed by signal {-exit_code}"
    return f"exited with {exit_code}"


def _codes(codes: list[int]) -> str:
    return " or ".join(str(code) for code in codes)


def _last_line(stderr: str) -> str:
    """The last line of stderr, for the failure message: usually the one that says why."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return ": " + (line if len(line) <= 200 else line[:200] + "…")
