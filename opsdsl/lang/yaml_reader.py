"""The YAML reader: YAML text into plain values with a position for every node.

PyYAML's C parser composes the node tree; we convert it ourselves so that every value and
every mapping key keeps its `Span`, duplicate keys and non-string keys become diagnostics,
and aliases cannot expand into a bomb. Scalars resolve by YAML 1.2's core schema: only
`true`/`false` are booleans, so `on:` and `NO` stay strings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.lang.source import STR, TAG, Document, Source, node_span

MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 / I-JSON: larger integers do not survive JSON

_INT, _FLOAT, _BOOL, _NULL = (TAG + t for t in ("int", "float", "bool", "null"))
_MAP, _SEQ = TAG + "map", TAG + "seq"


class _CoreSchemaLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):
    """Resolves plain scalars by the YAML 1.2 core schema instead of YAML 1.1."""


_CoreSchemaLoader.yaml_implicit_resolvers = {}
for _tag, _pattern, _first in (
    (_BOOL, r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (_NULL, r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    (_INT, r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        _FLOAT,
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
):
    _CoreSchemaLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


_PLAIN_SPECIAL = frozenset("~nNtTfF-+.0123456789")


def _resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
    """PyYAML's resolver, minus the generality: most plain scalars start with a letter
    that cannot begin a bool, null or number, and resolve to str at once."""
    if kind is yaml.ScalarNode:
        if implicit[0] and (not value or value[0] in _PLAIN_SPECIAL):
            for tag, regexp in self.yaml_implicit_resolvers.get(value[0] if value else "", ()):
                if regexp.match(value):
                    return tag
        return STR
    return _SEQ if kind is yaml.SequenceNode else _MAP


_CoreSchemaLoader.resolve = _resolve
_CoreSchemaLoader.descend_resolver = lambda self, parent, index: None
_CoreSchemaLoader.ascend_resolver = lambda self: None


class _Converter:
    """Turns a composed node tree into values and diagnostics."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.diagnostics: list[Diagnostic] = []
        self.seen: set[int] = set()
        self.alias_nodes = 0
        self.over_limit = False

    def error(self, code: str, message: str, node: yaml.Node, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, Severity.ERROR, message, node_span(self.source, node), hint))

    def convert(self, node: yaml.Node, depth: int, via_alias: bool) -> Any:
        if type(node) is yaml.ScalarNode:
            if via_alias:
                self.count_alias(node)
            if node.tag == STR:
                return node.value
            return self.scalar(node)
        if self.over_limit:
            return None
        if depth > MAX_DEPTH:
            self.over_limit = True
            self.error(
                "OPS005",
                f"nesting deeper than {MAX_DEPTH} levels",
                node,
                "flatten the document; recursive aliases are not allowed",
            )
            return None
        if id(node) in self.seen:
            via_alias = True
        else:
            self.seen.add(id(node))
        if via_alias:
            self.count_alias(node)
        if type(node) is yaml.SequenceNode:
            if node.tag != _SEQ:
                self.unsupported_tag(node)
            return [self.convert(item, depth + 1, via_alias) for item in node.value]
        if node.tag != _MAP:
            self.unsupported_tag(node)
        return self.mapping(node, depth, via_alias)

    def count_alias(self, node: yaml.Node) -> None:
        self.alias_nodes += 1
        if self.alias_nodes > MAX_ALIAS_NODES and not self.over_limit:
            self.over_limit = True
            self.error(
                "OPS005",
                f"aliases expand to more than {MAX_ALIAS_NODES} nodes",
                node,
                "this looks like an alias bomb; write the values out instead",
            )

    def mapping(self, node: yaml.MappingNode, depth: int, via_alias: bool) -> dict:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if type(key_node) is not yaml.ScalarNode or key_node.tag != STR:
                scalar = isinstance(key_node, yaml.ScalarNode)
                message = (
                    f"mapping key `{key_node.value}` is not a string"
                    if scalar
                    else "a list or mapping cannot be a mapping key"
                )
                self.error("OPS004", message, key_node, 'quote the key, e.g. "1": ...' if scalar else None)
                continue
            key = key_node.value
            if key == "<<" and not key_node.style:
                self.error(
                    "OPS006",
                    "YAML merge keys (`<<`) are not supported",
                    key_node,
                    "write the keys out, or alias the whole value",
                )
                continue
            if key in out:
                first = next(k for k, _ in node.value if isinstance(k, yaml.ScalarNode) and k.value == key)
                self.error(
                    "OPS003",
                    f"duplicate key `{key}` (first defined at line {first.start_mark.line + 1})",
                    key_node,
                    "YAML would silently keep only the last one; remove or rename one",
                )
                continue
            out[key] = self.convert(value_node, depth + 1, via_alias)
        return out

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag, text = node.tag, node.value
        try:
            if tag == _INT:
                value = int(text, 0) if text[:2] in ("0x", "0o") else int(text)
                if abs(value) > MAX_SAFE_INT:
                    self.error(
                        "OPS006",
                        f"integer `{text}` is too large for JSON (beyond ±2^53)",
                        node,
                        "quote it if it is an identifier, or use a smaller number",
                    )
                return value
            if tag == _FLOAT:
                value = float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
                if value != value or value in (float("inf"), float("-inf")):
                    self.error(
                        "OPS006",
                        f"`{text}` is not a finite number; plans are JSON and cannot hold it",
                        node,
                        "quote it if you meant the text",
                    )
                return value
            if tag == _BOOL:
                return text.lower() == "true"
            if tag == _NULL:
                return None
        except ValueError:
            self.error("OPS002", f"`{text}` is not a valid {tag[len(TAG) :]}", node)
            return text
        self.unsupported_tag(node)
        return text

    def unsupported_tag(self, node: yaml.Node) -> None:
        self.error(
            "OPS006",
            f"unsupported YAML tag `{node.tag}`",
            node,
            "packs use plain YAML values only: strings, numbers, booleans, null, lists, maps",
        )


