"""Text to `Expression`: Lark (LALR) with grammar/expr.lark, nodes built while parsing.

The Lark parser is built on first use, not at import, and its grammar analysis is cached
on disk, so `import opsdsl.lang.expr` and a cold start stay cheap. `parse` memoises by text.
Well-formed text is read first by `fastparse` (the same tree, built by the same callbacks,
without importing Lark); whatever it is unsure of, errors included, goes to Lark.
"""

from __future__ import annotations

import functools
from typing import Any

from opsdsl.errors import ExpressionError
from opsdsl.resources import lark_cache_file, read_text

from .fastparse import parse_fast
from .functions import DurationOutOfRange, parse_duration
from .nodes import (
    MACROS,
    Binary,
    Call,
    Comprehension,
    Conditional,
    Expression,
    Has,
    Ident,
    Index,
    ListLit,
    Literal,
    MapLit,
    Node,
    Select,
    Unary,
    depth,
    walk,
)

MAX_LENGTH = 4096
MAX_DEPTH = 64
_INT_LIMIT = 2**63  # one past int64's maximum: only legal as the operand of a unary minus


class ExprSyntaxError(ExpressionError):
    """An expression that does not parse. `offset` is a 0-based character offset into
    `text`; `hint` says what was expected, in words."""

    def __init__(self, message: str, offset: int = 0, hint: str | None = None, text: str | None = None) -> None:
        super().__init__(message)
        self.offset = offset
        self.hint = hint
        self.text = text

    def __reduce__(self):
        return (type(self), (self.message, self.offset, self.hint, self.text))

    def __str__(self) -> str:
        return f"{self.message} (at offset {self.offset})"

    def shifted(self, delta: int, text: str) -> ExprSyntaxError:
        """The same error located in a larger text that holds the expression at `delta`."""
        return ExprSyntaxError(self.message, self.offset + delta, self.hint, text)

    @property
    def context(self) -> str:
        """The line of `text` holding the error, and a caret under it."""
        if self.text is None:
            return ""
        start = self.text.rfind("\n", 0, self.offset) + 1
        stop = self.text.find("\n", self.offset)
        line = self.text[start : stop if stop >= 0 else len(self.text)]
        return f"{line}\n{' ' * (self.offset - start)}^"


def parse(text: str) -> Expression:
    """Parse one expression; raises ExprSyntaxError. Memoised by text."""
    if not isinstance(text, str):
        raise TypeError(f"expression text must be a str, not {type(text).__name__}")
    return _parse_memoised(text)


@functools.lru_cache(maxsize=4096)
def _parse_memoised(text: str) -> Expression:
    if len(text) > MAX_LENGTH:
        raise ExprSyntaxError(
            f"expression is too long ({len(text)} characters; the limit is {MAX_LENGTH})",
            MAX_LENGTH,
            "split it, or move the logic into a step",
            text,
        )
    if not text.strip():
        raise ExprSyntaxError("empty expression", 0, "write an expression, e.g. `event.value > 5`", text)
    root = parse_fast(text, _BUILDER)  # Lark's tree without Lark, or None: then Lark decides
    if root is None:
        from lark.exceptions import UnexpectedInput

        try:
            root = _lark_parser().parse(text)
        except UnexpectedInput as error:
            raise _syntax_error(error, text) from None
        except _SyntaxProblem as problem:
            raise ExprSyntaxError(problem.message, problem.offset, problem.hint, text) from None
    if len(text) > MAX_DEPTH:  # every level of nesting takes at least one character
        levels, deepest = depth(root)
        if levels > MAX_DEPTH:
            raise ExprSyntaxError(
                f"expression nests too deeply ({levels} levels; the limit is {MAX_DEPTH})",
                deepest.offset,
                "split it into simpler expressions",
                text,
            )
    if "9223372036854775808" in text or "0x" in text.lower():  # leading zeros: 0x08...
        # 2**63 is legal only as the operand of a unary minus, which has folded it away
        for node in walk(root):
            if isinstance(node, Literal) and node.kind == "int" and node.value == _INT_LIMIT:
                raise ExprSyntaxError("integer literal out of range", node.offset, _INT_RANGE_HINT, text)
    return Expression(text, root)


_INT_RANGE_HINT = "ints are signed 64-bit; write a double such as 1e19 for larger numbers"
_DURATION_RANGE_HINT = "durations reach about 292 years (int64 nanoseconds)"


# -- building the Lark parser -------------------------------------------------------------


