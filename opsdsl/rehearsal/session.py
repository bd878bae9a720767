"""`opsdsl test` from paths to results: find → load → check → compile → run → compare.

Each test file is read and schema-checked; its pack is compiled and signed once (with the
policy packs in scope; the same pack used by several files is compiled once); its cases are
checked against the plan and, if sound, rehearsed one by one, each in a state directory of
its own under one scratch folder that is removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from opsdsl.errors import Diagnostic, OpsdslError, Severity
from opsdsl.lang.loader import display_path

from .checks import check_case, check_case_names
from .execute import CompiledPack, compile_pack, fresh_state, run_case
from .expect import Failure, Observed, compare, failure_at
from .loading import Loaded, discover_tests, load_test_file, located
from .model import Case, TestFile

PASSED, FAILED, ERROR = "passed", "failed", "error"


@dataclass
class CaseResult:
    """One case: passed, failed (an expectation or a mock was not met) or error (it could
    not run: a diagnostic, a refusal, a stall)."""

    name: str
    index: int
    line: int = 1
    status: str = PASSED
    failures: list[Failure] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    virtual_seconds: float = 0.0
    observed: Observed | None = None  # the facts (for coverage and the like; not reported)


@dataclass
class FileResult:
    path: str
    pack: str | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)  # problems that stop every case
    cases: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0
    compiled: CompiledPack | None = None  # the pack as its cases ran it (for coverage; not reported)

    @property
    def ok(self) -> bool:
        return not self.diagnostics and all(c.status == PASSED for c in self.cases)


@dataclass
class SessionResult:
    files: list[FileResult] = field(default_factory=list)
    deselected: int = 0
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for f in self.files for c in f.cases if c.status == status)

    @property
    def file_errors(self) -> int:
        return sum(1 for f in self.files if f.diagnostics)

    @property
    def cases(self) -> int:
        return sum(len(f.cases) for f in self.files)

    @property
    def empty(self) -> bool:
        """Nothing was tested: no test file, or every case deselected (and no file error)."""
        return self.cases == 0 and self.file_errors == 0

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)


@dataclass(frozen=True)
class Options:
    strict_mocks: bool = False
    select: str | None = None  # -k: a case runs when its name contains this (any case)


def run_tests(paths: Sequence[Path], options: Options = Options()) -> SessionResult:
    """Find the test files under `paths` and run them (UsageError for a bad path)."""
    files = discover_tests(paths)
    session = SessionResult()
    began = time.perf_counter()
    if files:
        _warm_up()
    with tempfile.TemporaryDirectory(prefix="opsdsl-test-", dir=_scratch_root()) as scratch:
        packs: dict[tuple, CompiledPack | list[Diagnostic]] = {}
        for number, path in enumerate(files):
            session.files.append(_run_file(path, Path(scratch) / f"file-{number}", packs, options, session))
    session.seconds = time.perf_counter() - began
    return session


def _scratch_root() -> str | None:
    """Where the cases' throwaway state directories go: memory (/dev/shm) where there is
    one, since a case creates a few folders and a database; else the usual temp folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def _warm_up() -> None:
    """Import what the first case would otherwise pay for (jsonschema alone is ~0.15 s), so
    each case's time is its own."""
    import jsonschema  # noqa: F401  (the mocks check rendered `with:` as the actions do)

    import opsdsl.audit.incident
    import opsdsl.runtime.service  # noqa: F401


def _selected(name: str, options: Options) -> bool:
    return options.select is None or options.select.lower() in name.lower()


def _run_file(path: Path, scratch: Path, packs: dict, options: Options, session: SessionResult) -> FileResult:
    began = time.perf_counter()
    loaded = load_test_file(path)
    result = FileResult(display_path(path), diagnostics=list(loaded.diagnostics))
    test = loaded.test
    if test is not None:
        result.pack = display_path(test.pack)
        compiled = _compiled(test, scratch, packs)
        if isinstance(compiled, list):
            result.diagnostics += compiled
        else:
            result.compiled = compiled
            _run_cases(test, loaded, compiled, scratch, options, result, session)
    result.seconds = time.perf_counter() - began
    return result


