"""`opsdsl lint`: analyse many packs, apply suppressions and configuration, sort.

Files are analysed independently (in two or more worker processes for big trees); the
organisation's policy packs are analysed first because every other pack's risky-step
rule needs their policies. Output is sorted, so it is byte-identical from run to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from opsdsl.build.pipeline import (
    Analysis,
    analyse_file,
    empty_folders,
    looks_like_policy_pack,
    map_files,
    missing_paths,
)
from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.lang.config import Config
from opsdsl.lang.loader import discover, display_path
from opsdsl.lang.rules import rule
from opsdsl.lang.suppress import suppressions


@dataclass(frozen=True)
class FileReport:
    path: str
    diagnostics: tuple[Diagnostic, ...]
    pack_name: str | None = None
    name_span: Span | None = None
    kind: str | None = None


@dataclass(frozen=True)
class LintResult:
    files: int
    diagnostics: tuple[Diagnostic, ...]

    def count(self, severity: Severity) -> int:
        return sum(1 for d in self.diagnostics if d.severity is severity)

    def failed(self, fail_on: Severity) -> bool:
        return any(d.severity.rank >= fail_on.rank for d in self.diagnostics)


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


def lint_one(path: Path, policies: tuple, config: Config, text: str | None = None) -> tuple[FileReport, tuple]:
    """Analyse one file; return its report and, for a policy pack, its policies. `text` is
    an editor's unsaved content of the file (`opsdsl lsp`), linted instead of the disk's."""
    analysis = _analyse(path, policies, config, text)
    if analysis.document:
        text = analysis.document.source.text
    if text is None and analysis.diagnostics:
        from opsdsl.lang.loader import MAX_FILE_BYTES

        text = _quotable_text(path, MAX_FILE_BYTES)
    diagnostics = finish(analysis.diagnostics, text, config)
    name = name_span = None
    own_policies: tuple = ()
    model = analysis.model
    if model is not None:
        name = model.metadata.name
        name_span = analysis.document.span(("metadata", "name"))
        if model.kind == "PolicyPack":
            own_policies = tuple(model.policies)
    report = FileReport(
        display_path(path), tuple(diagnostics), name, name_span, model.kind if model is not None else None
    )
    return report, own_policies


def _analyse(path: Path, policies: tuple, config: Config, text: str | None) -> Analysis:
    """`analyse_file` up to the schema stage, then the checked model (plain records,
    `opsdsl.lang.checked`) and the checks: the same findings without importing pydantic."""
    analysis = analyse_file(path, policies, stop_after="schema", config=config, text=text)
    if analysis.document is None or analysis.diagnostics:
        return analysis  # where analyse_file stops too
    from opsdsl.lang.checked import build_checked_model
    from opsdsl.lang.checks import Scope, Unit, run_checks

    analysis.model = build_checked_model(analysis.document.data)
    analysis.diagnostics.extend(
        run_checks(Unit(analysis.document, analysis.model), Scope(policies=policies, config=config))
    )
    return analysis


def _lint_chunk(args: tuple) -> list[tuple[FileReport, tuple]]:
    paths, policies, config = args
    return [lint_one(p, policies, config) for p in paths]


def lint_paths(paths: Sequence[Path], config: Config, jobs: int | None = None) -> LintResult:
    missing_paths(paths)
    files = discover(paths, config.exclude)
    reports = [FileReport(d.span.file, tuple(finish([d], None, config))) for d in empty_folders(paths, files)]

    # Policy packs first: every other pack's risky-step rule needs their policies. The
    # quick guess picks the candidates; the model decides, and a policy pack the guess
    # missed widens the scope, so the packs are linted again with it (rare).
    policies: list = []
    hinted = {f for f in files if looks_like_policy_pack(f)}
    packs = [f for f in files if f not in hinted]
    for path in sorted(hinted):
        report, own = lint_one(path, (), config)
        if report.kind == "PolicyPack":
            reports.append(report)
            policies.extend(own)
        else:
            packs.append(path)
    while True:
        linted = map_files(_lint_chunk, packs, (tuple(policies), config), jobs)
        late = [
            (path, report, own)
            for path, (report, own) in zip(packs, linted, strict=True)
            if report.kind == "PolicyPack"
        ]
        if not late:
            break
        for _path, report, own in late:
            reports.append(report)
            policies.extend(own)
        packs = [p for p in packs if p not in {path for path, _, _ in late}]
    reports += [report for report, _ in linted]

    diagnostics = [d for r in reports for d in r.diagnostics]
    diagnostics.extend(duplicate_pack_names(reports, config))
    diagnostics.sort(key=Diagnostic.sort_key)
    return LintResult(len(files), tuple(diagnostics))


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
            from opsdsl.lang.loader import MAX_FILE_BYTES

            text = _quotable_text(Path(report.path), MAX_FILE_BYTES)
            out.extend(finish([d], text, config))
        else:
            first[report.pack_name] = report
    return out


def _quotable_text(path: Path, limit: int) -> str | None:
    """A file's text for quoting source lines, if it is a regular UTF-8 file within `limit`
    (never opened when it is a FIFO or device: it would block)."""
    from opsdsl.lang.untrusted import read_limited

    data, _ = read_limited(path, limit)
    try:
        return data.decode("utf-8") if data is not None else None
    except UnicodeDecodeError:
        return None