def load_text(text: str, path: str) -> tuple[Document | None, list[Diagnostic]]:
    """Parse one YAML document; a document with diagnostics may still be partially usable."""
    source = Source(path, text)
    try:
        node = _CoreSchemaLoader(text).get_single_node()
    except yaml.MarkedYAMLError as exc:
        return None, [_yaml_error(exc, path, text)]
    except yaml.YAMLError as exc:
        return None, [Diagnostic("OPS002", Severity.ERROR, str(exc), Span(path, 1, 1))]
    if node is None:
        return None, [
            Diagnostic(
                "OPS001",
                Severity.ERROR,
                "file is empty",
                Span(path, 1, 1),
                "a pack starts with `apiVersion: opsdsl/v1`, `kind: Pack` and `metadata:`",
            )
        ]
    converter = _Converter(path)
    data = converter.convert(node, 0, False)
    document = Document(source, data, node)
    return document, converter.diagnostics


_YAML_HINTS = (
    (
        "cannot start any token",
        "YAML does not allow tabs for indentation, nor `@` or a backtick to start a value; use spaces, or quote the value",
    ),
    ("found undefined alias", "define the anchor (`&name`) before using the alias (`*name`)"),
    ("expected a single document", "put one pack per file"),
    ("mapping values are not allowed", "a value containing `: ` must be quoted, or the indentation is off"),
    ("could not find expected ':'", "a key is missing its `:` or a quote is not closed"),
)


def _yaml_error(exc: yaml.MarkedYAMLError, path: str, text: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    if mark is not None and exc.context_mark is not None and mark.line >= len(text.splitlines()):
        mark = exc.context_mark  # the problem is the end of the file: point at what was left open
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = exc.problem or "invalid YAML"
    if exc.context:
        message = f"{message} ({exc.context})"
    hint = next((h for needle, h in _YAML_HINTS if needle in str(exc)), None)
    return Diagnostic("OPS002", Severity.ERROR, message, Span(path, line, col, line, col + 1), hint)