@functools.cache
def _lark_parser() -> Any:
    from lark import Lark

    grammar = read_text("grammar/expr.lark")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        transformer=_BUILDER,
        maybe_placeholders=False,
        cache=lark_cache_file("expr", grammar),
    )


class _SyntaxProblem(Exception):
    """Raised by the node builder for errors the grammar cannot express (bad escapes)."""

    def __init__(self, message: str, offset: int, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.offset, self.hint = message, offset, hint


# -- nodes from grammar rules ---------------------------------------------------------------


class _NodeBuilder:
    """Lark callbacks, one per rule alias in grammar/expr.lark; each gets the rule's
    children (nodes and kept tokens) and returns a node. Positions come from tokens."""

    def conditional(self, children: list) -> Node:
        condition, _, then, _, otherwise = children
        return Conditional(condition, then, otherwise, offset=condition.offset, end=otherwise.end)

    def binary(self, children: list) -> Node:
        left, op, right = children
        return Binary(str(op), left, right, offset=left.offset, end=right.end)

    def unary(self, children: list) -> Node:
        op, operand = children
        if op == "-" and isinstance(operand, Literal) and operand.kind == "int" and operand.value >= 0:
            # `-9223372036854775808` is a literal, as in CEL: fold the sign into it
            raw = f"-{operand.raw}" if operand.raw is not None else None
            return Literal("int", -operand.value, raw, offset=op.start_pos, end=operand.end)
        return Unary(str(op), operand, offset=op.start_pos, end=operand.end)

    def select(self, children: list) -> Node:
        operand, _, name = children
        return Select(operand, str(name), name.start_pos, offset=operand.offset, end=name.end_pos)

    def method_call(self, children: list) -> Node:
        operand, _, name, _, *rest = children
        args = rest[0] if len(rest) == 2 else ()
        forms = MACROS.get(str(name))
        if forms is not None and len(args) in forms:
            return _comprehension(operand, name, args, forms[len(args)], rest[-1].end_pos)
        return Call(
            str(name),
            args,
            operand,
            name.start_pos,
            offset=operand.offset,
            end=rest[-1].end_pos,
        )

    def index(self, children: list) -> Node:
        operand, _, key, close = children
        return Index(operand, key, offset=operand.offset, end=close.end_pos)

    def ident(self, children: list) -> Node:
        (name,) = children
        return Ident(str(name), offset=name.start_pos, end=name.end_pos)

    def call(self, children: list) -> Node:
        name, _, *rest = children
        args = rest[0] if len(rest) == 2 else ()
        offset, end = name.start_pos, rest[-1].end_pos
        if name == "has" and len(args) == 1:
            (target,) = args
            if not isinstance(target, Select):
                raise _SyntaxProblem(
                    "has() needs a field selection",
                    target.offset,
                    "write has(a.b) to test whether `a` has the field `b`",
                )
            return Has(target.operand, target.field, target.field_offset, offset=offset, end=end)
        return Call(str(name), args, None, offset, offset=offset, end=end)

    def paren(self, children: list) -> Node:
        return children[1]

    def list_lit(self, children: list) -> Node:
        items = children[1] if len(children) == 3 else ()
        return ListLit(items, offset=children[0].start_pos, end=children[-1].end_pos)

    def map_lit(self, children: list) -> Node:
        entries = children[1] if len(children) == 3 else ()
        return MapLit(entries, offset=children[0].start_pos, end=children[-1].end_pos)

    def args(self, children: list) -> tuple[Node, ...]:
        return tuple(children)

    items = args

    def entries(self, children: list) -> tuple[tuple[Node, Node], ...]:
        return tuple(children)

    def entry(self, children: list) -> tuple[Node, Node]:
        key, _, value = children
        return (key, value)

    def int_lit(self, children: list) -> Node:
        (token,) = children
        value = int(token, 16) if token[:2] in ("0x", "0X") else int(token)
        if value > _INT_LIMIT:
            raise _SyntaxProblem("integer literal out of range", token.start_pos, _INT_RANGE_HINT)
        return _literal("int", value, token)

    def double_lit(self, children: list) -> Node:
        (token,) = children
        value = float(token)
        if value == float("inf"):
            raise _SyntaxProblem("double literal out of range", token.start_pos)
        return _literal("double", value, token)

    def duration_lit(self, children: list) -> Node:
        (token,) = children
        try:
            return _literal("duration", parse_duration(token), token)
        except DurationOutOfRange:
            raise _SyntaxProblem("duration literal out of range", token.start_pos, _DURATION_RANGE_HINT) from None

    def string_lit(self, children: list) -> Node:
        (token,) = children
        return _literal("string", decode_string(token, token.start_pos), token)

    def bool_lit(self, children: list) -> Node:
        (token,) = children
        return _literal("bool", token == "true", token)

    def null_lit(self, children: list) -> Node:
        (token,) = children
        return _literal("null", None, token)


_BUILDER = _NodeBuilder()


def _comprehension(operand: Node, name: Any, args: tuple[Node, ...], count: int, end: int) -> Comprehension:
    """A macro call: its first `count` arguments name the variables it binds."""
    variables = args[:count]
    for variable in variables:
        if not isinstance(variable, Ident):
            raise _SyntaxProblem(
                f"the variable of {name}() must be a simple name",
                variable.offset,
                f"write e.g. list.{name}(x, x > 0)",
            )
    if count == 2 and variables[0].name == variables[1].name:
        raise _SyntaxProblem(
            f"the two variables of {name}() must have different names",
            variables[1].offset,
            f"write e.g. list.{name}(i, v, v > i)",
        )
    rest = args[count:]
    return Comprehension(
        str(name),
        operand,
        tuple(variable.name for variable in variables),
        rest[-1],
        rest[0] if len(rest) == 2 else None,
        tuple(variable.offset for variable in variables),
        name.start_pos,
        offset=operand.offset,
        end=end,
    )


def _literal(kind: str, value: Any, token: Any) -> Literal:
    return Literal(kind, value, str(token), offset=token.start_pos, end=token.end_pos)


_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "`": "`",
    "?": "?",
}
_HEX_ESCAPES = {"x": 2, "X": 2, "u": 4, "U": 8}
_ESCAPE_HINT = r"valid escapes: \n \t \r \\ \" \' \xHH \uHHHH \UHHHHHHHH, or use a raw string r'...'"


