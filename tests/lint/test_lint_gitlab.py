"""`opsdsl lint --format gitlab`: GitLab's code-quality report, as a merge request reads it.

The golden file is the report for two fixture packs; regenerate it with
`pytest --update-golden` and read the diff like any other change."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "lint_gitlab" / "report.gitlab.json"


def _lint(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", "lint", "--format", "gitlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_gitlab_report_matches_golden(in_tmp: Path, update_golden: bool):
    for name in ("references.yaml", "review.yaml"):
        shutil.copy(FIXTURES / "lint" / name, in_tmp / name)
    result = _lint(in_tmp, "references.yaml", "review.yaml")
    assert result.returncode == 1, result.stderr
    if update_golden:
        GOLDEN.write_text(result.stdout, encoding="utf-8")
    assert result.stdout == GOLDEN.read_text(encoding="utf-8")


def test_every_issue_has_what_gitlab_requires_and_fingerprints_are_unique(in_tmp: Path):
    for name in ("references.yaml", "review.yaml"):
        shutil.copy(FIXTURES / "lint" / name, in_tmp / name)
    issues = json.loads(_lint(in_tmp, "references.yaml", "review.yaml").stdout)
    assert issues
    for issue in issues:
        assert isinstance(issue["description"], str) and issue["description"]
        assert issue["check_name"].startswith("OPS")
        assert issue["severity"] in {"info", "minor", "major", "critical", "blocker"}
        assert isinstance(issue["location"]["path"], str)
        assert isinstance(issue["location"]["lines"]["begin"], int)
    assert len({i["fingerprint"] for i in issues}) == len(issues)


def test_a_clean_pack_is_an_empty_array_and_exit_0(in_tmp: Path, minimal_pack: str):
    (in_tmp / "ok.yaml").write_text(minimal_pack)
    result = _lint(in_tmp, "ok.yaml", "-o", "gl-code-quality-report.json")
    assert result.returncode == 0, result.stderr
    assert json.loads((in_tmp / "gl-code-quality-report.json").read_text()) == []
    assert "no problems found" in result.stderr


def test_a_finding_that_moves_keeps_its_fingerprint(in_tmp: Path, minimal_pack: str):
    """GitLab compares fingerprints between branches: a line added above a finding does not
    make it a new one."""
    broken = minimal_pack.replace("timeout: 10s", "timout: 10s")
    (in_tmp / "p.yaml").write_text(broken)
    before = json.loads(_lint(in_tmp, "p.yaml").stdout)
    (in_tmp / "p.yaml").write_text("# a comment moves everything down\n" + broken)
    after = json.loads(_lint(in_tmp, "p.yaml").stdout)
    assert [i["fingerprint"] for i in before] == [i["fingerprint"] for i in after]
    assert after[0]["location"]["lines"]["begin"] == before[0]["location"]["lines"]["begin"] + 1
