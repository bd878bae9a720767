"""The built-in functions: their forms, arities, argument types and implementations.

One table serves the checker (names, arities, types), the exact evaluator and the fast
path (implementations). `has()` is a macro, handled by the parser, not listed here.

Every implementation is total: on any argument it returns or raises EvalError, whose
message describes values (`values.describe`) and never quotes them - arguments are event
data, hostile or secret. `Builtin` wraps each one so that a Python exception nobody
foresaw still becomes an EvalError.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opsdsl.errors import EvalError

from . import strings
from .nodes import MACROS
from .values import INT_MAX, INT_MIN, checked_int, describe, kind, to_string

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
    optional: int = 0  # how many of the last params may be left out

    def __post_init__(self) -> None:
        object.__setattr__(self, "impl", _total(self.name, self.impl))

    def arity(self, method: bool) -> int:
        """How many arguments go between the parentheses in the given form (at most)."""
        return len(self.params) - 1 if method else len(self.params)

    def accepts(self, method: bool, count: int) -> bool:
        """Whether `count` arguments between the parentheses is a form this function has."""
        most = self.arity(method)
        return most - self.optional <= count <= most

    def arity_text(self, method: bool) -> str:
        """`1 argument`, `1 or 2 arguments`: for messages."""
        most = self.arity(method)
        fewest = most - self.optional
        counts = str(most) if fewest == most else " or ".join(map(str, range(fewest, most + 1)))
        return f"{counts} {'argument' if most == 1 and fewest == 1 else 'arguments'}"


def _total(name: str, implementation: Callable[..., Any]) -> Callable[..., Any]:
    """`implementation`, with any exception other than EvalError turned into one."""

    @functools.wraps(implementation)
    def total(*args: Any) -> Any:
        try:
            return implementation(*args)
        except EvalError:
            raise
        except Exception as error:
            raise EvalError(f"{name}() failed: {python_failure(error)}") from None

    return total


def python_failure(error: Exception) -> str:
    """What went wrong, from the exception's type only: Python's messages quote values."""
    if isinstance(error, RecursionError):
        return "a value is nested too deeply"
    if isinstance(error, MemoryError):
        return "out of memory"
    if isinstance(error, OverflowError):
        return "a number is too large"
    if isinstance(error, UnicodeError):
        return "a string is not valid Unicode"
    return f"unexpected {type(error).__name__}"


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


# RE2 runs in time linear in the text, but also in the pattern's compiled size: a 100,000
# character pattern from event data against 100,000 characters of text takes minutes. Cap
# the program (4,096 characters of literal text compile to about 4,100 instructions, and
# `.{1000}` to 8,004), as the expression length caps what a pack can write.
MAX_REGEX_PROGRAM = 10_000


def regex_error(pattern: str) -> str | None:
    """Why `matches()` rejects `pattern` (RE2's words, which quote the offending part), or None."""
    return _regex(pattern)[1]


@functools.lru_cache(maxsize=128)  # each compiled RE2 may hold up to max_mem (8 MiB)
def _regex(pattern: str) -> tuple[Any, str | None]:
    """(the compiled pattern, None) or (None, the reason it is rejected)."""
    # RE2, as CEL specifies: matching is linear in the input, so a pattern cannot make the
    # process backtrack for ever (Python's `re` takes minutes on `^([a-z0-9]+-?)+$`).
    # Imported here: `import opsdsl.lang.expr` stays cheap.
    import re2

    options = re2.Options()
    options.log_errors = False  # else RE2 writes the pattern to stderr
    try:
        compiled = re2.compile(pattern, options=options)
    except UnicodeEncodeError:
        return None, "not valid Unicode: a lone surrogate"
    except re2.error as error:
        reason = error.args[0] if error.args else "rejected"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        return None, str(reason)
    if compiled.programsize > MAX_REGEX_PROGRAM:
        return None, f"pattern too large: over {MAX_REGEX_PROGRAM:,} RE2 instructions"
    return compiled, None


def matches(text: Any, pattern: Any) -> bool:
    _string_args("matches", text, pattern)
    for value in (text, pattern):
        if not _is_utf8(value):
            raise EvalError("matches() cannot search a string that is not valid Unicode (a lone surrogate)")
    compiled, reason = _regex(pattern)
    if compiled is None:
        # RE2's reason quotes the offending part after a colon: keep only its kind
        kind_of_problem = reason.split(":", 1)[0]
        raise EvalError(f"invalid regular expression: {describe(pattern)} is not RE2 syntax ({kind_of_problem})")
    return compiled.search(text) is not None


def _is_utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_INT_TEXT = re.compile(r"[+-]?[0-9]+")
# Unambiguous, so a failing fullmatch is linear: `[0-9]+\.?[0-9]*` backtracks quadratically
# on 5,000 digits and a stray letter.
_DOUBLE_TEXT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.IGNORECASE,
)


