"""Render coverage: a compact table per pack for people, a JSON document for scripts and
for the lint rule OPS050 (`opsdsl test --coverage-out FILE`)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from opsdsl import __version__

from .coverage import BRANCHES, COMPENSATIONS, HIGH_RISK, KINDS, POLICIES, STEPS, Count, Coverage, Item

COVERAGE_VERSION = 1
_HEADINGS = {STEPS: "steps", BRANCHES: "branches", COMPENSATIONS: "compensations", POLICIES: "policies"}
_TOTALS = (STEPS, HIGH_RISK, BRANCHES, COMPENSATIONS, POLICIES)


def percent_text(count: Count) -> str:
    """`87.5%`, `100%`; rounded down, so 99.95 % never reads as 100 %; `–` for nothing to cover."""
    if count.percent is None:
        return "–"
    shown = math.floor(count.percent * 10) / 10
    return f"{shown:g}%"


def _cell(count: Count) -> str:
    return f"{count.covered}/{count.total} {percent_text(count)}" if count.total else "–"


# ---- text ---------------------------------------------------------------------------------


def to_text(coverage: Coverage) -> str:
    """Per pack: a row per playbook (covered/total and percent of each kind), then what was
    missed, each item at its file:line:col; a total line at the end."""
    blocks = ["Coverage (steps started, `when:` true and false, compensations run, policies seen applying)"]
    for pack in coverage.packs:
        cases = f"{pack.cases} case{'s' if pack.cases != 1 else ''}"
        rows = [["playbook", *(_HEADINGS[k] for k in KINDS)]]
        rows += [[name, *(_cell(book.count(k)) for k in KINDS)] for name, book in pack.playbooks.items()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{pack.path} ({pack.name}, {cases})"]
        lines += ["  " + "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        missed = [(name, item) for name, book in pack.playbooks.items() for item in _ordered(book.missed)]
        if missed:
            lines.append("  missed:")
            width = max(len(f"{name}: {item.label}") for name, item in missed)
            lines += [f"    {f'{name}: {item.label}'.ljust(width)}   {item.span}" for name, item in missed]
        if pack.inapplicable:
            lines.append(f"  policies that can apply to no step here: {', '.join(pack.inapplicable)}")
        blocks.append("\n".join(lines))
    blocks.append(total_line(coverage))
    return "\n\n".join(blocks) + "\n"


def _ordered(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda i: (KINDS.index(i.kind), i.span.file, i.span.line, i.span.col, i.when is False))


def total_line(coverage: Coverage) -> str:
    packs, books = len(coverage.packs), sum(len(p.playbooks) for p in coverage.packs)
    parts = []
    for kind in _TOTALS:
        count = coverage.count(kind)
        name = "high-risk steps" if kind == HIGH_RISK else _HEADINGS[kind]
        parts.append(f"{name} {count.covered}/{count.total} ({percent_text(count)})")
    where = f"{books} playbook{'s' if books != 1 else ''} in {packs} pack{'s' if packs != 1 else ''}"
    return f"coverage of {where}: {', '.join(parts)}"


# ---- JSON ---------------------------------------------------------------------------------


def _count_json(count: Count) -> dict[str, Any]:
    percent = None if count.percent is None else round(count.percent, 2)
    return {"covered": count.covered, "total": count.total, "percent": percent}


def _summary(owner: Any) -> dict[str, Any]:
    return {kind: _count_json(owner.count(kind)) for kind in _TOTALS}


def _item_json(item: Item, relative: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"step" if item.kind in (BRANCHES, COMPENSATIONS) else "id": item.id}
    if item.kind == STEPS:
        out["risk"] = item.risk
    elif item.kind == BRANCHES:
        out["when"] = item.when
    elif item.kind == POLICIES:
        out["effect"] = item.effect
    out.update(file=relative(item.span.file), line=item.span.line, column=item.span.col, covered=item.covered)
    return out


def to_document(coverage: Coverage, base: Path | None = None) -> dict[str, Any]:
    """The coverage as JSON data. File paths are relative to `base` (the folder of the file
    the document is written to), or as shown (relative to the working directory)."""

    def relative(path: str) -> str:
        if base is None:
            return path
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()

    return {
        "version": COVERAGE_VERSION,
        "tool": {"name": "opsdsl", "version": __version__},
        "kind": "coverage",
        "summary": {"packs": len(coverage.packs), "cases": coverage.cases, **_summary(coverage)},
        "packs": [
            {
                "pack": relative(pack.path),
                "name": pack.name,
                "digest": pack.digest,
                "policy_packs": [{"path": relative(p["path"]), "digest": p["digest"]} for p in pack.policy_packs],
                "cases": pack.cases,
                "summary": _summary(pack),
                "inapplicable_policies": pack.inapplicable,
                "playbooks": [
                    {
                        "name": name,
                        "summary": _summary(book),
                        **{kind: [_item_json(i, relative) for i in book.of(kind)] for kind in KINDS},
                    }
                    for name, book in pack.playbooks.items()
                ],
            }
            for pack in coverage.packs
        ],
    }


def below(coverage: Coverage, fail_under: float) -> str | None:
    """Why the step coverage fails `--fail-under`, or None when it does not."""
    steps = coverage.count(STEPS)
    if steps.percent is not None and steps.percent + 1e-9 >= fail_under:
        return None
    shown = percent_text(steps) if steps.total else "nothing (no steps ran)"
    return f"step coverage {shown} ({steps.covered}/{steps.total}) is below --fail-under {fail_under:g}%"


def dump(document: dict[str, Any]) -> str:
    import json

    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
