"""The entry point: run the command line and turn every error into a message and an exit code.

Exit codes: 0 success, 1 findings or a refused input, 2 usage error, 3 internal error.

The click group lives in `opsdsl.cli.app` (its names, `cli` first, are reachable here as
before). A plain `opsdsl lint PATH...` (no options, every path an existing, readable file
or folder), a plain `opsdsl compile PATH...` (only `-o/--out`, `--key`, `--rebuild`,
`-j/--jobs` and `--passphrase-env`, each value one click would take as it is) and
`opsdsl --version` take a path without click: importing click is a quarter of a one-pack
lint's start-up, and 4-5 MiB of a compile's largest process. They print the same bytes and
exit with the same codes as the click commands (tests/lint/test_lint_fast_path.py and
tests/cli/test_compile_fast_path.py compare them); anything else, a usage error or
`--help` included, goes through click.
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
    if args and args[0] == "compile":
        options = _plain_compile(args[1:])
        if options is not None:
            return lambda: _compile(*options)
    return None


# `opsdsl compile`'s options the click-free path takes (spelt as click spells them; a value
# may also follow `--long=`); anything else (`--emit`, `--help`, `--`, `-oOUT`) goes to click.
_COMPILE_OPTIONS = {
    "-o": "out",
    "--out": "out",
    "--key": "key",
    "-j": "jobs",
    "--jobs": "jobs",
    "--passphrase-env": "passphrase_env",
}


def _plain_compile(args: list[str]) -> tuple | None:
    """`opsdsl compile ARGS` as (paths, out, keys, passphrase_env, rebuild, jobs), when click
    would take every argument as it is and none can fail its checks; None otherwise."""
    import re

    paths: list[str] = []
    keys: list[str] = []
    values: dict[str, str] = {}
    rebuild = False
    rest = iter(args)
    for arg in rest:
        if arg == "--rebuild":
            rebuild = True
            continue
        if not arg.startswith("-"):
            if not _plain_input(arg):
                return None
            paths.append(arg)
            continue
        name, equals, value = arg.partition("=")
        option = _COMPILE_OPTIONS.get(name)
        if option is None or (equals and not name.startswith("--")):
            return None
        if not equals:
            value = next(rest, "")
        if not value or value.startswith("-"):
            return None
        if option == "key":
            keys.append(value)
        else:
            values[option] = value  # the last one counts, as with click
    out = values.get("out", "build")
    jobs = values.get("jobs")
    if not paths or not all(_plain_input(k, folder=False) for k in keys) or not _plain_output(out):
        return None
    if jobs is not None and not re.fullmatch("[1-9][0-9]{0,5}", jobs):
        return None
    return paths, out, keys, values.get("passphrase_env"), rebuild, None if jobs is None else int(jobs)


def _plain_output(arg: str) -> bool:
    """What `-o/--out` takes without a word: a folder that is readable, or nothing yet."""
    import stat

    try:
        mode = os.stat(arg).st_mode
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False
    return stat.S_ISDIR(mode) and os.access(arg, os.R_OK)


def _plain_input(arg: str, folder: bool = True) -> bool:
    """What the lint and compile commands' PATHS (and `--key`, not `folder`) accept without
    a word: an existing, readable regular file or folder, not spelt like an option."""
    import stat

    if not arg or arg.startswith("-"):
        return False
    try:
        mode = os.stat(arg).st_mode
    except (OSError, ValueError):
        return False
    return (stat.S_ISREG(mode) or (folder and stat.S_ISDIR(mode))) and os.access(arg, os.R_OK)


def _version() -> int:
    from opsdsl import __version__

    _echo(f"opsdsl {__version__}\n")
    return 0


def _lint(paths: list[str]) -> int:
    """`opsdsl lint PATHS` with every option at its default, as the click command runs it."""
    from pathlib import Path

    from opsdsl.cli.lintcmd import run_lint

    return _as_click_runs(lambda: run_lint([Path(p) for p in paths], "text", None, None, None, None, _echo))


def _compile(
    paths: list[str], out: str, keys: list[str], passphrase_env: str | None, rebuild: bool, jobs: int | None
) -> int:
    """`opsdsl compile` with the options `_plain_compile` read, as the click command runs it."""
    from pathlib import Path

    from opsdsl.cli.compilecmd import run_compile

    return _as_click_runs(
        lambda: run_compile(
            [Path(p) for p in paths], Path(out), [Path(k) for k in keys], passphrase_env, rebuild, jobs, _echo
        )
    )


def _as_click_runs(command: Any) -> int:
    """Run `command()` as click runs a command: interrupts and a closed pipe included."""
    import errno

    try:
        command()
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
    return 0
