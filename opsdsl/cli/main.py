"""The entry point: run the command line and turn every error into a message and an exit code.

Exit codes: 0 success, 1 findings or a refused input, 2 usage error, 3 internal error.

The click group lives in `opsdsl.cli.app` (its names, `cli` first, are reachable here as
before). A plain `opsdsl lint PATH...` (no options, every path an existing, readable file
or folder) and `opsdsl --version` take a path without click: importing click is a
quarter of a one-pack lint's start-up. They print the same bytes and exit with the same
codes as the click command (tests/lint/test_lint_fast_path.py compares them); anything
else, a usage error or `--help` included, goes through click.
"""

from __future__ import annotations

import os
import sys
from io import TextIOWrapper as _TextIOWrapper  # imported at start-up anyway
from typing import Any

INTERNAL_ERROR = 3


def __getattr__(name: str) -> Any:
    """`cli`, `LazyGroup`, `ELSEWHERE`, ...: the click application, imported on first use."""
    if name.startswith("__"):
        raise AttributeError(name)
    from opsdsl.cli import app

    try:
        return getattr(app, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn every error into a message and an exit code."""
    # opsdsl uses no pydantic plugins; without this, building the first model scans the
    # metadata of every installed distribution for them, on every command.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        fast = _fast_path(sys.argv[1:] if argv is None else list(argv))
        if fast is not None:
            code = fast()
        else:
            group = globals().get("cli")  # set when a test swapped the group in
            if group is None:
                from opsdsl.cli.app import cli as group
            code = group.main(args=argv, prog_name="opsdsl", standalone_mode=False)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        code = _failure(exc)
    sys.exit(code or 0)


def _failure(exc: Exception) -> int:
    """The message and exit code for an error that reached the top (called in its `except`)."""
    click = sys.modules.get("click")  # a click exception implies click was imported
    if click is not None:
        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            _echo("Aborted.\n", err=True)
            return 130
    from opsdsl.errors import OpsdslError

    if isinstance(exc, OpsdslError):
        _echo(f"opsdsl: error: {exc.message}\n", err=True)
        for diagnostic in exc.diagnostics:
            _echo(diagnostic.render() + "\n", err=True)
        return exc.exit_code
    if isinstance(exc, BrokenPipeError):
        return 0
    if _database_error(exc):
        code = 2
    else:
        _echo(f"opsdsl: internal error: {type(exc).__name__}: {exc}\n", err=True)
        _echo("This is a bug in opsdsl; set OPSDSL_DEBUG=1 for the traceback and please report it.\n", err=True)
        code = INTERNAL_ERROR
    if os.environ.get("OPSDSL_DEBUG"):
        import traceback

        traceback.print_exc()
    return code


def _database_error(exc: BaseException) -> bool:
    """A state database that failed under us (PostgreSQL restarted, the network dropped, a
    disk full): say so, and what is safe, rather than call it a bug of ours."""
    import sqlite3

    if not isinstance(exc, sqlite3.OperationalError):
        return False
    _echo(f"opsdsl: error: the state database failed: {exc}\n", err=True)
    _echo(
        "Nothing of the transaction it was in was committed. A run this command was driving stays"
        " resumable: see `opsdsl runs`, then `opsdsl resume RUN` (a worker or `opsdsl serve` continues"
        " a run it owns by itself).\n",
        err=True,
    )
    return True


# -- without click ------------------------------------------------------------------------


def _echo(text: str, err: bool = False) -> None:
    """`click.echo(text, nl=False, err=err)`: the same bytes. A real stdio stream with a
    non-ASCII encoding and text without escape sequences is written directly (that is all
    click.echo does then); anything else is left to click (it strips ANSI codes when not
    writing to a terminal, and rewraps an ASCII-encoded stream)."""
    stream = sys.stderr if err else sys.stdout
    if type(stream) is not _TextIOWrapper or "\x1b" in text or _is_ascii(getattr(stream, "encoding", None)):
        import click

        click.echo(text, nl=False, err=err)
        return
    stream.write(text)
    stream.flush()


def _is_ascii(encoding: str | None) -> bool:
    import codecs

    try:
        return codecs.lookup(encoding or "ascii").name == "ascii"
    except LookupError:
        return False


def _fast_path(args: list[str]) -> Any:
    """A callable running `args` without click, or None when click must run them."""
    swapped = globals().get("cli")  # a group a test swapped in runs everything itself
    if swapped is not None and swapped is not getattr(sys.modules.get("opsdsl.cli.app"), "cli", None):
        return None
    if os.environ.get("_OPSDSL_COMPLETE") or os.name == "nt":
        return None  # a shell-completion request; Windows, where click.echo writes to the console itself
    if args in (["--version"], ["-V"]):
        return _version
    if len(args) >= 2 and args[0] == "lint" and all(_plain_input(a) for a in args[1:]):
        return lambda: _lint(args[1:])
    return None


def _plain_input(arg: str) -> bool:
    """What the lint command's PATHS accept without a word: an existing, readable regular
    file or folder, not spelt like an option."""
    import stat

    if not arg or arg.startswith("-"):
        return False
    try:
        mode = os.stat(arg).st_mode
    except (OSError, ValueError):
        return False
    return (stat.S_ISREG(mode) or stat.S_ISDIR(mode)) and os.access(arg, os.R_OK)


def _version() -> int:
    from opsdsl import __version__

    _echo(f"opsdsl {__version__}\n")
    return 0


def _lint(paths: list[str]) -> int:
    """`opsdsl lint PATHS` with every option at its default, as the click command runs it,
    interrupts and a closed pipe included."""
    import errno
    from pathlib import Path

    from opsdsl.cli.lintcmd import run_lint

    try:
        run_lint([Path(p) for p in paths], "text", None, None, None, None, _echo)
    except (EOFError, KeyboardInterrupt):
        _echo("\n", err=True)  # click closes the terminal's ^C echo, then aborts
        _echo("Aborted.\n", err=True)
        return 130
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        from click.utils import _PacifyFlushWrapper

        sys.stdout = _PacifyFlushWrapper(sys.stdout)  # type: ignore[assignment]
        sys.stderr = _PacifyFlushWrapper(sys.stderr)  # type: ignore[assignment]
        sys.exit(1)
    return 0  # run_lint exits
