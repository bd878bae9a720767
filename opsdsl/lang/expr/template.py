"""`${{ expr }}` templates: strings with embedded expressions.

`$${{` writes a literal `${{`. A template that is exactly one `${{ e }}` renders to e's
raw value (a list param can fill an argv); any other renders to a string, scalars converted
as CEL's `string()` does, null as `null`, lists and maps as JSON (docs/language.md, 11).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opsdsl.errors import EvalError

from . import values
from .nodes import Expression
from .parser import ExprSyntaxError, parse

OPEN, CLOSE, ESCAPED_OPEN = "${{", "}}", "$${{"


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text and `(expression, offset)` parts in order."""

    text: str
    parts: tuple[str | tuple[Expression, int], ...]

    @property
    def expressions(self) -> tuple[tuple[Expression, int], ...]:
        """Each embedded expression and the offset of its first character in `text`."""
        return tuple(part for part in self.parts if not isinstance(part, str))

    @property
    def is_literal(self) -> bool:
        return all(isinstance(part, str) for part in self.parts)

    @property
    def literal(self) -> str:
        """The text with escapes undone, when `is_literal`."""
        return "".join(part for part in self.parts if isinstance(part, str))

    def render(self, activation: Mapping[str, Any]) -> Any:
        """Evaluate the embedded expressions; raises EvalError naming the failing one."""
        if len(self.parts) == 1 and not isinstance(self.parts[0], str):
            return _evaluate(self.parts[0][0], activation)
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            else:
                out.append(interpolated_text(_evaluate(part[0], activation)))
        return "".join(out)


def interpolated_text(value: Any) -> str:
    """How a value reads inside text: scalars as CEL's `string()` gives them (`250`,
    `0.005`, `true`), null as `null`, lists and maps as compact JSON."""
    kind = values.kind(value)
    if kind == "null":
        return "null"
    if kind in ("list", "map"):
        import json

        try:
            return json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (RecursionError, ValueError, TypeError, OverflowError) as error:
            from .functions import python_failure

            reason = "it holds NaN or an infinity" if isinstance(error, ValueError) else python_failure(error)
            raise EvalError(f"cannot write a {kind} into text: {reason}") from None
    return values.to_string(value)


def _plain(value: Any) -> Any:
    """`value` with tuples and other Mappings as lists and dicts, for json.dumps."""
    kind = values.kind(value)
    if kind == "list":
        return [_plain(item) for item in value]
    if kind == "map":
        return {key: _plain(item) for key, item in value.items()}
    return value


def _evaluate(expr: Expression, activation: Mapping[str, Any]) -> Any:
    from .codegen import compile_expr  # loaded on first render, not by lint

    try:
        return compile_expr(expr)(activation)
    except EvalError as error:
        raise EvalError(f"in `${{{{ {expr.text} }}}}`: {error.message}") from None


def parse_template(text: str) -> Template:
    """Parse a template; raises ExprSyntaxError with offsets into `text`. Memoised."""
    if not isinstance(text, str):
        raise TypeError(f"template text must be a str, not {type(text).__name__}")
    return _parse_memoised(text)


@functools.lru_cache(maxsize=4096)
def _parse_memoised(text: str) -> Template:
    parts: list[str | tuple[Expression, int]] = []
    literal: list[str] = []
    position = 0
    while True:
        dollar = text.find("$", position)
        if dollar < 0:
            literal.append(text[position:])
            break
        literal.append(text[position:dollar])
        if text.startswith(ESCAPED_OPEN, dollar):
            literal.append(OPEN)
            position = dollar + len(ESCAPED_OPEN)
        elif text.startswith(OPEN, dollar):
            if any(literal):
                parts.append("".join(literal))
            literal = []
            expr, offset, position = _embedded(text, dollar)
            parts.append((expr, offset))
        else:
            literal.append("$")
            position = dollar + 1
    if any(literal) or not parts:
        parts.append("".join(literal))
    return Template(text, tuple(parts))


def _embedded(text: str, opening: int) -> tuple[Expression, int, int]:
    """The expression opened at `opening`, its offset, and the position after its `}}`."""
    start = opening + len(OPEN)
    close = _closing(text, start)
    if close < 0:
        raise ExprSyntaxError("unterminated `${{`", opening, "close the expression with `}}`", text)
    inner = text[start:close]
    offset = start + (len(inner) - len(inner.lstrip()))
    if not inner.strip():
        raise ExprSyntaxError("empty `${{ }}`", opening, "put an expression inside, e.g. ${{ params.url }}", text)
    try:
        expr = parse(inner.strip())
    except ExprSyntaxError as error:
        raise error.shifted(offset, text) from None
    return expr, offset, close + len(CLOSE)


def _closing(text: str, start: int) -> int:
    """The index of the `}}` that ends an expression starting at `start`, or -1. Braces of
    map literals nest, and string literals may hold anything."""
    depth, position = 0, start
    while position < len(text):
        char = text[position]
        if char in "\"'":
            position = _after_string(text, position)
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0 and text.startswith(CLOSE, position):
                return position
            depth = max(depth - 1, 0)
        position += 1
    return -1


def _after_string(text: str, quote_at: int) -> int:
    """The position after the string literal whose opening quote is at `quote_at`."""
    raw = quote_at > 0 and text[quote_at - 1] in "rR"
    if raw and quote_at > 1 and (text[quote_at - 2].isalnum() or text[quote_at - 2] == "_"):
        raw = False  # `bar"...` is a name then a string, not a raw string
    quote = text[quote_at : quote_at + 3]
    if quote not in ('"""', "'''"):
        quote = text[quote_at]
    position = quote_at + len(quote)
    while position < len(text):
        if not raw and text[position] == "\\":
            position += 2
            continue
        if text.startswith(quote, position):
            return position + len(quote)
        position += 1
    return len(text)  # unterminated: the expression parser will say so
