"""Canonical JSON (RFC 8785, JCS) and digests.

`rfc8785` is the reference implementation; it is pure Python and walks every value. Most
of what opsdsl canonicalises (models, plans) holds no floats and only keys that sort the
same by UTF-16 code units as by code points, and for such values `json.dumps` with
sorted keys and no whitespace produces the very same bytes, much faster. `canonical_json`
takes that path when it is exact and falls back to `rfc8785` otherwise; a property test
checks the two agree.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

_MAX_SAFE_INT = 2**53 - 1


def _fast_path_exact(value: Any) -> bool:
    """Whether `json.dumps(sort_keys=True)` gives RFC 8785 bytes for `value`."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int:
            if -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                continue
            return False
        if kind is dict:
            for key in item:
                # Sorting by code point equals UTF-16 order unless a key holds characters
                # above U+D7FF (surrogates sort below U+E000..U+FFFF in UTF-16).
                if type(key) is not str or (not key.isascii() and max(key) > "\ud7ff"):
                    return False
            stack.extend(item.values())
            continue
        if kind is list or kind is tuple:
            stack.extend(item)
            continue
        return False  # floats (number formatting differs), other types
    return True


def is_fast_path_exact(value: Any) -> bool:
    """Whether `canonical_json` can take its fast path for `value` (see the module doc)."""
    return _fast_path_exact(value)


def canonical_json(value: Any, *, known_exact: bool = False) -> bytes:
    """RFC 8785 canonical bytes of a JSON value.

    `known_exact` skips the check for values built only from parts that passed
    `is_fast_path_exact` plus ASCII keys and safe integers (the compiler's plans).
    """
    if known_exact or _fast_path_exact(value):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    import rfc8785

    return rfc8785.dumps(value)


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>`, the form digests take in plans, manifests and locks."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
