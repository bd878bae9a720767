"""`opsdsl compile` is never looser than `opsdsl lint` about errors: a warning whose code the
configuration makes an error (`severity = { CODE = "error" }`) fails the build, nothing
written, unless an inline `# opsdsl: ignore[CODE]` or `ignore` drops it, as in lint; and a
plan built before the code was raised is not reused unchecked (docs/compile.md).

The first test is a reviewer's (review of 80071d0): compile never handed the configuration
to the checks, so a severity that fails lint still compiled and signed the plan."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAST = "import sys, opsdsl.cli.main as m; m.main(sys.argv[1:])"
CLICK = "import sys, opsdsl.cli.main as m; m._fast_path = lambda args: None; m.main(sys.argv[1:])"


def _opsdsl(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _unused_param(minimal_pack: str, comment: str = "") -> str:
    """The minimal pack with a parameter no expression reads (OPS047, a warning)."""
    return minimal_pack.replace("params:\n", f"params:\n  never_used: {{type: string, default: x}}{comment}\n", 1)


def _plans(out: Path) -> list[Path]:
    return sorted(out.glob("*.plan.dsse.json")) if out.is_dir() else []


@pytest.mark.parametrize("fast_path", [True, False], ids=["plain", "rebuild"])
def test_a_warning_the_configuration_makes_an_error_fails_the_build(tmp_path: Path, minimal_pack: str, fast_path):
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p.yaml").write_text(
        minimal_pack.replace("params:\n", "params:\n  never_used: {type: string, default: x}\n", 1)
    )
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error" }\n')
    lint = _opsdsl(tmp_path, "lint", "packs")
    assert lint.returncode == 1 and "error[OPS047]" in lint.stdout, lint.stdout + lint.stderr
    args = ["compile", "packs", "-o", "out"] + ([] if fast_path else ["--rebuild"])
    compiled = _opsdsl(tmp_path, *args)
    assert compiled.returncode == 1, compiled.stdout + compiled.stderr
    assert "OPS047" in compiled.stderr
    assert not list((tmp_path / "out").glob("*.plan.dsse.json"))


def test_the_error_is_reported_as_lint_reports_it(tmp_path: Path, minimal_pack: str):
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p.yaml").write_text(_unused_param(minimal_pack))
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error" }\n')
    compiled = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert compiled.returncode == 1
    assert "packs/p.yaml:5:" in compiled.stderr and "error[OPS047]" in compiled.stderr, compiled.stderr
    assert "never_used" in compiled.stderr  # the source line is quoted
    assert "build failed: no plan was written" in compiled.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("comment", ["  # opsdsl: ignore[OPS047]", "  # opsdsl: ignore-file[ops047]"])
def test_an_inline_suppression_lets_the_build_pass(tmp_path: Path, minimal_pack: str, comment: str):
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p.yaml").write_text(_unused_param(minimal_pack, comment))
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error" }\n')
    lint = _opsdsl(tmp_path, "lint", "packs")
    assert lint.returncode == 0, lint.stdout
    compiled = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert compiled.returncode == 0, compiled.stderr
    assert len(_plans(tmp_path / "out")) == 1


def test_a_suppression_on_another_line_or_code_does_not(tmp_path: Path, minimal_pack: str):
    (tmp_path / "packs").mkdir()
    pack = minimal_pack.replace("triggers:\n", "triggers:  # opsdsl: ignore[OPS047]\n", 1)
    (tmp_path / "packs" / "p.yaml").write_text(_unused_param(pack, "  # opsdsl: ignore[OPS042]"))
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error" }\n')
    compiled = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert compiled.returncode == 1 and "error[OPS047]" in compiled.stderr, compiled.stderr


def test_ignore_lets_the_build_pass(tmp_path: Path, minimal_pack: str):
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p.yaml").write_text(_unused_param(minimal_pack))
    (tmp_path / ".opsdsl.toml").write_text('ignore = ["OPS047"]\nseverity = { OPS047 = "error" }\n')
    assert _opsdsl(tmp_path, "lint", "packs").returncode == 0
    compiled = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert compiled.returncode == 0, compiled.stderr
    assert len(_plans(tmp_path / "out")) == 1


def test_a_raise_added_after_a_build_is_not_met_by_reusing_its_plan(tmp_path: Path, minimal_pack: str):
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "p.yaml").write_text(_unused_param(minimal_pack))
    first = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert first.returncode == 0, first.stderr
    plan = _plans(tmp_path / "out")[0]
    before = plan.read_bytes()
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error" }\n')
    second = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert second.returncode == 1, second.stdout + second.stderr
    assert "error[OPS047]" in second.stderr and "reused" not in second.stdout
    assert plan.read_bytes() == before  # a failed build writes nothing
    # raising an unrelated code, once the pack is clean: built and recorded, then reused
    (tmp_path / "packs" / "p.yaml").write_text(minimal_pack)
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error", OPS040 = "error" }\n')
    third = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert third.returncode == 0 and "compiled" in third.stdout, third.stderr
    assert "raisedDigest" in json.loads((tmp_path / "out" / "manifest.json").read_text())["packs"]["minimal"]
    fourth = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert fourth.returncode == 0 and "unchanged, reused" in fourth.stdout, fourth.stdout
    # dropping the raise: nothing to record, and the plan's bytes are the same
    (tmp_path / ".opsdsl.toml").unlink()
    fifth = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert fifth.returncode == 0 and "unchanged, kept" in fifth.stdout, fifth.stdout
    assert "raisedDigest" not in json.loads((tmp_path / "out" / "manifest.json").read_text())["packs"]["minimal"]


def test_an_error_stays_an_error_whatever_the_configuration(tmp_path: Path, minimal_pack: str):
    (tmp_path / "packs").mkdir()
    pack = minimal_pack.replace("timeout: 10s", "timeout: 10s\n        needs: [nowhere]")
    (tmp_path / "packs" / "p.yaml").write_text(
        pack.replace("needs: [nowhere]", "needs: [nowhere]  # opsdsl: ignore[OPS031]")
    )
    (tmp_path / ".opsdsl.toml").write_text('ignore = ["OPS031"]\nseverity = { OPS031 = "warning", OPS047 = "error" }\n')
    compiled = _opsdsl(tmp_path, "compile", "packs", "-o", "out")
    assert compiled.returncode == 1 and "error[OPS031]" in compiled.stderr, compiled.stderr
    assert not (tmp_path / "out").exists()


def _fast_and_click(root: Path, minimal_pack: str, config: str) -> tuple[Path, Path]:
    fast = root / "fast"
    (fast / "many").mkdir(parents=True)
    for i in range(20):  # enough for worker processes (pipeline.PARALLEL_MIN_FILES)
        pack = minimal_pack.replace("name: ", f"name: p{i:02}-", 1)
        (fast / "many" / f"p{i:02}.yaml").write_text(_unused_param(pack) if i in (3, 17) else pack)
    (fast / ".opsdsl.toml").write_text(config)
    return fast, Path(shutil.copytree(fast, root / "click"))


@pytest.mark.parametrize(
    "config",
    ['severity = { OPS047 = "error" }\n', 'ignore = ["OPS047"]\nseverity = { OPS047 = "error" }\n', ""],
    ids=["raised", "ignored", "none"],
)
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_fast_path_and_click_agree(tmp_path: Path, minimal_pack: str, config: str, jobs: str):
    fast, click = _fast_and_click(tmp_path, minimal_pack, config)
    outcomes = []
    for code, cwd in ((FAST, fast), (CLICK, click)):
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-c", code, "compile", "many", "-o", "out", "-j", jobs],
            cwd=cwd,
            env=env,
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        files = {p.name: p.read_bytes() for p in _plans(cwd / "out")}
        outcomes.append((done.returncode, done.stdout, done.stderr, files))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == (1 if config.startswith("severity") else 0), outcomes[0][2]
    if config.startswith("severity"):
        assert outcomes[0][2].count(b"error[OPS047]") == 2 and not outcomes[0][3]


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_run_with_a_pack_fails_it_as_lint_does(tmp_path: Path, minimal_pack: str, dry_run: bool):
    # `opsdsl run --pack` compiles the pack itself: it must not run what lint and compile fail.
    (tmp_path / "p.yaml").write_text(_unused_param(minimal_pack))
    (tmp_path / ".opsdsl.toml").write_text('severity = { OPS047 = "error" }\n')
    args = ["run", "--pack", "p.yaml", "--state-dir", "state", *(["--dry-run"] if dry_run else [])]
    refused = _opsdsl(tmp_path, *args)
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert "OPS047" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "state" / "incidents").exists()  # nothing was run

    (tmp_path / ".opsdsl.toml").write_text("")  # the warning is a warning again: the pack compiles
    planned = _opsdsl(
        tmp_path, "run", "--pack", "p.yaml", "--state-dir", "state", "--dry-run", "--input", "cluster=eu1"
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
