"""`opsdsl graph`: the DAG drawn for reviewers, with risk, gates and undo steps visible."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from opsdsl.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def graph(*args: str):
    return CliRunner().invoke(cli, ["graph", *args])


def test_mermaid_marks_risk_gates_and_compensation():
    result = graph(
        str(ROOT / "packs/sev2.yaml"),
        "--playbook",
        "query-latency-regression",
        "--policy-pack",
        str(ROOT / "packs/org-policies.yaml"),
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("%% sqlx-sev2 / query-latency-regression (SEV-2)\nflowchart TD\n")
    assert 'scale_pool{{"' in out and "needs approval" in out  # gated by the org approval policy
    assert "scale_pool -.->|undo| scale_pool__compensate" in out
    assert "report_outcome ==>|finally| rca" in out
    high = next(line for line in out.splitlines() if line.strip().startswith("class ") and line.endswith(" high"))
    assert "scale_pool" in high.split()[1].split(",")


def test_without_the_org_policies_the_gate_is_not_drawn(tmp_path: Path):
    alone = tmp_path / "sev2.yaml"
    shutil.copy(ROOT / "packs/sev2.yaml", alone)
    out = graph(str(alone), "--playbook", "query-latency-regression").output
    assert "needs approval" not in out


def test_the_policy_packs_beside_the_pack_are_drawn_as_run_applies_them():
    """Issue 13 #11: `run --pack packs/sev2.yaml` stops at the org gate, so the graph shows it."""
    out = graph(str(ROOT / "packs/sev2.yaml"), "--playbook", "query-latency-regression").output
    assert "needs approval" in out


def test_dot_output_and_approval_steps():
    result = graph(str(ROOT / "packs/sev1.yaml"), "--playbook", "security-breach", "--format", "dot")
    assert result.exit_code == 0
    assert result.output.startswith('digraph "sqlx-sev1/security-breach" {')
    assert '"approve_fleet_actions" [label=' in result.output and 'shape="diamond"' in result.output
    assert '"rotate_hsm_keys" -> "rotate_hsm_keys.compensate" [style=dashed, label="undo"];' in result.output


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed (.ci/run installs it)")
def test_svg_through_graphviz(tmp_path: Path):
    out = tmp_path / "g.svg"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "opsdsl",
            "graph",
            "packs/sev1.yaml",
            "--playbook",
            "security-breach",
            "--format",
            "svg",
            "-o",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()


def test_unknown_playbook_is_a_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "opsdsl", "graph", "packs/sev2.yaml", "--playbook", "query-latency"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "has no playbook `query-latency`" in result.stderr and "Traceback" not in result.stderr


def test_broken_pack_is_refused_with_its_diagnostics(tmp_path: Path, minimal_pack: str):
    (tmp_path / "p.yaml").write_text(minimal_pack.replace("action: http.request", "action: http.requests"))
    result = subprocess.run(
        [sys.executable, "-m", "opsdsl", "graph", str(tmp_path / "p.yaml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "OPS036" in result.stderr
