"""The textual pack form (.ops): parser, data builder, formatter and converters.

`load_text` gives the same plain data the YAML loader gives, in an `OpsDocument` that
answers positions from spans recorded while parsing; `opsdsl.lang.loader.load_file` calls it for
`*.ops` files. `opsdsl fmt` uses `format_text` and the converters in `opsdsl.lang.ops.convert`.
"""

from __future__ import annotations

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.lang.source import Source

from .data import OpsDocument, PackBuilder
from .parser import parse_for_data, parse_ops

__all__ = ["OpsDocument", "load_text", "parse_ops"]


def load_text(text: str, path: str) -> tuple[OpsDocument | None, list[Diagnostic]]:
    """Parse one .ops file into data with positions; None when it does not parse."""
    if not text.strip() or all(line.lstrip().startswith("#") for line in text.splitlines() if line.strip()):
        hint = "a pack starts with `pack NAME version 1.0.0 owner TEAM {`"
        return None, [Diagnostic("OPS001", Severity.ERROR, "file is empty", Span(path, 1, 1), hint)]
    tree = parse_for_data(text)
    if tree is None:  # Lark with error recovery: the diagnostics (or the tree of a deep text)
        result = parse_ops(text, path)
        if result.tree is None:
            return None, result.diagnostics
        tree = result.tree
    builder = PackBuilder(path, text)
    data = builder.build(tree)
    document = OpsDocument(Source(path, text), data, None, builder.spans, builder.keys, builder.expressions)
    return document, builder.diagnostics
