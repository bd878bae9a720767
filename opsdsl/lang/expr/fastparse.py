"""A hand-written parser for well-formed expressions, so a clean pack never imports Lark.

It reads grammar/expr.lark's language with the same terminal regexes and hands every
rule's children to the same node builder (`parser._NodeBuilder`) in the shapes Lark would,
so what it returns is the tree Lark builds, positions included. It answers only when it is
sure: on anything unexpected (a syntax error, a keyword where a name could be, a builder
complaint, deep nesting) it returns None and the caller asks Lark, whose tree or error is
the reference. tests/lang/test_expr_fastparse.py holds the two to the same trees.

Where Lark's contextual lexer and this fixed one could read the same text differently
(a keyword after `.`, `in` as a name, `a inb`), this parser's reading does not parse, so
Lark decides.
"""

from __future__ import annotations

import re
from typing import Any

# Terminal order as Lark tries them: by priority, then longer patterns first (`//` before
# `/`, `<=` before `<`). The regexes are grammar/expr.lark's, verbatim.
_TERMINALS = (
    ("WS", r"[ \t\r\n\f]+"),
    ("COMMENT", r"\/\/[^\n]*"),
    ("DURATION", r"(?:\d+(?:ms|s|m|h|d))+(?![A-Za-z0-9_])"),
    ("FLOAT", r"\d+\.\d+(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?"),
    ("HEX", r"0[xX][0-9a-fA-F]+"),
    ("INT", r"\d+"),
    (
        "STRING",
        r"[rR](?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"[^\"\n\r]*\"|'[^'\n\r]*')"
        r"|\"\"\"(?:[^\\]|\\[\s\S])*?\"\"\"|'''(?:[^\\]|\\[\s\S])*?'''"
        r"|\"(?:[^\"\\\n\r]|\\.)*\"|'(?:[^'\\\n\r]|\\.)*'",
    ),
    ("IDENT", r"[A-Za-z_][A-Za-z0-9_]*"),
    ("OR", r"\|\|"),
    ("AND", r"&&"),
    ("EQ", r"=="),
    ("NE", r"!="),
    ("LE", r"<="),
    ("GE", r">="),
    ("LT", r"<"),
    ("GT", r">"),
    ("PLUS", r"\+"),
    ("MINUS", r"-"),
    ("STAR", r"\*"),
    ("SLASH", r"/"),
    ("PERCENT", r"%"),
    ("BANG", r"!"),
    ("QMARK", r"\?"),
    ("COLON", r":"),
    ("DOT", r"\."),
    ("LPAR", r"\("),
    ("RPAR", r"\)"),
    ("LSQB", r"\["),
    ("RSQB", r"\]"),
    ("LBRACE", r"\{"),
    ("RBRACE", r"\}"),
    ("_COMMA", r","),
)
_KEYWORDS = {"in": "IN", "true": "TRUE", "false": "FALSE", "null": "NULL"}
_LITERALS = {
    "INT": "int_lit",
    "HEX": "int_lit",
    "FLOAT": "double_lit",
    "DURATION": "duration_lit",
    "STRING": "string_lit",
    "TRUE": "bool_lit",
    "FALSE": "bool_lit",
    "NULL": "null_lit",
}
_RELATIONS = frozenset({"EQ", "NE", "LT", "LE", "GT", "GE", "IN"})
_ADDITIVE = frozenset({"PLUS", "MINUS"})
_MULTIPLICATIVE = frozenset({"STAR", "SLASH", "PERCENT"})
_MAX_NESTING = 100  # deeper is an error anyway (parser.MAX_DEPTH); Lark reports it

_master: re.Pattern[str] | None = None


class Token(str):
    """Lark's Token, as much of it as the node builder reads."""

    type: str
    start_pos: int
    end_pos: int


class _Unsure(Exception):
    """Not certainly what Lark reads: let Lark parse it."""


def _tokens(text: str) -> list[Token]:
    global _master
    if _master is None:
        _master = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _TERMINALS))
    match = _master.match
    out: list[Token] = []
    pos, end = 0, len(text)
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise _Unsure
        kind = m.lastgroup
        stop = m.end()
        if kind != "WS" and kind != "COMMENT":
            value = m.group()
            token = Token(value)
            token.type = _KEYWORDS.get(value, kind) if kind == "IDENT" else kind  # type: ignore[assignment]
            token.start_pos = pos
            token.end_pos = stop
            out.append(token)
        pos = stop
    return out