_INT_DIGITS = len(str(INT_MAX))  # 19: more significant digits than this cannot fit


def to_int(value: Any) -> int:
    value_kind = kind(value)
    if value_kind == "int":
        return checked_int(int(value))
    if value_kind == "double":
        # as cel-go: both bounds exclusive, since neither int64 bound is a double except
        # -2^63, and -2^63 as a double is taken to be out of range as well
        if INT_MIN < value < INT_MAX:  # false for NaN
            return math.trunc(value)
        raise EvalError("cannot convert a double to int: out of the int range")
    if value_kind == "string":
        if _INT_TEXT.fullmatch(value):
            digits = value.lstrip("+-").lstrip("0") or "0"
            if len(digits) > _INT_DIGITS:  # before int(): Python refuses 4300+ digits
                raise EvalError("integer overflow")
            return checked_int(-int(digits) if value[0] == "-" else int(digits))
        raise EvalError(f"cannot convert {describe(value)} to int")
    raise EvalError(f"no such overload: int() on {value_kind}")


def to_double(value: Any) -> float:
    value_kind = kind(value)
    if value_kind == "double":
        return value
    if value_kind == "int":
        try:
            return float(value)
        except OverflowError:  # ints from data may exceed int64; no double holds 10**309
            raise EvalError("cannot convert an int to double: out of the double range") from None
    if value_kind == "string":
        if _DOUBLE_TEXT.fullmatch(value):
            result = float(value)
            if math.isinf(result) and "inf" not in value.lower():
                raise EvalError("cannot convert a string to double: out of the double range")
            return result
        raise EvalError(f"cannot convert {describe(value)} to double")
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


# CEL's duration range is that of int64 nanoseconds (Go's time.Duration), about ±292 years.
DURATION_MAX_SECONDS = INT_MAX / 10**9
# A part's whole digits beyond this put it out of range whatever its unit (2^63 ns has 19
# digits); decimals beyond it are finer than a nanosecond. Both keep Fraction() cheap.
_DURATION_DIGITS = 24