def decode_string(token: str, offset: int) -> str:
    """The value of a string literal token; `offset` locates the token for errors."""
    raw = token[:1] in ("r", "R")
    quote_start = 1 if raw else 0
    quote = token[quote_start : quote_start + 3]
    width = 3 if quote in ('"""', "'''") else 1
    body_start = quote_start + width
    body = token[body_start : len(token) - width]
    if raw or "\\" not in body:
        return body
    out: list[str] = []
    position = 0
    while position < len(body):
        char = body[position]
        if char != "\\":
            out.append(char)
            position += 1
            continue
        where = offset + body_start + position
        code = body[position + 1 : position + 2]
        if code in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[code])
            position += 2
        elif code in _HEX_ESCAPES:
            digits = body[position + 2 : position + 2 + _HEX_ESCAPES[code]]
            if len(digits) != _HEX_ESCAPES[code] or not _is_hex(digits):
                raise _SyntaxProblem(f"bad escape \\{code} in string", where, _ESCAPE_HINT)
            point = int(digits, 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                raise _SyntaxProblem(f"invalid code point \\{code}{digits}", where)
            out.append(chr(point))
            position += 2 + len(digits)
        elif code and code in "0123" and _is_octal(body[position + 1 : position + 4]):
            out.append(chr(int(body[position + 1 : position + 4], 8)))
            position += 4
        else:
            raise _SyntaxProblem(f"bad escape \\{code} in string", where, _ESCAPE_HINT)
    return "".join(out)


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)


def _is_octal(text: str) -> bool:
    return len(text) == 3 and all(char in "01234567" for char in text)


# -- friendly syntax errors -----------------------------------------------------------------

