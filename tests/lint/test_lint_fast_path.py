"""`opsdsl lint PATH...` and `opsdsl --version` run without click (opsdsl.cli.main's fast
path); they must print the same bytes, on both streams, and exit with the same code as the
click commands, whatever the input. Each case runs both ways in a subprocess."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lint"

FAST = "import sys, opsdsl.cli.main as m; m.main(sys.argv[1:])"
# the same entry point with the fast path switched off: everything goes through click
CLICK = "import sys, opsdsl.cli.main as m; m._fast_path = lambda args: None; m.main(sys.argv[1:])"
PROBE = "import sys, opsdsl.cli.main as m\ntry:\n    m.main(sys.argv[1:])\nfinally:\n    print('click' in sys.modules, file=sys.stderr)"


def both(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    def run(code: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL
        )

    return run(FAST), run(CLICK)


def assert_same(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    fast, slow = both(args, cwd)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr), args
    return fast


@pytest.fixture
def tree(tmp_path: Path, minimal_pack: str) -> Path:
    shutil.copytree(REPO / "packs", tmp_path / "packs")
    shutil.copytree(FIXTURES, tmp_path / "fixtures")
    (tmp_path / "clean.yaml").write_text(minimal_pack)
    (tmp_path / "broken.yaml").write_text(minimal_pack.replace("timeout: 10s", "timout: 10s"))
    # a key with an escape sequence: click strips ANSI codes from what is not a terminal
    (tmp_path / "ansi.yaml").write_text(minimal_pack.replace("timeout: 10s", '"\\e[31mred\\e[0m": 10s'))
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp_path / "empty").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ["lint", "clean.yaml"],
        ["lint", "broken.yaml"],
        ["lint", "ansi.yaml"],
        ["lint", "latin1.yaml"],
        ["lint", "packs"],
        ["lint", "packs/"],
        ["lint", "empty"],
        ["lint", "clean.yaml", "broken.yaml", "packs"],
        ["lint", "fixtures"],
        ["--version"],
        ["-V"],
        # these go through click either way; the same answer still
        ["lint"],
        ["lint", "missing.yaml"],
        ["lint", "--format", "json", "broken.yaml"],
        ["lint", "--help"],
        ["lint", "--", "clean.yaml"],
    ],
)
def test_the_same_bytes_and_exit_code_as_click(tree: Path, args: list[str]):
    assert_same(args, tree)


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.yaml")))
def test_each_golden_fixture_the_same(tree: Path, fixture: str):
    result = assert_same(["lint", f"fixtures/{fixture}"], tree)
    golden = (FIXTURES / fixture.replace(".yaml", ".diagnostics.txt")).read_text(encoding="utf-8")
    assert result.returncode in (0, 1)
    assert golden.strip().splitlines()[0].split(":", 1)[1] in result.stdout.decode()


def test_a_bad_configuration_is_reported_the_same(tree: Path):
    (tree / ".opsdsl.toml").write_text("fail_on = 'sometimes'\n")
    result = assert_same(["lint", "clean.yaml"], tree)
    assert result.returncode == 2 and b"opsdsl: error:" in result.stderr


@pytest.mark.parametrize(
    ("args", "imports_click"),
    [
        (["lint", "clean.yaml"], False),
        (["lint", "broken.yaml", "packs"], False),
        (["--version"], False),
        (["lint", "--format", "json", "clean.yaml"], True),
        (["lint", "missing.yaml"], True),
    ],
)
def test_only_a_plain_lint_or_version_skips_click(tree: Path, args: list[str], imports_click: bool):
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tree, capture_output=True, text=True, timeout=120)
    assert out.stderr.strip().splitlines()[-1] == str(imports_click), out.stderr
