"""`opsdsl fmt` from the command line, and the other commands reading .ops packs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from opsdsl.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "ops"
MESSY = """\
# a comment on the pack
pack demo   version 1.0.0 owner sre {
playbook hello severity SEV-4 { step say: shell { with {argv: ["echo",
  "hello"]}   # say it
  }}
}
"""
TIDY = """\
# a comment on the pack
pack demo version 1.0.0 owner sre {
  playbook hello severity SEV-4 {
    step say: shell {
      with {argv: ["echo", "hello"]}  # say it
    }
  }
}
"""


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture
def messy(in_tmp: Path) -> Path:
    path = in_tmp / "demo.ops"
    path.write_text(MESSY)
    return path


def test_fmt_prints_the_canonical_layout_with_comments(messy: Path):
    result = run("fmt", str(messy))
    assert result.exit_code == 0, result.output
    assert result.output == TIDY


def test_fmt_check_exits_1_and_names_the_file_then_0_once_formatted(messy: Path):
    result = run("fmt", "--check", str(messy))
    assert result.exit_code == 1
    assert "would reformat demo.ops" in result.output
    assert messy.read_text() == MESSY
    assert run("fmt", "--in-place", str(messy)).exit_code == 0
    assert messy.read_text() == TIDY
    assert run("fmt", "--check", str(messy)).exit_code == 0


def test_fmt_check_passes_on_the_shipped_examples():
    assert run("fmt", "--check", str(EXAMPLES)).exit_code == 0


def test_fmt_converts_yaml_to_ops_on_stdout():
    result = run("fmt", "--to", "ops", str(ROOT / "packs" / "sev4.yaml"))
    assert result.exit_code == 0, result.output
    from opsdsl.lang.ops import load_text

    converted, _ = load_text(result.output, "sev4.ops")
    shipped, _ = load_text((EXAMPLES / "sev4.ops").read_text(), "sev4.ops")
    assert converted.data == shipped.data


def test_fmt_to_yaml_writes_a_folder_that_lints_clean(in_tmp: Path):
    result = run("fmt", "--to", "yaml", "-o", "out", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (in_tmp / "out").iterdir()) == [
        "org-policies.yaml",
        "sev1.yaml",
        "sev2.yaml",
        "sev3.yaml",
        "sev4.yaml",
    ]
    assert "timeout: 10s" in (in_tmp / "out" / "sev2.yaml").read_text()
    lint = run("lint", "out")
    assert lint.exit_code == 0, lint.output


def exit_code(*args: str) -> int:
    from opsdsl.cli.main import main

    with pytest.raises(SystemExit) as stopped:
        main(list(args))
    return stopped.value.code


def test_fmt_usage_errors_exit_2(messy: Path):
    assert exit_code("fmt", "missing.ops") == 2
    assert exit_code("fmt", "--in-place", "--to", "yaml", str(messy)) == 2
    assert exit_code("fmt", str(ROOT / "packs" / "sev1.yaml")) == 2  # YAML without --to
    assert exit_code("fmt", str(EXAMPLES)) == 2  # several files, nowhere to put them
    assert exit_code("fmt", "--to", "json", str(messy)) == 2


def test_fmt_reports_syntax_errors_with_exit_1(in_tmp: Path):
    (in_tmp / "bad.ops").write_text("pack a version 1.0.0 owner b {\n  playbook p severity SEV-4 {\n")
    result = run("fmt", "bad.ops")
    assert result.exit_code == 1
    assert "bad.ops:2:" in result.output and "OPS002" in result.output


def test_lint_compile_and_graph_read_ops_packs(in_tmp: Path):
    shutil.copytree(EXAMPLES, in_tmp / "ops")
    lint = run("lint", "ops")
    assert lint.exit_code == 0, lint.output
    assert "5 files checked" in lint.output
    emitted = run("compile", "ops", "--emit", "plan")
    assert emitted.exit_code == 0, emitted.output
    from_yaml = run("compile", str(ROOT / "packs"), "--emit", "plan")
    assert emitted.output == from_yaml.output
    graph = run(
        "graph", "ops/sev2.ops", "--playbook", "query-latency-regression", "--policy-pack", "ops/org-policies.ops"
    )
    assert graph.exit_code == 0, graph.output
    assert "needs approval" in graph.output
    lock = run("lock", "ops")
    assert lock.exit_code == 0, lock.output
    drift = run("drift", "ops", "--no-build")
    assert drift.exit_code == 0, drift.output


def test_lint_points_at_ops_lines(in_tmp: Path):
    text = (EXAMPLES / "sev4.ops").read_text().replace("timeout 10s", "timeout 10d", 1)
    (in_tmp / "sev4.ops").write_text(text)
    result = run("lint", "sev4.ops")
    assert result.exit_code == 1
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "timeout 10d" in t)
    assert f"sev4.ops:{line}:" in result.output and "OPS038" in result.output
