"""Inline suppressions: `# opsdsl: ignore[CODE, ...]` (this line; alone on its line, the
next line too) and `# opsdsl: ignore-file[CODE, ...]` (the whole file). Read by `opsdsl
lint` (opsdsl.lint.engine) and `opsdsl compile` (opsdsl.build.plans), which must agree."""

from __future__ import annotations

import re

_SUPPRESS = re.compile(r"#\s*opsdsl:\s*ignore(-file)?\[\s*([A-Za-z0-9, ]+?)\s*\]")


def suppressions(text: str) -> tuple[set[str], dict[int, set[str]]]:
    """Codes ignored in the whole file, and per line (a comment alone on its line also
    covers the next line)."""
    whole: set[str] = set()
    per_line: dict[int, set[str]] = {}
    if "opsdsl:" not in text:
        return whole, per_line
    for number, line in enumerate(text.splitlines(), start=1):
        for match in _SUPPRESS.finditer(line):
            codes = {c.strip().upper() for c in match.group(2).split(",") if c.strip()}
            if match.group(1):
                whole |= codes
                continue
            per_line.setdefault(number, set()).update(codes)
            if line.lstrip().startswith("#"):
                per_line.setdefault(number + 1, set()).update(codes)
    return whole, per_line
