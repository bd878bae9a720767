"""The canonical .ops layout, printed from the concrete tree with its comments.

Layout follows content, not the input's line breaks: two-space indents, one statement per
line, a literal or a one-statement body kept on one line when it fits in WIDTH columns and
holds no comment, else one entry per line without commas. Blank lines between statements
are kept (at most one). Comments keep their order: a comment on its own line stays before
the statement that follows it, a comment at the end of a line stays at the end of that
statement's last line.
"""

from __future__ import annotations

import bisect
import json
import re
import unicodedata
from typing import Any

WIDTH = 120
INDENT = "  "
WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]*\Z")
KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d))+\Z")
# Words the grammar spells as keywords: written quoted wherever a name is expected.
KEYWORDS = frozenset(
    [
        "pack",
        "policypack",
        "version",
        "owner",
        "description",
        "labels",
        "param",
        "secret",
        "enum",
        "pattern",
        "max_length",
        "trigger",
        "on",
        "when",
        "threshold",
        "within",
        "per",
        "for",
        "hook",
        "cooldown",
        "dedupe",
        "max_concurrent",
        "escalate",
        "playbook",
        "severity",
        "input",
        "from",
        "finally",
        "step",
        "name",
        "needs",
        "risk",
        "with",
        "timeout",
        "retry",
        "initial",
        "max",
        "jitter",
        "compensate",
        "continue_on_error",
        "idempotent",
        "runner",
        "policy",
        "message",
        "approvals",
        "distinct_from_requester",
        "true",
        "false",
        "null",
        "in",
    ]
)
_GAP = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|\s*#[^\n]*\n\s*|\s*\n\s*')
_BLOCKS = ("pack", "policypack", "playbook", "finally")
_VALUES = ("pair", "string", "number", "boolean", "null", "list", "map")


def quote(text: str) -> str:
    """A double-quoted string, JSON escapes; printable non-ASCII stays as it is."""
    out = json.dumps(text, ensure_ascii=False)
    if out.isprintable():
        return out
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in out)


def _escape(char: str) -> str:
    if unicodedata.category(char) == "Cs" or ord(char) > 0xFFFF:
        return json.dumps(char)[1:-1]
    return f"\\u{ord(char):04x}"


def word(text: str) -> str:
    return text if WORD.match(text) and text not in KEYWORDS else quote(text)


def key(text: str) -> str:
    return text if KEY.match(text) and text not in ("true", "false", "null") else quote(text)


