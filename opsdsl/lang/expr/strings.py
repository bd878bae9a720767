"""cel-go's strings extension: lowerAscii, upperAscii, trim, replace, split, join,
substring, indexOf, lastIndexOf, with cel-go's semantics.

Positions and lengths count Unicode code points, never bytes (a Python `str` is a sequence
of code points already, so `"héllo".indexOf("l") == 2`). A position outside the string is
an error, never a clamp. Arguments are event data: messages describe them (their type and
size), they never quote them, and no result may grow past `MAX_RESULT_CHARACTERS`
(`replace` with an empty pattern inserts its replacement between every two characters).
"""

from __future__ import annotations

from typing import Any

from opsdsl.errors import EvalError

from .values import describe, kind

# A result larger than this is refused: 4 Mi code points, four times the largest event
# body the service accepts, so no real use comes near it.
MAX_RESULT_CHARACTERS = 4 * 1024 * 1024

# Go's unicode.IsSpace, which cel-go's trim() strips (Python's str.strip() also strips
# U+001C..U+001F, which Go keeps).
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _need(name: str, value: Any, wanted: str) -> None:
    if kind(value) != wanted:
        raise EvalError(f"no such overload: {name}() on {kind(value)}")


def _check_size(name: str, size: int) -> None:
    if size > MAX_RESULT_CHARACTERS:
        raise EvalError(f"{name}() result too large: over {MAX_RESULT_CHARACTERS:,} characters")


def lower_ascii(text: Any) -> str:
    """ASCII letters to lower case; every other character as it is."""
    _need("lowerAscii", text, "string")
    return text.translate(_LOWER)


def upper_ascii(text: Any) -> str:
    """ASCII letters to upper case; every other character as it is."""
    _need("upperAscii", text, "string")
    return text.translate(_UPPER)


def trim(text: Any) -> str:
    """Leading and trailing white space removed (Go's unicode.IsSpace)."""
    _need("trim", text, "string")
    return text.strip(_GO_SPACE)


def replace(text: Any, old: Any, new: Any, limit: Any = -1) -> str:
    """`old` replaced by `new`, the first `limit` times (all when `limit` is negative). An
    empty `old` matches before every character and at the end, as in Go."""
    for value in (text, old, new):
        _need("replace", value, "string")
    _need("replace", limit, "int")
    if limit == 0 or (old and old not in text):
        return text
    found = text.count(old) if old else len(text) + 1
    times = found if limit < 0 else min(found, limit)
    _check_size("replace", len(text) + times * (len(new) - len(old)))
    return text.replace(old, new, times)


def split(text: Any, separator: Any, limit: Any = -1) -> list[str]:
    """The parts of `text` between separators: at most `limit` parts when it is positive
    (the last holds the rest), none for 0, all for a negative limit. An empty separator
    splits into single characters, as in Go."""
    _need("split", text, "string")
    _need("split", separator, "string")
    _need("split", limit, "int")
    if limit == 0:
        return []
    if separator:
        return text.split(separator, limit - 1 if limit > 0 else -1)
    if limit < 0 or limit >= len(text):
        return list(text)
    return [*text[: limit - 1], text[limit - 1 :]]


def join(parts: Any, separator: Any = "") -> str:
    """The strings of a list, with `separator` between them."""
    _need("join", parts, "list")
    _need("join", separator, "string")
    size = len(separator) * max(len(parts) - 1, 0)
    for part in parts:
        if kind(part) != "string":
            raise EvalError(f"join() needs a list of strings, got an element that is {describe(part)}")
        size += len(part)
    _check_size("join", size)
    return separator.join(parts)


def _position(name: str, text: str, position: Any) -> int:
    """`position` if it is an int from 0 to len(text), else an error that describes it."""
    _need(name, position, "int")
    if 0 <= position <= len(text):
        return position
    raise EvalError(f"{name}(): index out of range: {describe(position)} (string of {len(text)} characters)")


def substring(text: Any, start: Any, end: Any = None) -> str:
    """The code points from `start` up to (not including) `end`, or to the end."""
    _need("substring", text, "string")
    start = _position("substring", text, start)
    if end is None:
        return text[start:]
    end = _position("substring", text, end)
    if end < start:
        raise EvalError("substring(): the end comes before the start")
    return text[start:end]


def index_of(text: Any, part: Any, offset: Any = 0) -> int:
    """The code-point position of the first `part` at or after `offset`, or -1."""
    _need("indexOf", text, "string")
    _need("indexOf", part, "string")
    return text.find(part, _position("indexOf", text, offset))


def last_index_of(text: Any, part: Any, offset: Any = None) -> int:
    """The code-point position of the last `part` that starts at or before `offset`, or -1."""
    _need("lastIndexOf", text, "string")
    _need("lastIndexOf", part, "string")
    if offset is None:
        return text.rfind(part)
    offset = _position("lastIndexOf", text, offset)
    return text.rfind(part, 0, offset + len(part))
