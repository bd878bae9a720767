"""OPS050 untested-high-risk-step: a `risk: high` step no pack test started.

Lint never runs tests. `opsdsl test --coverage-out FILE` records, for each pack it
rehearsed, the pack file's digest, its policy packs' digests and which steps the cases
started; this rule reads that file, and only when the configuration asks for it
(`require-tested-high-risk = true`; the file is `coverage-file`, default
`.opsdsl/coverage.json`). What it checks, per pack with `risk: high` steps:

1. the coverage file exists and is a coverage document, else one finding for the pack;
2. the pack is in it, else each high-risk step is untested;
3. the pack file and the policy packs the cases ran under are unchanged since (same
   sha256), else one finding: a stale file is reported, never trusted;
4. each high-risk step was started by some case, else a finding at the step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from opsdsl.canonical import sha256_digest
from opsdsl.errors import Diagnostic
from opsdsl.lang.checks.context import Scope, Unit, iter_steps

CODE = "OPS050"


@dataclass(frozen=True)
class Recorded:
    """One pack as a coverage file recorded it."""

    pack: Path  # resolved
    digest: str
    policy_packs: tuple[tuple[Path, str], ...]
    started: frozenset[tuple[str, str]]  # (playbook, step) of each step some case started

    def changed(self) -> str | None:
        """Why the record no longer describes the files on disk, or None."""
        for path, digest in ((self.pack, self.digest), *self.policy_packs):
            current = _digest(path)
            if current is None:
                return f"{_shown(path)} is gone"
            if current != digest:
                return f"{_shown(path)} changed since the tests ran"
        return None


@dataclass(frozen=True)
class CoverageFile:
    path: Path
    problem: str | None = None  # why the file cannot be used
    packs: dict[Path, Recorded] = field(default_factory=dict)


def check_untested_high_risk(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    config = scope.config
    pack = unit.model
    if config is None or not config.require_tested_high_risk or pack.kind != "Pack":
        return
    risky = [(path, name, step) for path, name, _, step, _ in iter_steps(pack) if step.risk == "high"]
    if not risky:
        return
    coverage = read_coverage(config.coverage_path())
    shown = _shown(coverage.path)
    rerun = f"run `opsdsl test --coverage-out {shown}` on the pack tests, then lint again"
    first = (*risky[0][0], "risk")
    if coverage.problem is not None:
        message = f"cannot tell whether the high-risk steps of this pack are tested: {coverage.problem}"
        yield unit.at(CODE, first, message, rerun)
        return
    recorded = coverage.packs.get(Path(unit.document.source.path).resolve())
    if recorded is not None and (why := recorded.changed()) is not None:
        message = f"the coverage in {shown} is stale for this pack ({why}); it is not used"
        yield unit.at(CODE, first, message, rerun)
        return
    for path, playbook, step in risky:
        if recorded is not None and (playbook, step.id) in recorded.started:
            continue
        because = "no test case started it" if recorded is not None else f"no pack test of this file is in {shown}"
        yield unit.at(
            CODE,
            (*path, "risk"),
            f"high-risk step `{step.id}` of `{playbook}` is untested: {because}",
            f"add a case that starts it to this pack's tests (*.test.yaml), then `opsdsl test --coverage-out {shown}`",
        )


def read_coverage(path: Path) -> CoverageFile:
    """The coverage file at `path`, read once per version of it."""
    try:
        stat = path.stat()
    except OSError:
        return CoverageFile(path, f"there is no coverage file {_shown(path)}")
    return _read(path.resolve(), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _read(path: Path, mtime_ns: int, size: int) -> CoverageFile:
    try:
        document = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return CoverageFile(path, f"{_shown(path)} cannot be read: {error}")
    try:
        return CoverageFile(path, packs=_records(document, path.parent))
    except (KeyError, TypeError, AttributeError, ValueError):
        return CoverageFile(path, f"{_shown(path)} is not a coverage file of `opsdsl test --coverage-out`")


def _records(document: Any, base: Path) -> dict[Path, Recorded]:
    if document.get("kind") != "coverage" or document.get("version") != 1:
        raise ValueError("not a coverage document")
    out: dict[Path, Recorded] = {}
    for pack in document["packs"]:
        started = frozenset(
            (book["name"], step["id"]) for book in pack["playbooks"] for step in book["steps"] if step["covered"]
        )
        policies = tuple(((base / p["path"]).resolve(), p["digest"]) for p in pack["policy_packs"])
        record = Recorded((base / pack["pack"]).resolve(), pack["digest"], policies, started)
        out[record.pack] = record
    return out


def _digest(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return _file_digest(path, stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _file_digest(path: Path, mtime_ns: int, size: int) -> str | None:
    try:
        return sha256_digest(path.read_bytes())
    except OSError:
        return None


def _shown(path: Path) -> str:
    try:
        return Path(os.path.relpath(path)).as_posix()
    except ValueError:
        return path.as_posix()
