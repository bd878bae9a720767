"""Syntax tree to plain data: the dict a YAML pack would load as, and a span for each path.

Paths are the tuples the YAML data uses, e.g. ("playbooks", "respond", "steps", 0,
"timeout"), so schema, model and checks run unchanged and point at .ops lines.
Expressions keep their source text, with newlines (and comments) between tokens read as
single spaces; `OpsDocument.expression_span` maps offsets in that text back to the file.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.lang.source import Document

from .printer import first_token, last_token

Path_ = tuple[str | int, ...]
# Values of one token (the rule's only child).
_SCALARS = frozenset(["string", "number", "boolean", "null"])
_INF = float("inf")
_MAX_SAFE_INT = 2**53 - 1  # RFC 8785 holds no larger integer exactly, as in the YAML reader
# A string JSON decodes to its inside unchanged.
_PLAIN_STRING = re.compile(r'"[^"\\\x00-\x1f]*"')
_NEWLINE = re.compile("\n")
_bisect = bisect.bisect_right
_GAP = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|\s*#[^\n]*\n\s*|\s*\n\s*')


def _fast_span() -> Any:
    """`Span(file, line, col, end_line, end_col)` without the frozen dataclass's __init__ (five
    object.__setattr__ calls, a fifth of a build): the same fields in the instance's __dict__,
    so the object is equal, hashes, prints and pickles the same. Span itself when its shape is
    not the plain one this relies on."""
    import dataclasses

    names = [f.name for f in dataclasses.fields(Span)]
    plain = names == ["file", "line", "col", "end_line", "end_col"] and not hasattr(Span, "__post_init__")
    if not plain or hasattr(Span, "__slots__"):
        return Span
    new = object.__new__

    def span(file: str, line: int, col: int, end_line: int, end_col: int) -> Span:
        made = new(Span)
        # the instance's own dict, filled in field order: about a third cheaper than assigning
        # a new dict to __dict__ (0.28 vs 0.42 us a Span on CPython 3.11)
        fields = made.__dict__
        fields["file"] = file
        fields["line"] = line
        fields["col"] = col
        fields["end_line"] = end_line
        fields["end_col"] = end_col
        return made

    return span


_span = _fast_span()
_PLAIN_SPAN = _span is not Span  # `between` makes its Spans as `_span` does, without the call
_new = object.__new__


class _Lines:
    """Offsets to lines and columns for one document: the line-start table is built on the
    first lookup (a clean pack makes none), then each position is a bisect."""

    __slots__ = ("_starts", "file", "text")

    def __init__(self, file: str, text: str) -> None:
        self.file, self.text, self._starts = file, text, None

    @property
    def starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in _NEWLINE.finditer(self.text)]
        return self._starts

    def span(self, raw: Any) -> Span:
        """The Span of what a builder recorded: `(start, end)` offsets, or a Span as it is."""
        if type(raw) is not tuple:
            return raw
        start, end = raw
        starts = self.starts
        line = _bisect(starts, start)
        end_line = line if line == len(starts) or end < starts[line] else _bisect(starts, end)
        return Span(self.file, line, start - starts[line - 1] + 1, end_line, end - starts[end_line - 1] + 1)

    def __getstate__(self) -> tuple:
        return self.file, self.text, self._starts

    def __setstate__(self, state: tuple) -> None:
        self.file, self.text, self._starts = state


class Spans(Mapping):
    """Data path → Span, read from the offsets the builder recorded: a Span is made only when
    one is asked for (a bench pack records about 1,200; a diagnostic reads one). Equal to
    the dict of Spans the builder made before, as a Mapping."""

    __slots__ = ("lines", "raw")

    def __init__(self, raw: dict, lines: _Lines) -> None:
        self.raw, self.lines = raw, lines

    def __getitem__(self, path: Path_) -> Span:
        return self.lines.span(self.raw[path])

    def __contains__(self, path: object) -> bool:
        return path in self.raw

    def __iter__(self) -> Iterator[Path_]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return repr(dict(self.items()))

    def __getstate__(self) -> tuple:
        return self.raw, self.lines

    def __setstate__(self, state: tuple) -> None:
        self.raw, self.lines = state


@dataclass
class OpsDocument(Document):
    """A loaded .ops document: plain data plus the positions recorded while building it.

    `spans` and `keys` may be given as dicts of `(start, end)` offsets (or Spans): they are
    kept as `Spans` mappings, which make each Span when it is read."""

    spans: Mapping = field(default_factory=dict, repr=False)
    keys: Mapping = field(default_factory=dict, repr=False)
    expressions: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        lines = _Lines(self.source.path, self.source.text)
        if not isinstance(self.spans, Spans):
            self.spans = Spans(self.spans if type(self.spans) is dict else dict(self.spans), lines)
        if not isinstance(self.keys, Spans):
            self.keys = Spans(self.keys if type(self.keys) is dict else dict(self.keys), lines)

    def _located(self, path: Path_) -> Path_:
        raw = self.spans.raw
        while path and path not in raw:
            path = path[:-1]
        return path

    def span(self, path: Path_) -> Span:
        raw = self.spans.raw.get(self._located(tuple(path)))
        return self.spans.lines.span(raw) if raw is not None else Span(self.source.path, 1, 1)

    def key_span(self, path: Path_) -> Span:
        path = tuple(path)
        raw = self.keys.raw.get(path)
        return self.keys.lines.span(raw) if raw is not None else self.span(path)

    def expression_span(self, path: Path_, offset: int, end: int | None = None) -> Span:
        path = tuple(path)
        segments = self.expressions.get(path)
        if segments is None:
            return self.span(path)
        line, col = self._position(segments, offset)
        width = 1
        if end is not None and end > offset:
            end_line, end_col = self._position(segments, end)
            width = end_col - col if end_line == line and end_col > col else 1
        return Span(self.source.path, line, col, line, col + width)

    def _position(self, segments: list[tuple[int, int]], offset: int) -> tuple[int, int]:
        index = max(0, bisect.bisect_right([s[0] for s in segments], offset) - 1)
        text_offset, source_offset = segments[index]
        absolute = source_offset + (offset - text_offset)
        starts = self.spans.lines.starts
        line = bisect.bisect_right(starts, absolute)
        return line, absolute - starts[line - 1] + 1


class DataBuilder:
    """Walks the concrete tree of one .ops file; collects data, spans and diagnostics."""

    def __init__(self, path: str, text: str) -> None:
        self.file, self.text = path, text
        # offsets where lines start: a token's line and column come from its offsets, as
        # Lark's line counter gives them (so the lean run's tokens need carry no positions)
        self.line_starts = [0]
        self.line_starts += [m.end() for m in _NEWLINE.finditer(text)]
        # data path → (start, end) offsets (or a Span): OpsDocument makes the Spans when read
        self.spans: dict[Path_, Any] = {}
        self.keys: dict[Path_, Any] = {}
        self.expressions: dict[Path_, list[tuple[int, int]]] = {}
        self.diagnostics: list[Diagnostic] = []

    # -- positions ----------------------------------------------------------------------

    def at(self, node: Any) -> Span:
        # first_token/last_token inlined (the hottest call of a build): tokens are str, trees not
        first = last = node
        while not isinstance(first, str):
            first = first.children[0]
        while not isinstance(last, str):
            last = last.children[-1]
        return self.between(first.start_pos, last.end_pos)

    def offsets(self, node: Any) -> tuple[int, int]:
        """What `spans` and `keys` record for a node: its first token's start and last token's end."""
        first = last = node
        while not isinstance(first, str):
            first = first.children[0]
        while not isinstance(last, str):
            last = last.children[-1]
        return first.start_pos, last.end_pos

    def between(self, start: int, end: int) -> Span:
        """The span from offset `start` to `end`: lines and columns from 1, end exclusive."""
        starts = self.line_starts
        line = _bisect(starts, start)
        end_line = line if line == len(starts) or end < starts[line] else _bisect(starts, end)
        if not _PLAIN_SPAN:
            return Span(self.file, line, start - starts[line - 1] + 1, end_line, end - starts[end_line - 1] + 1)
        made = _new(Span)  # `_span` inlined: ~1,200 Spans a pack
        fields = made.__dict__
        fields["file"] = self.file
        fields["line"] = line
        fields["col"] = start - starts[line - 1] + 1
        fields["end_line"] = end_line
        fields["end_col"] = end - starts[end_line - 1] + 1
        return made

    def mark(self, path: Path_, value_node: Any, key_node: Any = None) -> None:
        # the same offsets for both when the key is the value
        span = self.spans[path] = self.offsets(value_node)
        self.keys[path] = span if key_node is None or key_node is value_node else self.offsets(key_node)

    def put(self, target: dict, path: Path_, value: Any, value_node: Any, key_node: Any, what: str = "") -> bool:
        key = path[-1]
        if key in target:
            first = self.keys[path]
            if type(first) is tuple:
                first = self.between(*first)
            label = what or f"`{key}`"
            self.diagnostics.append(
                Diagnostic(
                    "OPS003",
                    Severity.ERROR,
                    f"duplicate {label} (first defined at line {first.line})",
                    self.at(key_node),
                    "remove or rename one",
                )
            )
            return False
        target[key] = value
        self.mark(path, value_node, key_node)
        return True

    # -- leaves -------------------------------------------------------------------------

    def text_of(self, node: Any) -> str:
        """A `word`, `string` or `duration`: bare text, or a decoded string."""
        token = node.children[0]
        if token.type != "STRING":
            return str(token)
        return self.decode(token)

    def number(self, token: Any) -> int | float:
        """A number literal; one that JSON (and so a plan) cannot hold exactly is OPS006, as in YAML."""
        raw = str(token)
        if "." in raw or "e" in raw or "E" in raw:
            value: int | float = float(raw)
            if value in (_INF, -_INF):
                self.unjsonable(token, f"`{raw}` is not a finite number; plans are JSON and cannot hold it")
            return value
        # more digits than 2^53 has are too large before int() is asked (it refuses past 4,300 digits)
        value = int(raw) if len(raw.lstrip("-+")) <= 16 else _MAX_SAFE_INT + 1
        if abs(value) > _MAX_SAFE_INT:
            shown = raw if len(raw) <= 24 else raw[:20] + "…"
            self.unjsonable(token, f"integer `{shown}` is too large for JSON (beyond ±2^53)")
        return value

    def unjsonable(self, token: Any, message: str) -> None:
        hint = "quote it if you meant the text, or use a smaller number"
        self.diagnostics.append(Diagnostic("OPS006", Severity.ERROR, message, self.at(token), hint))

    def decode(self, token: Any) -> str:
        if _PLAIN_STRING.fullmatch(token):  # no escapes, no control characters: what JSON decodes to
            return token[1:-1]
        try:
            return json.loads(str(token))
        except ValueError:
            self.diagnostics.append(
                Diagnostic(
                    "OPS002",
                    Severity.ERROR,
                    "invalid escape in string",
                    self.at(token),
                    "escapes are JSON's: \\\" \\\\ \\n \\t \\uXXXX",
                )
            )
            return str(token)[1:-1]

    def value(self, node: Any, path: Path_) -> Any:
        """A JSON-like literal; records a span for it and every element."""
        kind = str(node.data)  # a plain str: Lark's rule names are Tokens, slow to compare
        children = node.children
        spans = self.spans
        if kind in _SCALARS:  # one token: its span is the node's
            token = children[0]
            spans[path] = (token.start_pos, token.end_pos)
            if kind == "string":
                return self.decode(token)
            if kind == "number":
                return self.number(token)
            if kind == "boolean":
                return token.type == "TRUE"
            return None
        spans[path] = self.offsets(node)
        if kind == "list":
            items = [c for c in children if not isinstance(c, str)]
            return [self.value(item, (*path, i)) for i, item in enumerate(items)]
        out: dict[str, Any] = {}
        keys = self.keys
        for pair in children:
            if isinstance(pair, str):  # punctuation
                continue
            key_token, _, value_node = pair.children
            key = self.decode(key_token) if key_token.type == "STRING" else str(key_token)
            here = (*path, key)
            if key in out:
                self.put(out, here, None, value_node, key_token)
                continue
            out[key] = self.value(value_node, here)
            keys[here] = (key_token.start_pos, key_token.end_pos)
        return out

    def expression(self, node: Any, path: Path_) -> str:
        """The expression's source text, newlines and comments between tokens as spaces."""
        start, end = _bounds(node)
        raw = self.text[start:end]
        pieces, segments, length, last = [], [(0, start)], 0, 0
        for match in _GAP.finditer(raw):
            if match.group()[0] in "\"'":
                continue
            pieces.append(raw[last : match.start()] + " ")
            length += match.start() - last + 1
            last = match.end()
            segments.append((length, start + last))
        pieces.append(raw[last:])
        self.expressions[path] = segments
        return "".join(pieces)


