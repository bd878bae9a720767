"""`opsdsl lint`: analyse many packs, apply suppressions and configuration, sort.

Files are analysed independently (in two or more worker processes for big trees); the
organisation's policy packs are analysed first because every other pack's risky-step
rule needs their policies. Output is sorted, so it is byte-identical from run to run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opsdsl.config import Config
from opsdsl.errors import Diagnostic, Severity, Span, UsageError
from opsdsl.loader import discover, display_path
from opsdsl.pipeline import analyse_file, no_packs
from opsdsl.rules import rule

_SUPPRESS = re.compile(r"#\s*opsdsl:\s*ignore(-file)?\[\s*([A-Za-z0-9, ]+?)\s*\]")
_POLICY_PACK = re.compile(rb"^kind:\s*['\"]?PolicyPack\b", re.MULTILINE)
PARALLEL_MIN_FILES = 16


@dataclass(frozen=True)
class FileReport:
    path: str
    diagnostics: tuple[Diagnostic, ...]
    pack_name: str | None = None
    name_span: Span | None = None


@dataclass(frozen=True)
class LintResult:
    files: int
    diagnostics: tuple[Diagnostic, ...]

    def count(self, severity: Severity) -> int:
        return sum(1 for d in self.diagnostics if d.severity is severity)

    def failed(self, fail_on: Severity) -> bool:
        return any(d.severity.rank >= fail_on.rank for d in self.diagnostics)


def suppressions(text: str) -> tuple[set[str], dict[int, set[str]]]:
    """Codes ignored in the whole file, and per line (a comment alone on its line also
    covers the next line)."""
    whole: set[str] = set()
    per_line: dict[int, set[str]] = {}
    if "opsdsl:" not in text:
        return whole, per_line
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _SUPPRESS.finditer(line):
            codes = {c.strip().upper() for c in match.group(2).split(",") if c.strip()}
            if match.group(1):
                whole |= codes
                continue
            per_line.setdefault(number, set()).update(codes)
            if line.lstrip().startswith("#"):
                per_line.setdefault(number + 1, set()).update(codes)
    return whole, per_line


def finish(diagnostics: list[Diagnostic], text: str | None, config: Config) -> list[Diagnostic]:
    """Apply suppressions and configuration, and attach each diagnostic's source line."""
    whole, per_line = suppressions(text) if text else (set(), {})
    lines = text.splitlines() if text else []
    out = []
    for d in diagnostics:
        if d.code in config.ignore or d.code in whole or d.code in per_line.get(d.span.line, ()):
            continue
        if d.code in config.severity:
            d = d.with_severity(config.severity[d.code])
        line = lines[d.span.line - 1] if 0 < d.span.line <= len(lines) else None
        out.append(d.with_source_line(line))
    return out


def lint_one(path: Path, policies: tuple, config: Config) -> tuple[FileReport, tuple]:
    """Analyse one file; return its report and, for a policy pack, its policies."""
    analysis = analyse_file(path, policies)
    text = analysis.document.source.text if analysis.document else None
    if text is None and analysis.diagnostics:
        from opsdsl.loader import MAX_FILE_BYTES

        try:
            if path.stat().st_size <= MAX_FILE_BYTES:
                text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError):
            text = None
    diagnostics = finish(analysis.diagnostics, text, config)
    name = name_span = None
    own_policies: tuple = ()
    model = analysis.model
    if model is not None:
        name = model.metadata.name
        name_span = analysis.document.span(("metadata", "name"))
        if model.kind == "PolicyPack":
            own_policies = tuple(model.policies)
    report = FileReport(display_path(path), tuple(diagnostics), name, name_span)
    return report, own_policies


def _lint_chunk(args: tuple) -> list[FileReport]:
    paths, policies, config = args
    return [lint_one(p, policies, config)[0] for p in paths]


def lint_paths(paths: Sequence[Path], config: Config, jobs: int | None = None) -> LintResult:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(str(p) for p in missing)}")
    files = discover(paths, config.exclude)
    reports: list[FileReport] = []
    for path in paths:
        if path.is_dir() and not any(_under(f, path) for f in files):
            shown = display_path(path)
            reports.append(FileReport(shown, tuple(finish([no_packs(path, shown)], None, config))))

    policy_files = [f for f in files if _looks_like_policy_pack(f)]
    policies: list = []
    for path in policy_files:
        report, own = lint_one(path, (), config)
        reports.append(report)
        policies.extend(own)
    rest = [f for f in files if f not in set(policy_files)]
    reports.extend(_lint_many(rest, tuple(policies), config, jobs))

    diagnostics = [d for r in reports for d in r.diagnostics]
    diagnostics.extend(duplicate_pack_names(reports, config))
    diagnostics.sort(key=Diagnostic.sort_key)
    return LintResult(len(files), tuple(diagnostics))


def _lint_many(files: list[Path], policies: tuple, config: Config, jobs: int | None) -> list[FileReport]:
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(files) < PARALLEL_MIN_FILES:
        return _lint_chunk((files, policies, config))
    import multiprocessing

    from opsdsl.pipeline import warm_up

    warm_up()  # workers forked after this inherit the imported modules and built parsers
    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    chunks = [files[i::jobs] for i in range(jobs)]
    with context.Pool(jobs) as pool:
        results = pool.map(_lint_chunk, [(c, policies, config) for c in chunks])
    return [r for chunk in results for r in chunk]


def duplicate_pack_names(reports: list[FileReport], config: Config) -> list[Diagnostic]:
    first: dict[str, FileReport] = {}
    out = []
    for report in sorted(reports, key=lambda r: r.path):
        if report.pack_name is None or report.name_span is None:
            continue
        if report.pack_name in first:
            other = first[report.pack_name]
            d = Diagnostic(
                "OPS030",
                rule("OPS030").severity,
                f"pack name `{report.pack_name}` is already used by {other.path}",
                report.name_span,
                "pack names must be unique: plans, locks and ledgers are keyed by them",
            )
            try:
                text = Path(report.path).read_text("utf-8")
            except (OSError, UnicodeDecodeError):
                text = None
            out.extend(finish([d], text, config))
        else:
            first[report.pack_name] = report
    return out


def _under(file: Path, folder: Path) -> bool:
    try:
        file.relative_to(folder)
    except ValueError:
        return False
    return True


def _looks_like_policy_pack(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return bool(_POLICY_PACK.search(handle.read(65536)))
    except OSError:
        return False
