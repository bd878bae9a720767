"""Source stage: read pack files and turn YAML into plain values with a position for every node.

PyYAML's C parser composes the node tree; we convert it ourselves so that every value and
every mapping key keeps its `Span`, duplicate keys and non-string keys become diagnostics,
and aliases cannot expand into a bomb. Scalars resolve by YAML 1.2's core schema: only
`true`/`false` are booleans, so `on:` and `NO` stay strings.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opsdsl.errors import Diagnostic, Severity, Span

MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 / I-JSON: larger integers do not survive JSON
PACK_SUFFIXES = (".yaml", ".yml", ".ops")
TEST_SUFFIXES = (".test.yaml", ".test.yml", ".test.ops")
OPS_SUFFIX = ".ops"  # the textual form, read by opsdsl.ops

Path_ = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ = _TAG + "map", _TAG + "seq"


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
        return _STR
    return _SEQ if kind is yaml.SequenceNode else _MAP


_CoreSchemaLoader.resolve = _resolve
_CoreSchemaLoader.descend_resolver = lambda self, parent, index: None
_CoreSchemaLoader.ascend_resolver = lambda self: None


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
                    if isinstance(k, yaml.ScalarNode) and k.tag == _STR and k.value == part:
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
        return _span(self.source.path, node) if node is not None else Span(self.source.path, 1, 1)

    def key_span(self, path: Path_) -> Span:
        """The span of the mapping key that holds `path` (the value's span if it has none)."""
        node, key_node, found = self._nodes(path)
        if key_node is not None and found == len(path):
            return _span(self.source.path, key_node)
        return _span(self.source.path, node) if node is not None else Span(self.source.path, 1, 1)

    def expression_span(self, path: Path_, offset: int, end: int | None = None) -> Span:
        """The position of character `offset` of the string scalar at `path`."""
        node, _, found = self._nodes(path)
        if node is None:
            return Span(self.source.path, 1, 1)
        base = _span(self.source.path, node)
        if found != len(path) or not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
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


def _span(source: str, node: yaml.Node) -> Span:
    start, end = node.start_mark, node.end_mark
    return Span(source, start.line + 1, start.column + 1, end.line + 1, end.column + 1)


class _Converter:
    """Turns a composed node tree into values and diagnostics."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.diagnostics: list[Diagnostic] = []
        self.seen: set[int] = set()
        self.alias_nodes = 0
        self.over_limit = False

    def error(self, code: str, message: str, node: yaml.Node, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, Severity.ERROR, message, _span(self.source, node), hint))

    def convert(self, node: yaml.Node, depth: int, via_alias: bool) -> Any:
        if type(node) is yaml.ScalarNode:
            if via_alias:
                self.count_alias(node)
            if node.tag == _STR:
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
            if type(key_node) is not yaml.ScalarNode or key_node.tag != _STR:
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
            self.error("OPS002", f"`{text}` is not a valid {tag[len(_TAG) :]}", node)
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


def read_source(path: Path) -> tuple[str | None, list[Diagnostic]]:
    """Read a pack file as UTF-8 text, refusing binary, oversized and unreadable files."""
    shown = display_path(path)
    here = Span(shown, 1, 1)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return None, [
                Diagnostic(
                    "OPS001",
                    Severity.ERROR,
                    f"file is {size / 1048576:.1f} MiB; packs are limited to {MAX_FILE_BYTES // 1048576} MiB",
                    here,
                    "split it into several packs",
                )
            ]
        raw = path.read_bytes()
    except OSError as exc:
        return None, [Diagnostic("OPS001", Severity.ERROR, f"cannot read file: {exc.strerror}", here)]
    if b"\x00" in raw[:8192]:
        return None, [Diagnostic("OPS001", Severity.ERROR, "not a text file (it contains NUL bytes)", here)]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, [
            Diagnostic(
                "OPS001",
                Severity.ERROR,
                f"not valid UTF-8 (byte {exc.start})",
                Span(shown, line, 1),
                "save the file as UTF-8",
            )
        ]
    return text, []


def load_file(path: Path) -> tuple[Document | None, list[Diagnostic]]:
    text, diagnostics = read_source(path)
    if text is None:
        return None, diagnostics
    if path.name.endswith(OPS_SUFFIX):
        from opsdsl.ops import load_text as load_ops_text  # imported only when an .ops file is read

        return load_ops_text(text, display_path(path))
    return load_text(text, display_path(path))


def display_path(path: Path) -> str:
    """Paths are shown relative to the working directory when below it, with `/`."""
    try:
        return Path(os.path.relpath(path)).as_posix() if path.is_absolute() else path.as_posix()
    except ValueError:
        return path.as_posix()


def is_pack_file(path: Path) -> bool:
    name = path.name
    return name.endswith(PACK_SUFFIXES) and not name.endswith(TEST_SUFFIXES)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over `/`-separated paths: `*` stays within a folder, `**` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def is_excluded(path: Path, patterns: Iterable[str], folder: Path | None = None) -> bool:
    """Whether `path` matches an exclude glob, taken relative to the working directory or
    to the folder being searched; a glob without `/` matches the file name anywhere."""
    shown = [display_path(path)]
    if folder is not None:
        shown.append(path.relative_to(folder).as_posix())
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if "/" not in pattern:
            if _glob_regex(pattern).match(path.name):
                return True
            continue
        whole, below = _glob_regex(pattern), _glob_regex(pattern + "/**")
        if any(whole.match(s) or below.match(s) for s in shown):
            return True
    return False


def discover(paths: Iterable[Path], exclude: Iterable[str] = ()) -> list[Path]:
    """Pack files named by `paths`: files as given, folders searched recursively.

    In folders, `*.yaml`/`*.yml`/`*.ops` files are packs except `*.test.yaml` and
    `*.test.ops` (pack tests),
    hidden files and folders, and paths matching an `exclude` glob.
    """
    patterns = tuple(exclude)
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    candidate = Path(root, name)
                    if name.startswith(".") or not is_pack_file(candidate):
                        continue
                    if patterns and is_excluded(candidate, patterns, path):
                        continue
                    found.add(candidate)
        else:
            found.add(path)
    return sorted(found, key=lambda p: p.as_posix())