def _compiled(test: TestFile, scratch: Path, packs: dict) -> CompiledPack | list[Diagnostic]:
    """The compiled pack, or the diagnostics saying why there is none (OPS061)."""
    document = test.document
    if not test.pack.is_file():
        return [
            located(
                document,
                "OPS061",
                ("pack",),
                f"no pack file {display_path(test.pack)}",
                "`pack:` is relative to the test file",
            )
        ]
    missing = [
        located(document, "OPS061", ("policies", i), f"no policy pack file {display_path(p)}")
        for i, p in enumerate(test.policies or ())
        if not p.is_file()
    ]
    if missing:
        return missing
    key = (test.pack.resolve(), None if test.policies is None else tuple(p.resolve() for p in test.policies))
    if key not in packs:
        try:
            packs[key] = compile_pack(test, scratch / f"compile-{len(packs)}")
        except OpsdslError as error:  # the runtime raises CompileError or RunRefused, with the pack's diagnostics
            errors = [d for d in error.diagnostics if d.severity is Severity.ERROR]
            if errors:
                count = f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
                message = f"the pack does not compile ({count}, below); no case was run"
            else:
                message = f"the pack cannot be compiled: {error.message}"
            packs[key] = [located(document, "OPS061", ("pack",), message), *errors]
    return packs[key]


def _run_cases(
    test: TestFile,
    loaded: Loaded,
    pack: CompiledPack,
    scratch: Path,
    options: Options,
    result: FileResult,
    session: SessionResult,
) -> None:
    by_index = {case.index: case for case in test.cases}
    named = {path[1]: [d] for path, d in check_case_names(test)}
    for index, name in loaded.case_names.items():
        if not _selected(name, options):
            session.deselected += 1
            continue
        line = test.span(("cases", index, "name")).line
        case_result = CaseResult(name, index, line)
        began = time.perf_counter()
        diagnostics = loaded.case_diagnostics.get(index, []) + named.get(index, [])
        case = by_index.get(index)
        if case is not None:  # None: the schema refused it
            diagnostics += check_case(test, case, pack.plan.payload)
        if diagnostics:
            case_result.status, case_result.diagnostics = ERROR, sorted(diagnostics, key=Diagnostic.sort_key)
        else:
            _rehearse(test, case, pack, fresh_state(scratch, index), options, case_result)
        case_result.seconds = time.perf_counter() - began
        result.cases.append(case_result)


def _rehearse(test: TestFile, case: Case, pack: CompiledPack, state: Path, options: Options, out: CaseResult) -> None:
    strict = options.strict_mocks or (case.strict_mocks if case.strict_mocks is not None else test.strict_mocks)
    try:
        run = run_case(test, case, pack, state, strict)
    finally:
        shutil.rmtree(state, ignore_errors=True)  # in memory (/dev/shm): keep one case's worth at a time
    out.notes, out.virtual_seconds, out.observed = run.notes, run.virtual_seconds, run.observed
    out.failures += [failure_at(test, p.path, _label(p.path), p.message) for p in run.problems]
    if run.error is not None:
        out.status, out.error = ERROR, run.error
        return
    assert run.observed is not None
    out.failures += compare(test, case, run.observed)
    out.failures.sort(key=lambda f: (f.span.line, f.span.col, f.key))
    if out.failures:
        out.status = FAILED


def _label(path: tuple) -> str:
    """`cases[0].mocks.inspect` → `mocks.inspect`: what a mock or answer problem is about."""
    parts = [str(p) if isinstance(p, str) else f"[{p}]" for p in path[2:]]
    return ".".join(parts).replace(".[", "[") or "case"
