"""Node tree back to expression text, with only the parentheses it needs.

`parse(unparse(node)) == node` for any tree the parser can build; the round-trip property
test holds it to that.
"""

from __future__ import annotations

from .nodes import (
    Binary,
    Call,
    Comprehension,
    Conditional,
    Has,
    Ident,
    Index,
    ListLit,
    Literal,
    MapLit,
    Node,
    Select,
    Unary,
)

_PRECEDENCE = {
    "||": 2,
    "&&": 3,
    "==": 4,
    "!=": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "in": 4,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "%": 6,
}
_CONDITIONAL, _UNARY, _MEMBER = 1, 7, 8


def precedence(node: Node) -> int:
    if isinstance(node, Conditional):
        return _CONDITIONAL
    if isinstance(node, Binary):
        return _PRECEDENCE[node.op]
    if isinstance(node, Unary):
        return _UNARY
    if isinstance(node, Literal) and node.kind == "int" and node.value < 0:
        return _UNARY  # `-5` is a folded unary minus
    return _MEMBER


def unparse(node: Node) -> str:
    """Expression text for `node`."""
    if isinstance(node, Literal):
        return literal_text(node)
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        return f"{_at_least(node.operand, _MEMBER)}.{node.field}"
    if isinstance(node, Index):
        return f"{_at_least(node.operand, _MEMBER)}[{unparse(node.index)}]"
    if isinstance(node, Call):
        args = ", ".join(unparse(arg) for arg in node.args)
        if node.target is None:
            return f"{node.function}({args})"
        return f"{_at_least(node.target, _MEMBER)}.{node.function}({args})"
    if isinstance(node, Comprehension):
        parts = [*node.variables, *((unparse(node.filter),) if node.filter is not None else ()), unparse(node.body)]
        return f"{_at_least(node.range, _MEMBER)}.{node.macro}({', '.join(parts)})"
    if isinstance(node, Has):
        return f"has({_at_least(node.operand, _MEMBER)}.{node.field})"
    if isinstance(node, Unary):
        return f"{node.op}{_at_least(node.operand, _UNARY)}"
    if isinstance(node, Binary):
        level = _PRECEDENCE[node.op]
        # left-associative: a right operand of the same level needs parentheses
        return f"{_at_least(node.left, level)} {node.op} {_at_least(node.right, level + 1)}"
    if isinstance(node, Conditional):
        return (
            f"{_at_least(node.condition, _CONDITIONAL + 1)} ? "
            f"{_at_least(node.then, _CONDITIONAL + 1)} : {unparse(node.otherwise)}"
        )
    if isinstance(node, ListLit):
        return "[" + ", ".join(unparse(item) for item in node.items) + "]"
    if isinstance(node, MapLit):
        entries = (f"{_at_least(key, _CONDITIONAL + 1)}: {unparse(value)}" for key, value in node.entries)
        return "{" + ", ".join(entries) + "}"
    raise TypeError(f"not an expression node: {node!r}")


def _at_least(node: Node, level: int) -> str:
    text = unparse(node)
    return f"({text})" if precedence(node) < level else text


def literal_text(node: Literal) -> str:
    if node.kind == "int":
        return str(node.value)
    if node.kind == "double":
        return repr(node.value)  # finite doubles always show `.` or an exponent
    if node.kind == "duration":
        return node.raw if node.raw is not None else _duration_text(node.value)
    if node.kind == "string":
        return quote(node.value)
    if node.kind == "bool":
        return "true" if node.value else "false"
    return "null"


def _duration_text(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds!r}s"


_QUOTE_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote(text: str) -> str:
    """A double-quoted CEL string literal for `text`."""
    out = []
    for char in text:
        if char in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[char])
        elif not char.isprintable() or 0xD800 <= ord(char) <= 0xDFFF:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