def number(value: int | float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def expression_text(source: str, start: int, end: int) -> str:
    """An expression's text with line breaks and comments between tokens as single spaces."""
    raw = source[start:end]
    return _GAP.sub(lambda m: m.group() if m.group()[0] in "\"'" else " ", raw)


def _is_tree(node: Any) -> bool:
    return hasattr(node, "data")


def first_token(node: Any) -> Any:
    """The first token under `node` (the tree keeps every token, so there always is one)."""
    while _is_tree(node):
        node = node.children[0]
    return node


def last_token(node: Any) -> Any:
    while _is_tree(node):
        node = node.children[-1]
    return node


def _start(node: Any) -> int:
    return first_token(node).start_pos


def _end(node: Any) -> int:
    return last_token(node).end_pos


def _line(node: Any) -> int:
    return first_token(node).line


def _end_line(node: Any) -> int:
    return last_token(node).end_line


class Printer:
    """Prints one tree; `print()` returns the text."""

    def __init__(self, source: str, comments: list) -> None:
        self.source = source
        self.comments = sorted(comments, key=lambda c: c.start_pos)
        self.comment_starts = [c.start_pos for c in self.comments]
        self.next_comment = 0
        self.out: list[str] = []
        self.prev_end = 0

    def print(self, tree: Any) -> str:
        (top,) = tree.children
        self.leading(_line(top), 0, first=True)
        self.statement(top, 0)
        self.trailing(_end_line(top))
        self.leading(10**9, 0, first=False)
        return "\n".join(self.out) + "\n"

    # -- comments -----------------------------------------------------------------------

    def leading(self, line: int, indent: int, first: bool) -> None:
        """Comments before `line`, each on its own line; blank lines kept (at most one)."""
        while self.next_comment < len(self.comments) and self.comments[self.next_comment].line < line:
            comment = self.comments[self.next_comment]
            self.blank_before(comment.line, first)
            self.out.append(INDENT * indent + str(comment).rstrip())
            self.prev_end = comment.line
            self.next_comment += 1
            first = False
        if line < 10**9:
            self.blank_before(line, first)

    def blank_before(self, line: int, first: bool) -> None:
        if not first and self.prev_end and line > self.prev_end + 1 and self.out and self.out[-1] != "":
            self.out.append("")

    def trailing(self, line: int) -> None:
        if self.next_comment < len(self.comments) and self.comments[self.next_comment].line == line:
            self.out[-1] += "  " + str(self.comments[self.next_comment]).rstrip()
            self.next_comment += 1
        self.prev_end = max(self.prev_end, line)

    def has_comment(self, node: Any) -> bool:
        i = bisect.bisect_left(self.comment_starts, _start(node))
        return i < len(self.comment_starts) and self.comment_starts[i] < _end(node)

    # -- statements ---------------------------------------------------------------------

    def split(self, node: Any) -> tuple[list, Any, list, Any]:
        """A statement's header atoms, and its body: opening token, items, closing token."""
        atoms: list = []
        children = list(node.children)
        for i, child in enumerate(children):
            if _is_tree(child) and child.data.endswith("_body"):
                inner = child.children
                return atoms, inner[0], [c for c in inner[1:-1]], inner[-1]
            if not _is_tree(child) and child == "{":
                return atoms, child, children[i + 1 : -1], children[-1]
            atoms.append(child)
        return atoms, None, [], None

    def atom_text(self, atom: Any) -> str | None:
        """One header atom on one line, or None when it must span lines."""
        if not _is_tree(atom):
            return str(atom)
        kind = atom.data
        if kind == "word":
            token = atom.children[0]
            return str(token) if token.type == "WORD" else word(json.loads(str(token)))
        if kind == "duration":
            token = atom.children[0]
            text = str(token) if token.type == "DURATION" else json.loads(str(token))
            return text if DURATION.match(text) else quote(text)
        if kind == "when":
            return "when " + self.expression(atom.children[1])
        if kind in ("string", "number", "boolean", "null", "list", "map"):
            return self.inline_value(atom)
        return self.expression(atom)

    def expression(self, node: Any) -> str:
        return expression_text(self.source, _start(node), _end(node))

    def join(self, parts: list[str]) -> str:
        text = ""
        for part in parts:
            text += part if (part == ":" or not text) else " " + part
        return text

    def statement(self, node: Any, indent: int) -> None:
        atoms, opening, items, closing = self.split(node)
        texts = [self.atom_text(a) for a in atoms]
        header = None if None in texts else self.join(texts)
        room = WIDTH - len(INDENT) * indent
        has_literal = any(_is_tree(a) and a.data in ("list", "map") for a in atoms)
        if header is not None and opening is None and (len(header) <= room or not has_literal):
            self.out.append(INDENT * indent + header)
            return
        if header is not None and opening is not None and node.data not in _BLOCKS:
            if not items:
                self.out.append(INDENT * indent + header)
                return
            one = self.one_line(items[0]) if len(items) == 1 and not self.has_comment(node) else None
            if one is not None and len(header) + len(one) + 6 <= room:
                self.out.append(f"{INDENT * indent}{header} {{ {one} }}")
                return
        self.atoms(atoms, indent)
        if opening is None:
            return
        if not items and node.data in _BLOCKS and not self.has_comment(node):
            self.out[-1] += " {}"
            return
        self.out[-1] += " {"
        self.block(items, indent + 1, opening, closing)
        self.out.append(INDENT * indent + "}")

    def one_line(self, item: Any) -> str | None:
        atoms, opening, _, _ = self.split(item)
        if opening is not None:
            return None
        texts = [self.atom_text(a) for a in atoms]
        return None if None in texts else self.join(texts)

    def atoms(self, atoms: list, indent: int) -> None:
        """Header atoms from the current line on; long or commented literals span lines."""
        line = INDENT * indent
        fresh = True
        for atom in atoms:
            text = self.atom_text(atom)
            sep = "" if fresh or text == ":" else " "
            room = WIDTH - len(line) - len(sep)
            if text is not None and (len(text) <= room or not (_is_tree(atom) and atom.data in ("list", "map"))):
                line += sep + text
                fresh = False
                continue
            opening, closing = ("[", "]") if atom.data == "list" else ("{", "}")
            self.out.append(line + sep + opening)
            entries = [c for c in atom.children if _is_tree(c)]
            if text is not None and atom.data == "list" and all(e.data not in ("list", "map") for e in entries):
                self.fill([self.value(e) for e in entries], indent + 1)
            else:
                self.block(entries, indent + 1, atom.children[0], atom.children[-1])
            line = INDENT * indent + closing
            fresh = False
        self.out.append(line)

    def fill(self, texts: list[str], indent: int) -> None:
        """A long list of scalars: as many items per line as fit, commas between."""
        line = ""
        for text in texts:
            if line and len(INDENT * indent) + len(line) + len(text) + 2 > WIDTH:
                self.out.append(INDENT * indent + line)
                line = ""
            line += f"{text}," if not line else f" {text},"
        if line:
            self.out.append(INDENT * indent + line)

    def block(self, items: list, indent: int, opening: Any, closing: Any) -> None:
        """Items one per line, with their comments, between `{`/`[` and its closer."""
        if not items or _line(items[0]) > opening.line:
            self.trailing(opening.line)
        self.prev_end = max(self.prev_end, opening.line)
        first = True
        for item in items:
            self.leading(_line(item), indent, first)
            if item.data == "pair":
                key_token, _, value = item.children
                name = json.loads(str(key_token)) if key_token.type == "STRING" else str(key_token)
                self.atoms([key(name) + ":", value], indent)
            elif item.data in ("string", "number", "boolean", "null", "list", "map"):
                self.atoms([item], indent)
            else:
                self.statement(item, indent)
            if item.data in _VALUES:
                self.out[-1] += ","
            self.trailing(_end_line(item))
            first = False
        self.leading(closing.line, indent, first)
        self.prev_end = max(self.prev_end, closing.line)

    # -- values -------------------------------------------------------------------------

    def inline_value(self, node: Any) -> str | None:
        if node.data in ("list", "map") and self.has_comment(node):
            return None
        return self.value(node)

    def value(self, node: Any) -> str:
        kind = node.data
        if kind == "string":
            return quote(json.loads(str(node.children[0])))
        if kind in ("number", "boolean", "null"):
            return str(node.children[0])
        entries = [c for c in node.children if _is_tree(c)]
        if kind == "list":
            return "[" + ", ".join(self.value(e) for e in entries) + "]"
        parts = []
        for pair in entries:
            key_token, _, value = pair.children
            name = json.loads(str(key_token)) if key_token.type == "STRING" else str(key_token)
            parts.append(f"{key(name)}: {self.value(value)}")
        return "{" + ", ".join(parts) + "}"
