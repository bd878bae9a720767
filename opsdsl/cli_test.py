"""`opsdsl test`: rehearse playbooks with mocked actions (a thin wrapper over opsdsl.rehearsal).

Exit codes: 0 every case passed; 1 a case failed or could not run, or a test file has
problems; 2 usage error, or no tests found (unless --allow-empty).
"""

from __future__ import annotations

from pathlib import Path

import click

from opsdsl.errors import Diagnostic, Severity, Span, UsageError

_FORMATS = ("text", "json", "junit")


@click.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(_FORMATS), default="text", show_default=True, help="Output format.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to FILE instead of stdout.",
)
@click.option("--allow-empty", is_flag=True, help="Finding no tests is not an error.")
@click.option("-k", "select", metavar="SUBSTRING", help="Run only the cases whose name contains SUBSTRING.")
@click.option(
    "--strict-mocks", is_flag=True, help="Fail a case when a step runs without a mock, or a mock goes unused."
)
@click.pass_context
def test(
    ctx: click.Context,
    paths: tuple[Path, ...],
    fmt: str,
    output: Path | None,
    allow_empty: bool,
    select: str | None,
    strict_mocks: bool,
) -> None:
    """Rehearse playbooks: run the pack tests (*.test.yaml, *.test.yml, *.test.ops) in PATHS.

    Each case runs through the real compiler, policy gate and scheduler with the actions
    mocked and a virtual clock: no network, no processes, no sleeping. PATHS are files or
    folders (default: the current folder).

    Exit 0 when every case passed, 1 on a failure or a broken test, 2 on a usage error
    or when no tests are found.
    """
    from opsdsl.files import write_atomic
    from opsdsl.rehearsal import Options, run_tests
    from opsdsl.rehearsal.report import render, summary

    roots = list(paths) or [Path(".")]
    session = run_tests(roots, Options(strict_mocks=strict_mocks, select=select))
    if session.empty and not allow_empty:
        raise _no_tests(roots, select)
    text = render(session, fmt)
    if output is not None:
        write_atomic(output, text)
        click.echo(summary(session), err=True)
    else:
        click.echo(text, nl=False)
    ctx.exit(0 if session.ok else 1)


def _no_tests(roots: list[Path], select: str | None) -> UsageError:
    from opsdsl.loader import display_path

    if select is not None:
        return UsageError(f"no case matches -k {select!r}; nothing was run (--allow-empty makes this exit 0)")
    hint = "pack tests are *.test.yaml, *.test.yml and *.test.ops files; --allow-empty makes this exit 0"
    found = tuple(
        Diagnostic("OPS060", Severity.ERROR, "no pack tests here", Span(display_path(p), 1, 1), hint) for p in roots
    )
    return UsageError("no pack tests found; nothing was run", found)


COMMANDS = (test,)