def parse_fast(text: str, builder: Any) -> Any:
    """The root node Lark's parser would build from `text` with `builder`, or None when this
    parser is not sure (any error included)."""
    try:
        tokens = _tokens(text)
        if not tokens:
            return None
        parser = _Parser(tokens, builder)
        root = parser.expr()
        if parser.pos != len(tokens):
            return None
        return root
    except (_Unsure, RecursionError):
        return None
    except Exception as exc:  # the builder's own complaints (bad escapes): Lark reports them in order
        if type(exc).__name__ == "_SyntaxProblem":
            return None
        raise


class _Parser:
    def __init__(self, tokens: list[Token], builder: Any) -> None:
        self.tokens = tokens
        self.pos = 0
        self.b = builder
        self.nesting = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos].type if self.pos < len(self.tokens) else None

    def take(self, kind: str) -> Token:
        if self.pos >= len(self.tokens) or self.tokens[self.pos].type != kind:
            raise _Unsure
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expr(self) -> Any:
        self.nesting += 1
        if self.nesting > _MAX_NESTING:
            raise _Unsure
        condition = self.or_expr()
        if self.peek() == "QMARK":
            mark = self.take("QMARK")
            then = self.or_expr()
            colon = self.take("COLON")
            otherwise = self.expr()
            condition = self.b.conditional([condition, mark, then, colon, otherwise])
        self.nesting -= 1
        return condition

    def _binary(self, operand: Any, kinds: frozenset[str] | str) -> Any:
        left = operand()
        while True:
            kind = self.peek()
            if kind is None or (kind not in kinds if isinstance(kinds, frozenset) else kind != kinds):
                return left
            op = self.take(kind)
            left = self.b.binary([left, op, operand()])

    def or_expr(self) -> Any:
        return self._binary(self.and_expr, "OR")

    def and_expr(self) -> Any:
        return self._binary(self.relation, "AND")

    def relation(self) -> Any:
        return self._binary(self.addition, _RELATIONS)

    def addition(self) -> Any:
        return self._binary(self.multiplication, _ADDITIVE)

    def multiplication(self) -> Any:
        return self._binary(self.unary, _MULTIPLICATIVE)

    def unary(self) -> Any:
        kind = self.peek()
        if kind == "BANG" or kind == "MINUS":
            op = self.take(kind)
            self.nesting += 1
            if self.nesting > _MAX_NESTING:
                raise _Unsure
            operand = self.unary()
            self.nesting -= 1
            return self.b.unary([op, operand])
        return self.member()

    def member(self) -> Any:
        node = self.primary()
        while True:
            kind = self.peek()
            if kind == "DOT":
                dot = self.take("DOT")
                name = self.take("IDENT")
                if self.peek() == "LPAR":
                    node = self.b.method_call([node, dot, name, *self.call_rest()])
                else:
                    node = self.b.select([node, dot, name])
            elif kind == "LSQB":
                open_ = self.take("LSQB")
                key = self.expr()
                node = self.b.index([node, open_, key, self.take("RSQB")])
            else:
                return node

    def call_rest(self) -> list:
        """`LPAR [args] RPAR` as Lark hands it over (no placeholder for absent args)."""
        open_ = self.take("LPAR")
        if self.peek() == "RPAR":
            return [open_, self.take("RPAR")]
        args = [self.expr()]
        while self.peek() == "_COMMA":
            self.pos += 1
            args.append(self.expr())
        return [open_, self.b.args(args), self.take("RPAR")]

    def primary(self) -> Any:
        kind = self.peek()
        if kind == "IDENT":
            name = self.take("IDENT")
            if self.peek() == "LPAR":
                return self.b.call([name, *self.call_rest()])
            return self.b.ident([name])
        if kind in _LITERALS:
            return getattr(self.b, _LITERALS[kind])([self.take(kind)])
        if kind == "LPAR":
            open_ = self.take("LPAR")
            inner = self.expr()
            return self.b.paren([open_, inner, self.take("RPAR")])
        if kind == "LSQB":
            open_ = self.take("LSQB")
            if self.peek() == "RSQB":
                return self.b.list_lit([open_, self.take("RSQB")])
            items = [self.expr()]
            while self.peek() == "_COMMA":
                self.pos += 1
                if self.peek() == "RSQB":
                    break
                items.append(self.expr())
            return self.b.list_lit([open_, self.b.items(items), self.take("RSQB")])
        if kind == "LBRACE":
            open_ = self.take("LBRACE")
            if self.peek() == "RBRACE":
                return self.b.map_lit([open_, self.take("RBRACE")])
            entries = [self.entry()]
            while self.peek() == "_COMMA":
                self.pos += 1
                if self.peek() == "RBRACE":
                    break
                entries.append(self.entry())
            return self.b.map_lit([open_, self.b.entries(entries), self.take("RBRACE")])
        raise _Unsure

    def entry(self) -> Any:
        key = self.expr()
        colon = self.take("COLON")
        return self.b.entry([key, colon, self.expr()])
