"""The front half of the pipeline, one file at a time: source → syntax → schema → model → check.

`analyse_file` runs the stages in order and stops at the first stage that reports errors
(a pack that does not match the schema has no model to check), or earlier on request
(`stop_after`), like a compiler's `--emit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.loader import Document, load_file
from opsdsl.rules import rule

Stage = Literal["syntax", "schema", "model", "check"]


@dataclass
class Analysis:
    """What the stages produced for one file."""

    path: Path
    document: Document | None = None
    model: object | None = None  # opsdsl.model.Pack | PolicyPack
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def analyse_file(path: Path, policies: tuple = (), stop_after: Stage = "check") -> Analysis:
    result = Analysis(path)
    document, diagnostics = load_file(path)
    result.document = document
    result.diagnostics.extend(diagnostics)
    if document is None or diagnostics or stop_after == "syntax":
        return result

    from opsdsl.schema import validate_pack

    problems = validate_pack(document.data)
    for problem in problems:
        span = document.key_span(problem.path) if problem.at == "key" else document.span(problem.path)
        result.diagnostics.append(
            Diagnostic(problem.code, rule(problem.code).severity, problem.message, span, problem.hint)
        )
    if problems or stop_after == "schema":
        return result

    from opsdsl.model import build_model

    result.model = build_model(document.data)
    if stop_after == "model":
        return result

    from opsdsl.checks import Scope, Unit, run_checks

    result.diagnostics.extend(run_checks(Unit(document, result.model), Scope(policies=policies)))
    return result


def warm_up() -> None:
    """Import the stages and build the schema validator and expression parser now."""
    import opsdsl.checks  # noqa: F401
    from opsdsl.expr import parse
    from opsdsl.schema import pack_validator

    pack_validator()
    parse("warm_up == 1")


def no_packs(path: Path, shown: str) -> Diagnostic:
    return Diagnostic(
        "OPS007",
        rule("OPS007").severity,
        "no pack files here",
        Span(shown, 1, 1),
        "packs are *.yaml / *.yml files (pack tests, *.test.yaml, are not packs)",
    )
