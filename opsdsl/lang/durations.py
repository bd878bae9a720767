"""Duration strings (`30s`, `5m`, `1h30m`, `250ms`) to milliseconds and back."""

from __future__ import annotations

import re

_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_WHOLE = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d))+$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_duration(text: str) -> int:
    """Milliseconds in `text`; raises ValueError for anything but number-unit pairs."""
    if not isinstance(text, str) or not _WHOLE.match(text):
        raise ValueError(f"not a duration: {text!r} (write e.g. 30s, 5m, 1h30m)")
    return sum(int(n) * _UNIT_MS[unit] for n, unit in _PART.findall(text))


def format_duration(ms: int) -> str:
    """The shortest canonical spelling: 90000 → `1m30s`, 250 → `250ms`."""
    if ms == 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        if ms >= size:
            count, ms = divmod(ms, size)
            out.append(f"{count}{unit}")
    return "".join(out)
