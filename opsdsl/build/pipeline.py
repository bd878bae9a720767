"""The front half of the pipeline, one file at a time: source → syntax → schema → model → check.

`analyse_file` runs the stages in order and stops at the first stage that reports errors
(a pack that does not match the schema has no model to check), or earlier on request
(`stop_after`), like a compiler's `--emit`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from opsdsl.errors import Diagnostic, Severity, Span, UsageError
from opsdsl.lang.config import Config
from opsdsl.lang.loader import load_file, load_source
from opsdsl.lang.rules import rule
from opsdsl.lang.source import Document

Stage = Literal["syntax", "schema", "model", "check"]


@dataclass
class Analysis:
    """What the stages produced for one file."""

    path: Path
    document: Document | None = None
    model: object | None = None  # opsdsl.lang.model's Pack | PolicyPack, or opsdsl.lang.checked's
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def analyse_file(
    path: Path,
    policies: tuple = (),
    stop_after: Stage = "check",
    config: Config | None = None,
    text: str | None = None,
    checked: bool = False,
    errors_only: bool = False,
) -> Analysis:
    """`text`, when given, is the file's content as an editor holds it (`opsdsl lsp`),
    analysed instead of what is on disk. `checked` builds the checked model (plain records,
    `opsdsl.lang.checked`: what lint and compile use, without importing pydantic) instead of
    the pydantic model of the Python API; the checks and the compiler take either.
    `errors_only` leaves out the rules that can only warn (see `run_checks`)."""
    result = Analysis(path)
    document, diagnostics = load_file(path) if text is None else load_source(text, path)
    result.document = document
    result.diagnostics.extend(diagnostics)
    if document is None or diagnostics or stop_after == "syntax":
        return result

    from opsdsl.lang.schema import validate_pack

    problems = validate_pack(document.data)
    for problem in problems:
        span = document.key_span(problem.path) if problem.at == "key" else document.span(problem.path)
        result.diagnostics.append(
            Diagnostic(problem.code, rule(problem.code).severity, problem.message, span, problem.hint)
        )
    if problems or stop_after == "schema":
        return result

    if checked:
        from opsdsl.lang.checked import build_checked_model

        result.model = build_checked_model(document.data)
    else:
        from opsdsl.lang.model import build_model

        result.model = build_model(document.data)
    if stop_after == "model":
        return result

    from opsdsl.lang.checks import Scope, Unit, run_checks

    unit, scope = Unit(document, result.model), Scope(policies=policies, config=config)
    result.diagnostics.extend(run_checks(unit, scope, errors_only))
    return result


def warm_up() -> None:
    """Import the stages and build the schema validator and expression parser now."""
    import opsdsl.lang.checks  # noqa: F401
    from opsdsl.lang.expr import parse
    from opsdsl.lang.schema import pack_validator

    pack_validator()
    parse("warm_up == 1")


def no_packs(path: Path, shown: str) -> Diagnostic:
    return Diagnostic(
        "OPS007",
        rule("OPS007").severity,
        "no pack files here",
        Span(shown, 1, 1),
        "packs are *.yaml, *.yml and *.ops files (pack tests, *.test.yaml, are not packs)",
    )


# Many files: what lint and compile share.

_POLICY_PACK_HINT = re.compile(rb"^(?:kind:\s*['\"]?PolicyPack|policypack)\b", re.MULTILINE)
PARALLEL_MIN_FILES = 16


def looks_like_policy_pack(path: Path) -> bool:
    """A cheap first guess (YAML `kind: PolicyPack` or a `.ops` `policypack` block);
    callers confirm it from the model, which decides."""
    from opsdsl.lang.untrusted import read_head

    head = read_head(path, 65536)
    return head is not None and bool(_POLICY_PACK_HINT.search(head))


def under(file: Path, folder: Path) -> bool:
    try:
        file.relative_to(folder)
    except ValueError:
        return False
    return True


def missing_paths(paths: Sequence[Path]) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(str(p) for p in missing)}")


def empty_folders(paths: Sequence[Path], files: Sequence[Path]) -> list[Diagnostic]:
    """OPS007 for each folder given that holds no pack."""
    from opsdsl.lang.loader import display_path

    return [no_packs(p, display_path(p)) for p in paths if p.is_dir() and not any(under(f, p) for f in files)]


def _worker_start(warm: bool) -> None:
    """A worker's start: SIGTERM back to its default (the caller may have made it raise,
    see `compile_paths`), so the pool's terminate ends a worker at once; then `warm_up`."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if warm:
        warm_up()


def map_files(
    work: Callable[[tuple], list],
    files: Sequence[Path],
    shared: tuple,
    jobs: int | None,
    warm_in_workers: bool = False,
) -> list:
    """`work((chunk, *shared))` over `files`, in worker processes for big trees (forked
    after `warm_up`, so they inherit imported modules); results in `files` order.

    `warm_in_workers`: each worker warms up after the fork instead, side by side, and
    the calling process (which then has no pack to check) never holds the validator and
    parser (`opsdsl compile`: its process also holds the signing keys and the results)."""
    jobs = min(jobs or os.cpu_count() or 1, max(1, len(files)))
    if jobs <= 1 or len(files) < PARALLEL_MIN_FILES:
        return work((list(files), *shared))
    import multiprocessing

    if not warm_in_workers:
        warm_up()
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    chunks = [list(files[i::jobs]) for i in range(jobs)]
    with context.Pool(jobs, initializer=_worker_start, initargs=(warm_in_workers,)) as pool:
        parts = pool.map(work, [(chunk, *shared) for chunk in chunks])
    order = {f: i for i, f in enumerate(files)}
    pairs = [
        (path, result)
        for chunk, part in zip(chunks, parts, strict=True)
        for path, result in zip(chunk, part, strict=True)
    ]
    return [result for _, result in sorted(pairs, key=lambda pr: order[pr[0]])]
