"""A plain `opsdsl compile PATH... [-o OUT] [--key FILE]... [--rebuild] [-j N]
[--passphrase-env VAR]` runs without click (opsdsl.cli.main's fast path); it must print the
same bytes, on both streams, exit with the same code and write the same files as the click
command, whatever the input. Each case runs both ways in a subprocess, in two copies of one
tree (the output names its folder)."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.build.signing import write_private_key

REPO = Path(__file__).resolve().parents[2]

FAST = "import sys, opsdsl.cli.main as m; m.main(sys.argv[1:])"
# the same entry point with the fast path switched off: everything goes through click
CLICK = "import sys, opsdsl.cli.main as m; m._fast_path = lambda args: None; m.main(sys.argv[1:])"
PROBE = "import sys, opsdsl.cli.main as m\ntry:\n    m.main(sys.argv[1:])\nfinally:\n    print('click' in sys.modules, file=sys.stderr)"


def _tree(root: Path, minimal_pack: str) -> Path:
    shutil.copytree(REPO / "packs", root / "packs")
    for i in range(20):  # enough packs for the worker processes (pipeline.PARALLEL_MIN_FILES)
        (root / "many").mkdir(exist_ok=True)
        (root / "many" / f"p{i:02}.yaml").write_text(minimal_pack.replace("name: ", f"name: p{i:02}-", 1))
    (root / "broken").mkdir()
    (root / "broken" / "broken.yaml").write_text(minimal_pack.replace("timeout: 10s", "timout: 10s"))
    (root / "a-file").write_text("not a folder\n")
    (root / "keydir").mkdir()
    write_private_key(root / "ci.key", Ed25519PrivateKey.from_private_bytes(bytes(range(32))), None)
    write_private_key(root / "second.key", Ed25519PrivateKey.from_private_bytes(bytes(32)), None)
    write_private_key(root / "locked.key", Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32), b"s3cret")
    return root


@pytest.fixture
def trees(tmp_path: Path, minimal_pack: str) -> tuple[Path, Path]:
    fast = _tree(tmp_path / "fast", minimal_pack)
    return fast, Path(shutil.copytree(fast, tmp_path / "click"))  # one encrypted key file (its salt is random)


def _run(code: str, args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )


def _same_files(left: Path, right: Path) -> None:
    compared = filecmp.dircmp(left, right)
    assert not compared.left_only and not compared.right_only, (compared.left_only, compared.right_only)
    _, mismatch, errors = filecmp.cmpfiles(left, right, compared.common_files, shallow=False)
    assert not mismatch and not errors, (mismatch, errors)
    for sub in compared.common_dirs:
        _same_files(left / sub, right / sub)


def assert_same(args: list[str], trees: tuple[Path, Path], env: dict[str, str] | None = None):
    fast_tree, click_tree = trees
    fast, slow = _run(FAST, args, fast_tree, env), _run(CLICK, args, click_tree, env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr), args
    _same_files(fast_tree, click_tree)
    return fast


@pytest.mark.parametrize(
    "args",
    [
        ["compile", "packs", "-o", "out", "--key", "ci.key"],
        ["compile", "packs", "many", "-o", "out", "--key", "ci.key", "--rebuild"],
        ["compile", "many", "--out", "out", "--key=ci.key", "--key", "second.key", "-j", "1"],
        ["compile", "--rebuild", "--jobs=2", "many", "--out=out", "packs/sev1.yaml", "packs/org-policies.yaml"],
        ["compile", "packs", "-o", "first", "-o", "out/nested/deeper", "-j", "3", "-j", "2"],  # the last counts
        ["compile", "packs"],  # into build/, unsigned, with a warning
        ["compile", "packs", "broken", "-o", "out", "--key", "ci.key"],  # a failed build: exit 1, nothing written
        ["compile", "packs", "-o", "out", "--key", "locked.key"],  # encrypted, no passphrase
        ["compile", "packs", "-o", "out", "--key", "locked.key", "--passphrase-env", "NOT_SET_HERE"],
        ["compile", "packs", "-o", "out", "--key", "ci.key", "--passphrase-env", "FAST_PATH_PASSPHRASE"],
        # these go through click either way; the same answer still
        ["compile"],
        ["compile", "missing", "-o", "out"],
        ["compile", "packs", "-o", "a-file"],
        ["compile", "packs", "-o", "out", "--key", "keydir"],
        ["compile", "packs", "-o", "out", "--key", "missing.key"],
        ["compile", "packs", "-o"],
        ["compile", "packs", "-j", "0"],
        ["compile", "packs", "-j", "two"],
        ["compile", "packs", "--emit", "plan"],
        ["compile", "packs", "--bogus"],
        ["compile", "packs", "-oout"],
        ["compile", "--", "packs"],
        ["compile", "--help"],
    ],
)
def test_the_same_bytes_exit_code_and_files_as_click(trees: tuple[Path, Path], args: list[str]):
    assert_same(args, trees, {"FAST_PATH_PASSPHRASE": "unused for a plain key"})


def test_an_encrypted_key_with_its_passphrase(trees: tuple[Path, Path]):
    result = assert_same(
        ["compile", "packs", "-o", "out", "--key", "locked.key", "--passphrase-env", "PASS"], trees, {"PASS": "s3cret"}
    )
    assert result.returncode == 0 and b"signed by 1 key" in result.stdout


def test_a_second_compile_reuses_the_plans_the_same(trees: tuple[Path, Path]):
    args = ["compile", "packs", "many", "-o", "out", "--key", "ci.key"]
    assert_same(args, trees)
    result = assert_same(args, trees)
    assert b"unchanged, reused" in result.stdout


@pytest.mark.parametrize(
    ("args", "imports_click"),
    [
        (["compile", "packs", "-o", "out", "--key", "ci.key", "--rebuild"], False),
        (["compile", "many", "--out=out", "-j", "2"], False),
        (["compile", "packs", "--emit", "model"], True),
        (["compile", "packs", "-o", "a-file"], True),
    ],
)
def test_only_a_plain_compile_skips_click(trees: tuple[Path, Path], args: list[str], imports_click: bool):
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=trees[0], capture_output=True, text=True, timeout=120
    )
    assert out.stderr.strip().splitlines()[-1] == str(imports_click), out.stderr
