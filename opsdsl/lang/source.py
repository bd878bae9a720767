"""The data both pack readers hand over: a file's text and a document of plain values that
answers "where did this come from" for any path into it.

The YAML reader (`opsdsl.lang.yaml_reader`) fills a `Document` with PyYAML's node tree; the
.ops reader (`opsdsl.lang.ops`) fills an `OpsDocument` with the spans it recorded. Neither
imports the other, and `opsdsl.lang.loader` picks one by file name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from opsdsl.errors import Span

Path_ = tuple[str | int, ...]

TAG = "tag:yaml.org,2002:"
STR = TAG + "str"


@dataclass(frozen=True)
class Source:
    """A file's text, kept so diagnostics can quote the offending line."""

    path: str
    text: str

    def line(self, number: int) -> str | None:
        lines = self._lines()
        return lines[number - 1] if 0 < number <= len(lines) else None

    def _lines(self) -> list[str]:
        cached = self.__dict__.get("_split")
        if cached is None:
            cached = self.text.splitlines()
            object.__setattr__(self, "_split", cached)
        return cached


@dataclass
class Document:
    """A loaded YAML document: plain values, and the node tree they came from.

    Positions are looked up in the node tree only when a diagnostic needs one, so a clean
    pack pays nothing for them.
    """

    source: Source
    data: Any
    root: yaml.Node | None = field(default=None, repr=False)

    @property
    def path(self) -> str:
        return self.source.path

    def _nodes(self, path: Path_) -> tuple[yaml.Node | None, yaml.Node | None, int]:
        """The value node at `path` (or its nearest ancestor), its key node, and how many
        parts of `path` were found."""
        node, key_node, found = self.root, None, 0
        for part in path:
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:  # the first occurrence: the one the data kept
                    if isinstance(k, yaml.ScalarNode) and k.tag == STR and k.value == part:
                        child, key_node = v, k
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                child, key_node = node.value[part], None
            if child is None:
                break
            node, found = child, found + 1
        return node, key_node, found

    def span(self, path: Path_) -> Span:
        """The span of the value at `path`, or of its nearest located ancestor."""
        node, _, _ = self._nodes(path)
        return node_span(self.source.path, node) if node is not None else Span(self.source.path, 1, 1)

    def item_spans(self, path: Path_, count: int) -> list[Span]:
        """`span((*path, i))` for each i below `count`, with the sequence at `path` looked up
        once (the compiler records every step's position)."""
        node, _, found = self._nodes(path)
        # A subclass that places spans its own way (the .ops reader's) answers item by item.
        if type(self).span is not Document.span or found != len(path) or not isinstance(node, yaml.SequenceNode):
            return [self.span((*path, i)) for i in range(count)]
        items, file = node.value, self.source.path
        return [node_span(file, items[i]) if i < len(items) else self.span((*path, i)) for i in range(count)]

    def key_span(self, path: Path_) -> Span:
        """The span of the mapping key that holds `path` (the value's span if it has none)."""
        node, key_node, found = self._nodes(path)
        if key_node is not None and found == len(path):
            return node_span(self.source.path, key_node)
        return node_span(self.source.path, node) if node is not None else Span(self.source.path, 1, 1)

    def expression_span(self, path: Path_, offset: int, end: int | None = None) -> Span:
        """The position of character `offset` of the string scalar at `path`."""
        node, _, found = self._nodes(path)
        if node is None:
            return Span(self.source.path, 1, 1)
        base = node_span(self.source.path, node)
        if found != len(path) or not isinstance(node, yaml.ScalarNode) or node.tag != STR:
            return base
        value, style = node.value, node.style or None
        if "\n" not in value and style in (None, "'", '"') and base.line == base.end_line:
            col = base.col + (1 if style else 0) + offset
            width = (end - offset) if end is not None and end > offset else 1
            return Span(base.file, base.line, col, base.line, col + width)
        before = value[:offset]
        line_delta = before.count("\n") + (1 if style in ("|", ">") else 0)
        line_text = value.split("\n")[before.count("\n")] if value else ""
        within = offset - (before.rfind("\n") + 1)
        source_line = self.source.line(base.line + line_delta) or ""
        start = source_line.find(line_text) if line_text else -1
        col = (start + 1 + within) if start >= 0 else base.col
        return base.shifted(line_delta, col)


def node_span(source: str, node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(source, start.line + 1, start.column + 1, end.line + 1, end.column + 1)