def _bounds(node: Any) -> tuple[int, int]:
    return first_token(node).start_pos, last_token(node).end_pos


# -- statements ---------------------------------------------------------------------------


# Statements whose one argument is a word, string or duration, kept as its text.
_TEXT_STATEMENTS = ("description", "name", "message", "risk", "escalate", "timeout", "cooldown", "for", "pattern")
_TEXT_STATEMENTS += ("runner",)


def _trees(node: Any) -> list:
    return [c for c in node.children if not isinstance(c, str)]


class PackBuilder(DataBuilder):
    """One method per block; statements inside blocks go through `statement`."""

    def build(self, start: Any) -> dict:
        (top,) = start.children
        keyword, name, _, version, _, owner = top.children[:6]
        kind = "PolicyPack" if top.data == "policypack" else "Pack"
        data: dict[str, Any] = {"apiVersion": "opsdsl/v1", "kind": kind}
        self.spans[()] = self.offsets(top)
        self.mark(("apiVersion",), keyword)
        self.mark(("kind",), keyword)
        metadata: dict[str, Any] = {}
        data["metadata"] = metadata
        self.mark(("metadata",), keyword)
        self.put(metadata, ("metadata", "name"), self.text_of(name), name, name)
        self.put(metadata, ("metadata", "version"), self.text_of(version), version, top.children[2])
        self.put(metadata, ("metadata", "owner"), self.text_of(owner), owner, top.children[4])
        for stmt in _trees(top)[3:]:
            kind_ = str(stmt.data)
            if kind_ in ("description", "labels"):
                self.statement(stmt, metadata, ("metadata",))
            elif kind_ == "policy":
                self.policy(stmt, data)
            else:
                section = {"param": "params", "trigger": "triggers", "hook": "hooks", "playbook": "playbooks"}[kind_]
                if section not in data:
                    data[section] = {}
                    self.mark((section,), stmt, stmt.children[0])
                getattr(self, kind_)(stmt, data[section], (section,))
        return data

    def named(self, stmt: Any, section: dict, path: Path_, what: str) -> tuple[dict, Path_] | None:
        name_node = stmt.children[1]
        name = self.text_of(name_node)
        entry: dict[str, Any] = {}
        if not self.put(section, (*path, name), entry, stmt, name_node, f"{what} `{name}`"):
            return None
        return entry, (*path, name)

    def param(self, stmt: Any, section: dict, path: Path_) -> None:
        self.typed(stmt, section, path, "param")

    def input(self, stmt: Any, section: dict, path: Path_) -> None:
        self.typed(stmt, section, path, "input")

    def typed(self, stmt: Any, section: dict, path: Path_, what: str) -> None:
        found = self.named(stmt, section, path, what)
        if found is None:
            return
        entry, here = found
        children = stmt.children
        type_node = children[3]
        self.put(entry, (*here, "type"), self.text_of(type_node), type_node, type_node)
        i = 4
        while i < len(children):
            child = children[i]
            kind = getattr(child, "type", None) or child.data
            if kind == "EQUAL":
                value_node = children[i + 1]
                self.put(entry, (*here, "default"), self.value(value_node, (*here, "default")), value_node, child)
                i += 2
                continue
            if kind == "FROM":
                self.put(
                    entry, (*here, "from"), self.expression(children[i + 1], (*here, "from")), children[i + 1], child
                )
                i += 2
                continue
            if kind == "string":
                self.put(entry, (*here, "description"), self.text_of(child), child, child)
            elif kind in ("param_body", "input_body"):
                for inner in _trees(child):
                    self.statement(inner, entry, here)
            i += 1

    def trigger(self, stmt: Any, section: dict, path: Path_) -> None:
        found = self.named(stmt, section, path, "trigger")
        if found is None:
            return
        entry, here = found
        self.put(entry, (*here, "on"), self.text_of(stmt.children[3]), stmt.children[3], stmt.children[2])
        self.rest(_trees(stmt)[2:], entry, here)

    def hook(self, stmt: Any, section: dict, path: Path_) -> None:
        found = self.named(stmt, section, path, "hook")
        if found is None:
            return
        entry, here = found
        trigger, run = stmt.children[3], stmt.children[5]
        self.put(entry, (*here, "trigger"), self.text_of(trigger), trigger, trigger)
        self.put(entry, (*here, "run"), self.text_of(run), run, stmt.children[4])
        self.rest(_trees(stmt)[3:], entry, here)

    def playbook(self, stmt: Any, section: dict, path: Path_) -> None:
        found = self.named(stmt, section, path, "playbook")
        if found is None:
            return
        entry, here = found
        severity = stmt.children[3]
        self.put(entry, (*here, "severity"), self.text_of(severity), severity, stmt.children[2])
        for inner in _trees(stmt)[2:]:
            inner_kind = str(inner.data)
            if inner_kind == "input":
                if "inputs" not in entry:
                    entry["inputs"] = {}
                    self.mark((*here, "inputs"), inner, inner.children[0])
                self.input(inner, entry["inputs"], (*here, "inputs"))
            elif inner_kind == "step":
                self.step(inner, entry.setdefault("steps", []), (*here, "steps"))
            elif inner_kind == "finally":
                steps: list = []
                if self.put(entry, (*here, "finally"), steps, inner, inner.children[0]):
                    for step in _trees(inner):
                        self.step(step, steps, (*here, "finally"))
            else:
                self.statement(inner, entry, here)
        if "steps" in entry:
            self.keys.setdefault((*here, "steps"), self.spans[(*here, "steps", 0)])
            self.spans.setdefault((*here, "steps"), self.spans[(*here, "steps", 0)])

    def step(self, stmt: Any, steps: list, path: Path_) -> None:
        here = (*path, len(steps))
        entry: dict[str, Any] = {}
        steps.append(entry)
        self.mark(here, stmt, stmt.children[0])
        step_id, action = stmt.children[1], stmt.children[3]
        self.put(entry, (*here, "id"), self.text_of(step_id), step_id, step_id)
        self.put(entry, (*here, "action"), self.text_of(action), action, action)
        self.rest(_trees(stmt)[2:], entry, here)

    def policy(self, stmt: Any, data: dict) -> None:
        if "policies" not in data:
            data["policies"] = []
            self.mark(("policies",), stmt, stmt.children[0])
        here = ("policies", len(data["policies"]))
        entry: dict[str, Any] = {}
        data["policies"].append(entry)
        self.mark(here, stmt, stmt.children[0])
        policy_id, effect = stmt.children[1], stmt.children[2]
        self.put(entry, (*here, "id"), self.text_of(policy_id), policy_id, policy_id)
        self.put(entry, (*here, "effect"), self.text_of(effect), effect, effect)
        self.rest(_trees(stmt)[2:], entry, here)

    def rest(self, nodes: list, entry: dict, here: Path_) -> None:
        """Statements after a header: inline ones (`when`) and those of a `{ }` body."""
        for node in nodes:
            if node.data.endswith("_body"):
                for inner in _trees(node):
                    self.statement(inner, entry, here)
            else:
                self.statement(node, entry, here)

    def statement(self, stmt: Any, entry: dict, here: Path_) -> None:
        kind, keyword = str(stmt.data), stmt.children[0]
        path = (*here, kind)
        args = stmt.children[1:]
        if kind in _TEXT_STATEMENTS:
            self.put(entry, path, self.text_of(args[0]), args[0], keyword)
        elif kind in ("when", "dedupe"):
            self.put(entry, path, self.expression(args[0], path), args[0], keyword)
        elif kind in ("labels", "with", "needs", "enum", "max_concurrent", "approvals", "max_length"):
            self.put(entry, path, self.value(args[0], path), args[0], keyword)
        elif kind in ("secret", "continue_on_error", "idempotent", "distinct_from_requester"):
            flag = args[0].children[0].type == "TRUE" if args else True
            self.put(entry, path, flag, args[0] if args else keyword, keyword)
        elif kind == "threshold":
            threshold: dict[str, Any] = {}
            if self.put(entry, path, threshold, stmt, keyword):
                threshold["count"] = self.value(args[0], (*path, "count"))
                self.keys[(*path, "count")] = self.offsets(args[0])
                self.put(threshold, (*path, "within"), self.text_of(args[2]), args[2], args[1])
                if len(args) > 3:  # per EXPR
                    per = (*path, "per")
                    self.put(threshold, per, self.expression(args[4], per), args[4], args[3])
        elif kind == "retry":
            self.retry(stmt, entry, path)
        elif kind == "compensate":
            compensation: dict[str, Any] = {}
            if self.put(entry, path, compensation, stmt, keyword):
                action = args[0]
                self.put(compensation, (*path, "action"), self.text_of(action), action, action)
                self.rest(_trees(stmt)[1:], compensation, path)

    def retry(self, stmt: Any, entry: dict, path: Path_) -> None:
        retry: dict[str, Any] = {}
        if not self.put(entry, path, retry, stmt, stmt.children[0]):
            return
        children = stmt.children
        retry["attempts"] = self.value(children[1], (*path, "attempts"))
        self.keys[(*path, "attempts")] = self.offsets(children[1])
        i = 2
        while i < len(children):
            child = children[i]
            if hasattr(child, "data"):  # the backoff, a word
                self.put(retry, (*path, "backoff"), self.text_of(child), child, child)
                i += 1
                continue
            key = str(child)
            value_node = children[i + 1]
            value = value_node.children[0].type == "TRUE" if key == "jitter" else self.text_of(value_node)
            self.put(retry, (*path, key), value, value_node, child)
            i += 2
