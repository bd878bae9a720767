"""`opsdsl fmt`'s three jobs: lay out .ops text, YAML → .ops, and .ops → YAML.

Conversion goes through the plain data both loaders produce, so the two files hold the
same pack: the same model, hence byte-identical plans. Formatting goes through the
concrete tree, so comments survive it; conversion keeps no comments.
"""

from __future__ import annotations

from opsdsl.errors import Diagnostic, Severity
from opsdsl.lang.yaml_reader import load_text as load_yaml_text

from .emit import ConversionError, to_ops, to_yaml
from .parser import parse_ops
from .printer import Printer


def format_text(text: str, path: str) -> tuple[str | None, list[Diagnostic]]:
    """The canonical layout of .ops text, or None and the syntax errors."""
    result = parse_ops(text, path)
    if result.tree is None:
        return None, _with_lines(result.diagnostics, text)
    return Printer(text, result.comments).print(result.tree), []


def yaml_to_ops(text: str, path: str) -> str:
    document, diagnostics = load_yaml_text(text, path)
    _refuse(diagnostics, text, f"{path} is not a valid YAML pack")
    rough = to_ops(document.data)
    formatted, problems = format_text(rough, path)
    if formatted is None:
        _refuse(problems, rough, f"{path}: the converted pack does not parse (is every expression valid?)")
    return formatted


def ops_to_yaml(text: str, path: str) -> str:
    from . import load_text

    document, diagnostics = load_text(text, path)
    _refuse(diagnostics, text, f"{path} is not a valid .ops pack")
    return to_yaml(document.data)


def _refuse(diagnostics: list[Diagnostic], text: str, message: str) -> None:
    errors = [d for d in diagnostics if d.severity is Severity.ERROR]
    if errors:
        raise ConversionError(message, tuple(_with_lines(errors, text)))


def _with_lines(diagnostics: list[Diagnostic], text: str) -> list[Diagnostic]:
    lines = text.splitlines()
    return [d.with_source_line(lines[d.span.line - 1] if 0 < d.span.line <= len(lines) else None) for d in diagnostics]


__all__ = ["ConversionError", "format_text", "ops_to_yaml", "yaml_to_ops"]
