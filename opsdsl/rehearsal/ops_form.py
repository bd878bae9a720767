"""Pack tests in the textual form (`*.test.ops`): text → the data a `*.test.yaml` gives.

The grammar is `packtest.lark` beside this module (the pack grammar has no test form);
values are the .ops pack values plus bare words. The data is built with the pack form's
`DataBuilder` and handed back in an `OpsDocument`, so schema problems and failed
expectations point at .ops lines exactly as they point at YAML ones.
"""

from __future__ import annotations

import functools
from typing import Any

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.lang.ops.data import DataBuilder, OpsDocument
from opsdsl.lang.source import Source

Path_ = tuple[str | int, ...]

_WORDS = {
    "STRING": 'a string ("...")',
    "WORD": "a word",
    "KEY": "a key",
    "NUMBER": "a number",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "COMMA": "`,`",
    "COLON": "`:`",
    "CASE": "`case`",
    "MOCK": "`mock`",
    "APPROVAL": "`approval`",
    "EXPECT": "`expect`",
    "DECISION": "`decision`",
    "OUTPUT": "`output`",
    "PACKTEST": "`packtest`",
    "$END": "the end of the file",
}


def load_text(text: str, path: str) -> tuple[OpsDocument | None, list[Diagnostic]]:
    """Parse one `*.test.ops` file into data with positions; None when it does not parse."""
    from lark.exceptions import UnexpectedInput

    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        hint = 'a pack test starts with `packtest "PACK.ops" {`'
        return None, [Diagnostic("OPS001", Severity.ERROR, "file is empty", Span(path, 1, 1), hint)]
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as error:
        return None, [_syntax_error(error, path)]
    builder = _TestBuilder(path, text)
    data = builder.build(tree)
    return OpsDocument(Source(path, text), data, None, builder.spans, builder.keys, {}), builder.diagnostics


@functools.cache
def _parser() -> Any:
    from importlib.resources import files

    from lark import Lark

    from opsdsl.resources import lark_cache_file

    grammar = files("opsdsl.rehearsal").joinpath("packtest.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        keep_all_tokens=True,
        maybe_placeholders=False,
        cache=lark_cache_file("packtest", grammar),
    )


def _syntax_error(error: Any, path: str) -> Diagnostic:
    from lark.exceptions import UnexpectedToken

    line, col = max(1, getattr(error, "line", 1) or 1), max(1, getattr(error, "column", 1) or 1)
    if isinstance(error, UnexpectedToken):
        expected = sorted(_WORDS.get(name, f"`{name.lower()}`") for name in (error.accepts or error.expected))
        found = "the end of the file" if error.token.type == "$END" else f"`{error.token}`"
        width = max(1, len(str(error.token))) if error.token.type != "$END" else 1
    else:
        expected = sorted(_WORDS.get(name, name) for name in (getattr(error, "allowed", None) or ()))
        found, width = f"`{error.char}`" if hasattr(error, "char") else "invalid input", 1
    message = f"expected {', '.join(expected[:-1]) + ' or ' + expected[-1] if len(expected) > 1 else ''.join(expected) or 'something else'}, found {found}"
    hint = None
    if found == "`:`":
        hint = "statements take no `:` — write `status succeeded`, not `status: succeeded`"
    return Diagnostic("OPS002", Severity.ERROR, message, Span(path, line, col, line, col + width), hint)


def _trees(node: Any) -> list:
    return [c for c in node.children if hasattr(c, "data")]


class _TestBuilder(DataBuilder):
    """One method per block of packtest.lark."""

    def value(self, node: Any, path: Path_) -> Any:
        if node.data == "word":
            self.spans[path] = self.offsets(node)
            return str(node.children[0])
        return super().value(node, path)

    def build(self, start: Any) -> dict[str, Any]:
        (top,) = start.children
        keyword = top.children[0]
        data: dict[str, Any] = {"apiVersion": "opsdsl/v1", "kind": "PackTest"}
        self.spans[()] = self.offsets(top)
        self.mark(("apiVersion",), keyword)
        self.mark(("kind",), keyword)
        pack = top.children[1]
        self.put(data, ("pack",), self.value(pack, ("pack",)), pack, keyword)
        for stmt in _trees(top)[1:]:
            if stmt.data == "case":
                self.case(stmt, data)
            else:
                self.setting(stmt, data, ())
        return data

    def setting(self, stmt: Any, target: dict, here: Path_) -> None:
        key_token, value_node = stmt.children
        path = (*here, str(key_token))
        self.put(target, path, self.value(value_node, path), value_node, key_token)

    def section(self, target: dict, here: Path_, name: str, keyword: Any) -> dict:
        if name not in target:
            target[name] = {}
            self.mark((*here, name), keyword)
        return target[name]

    def case(self, stmt: Any, data: dict) -> None:
        keyword = stmt.children[0]
        if "cases" not in data:
            data["cases"] = []
            self.mark(("cases",), stmt, keyword)
        here = ("cases", len(data["cases"]))
        entry: dict[str, Any] = {}
        data["cases"].append(entry)
        self.mark(here, stmt, keyword)
        name = stmt.children[1]
        self.put(entry, (*here, "name"), self.value(name, (*here, "name")), name, keyword)
        for inner in _trees(stmt)[1:]:
            kind = inner.data
            if kind == "setting":
                self.setting(inner, entry, here)
            elif kind == "mock":
                self.keyed(inner, self.section(entry, here, "mocks", inner.children[0]), (*here, "mocks"))
            elif kind == "approval":
                self.answers(inner, self.section(entry, here, "approvals", inner.children[0]), (*here, "approvals"))
            else:
                self.expect(inner, entry, here)

    def keyed(self, stmt: Any, target: dict, here: Path_) -> None:
        _, word, value_node = stmt.children
        key = str(word.children[0])
        path = (*here, key)
        self.put(target, path, self.value(value_node, path), value_node, word)

    def answers(self, stmt: Any, target: dict, here: Path_) -> None:
        """`approval STEP {…}` adds one answer; `approval STEP [{…}, {…}]` several, in order."""
        _, word, value_node = stmt.children
        key = str(word.children[0])
        items = target.get(key)
        if items is None:
            items = target[key] = []
            self.mark((*here, key), value_node, word)
        nodes = _trees(value_node) if value_node.data == "list" else [value_node]
        for node in nodes:
            items.append(self.value(node, (*here, key, len(items))))

    def expect(self, stmt: Any, entry: dict, here: Path_) -> None:
        keyword = stmt.children[0]
        expect: dict[str, Any] = {}
        path = (*here, "expect")
        if not self.put(entry, path, expect, stmt, keyword):
            return
        for inner in _trees(stmt):
            if inner.data == "setting":
                self.setting(inner, expect, path)
            else:
                name = "decisions" if inner.data == "decision" else "outputs"
                self.keyed(inner, self.section(expect, path, name, inner.children[0]), (*path, name))
