"""Canonical JSON (RFC 8785, JCS) and digests.

`rfc8785` is the reference implementation; it is pure Python and walks every value. Most
of what opsdsl canonicalises (models, plans, ledger entries) holds only keys that sort the
same by UTF-16 code units as by code points, integers and non-integral floats of ordinary
magnitude (timestamps), and for such values `json.dumps` with sorted keys and no
whitespace produces the very same bytes, much faster. `canonical_json`
takes that path when it is exact and falls back to `rfc8785` otherwise; a property test
checks the two agree.
"""

from __future__ import annotations

import json
from typing import Any

_MAX_SAFE_INT = 2**53 - 1


_NO, _YES, _AFTER_INTEGRAL = 0, 1, 2


def _fast_path(value: Any) -> int:
    """Whether `json.dumps(sort_keys=True)` gives RFC 8785 bytes for `value`: _YES, _NO, or
    _AFTER_INTEGRAL (yes, once integral floats such as 3.0 are written as the integer 3)."""
    verdict = _YES
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                continue
            return _NO
        if kind is dict:
            for key in item:
                # Sorting by code point equals UTF-16 order unless a key holds characters
                # above U+D7FF (surrogates sort below U+E000..U+FFFF in UTF-16).
                if type(key) is not str or (not key.isascii() and max(key) > "\ud7ff"):
                    return _NO
            stack.extend(item.values())
            continue
        if kind is list or kind is tuple:
            stack.extend(item)
            continue
        if kind is float:
            # Python's repr and ECMAScript's Number-to-string both give the shortest digits
            # that round-trip; they also agree on the notation (fixed, no exponent) for
            # non-integral values in [1e-4, 1e16). Integral floats print as `10.0` here but
            # `10` there: safe ones are written as ints. Other magnitudes differ in exponent style.
            if item.is_integer():
                if abs(item) <= _MAX_SAFE_INT:
                    verdict = _AFTER_INTEGRAL
                    continue
                return _NO
            if 1e-4 <= abs(item) < 1e16:
                continue
            return _NO
        return _NO  # other types
    return verdict


def _integral_floats_as_ints(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict:
        return {k: v if type(v) in _KEPT else _integral_floats_as_ints(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _KEPT else _integral_floats_as_ints(v) for v in value]
    return value


_KEPT = frozenset({str, int, bool, type(None)})  # what _integral_floats_as_ints returns as it is


def _fast_path_exact(value: Any) -> bool:
    return _fast_path(value) == _YES


def is_fast_path_exact(value: Any) -> bool:
    """Whether `canonical_json` can take its fast path for `value` (see the module doc)."""
    return _fast_path_exact(value)


_FAST_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False, check_circular=False
)


def canonical_json(value: Any, *, known_exact: bool = False) -> bytes:
    """RFC 8785 canonical bytes of a JSON value.

    `known_exact` skips the check for values built only from parts that passed
    `is_fast_path_exact` plus ASCII keys and safe integers (the compiler's plans).
    """
    verdict = _YES if known_exact else _fast_path(value)
    if verdict == _AFTER_INTEGRAL:
        value, verdict = _integral_floats_as_ints(value), _YES
    if verdict == _YES:
        # No circular-reference bookkeeping: a value on this path is a tree (`_fast_path`
        # walks it to the end, which a cycle never reaches; `known_exact` values are built
        # from such parts), and the check costs a tenth of the encoding.
        return _FAST_ENCODER.encode(value).encode("utf-8")
    import rfc8785

    return rfc8785.dumps(value)


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>`, the form digests take in plans, manifests and locks."""
    import hashlib  # here, not at the top: lint imports this module but hashes nothing

    return "sha256:" + hashlib.sha256(data).hexdigest()


def indented_json(value: Any, *, ensure_ascii: bool = False) -> str:
    """`json.dumps(value, indent=2, sort_keys=True, ensure_ascii=...)`, the same text, faster.

    The standard library writes indented JSON with its pure-Python encoder; this walks the
    value once, with the C string encoder for strings. Values of any other type (subclasses,
    non-string keys) go to `json.dumps` itself, so the text is always the library's; a
    property test checks the two agree.
    """
    from json.encoder import encode_basestring, encode_basestring_ascii

    quote = encode_basestring_ascii if ensure_ascii else encode_basestring
    out: list[str] = []
    try:
        _indented(value, "\n", quote, out)
    except _Unusual:
        return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)
    return "".join(out)


class _Unusual(Exception):
    """A value `indented_json` leaves to `json.dumps`."""


_FLOAT_REPR = float.__repr__
_INT_REPR = int.__repr__


def _indented(value: Any, newline: str, quote: Any, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(quote(value))
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = newline + "  "
        keys = list(value)
        for key in keys:
            if type(key) is not str:
                raise _Unusual
        keys.sort()
        separator = "{" + inner
        for key in keys:
            item = value[key]
            # Scalars (most of a record) are written here, without a call.
            item_kind = type(item)
            if item_kind is str:
                out.append(f"{separator}{quote(key)}: {quote(item)}")
            elif item_kind is int:
                out.append(f"{separator}{quote(key)}: {_INT_REPR(item)}")
            elif item is None:
                out.append(f"{separator}{quote(key)}: null")
            elif item_kind is bool:
                out.append(f"{separator}{quote(key)}: {'true' if item else 'false'}")
            elif item_kind is float and item == item and item not in (_INF, -_INF):
                out.append(f"{separator}{quote(key)}: {_FLOAT_REPR(item)}")
            else:
                out.append(f"{separator}{quote(key)}: ")
                _indented(item, inner, quote, out)
            separator = "," + inner
        out.append(newline + "}")
    elif kind is list or kind is tuple:
        if not value:
            out.append("[]")
            return
        inner = newline + "  "
        separator = "[" + inner
        for item in value:
            if type(item) is str:
                out.append(separator + quote(item))
            else:
                out.append(separator)
                _indented(item, inner, quote, out)
            separator = "," + inner
        out.append(newline + "]")
    elif kind is int:
        out.append(_INT_REPR(value))
    elif kind is bool:
        out.append("true" if value else "false")
    elif value is None:
        out.append("null")
    elif kind is float and value == value and value not in (_INF, -_INF):
        out.append(_FLOAT_REPR(value))
    else:  # NaN and infinities, subclasses, other types: the library's own rules (and errors)
        raise _Unusual


_INF = float("inf")
