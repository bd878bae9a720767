"""A temporary copy of the repository as a fresh clone has it: the files git tracks (with
their working-tree content), nothing else (no .venv, no build output, no caches). Tests of
install instructions, the GitHub Action and the docs' commands run on such a copy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SKIP = {".git", ".venv", "build", "dist", "__pycache__", ".opsdsl", ".pytest_cache", ".ruff_cache"}


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode("utf-8")
        return [name for name in out.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an sdist): everything but caches
        return [
            p.relative_to(ROOT).as_posix()
            for p in ROOT.rglob("*")
            if p.is_file() and not (_SKIP & set(p.relative_to(ROOT).parts))
        ]


def copy_repo(destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for name in tracked_files():
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree, not yet committed
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination
