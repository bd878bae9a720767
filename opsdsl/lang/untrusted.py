"""Reading what users hand in: event files, stdin, trust files, plans, JSON values on the
command line. Such input may be hostile, so it is read with limits:

1. only regular files, stat'ed before they are opened (a FIFO or a device would block or
   never end) and opened with O_NONBLOCK all the same;
2. at most `MAX_INPUT_BYTES`;
3. UTF-8, with the byte offset of the first bad byte named;
4. JSON without NaN or Infinity, nested at most `MAX_DEPTH` deep, and holding only what the
   ledger can record (RFC 8785: integers within ±(2**53 - 1), finite floats, no lone
   surrogates).

Every refusal is an `InputError` (exit 2), with a message that says what and where.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from opsdsl.canonical import canonical_json
from opsdsl.errors import UsageError
from opsdsl.files import not_regular

MAX_INPUT_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64  # nesting of an event's JSON; Alertmanager's is 3
MAX_SAFE_INT = 2**53 - 1  # RFC 8785 (and so the ledger) holds no larger integer


class InputError(UsageError):
    """A file or value handed in cannot be used: unreadable, too big, not UTF-8, not JSON."""


def read_limited(path: str | Path, limit: int = MAX_INPUT_BYTES) -> tuple[bytes | None, str | None]:
    """The bytes of the regular file `path` and None, or None and why it cannot be read."""
    try:
        kind = not_regular(os.stat(path).st_mode)
        if kind is not None:
            return None, f"{kind}, not a regular file"
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            kind = not_regular(os.fstat(fd).st_mode)  # swapped between stat and open
            if kind is not None:
                return None, f"{kind}, not a regular file"
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(limit + 1)
        finally:
            os.close(fd)
    except OSError as error:
        return None, error.strerror or str(error)
    except ValueError as error:  # a NUL byte in the path
        return None, str(error)
    if len(data) > limit:
        return None, f"larger than {_size(limit)}"
    return data, None


def read_head(path: str | Path, size: int) -> bytes | None:
    """The first `size` bytes of the regular file `path`; None for anything else (a FIFO
    is never opened, so a peek cannot block)."""
    try:
        if not_regular(os.stat(path).st_mode) is not None:
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            if not_regular(os.fstat(fd).st_mode) is not None:
                return None
            return os.read(fd, size)
        finally:
            os.close(fd)
    except (OSError, ValueError):
        return None


def read_bytes(path: str | Path, what: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; `what` names it in errors."""
    data, problem = read_limited(path, limit)
    if data is None:
        raise InputError(f"{what}: {problem}")
    return data


def read_stdin_bytes(what: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """Standard input, at most `limit` bytes."""
    stream = getattr(sys.stdin, "buffer", None)
    data = stream.read(limit + 1) if stream is not None else sys.stdin.read(limit + 1).encode("utf-8", "replace")
    if len(data) > limit:
        raise InputError(f"{what}: larger than {_size(limit)}")
    return data


def decode(data: bytes, what: str) -> str:
    """`data` as UTF-8 text (a BOM is dropped)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{what}: not UTF-8 (byte {error.start}, line {line}); save it as UTF-8") from None


def read_text(source: str | Path, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of file `source`, or of stdin when `source` is `-`."""
    data = read_stdin_bytes(what, limit) if str(source) == "-" else read_bytes(source, what, limit)
    return decode(data, what)


def parse_json(text: str, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """A JSON value the ledger can record; anything else is an InputError naming `what`."""
    try:
        value = loads_finite(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{what}: not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except RecursionError:
        raise InputError(f"{what}: nested deeper than {max_depth} levels") from None
    except ValueError as error:  # NaN, 1e400, an integer of more than 4300 digits
        raise InputError(f"{what}: not JSON: {error}") from None
    problem = json_problem(value, max_depth)
    if problem is not None:
        raise InputError(f"{what}: {problem}")
    return value


def read_json(source: str | Path, what: str, limit: int = MAX_INPUT_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value in file `source` (or stdin, `-`), read with every limit above."""
    return parse_json(read_text(source, what, limit), what, max_depth)


def loads_finite(text: str) -> Any:
    """`json.loads` that refuses NaN, Infinity and numbers beyond a double (ValueError);
    callers check the value with `json_problem` where they want its location."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def json_problem(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why the ledger could not record `value` (too deep, a number out of range, a lone
    surrogate), or None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels"
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, bool):
            continue
        elif isinstance(item, int) and not -MAX_SAFE_INT <= item <= MAX_SAFE_INT:
            return f"integer {_short(item)} is out of range (at most ±{MAX_SAFE_INT})"
        elif isinstance(item, float) and not math.isfinite(item):
            return f"{item} is not a finite number (JSON has no NaN or Infinity)"
    try:
        canonical_json(value)
    except UnicodeEncodeError:
        return "holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a string"
    except Exception as error:  # rfc8785's own errors: whatever else it cannot write
        return f"not representable in canonical JSON: {error}"
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]}{'…' if len(text) > 20 else ''} is out of range")
    return value


def _short(number: int) -> str:
    return str(number) if abs(number) < 10**40 else f"of {number.bit_length()} bits"


def _size(limit: int) -> str:
    return f"{limit // 1048576} MiB" if limit >= 1048576 and limit % 1048576 == 0 else f"{limit} bytes"
