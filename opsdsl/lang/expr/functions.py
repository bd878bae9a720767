"""The built-in functions: their forms, arities, argument types and implementations.

One table serves the checker (names, arities, types), the exact evaluator and the fast
path (implementations). `has()` is a macro, handled by the parser, not listed here.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opsdsl.errors import EvalError

from .values import INT_MAX, INT_MIN, checked_int, format_double, kind, to_string

NUMBER = frozenset(("int", "double"))
STRING = frozenset(("string",))
SIZED = frozenset(("string", "list", "map"))


@dataclass(frozen=True)
class Builtin:
    """A function callable as `name(args)` (global) and/or `receiver.name(args)` (method).

    `params` are the kinds each argument may have, receiver first for a method; the
    implementation takes the receiver as its first argument.
    """

    name: str
    is_global: bool
    is_method: bool
    params: tuple[frozenset[str], ...]
    result: frozenset[str]
    impl: Callable[..., Any]

    def arity(self, method: bool) -> int:
        """How many arguments go between the parentheses in the given form."""
        return len(self.params) - 1 if method else len(self.params)


def _string_args(name: str, *values: Any) -> None:
    for value in values:
        if kind(value) != "string":
            raise EvalError(f"no such overload: {name}() on {kind(value)}")


def size(value: Any) -> int:
    if kind(value) in SIZED:
        return len(value)
    raise EvalError(f"no such overload: size() on {kind(value)}")


def starts_with(text: Any, prefix: Any) -> bool:
    _string_args("startsWith", text, prefix)
    return text.startswith(prefix)


def ends_with(text: Any, suffix: Any) -> bool:
    _string_args("endsWith", text, suffix)
    return text.endswith(suffix)


def contains(text: Any, part: Any) -> bool:
    _string_args("contains", text, part)
    return part in text


@functools.lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as error:
        raise EvalError(f"invalid regular expression {pattern!r}: {error}") from None


def matches(text: Any, pattern: Any) -> bool:
    _string_args("matches", text, pattern)
    return _regex(pattern).search(text) is not None


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_DOUBLE_TEXT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)


def to_int(value: Any) -> int:
    value_kind = kind(value)
    if value_kind == "int":
        return int(value)
    if value_kind == "double":
        if math.isfinite(value) and INT_MIN <= math.trunc(value) <= INT_MAX:
            return math.trunc(value)
        raise EvalError(f"double {format_double(value)} is out of the int range")
    if value_kind == "string":
        if _INT_TEXT.fullmatch(value):
            return checked_int(int(value))
        raise EvalError(f"cannot convert {value!r} to int")
    raise EvalError(f"no such overload: int() on {value_kind}")


def to_double(value: Any) -> float:
    value_kind = kind(value)
    if value_kind in ("int", "double"):
        return float(value)
    if value_kind == "string":
        if _DOUBLE_TEXT.fullmatch(value):
            return float(value)
        raise EvalError(f"cannot convert {value!r} to double")
    raise EvalError(f"no such overload: double() on {value_kind}")


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_NANOSECONDS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
}


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as `1h30m`, `250ms`, `-1.5h`, `2d`; None if malformed."""
    sign, body = 1, text
    if body[:1] in ("+", "-"):
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if body == "0":
        return 0.0
    from fractions import Fraction  # exact sums: 0.1s + 0.2s is 0.3s

    total, position = Fraction(0), 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            return None
        total += Fraction(part.group(1)) * _UNIT_NANOSECONDS[part.group(2)]
        position = part.end()
    return float(sign * total / 10**9) if body else None


def duration(value: Any) -> float:
    value_kind = kind(value)
    if value_kind == "double":
        return value  # durations are doubles already
    if value_kind == "string":
        seconds = parse_duration(value)
        if seconds is not None:
            return seconds
        raise EvalError(f"invalid duration {value!r}: expected e.g. '250ms', '5m' or '1h30m'")
    raise EvalError(f"no such overload: duration() on {value_kind}")


def to_string_checked(value: Any) -> str:
    value_kind = kind(value)
    if value_kind in ("string", "int", "double", "bool"):
        return to_string(value)
    raise EvalError(f"no such overload: string() on {value_kind}")


ANY = frozenset(("int", "double", "string", "bool", "null", "list", "map"))


def raw(value: Any) -> Any:
    """The value itself. In a URL, `${{ raw(x) }}` is inserted as it is instead of
    percent-encoded: a choice lint can see (OPS051 refuses it for event data)."""
    return value


BOOL = frozenset(("bool",))

BUILTINS: dict[str, Builtin] = {
    entry.name: entry
    for entry in (
        Builtin("size", True, True, (SIZED,), frozenset(("int",)), size),
        Builtin("startsWith", False, True, (STRING, STRING), BOOL, starts_with),
        Builtin("endsWith", False, True, (STRING, STRING), BOOL, ends_with),
        Builtin("contains", False, True, (STRING, STRING), BOOL, contains),
        Builtin("matches", True, True, (STRING, STRING), BOOL, matches),
        Builtin("int", True, False, (NUMBER | STRING,), frozenset(("int",)), to_int),
        Builtin("double", True, False, (NUMBER | STRING,), frozenset(("double",)), to_double),
        Builtin(
            "string",
            True,
            False,
            (NUMBER | STRING | BOOL,),
            STRING,
            to_string_checked,
        ),
        Builtin("duration", True, False, (STRING | {"double"},), frozenset(("double",)), duration),
        Builtin("raw", True, False, (ANY,), ANY, raw),
    )
}

# Every name a call may use, for did-you-mean hints; `has` is the macro.
KNOWN_FUNCTIONS = (*BUILTINS, "has")


def resolve(name: str, method: bool, arity: int) -> Builtin | str:
    """The builtin a call means, or the reason it means none."""
    builtin = BUILTINS.get(name)
    if builtin is None:
        return f"unknown function `{name}`"
    if method and not builtin.is_method:
        return f"`{name}` is a function, not a method: write {name}(x)"
    if not method and not builtin.is_global:
        return f"`{name}` is a method: write x.{name}(...)"
    expected = builtin.arity(method)
    if arity != expected:
        plural = "argument" if expected == 1 else "arguments"
        return f"{name}() takes {expected} {plural}, got {arity}"
    return builtin