_OPERANDS = frozenset(["IDENT", "INT", "HEX", "FLOAT", "DURATION", "STRING", "TRUE", "FALSE", "NULL"])
_BINARY_OPERATORS = ("OR", "AND", "EQ", "NE", "LT", "LE", "GT", "GE", "IN", "PLUS", "STAR")
_OPERATORS = frozenset((*_BINARY_OPERATORS, "SLASH", "PERCENT", "QMARK", "DOT"))
_PUNCTUATION = {"RPAR": "`)`", "RSQB": "`]`", "RBRACE": "`}`", "_COMMA": "`,`", "COLON": "`:`"}
_TOKEN_KINDS = {
    "IDENT": "name",
    "INT": "number",
    "HEX": "number",
    "FLOAT": "number",
    "DURATION": "duration",
    "STRING": "string",
    "TRUE": "keyword",
    "FALSE": "keyword",
    "NULL": "keyword",
    "IN": "keyword",
}
_CHARACTER_HINTS = {
    "=": "use `==` to compare values",
    "&": "use `&&` for a logical and",
    "|": "use `||` for a logical or",
    "$": "`${{ }}` belongs in templates; write the expression itself here",
}
_WORD_HINTS = {
    "and": "use `&&` for a logical and",
    "or": "use `||` for a logical or",
    "not": "use `!` for a logical not",
    "True": "booleans are written `true` and `false`",
    "False": "booleans are written `true` and `false`",
    "None": "null is written `null`",
}
# Common mistakes, matched by parser state (Lark's match_examples).
_EXAMPLE_HINTS = {
    "missing `,` between list items?": ["[1 2]", "[a b]", "[a, b c]"],
    "missing `,` between arguments?": ["f(a b)", "a.f(b c)"],
    "missing `,` between map entries?": ['{"a": 1 "b": 2}', "{a: b c: d}"],
    "missing `:` between a map key and its value?": ['{"a" 1}', "{a b}"],
    "a field name must follow `.`": ["a.", "a.(b)", "a.1"],
    "the expression ends with an operator": ["a &&", "a ||", "a ==", "a +", "a <", "!"],
    "unmatched closing bracket": ["a)", "a]", "a}"],
}


def _syntax_error(error: Any, text: str) -> ExprSyntaxError:
    from lark.exceptions import UnexpectedCharacters

    if isinstance(error, UnexpectedCharacters):
        offset = error.pos_in_stream
        char = text[offset]
        if char in "\"'":
            return ExprSyntaxError(
                "unterminated string",
                offset,
                "close the string with the same quote on the same line (triple quotes allow line breaks)",
                text,
            )
        hint = _CHARACTER_HINTS.get(char) or _expected_words(error.allowed or ())
        shown = char if char.isprintable() and not char.isspace() else repr(char)
        return ExprSyntaxError(f"unexpected character `{shown}`", offset, hint, text)
    token = error.token
    at_end = token.type == "$END"
    offset = len(text) if at_end else token.start_pos
    if at_end:
        message = "unexpected end of expression"
    elif token.type in _TOKEN_KINDS:
        message = f"unexpected {_TOKEN_KINDS[token.type]} `{token}`"
    else:
        message = f"unexpected `{token}`"
    accepts = _accepted(error)
    hint = _WORD_HINTS.get(str(token)) if token.type == "IDENT" else None
    hint = hint or _example_hint(error)
    if hint is None and token.type in _OPERANDS and len(accepts & _OPERATORS) >= 3:
        if token.type == "IDENT" and offset and text[offset - 1].isdigit():
            hint = "durations are whole numbers with units ms, s, m, h, d: `90s`, `1h30m`"
        else:
            hint = "missing an operator between two operands?"
    expected = _expected_words(accepts)
    if hint and expected:
        hint = f"{hint} ({expected})"
    return ExprSyntaxError(message, offset, hint or expected, text)


def _accepted(error: Any) -> frozenset[str]:
    try:
        return frozenset(error.accepts or error.expected or ())
    except Exception:  # computing accepts replays the parser; never mask the real error
        return frozenset(error.expected or ())


def _example_hint(error: Any) -> str | None:
    from lark.exceptions import UnexpectedInput

    def parse_example(example: str) -> Any:
        try:
            return _lark_parser().parse(example)
        except _SyntaxProblem:
            return None
        except UnexpectedInput:
            raise

    try:
        return error.match_examples(parse_example, _EXAMPLE_HINTS, use_accepts=True)
    except Exception:  # a hint is a nicety; the error itself must still come out
        return None


def _expected_words(names: Any) -> str | None:
    """`expected` set of terminal names, in words a pack author understands."""
    names = set(names)
    parts: list[str] = [_PUNCTUATION[name] for name in _PUNCTUATION if name in names]
    if "IDENT" in names and names & {"INT", "STRING"}:
        parts.append("an operand such as a name, number or string")
    elif "IDENT" in names:
        parts.append("a name")
    elif names & _OPERANDS:
        parts.append("an operand")
    if len(names & _OPERATORS) >= 3:
        parts.append("an operator")
    if "$END" in names:
        parts.append("the end of the expression")
    if not parts:
        return None
    if len(parts) == 1:
        return f"expected {parts[0]}"
    return f"expected {', '.join(parts[:-1])} or {parts[-1]}"