class DurationOutOfRange(Exception):
    """A well-formed duration beyond int64 nanoseconds."""


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as `1h30m`, `250ms`, `-1.5h`, `2d`; None if malformed.
    Raises DurationOutOfRange beyond about ±292 years (int64 nanoseconds)."""
    sign, body = 1, text
    if body[:1] in ("+", "-"):
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if body == "0":
        return 0.0
    from fractions import Fraction  # exact sums: 0.1s + 0.2s is 0.3s

    total, position, too_long = Fraction(0), 0, False
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            return None
        whole, _, decimals = part.group(1).partition(".")
        if len(whole.lstrip("0")) > _DURATION_DIGITS:
            too_long = True  # keep reading: a malformed text is malformed, not too long
        else:
            number = Fraction(f"{whole or 0}.{decimals[:_DURATION_DIGITS]}")
            total += number * _UNIT_NANOSECONDS[part.group(2)]
        position = part.end()
    if not body:
        return None
    if too_long or total > INT_MAX:
        raise DurationOutOfRange
    return float(sign * total / 10**9)


def duration(value: Any) -> float:
    value_kind = kind(value)
    if value_kind == "double":  # durations are doubles already
        if -DURATION_MAX_SECONDS <= value <= DURATION_MAX_SECONDS:  # false for NaN
            return value
        raise EvalError("duration out of range: more than about 292 years (int64 nanoseconds)")
    if value_kind == "string":
        try:
            seconds = parse_duration(value)
        except DurationOutOfRange:
            raise EvalError("duration out of range: more than about 292 years (int64 nanoseconds)") from None
        if seconds is not None:
            return seconds
        raise EvalError(f"invalid duration: {describe(value)} is not a duration such as '250ms', '5m' or '1h30m'")
    raise EvalError(f"no such overload: duration() on {value_kind}")


def to_string_checked(value: Any) -> str:
    value_kind = kind(value)
    if value_kind in ("string", "int", "double", "bool"):
        return to_string(value)
    raise EvalError(f"no such overload: string() on {value_kind}")


ANY = frozenset(("int", "double", "string", "bool", "null", "list", "map"))


def dyn(value: Any) -> Any:
    """The value itself: CEL's dyn() turns off static typing, which here is only ever
    certain-type checks, so it is the identity (and the checker knows nothing of its result)."""
    return value


_BOOL_TEXTS = {"1": True, "t": True, "true": True, "TRUE": True, "True": True}
_BOOL_TEXTS.update({"0": False, "f": False, "false": False, "FALSE": False, "False": False})


def to_bool(value: Any) -> bool:
    """CEL's bool(): a bool, or one of the strings CEL spells bools with."""
    value_kind = kind(value)
    if value_kind == "bool":
        return value
    if value_kind == "string":
        found = _BOOL_TEXTS.get(value)
        if found is not None:
            return found
        raise EvalError(f"cannot convert {describe(value)} to bool")
    raise EvalError(f"no such overload: bool() on {value_kind}")


def raw(value: Any) -> Any:
    """The value itself. In a URL, `${{ raw(x) }}` is inserted as it is instead of
    percent-encoded: a choice lint can see (OPS051 refuses it for event data)."""
    return value


BOOL = frozenset(("bool",))
INT = frozenset(("int",))
LIST = frozenset(("list",))

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
        Builtin("bool", True, False, (BOOL | STRING,), BOOL, to_bool),
        Builtin("dyn", True, False, (ANY,), ANY, dyn),
        Builtin("raw", True, False, (ANY,), ANY, raw),
        # cel-go's strings extension; the receiver is the first param
        Builtin("lowerAscii", False, True, (STRING,), STRING, strings.lower_ascii),
        Builtin("upperAscii", False, True, (STRING,), STRING, strings.upper_ascii),
        Builtin("trim", False, True, (STRING,), STRING, strings.trim),
        Builtin("replace", False, True, (STRING, STRING, STRING, INT), STRING, strings.replace, optional=1),
        Builtin("split", False, True, (STRING, STRING, INT), LIST, strings.split, optional=1),
        Builtin("join", False, True, (LIST, STRING), STRING, strings.join, optional=1),
        Builtin("substring", False, True, (STRING, INT, INT), STRING, strings.substring, optional=1),
        Builtin("indexOf", False, True, (STRING, STRING, INT), INT, strings.index_of, optional=1),
        Builtin("lastIndexOf", False, True, (STRING, STRING, INT), INT, strings.last_index_of, optional=1),
    )
}

# Every name a call may use, for did-you-mean hints; `has` and the comprehensions are macros.
KNOWN_FUNCTIONS = (*BUILTINS, "has", *MACROS)


def resolve(name: str, method: bool, arity: int) -> Builtin | str:
    """The builtin a call means, or the reason it means none."""
    builtin = BUILTINS.get(name)
    if builtin is None:
        return f"unknown function `{name}`"
    if method and not builtin.is_method:
        return f"`{name}` is a function, not a method: write {name}(x)"
    if not method and not builtin.is_global:
        return f"`{name}` is a method: write x.{name}(...)"
    if not builtin.accepts(method, arity):
        return f"{name}() takes {builtin.arity_text(method)}, got {arity}"
    return builtin
