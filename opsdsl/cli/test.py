"""`opsdsl test`: rehearse playbooks with mocked actions (a thin wrapper over opsdsl.rehearsal).

Exit codes: 0 every case passed; 1 a case failed or could not run, or a test file has
problems, or step coverage is under --fail-under; 2 usage error, or no tests found (unless
--allow-empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from opsdsl.cli.paths import input_paths
from opsdsl.errors import Diagnostic, Severity, Span, UsageError

if TYPE_CHECKING:
    from opsdsl.rehearsal import SessionResult
    from opsdsl.rehearsal.coverage import Coverage

_FORMATS = ("text", "json", "junit")


@click.command("test")
@click.argument("paths", nargs=-1, type=input_paths())
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
@click.option(
    "--coverage",
    "show_coverage",
    is_flag=True,
    help="Also report what no case exercised: steps, `when:` branches, compensations, policies.",
)
@click.option(
    "--coverage-out",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Write the coverage as JSON to FILE (what lint rule OPS050 reads).",
)
@click.option(
    "--fail-under",
    type=click.FloatRange(0, 100),
    metavar="PERCENT",
    help="Exit 1 when less than PERCENT of the steps started (all packs together).",
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
    show_coverage: bool,
    coverage_out: Path | None,
    fail_under: float | None,
) -> None:
    """Rehearse playbooks: run the pack tests (*.test.yaml, *.test.yml, *.test.ops) in PATHS.

    Each case runs through the real compiler, policy gate and scheduler with the actions
    mocked and a virtual clock: no network, no processes, no sleeping. PATHS are files or
    folders (default: the current folder).

    Exit 0 when every case passed, 1 on a failure or a broken test (or coverage under
    --fail-under), 2 on a usage error or when no tests are found.
    """
    from opsdsl.files import write_atomic
    from opsdsl.rehearsal import Options, run_tests
    from opsdsl.rehearsal.report import render, summary

    roots = list(paths) or [Path(".")]
    session = run_tests(roots, Options(strict_mocks=strict_mocks, select=select))
    if session.empty and not allow_empty:
        raise _no_tests(roots, select)
    coverage = None
    if show_coverage or coverage_out is not None or fail_under is not None:
        from opsdsl.rehearsal.coverage import gather

        coverage = gather(session)
    text = render(session, fmt)
    if coverage is not None and show_coverage:
        text = _with_coverage(session, coverage, fmt, text)
    if output is not None:
        write_atomic(output, text)
        click.echo(summary(session), err=True)
    else:
        click.echo(text, nl=False)
    failed_under = None
    if coverage is not None:
        from opsdsl.rehearsal.coverage_report import below, dump, to_document

        if coverage_out is not None:
            write_atomic(coverage_out, dump(to_document(coverage, coverage_out.parent)))
        failed_under = below(coverage, fail_under) if fail_under is not None else None
        if failed_under:
            click.echo(f"opsdsl: {failed_under}", err=True)
    ctx.exit(0 if session.ok and not failed_under else 1)


def _with_coverage(session: SessionResult, coverage: Coverage, fmt: str, text: str) -> str:
    """The report with the coverage: after the text, under `coverage` in the JSON; JUnit XML
    has no place for it, so it goes to stderr as text."""
    from opsdsl.rehearsal import coverage_report
    from opsdsl.rehearsal.report import dump_json, json_document

    if fmt == "json":
        document = json_document(session)
        document["coverage"] = coverage_report.to_document(coverage)
        return dump_json(document)
    if fmt == "junit":
        click.echo(coverage_report.to_text(coverage), err=True, nl=False)
        return text
    return f"{text}\n{coverage_report.to_text(coverage)}"


def _no_tests(roots: list[Path], select: str | None) -> UsageError:
    from opsdsl.lang.loader import display_path

    if select is not None:
        return UsageError(f"no case matches -k {select!r}; nothing was run (--allow-empty makes this exit 0)")
    hint = "pack tests are *.test.yaml, *.test.yml and *.test.ops files; --allow-empty makes this exit 0"
    found = tuple(
        Diagnostic("OPS060", Severity.ERROR, "no pack tests here", Span(display_path(p), 1, 1), hint) for p in roots
    )
    return UsageError("no pack tests found; nothing was run", found)


COMMANDS = (test,)
