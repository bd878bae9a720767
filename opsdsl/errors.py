"""Diagnostics and the error tree.

A leaf module: it imports nothing from the package, so every stage can use it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"

    @property
    def rank(self) -> int:
        return 2 if self is Severity.ERROR else 1


@dataclass(frozen=True, order=True)
class Span:
    """Where something came from: 1-based line and column, end inclusive-exclusive."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def shifted(self, line_delta: int, col: int) -> Span:
        """A point inside this span: `line_delta` lines further down, at `col`."""
        line = self.line + line_delta
        return Span(self.file, line, col, line, col + 1)


@dataclass(frozen=True)
class Diagnostic:
    """One problem, located: what every stage reports and every formatter renders."""

    code: str
    severity: Severity
    message: str
    span: Span
    hint: str | None = None
    source_line: str | None = field(default=None, compare=False)

    def sort_key(self) -> tuple:
        return (self.span.file, self.span.line, self.span.col, self.code, self.message)

    def with_source_line(self, text: str | None) -> Diagnostic:
        return Diagnostic(self.code, self.severity, self.message, self.span, self.hint, text)

    def with_severity(self, severity: Severity) -> Diagnostic:
        return Diagnostic(self.code, severity, self.message, self.span, self.hint, self.source_line)

    def render(self) -> str:
        """`file:line:col: severity[CODE] message`, the line, a caret, and the hint."""
        out = [f"{self.span}: {self.severity.value}[{self.code}] {self.message}"]
        if self.source_line is not None:
            line = self.source_line.rstrip("\n").expandtabs(1)
            gutter = f"{self.span.line:>5} | "
            out.append(f"{gutter}{line}")
            width = 1
            if self.span.end_line == self.span.line and self.span.end_col > self.span.col:
                width = min(self.span.end_col - self.span.col, max(1, len(line) - self.span.col + 1))
            out.append(" " * (len(gutter) - 2) + "| " + " " * (self.span.col - 1) + "^" * width)
        if self.hint:
            out.append(f"      = hint: {self.hint}")
        return "\n".join(out)


class OpsdslError(Exception):
    """Root of every error opsdsl raises on purpose; the CLI turns these into exit codes."""

    exit_code = 1

    def __init__(self, message: str, diagnostics: tuple[Diagnostic, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.diagnostics = tuple(diagnostics)

    def __reduce__(self):  # keep fields across process boundaries
        return (type(self), (self.message, self.diagnostics))


class UsageError(OpsdslError):
    """The command line itself is wrong: a missing path, a bad flag value."""

    exit_code = 2


class LoadError(OpsdslError):
    """A source file could not be read or parsed."""


class ExpressionError(OpsdslError):
    """An expression failed to parse or to check."""


class SchemaError(OpsdslError):
    """A document does not match its JSON Schema."""


class SemanticError(OpsdslError):
    """The model is well-formed but inconsistent: bad references, cycles."""


class CompileError(OpsdslError):
    """A checked pack cannot be turned into a plan (its step graph is not a DAG)."""


class ConfigError(OpsdslError):
    """The `[tool.opsdsl]` / `.opsdsl.toml` configuration is invalid."""

    exit_code = 2


class EvalError(Exception):
    """An expression failed at evaluation time (CEL's error value); not a user-facing crash."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):
        return (type(self), (self.message,))
