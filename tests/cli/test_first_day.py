"""What a new user tripped on (issue 13 #9–#12), run as the user runs it: a real `opsdsl`
process in a fresh folder holding a copy of packs/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKS = Path(__file__).resolve().parents[2] / "packs"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def opsdsl(folder: Path, *args: object, stdin: str = "", timeout: float = 60) -> Result:
    env = {k: v for k, v in os.environ.items() if k != "OPSDSL_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", *map(str, args)],
        cwd=folder,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(PACKS, tmp_path / "packs")
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--pack", "packs/org-policies.yaml"),
        ("run", "--pack", "packs/org-policies.yaml", "--dry-run"),
        ("fire", "--pack", "packs/org-policies.yaml", "-"),
        ("watch", "--pack", "packs/org-policies.yaml"),
        ("serve", "--pack", "packs/org-policies.yaml", "--insecure-no-auth"),
    ],
    ids=["run", "dry-run", "fire", "watch", "serve"],
)
def test_a_policy_pack_given_as_the_pack_is_a_usage_error(folder: Path, args: tuple[str, ...]):
    result = opsdsl(folder, *args, stdin="{}\n")
    assert result.code == 2, result
    assert "internal error" not in result.stderr and "StopIteration" not in result.stderr
    assert "is a policy pack" in result.stderr and "--policies" in result.stderr
    assert not (folder / ".opsdsl").exists()
