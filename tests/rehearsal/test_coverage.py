"""Coverage of pack tests (`opsdsl test --coverage`, opsdsl.rehearsal.coverage) and the lint
rule that reads it (OPS050, opsdsl.lang.checks.coverage), on tests/fixtures/rehearsal/coverage/:
a pack whose tests leave a step, two branches, a compensation and a policy unexercised."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from opsdsl.cli.main import cli
from opsdsl.errors import ConfigError
from opsdsl.lang.config import Config, parse_config
from opsdsl.lint.engine import lint_paths
from opsdsl.rehearsal import run_tests
from opsdsl.rehearsal.coverage import BRANCHES, COMPENSATIONS, HIGH_RISK, POLICIES, STEPS, Count, gather
from opsdsl.rehearsal.coverage_report import percent_text, to_text

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rehearsal" / "coverage"


@pytest.fixture
def project(in_tmp: Path) -> Path:
    """The fixture copied to a fresh working directory, as `packs/`."""
    shutil.copytree(FIXTURE, in_tmp / "packs")
    return in_tmp


def coverage_of(root: Path):
    return gather(run_tests([root / "packs"]))


# ---- gathering ----------------------------------------------------------------------------


def test_every_kind_is_counted_from_what_the_runs_did(project: Path):
    coverage = coverage_of(project)
    (pack,) = coverage.packs
    deploy = pack.playbooks["deploy"]
    assert pack.cases == coverage.cases == 2
    assert deploy.count(STEPS) == Count(5, 6)
    assert deploy.count(HIGH_RISK) == Count(2, 2)
    assert deploy.count(BRANCHES) == Count(2, 4)
    assert deploy.count(COMPENSATIONS) == Count(1, 2)
    assert deploy.count(POLICIES) == Count(1, 2)
    missed = {(i.kind, i.id, i.when): str(i.span) for i in deploy.missed}
    assert missed == {
        (STEPS, "notify_team", None): "packs/deploy.yaml:29:9",
        (BRANCHES, "migrate", False): "packs/deploy.yaml:17:15",
        (BRANCHES, "notify_team", True): "packs/deploy.yaml:30:15",
        (COMPENSATIONS, "roll_out", None): "packs/deploy.yaml:28:9",
        (POLICIES, "prod-is-off-limits", None): "packs/policies.yaml:9:9",
    }


def test_sub_run_steps_count_for_the_called_playbook(project: Path):
    (pack,) = coverage_of(project).packs
    assert pack.playbooks["announce"].count(STEPS) == Count(1, 1)


def test_a_policy_that_can_apply_to_no_step_is_not_counted(project: Path):
    (pack,) = coverage_of(project).packs
    assert pack.inapplicable == ["sev1-goes-ahead"]  # playbook.severity == "SEV-1" in SEV-3 playbooks
    # `prod-is-off-limits` reads params, which a case may set: it can apply, so it counts
    assert "prod-is-off-limits" in {i.id for i in pack.playbooks["deploy"].of(POLICIES)}


def test_percentages_round_down_and_nothing_to_cover_is_a_dash():
    assert percent_text(Count(1999, 2000)) == "99.9%"
    assert percent_text(Count(2, 2)) == "100%"
    assert percent_text(Count(0, 0)) == "–"


def test_the_text_table(project: Path):
    text = to_text(coverage_of(project))
    assert "  deploy     5/6 83.3%   2/4 50%    1/2 50%         1/2 50%\n" in text
    assert "    deploy: compensation of `roll_out`           packs/deploy.yaml:28:9\n" in text
    assert "  policies that can apply to no step here: sev1-goes-ahead\n" in text
    assert text.rstrip().endswith("compensations 1/2 (50%), policies 1/2 (50%)")


# ---- the command ----------------------------------------------------------------------------


def test_coverage_follows_the_text_report(project: Path):
    result = CliRunner().invoke(cli, ["test", "packs", "--coverage"])
    assert result.exit_code == 0, result.output
    report, coverage = result.output.split("\nCoverage (", 1)
    assert "\n2 cases: 2 passed in " in report
    assert "deploy: `migrate` when false" in coverage


def test_json_carries_the_coverage_under_its_own_key(project: Path):
    result = CliRunner().invoke(cli, ["test", "packs", "--coverage", "--format", "json"])
    document = json.loads(result.output)
    assert document["summary"]["passed"] == 2
    coverage = document["coverage"]
    assert coverage["summary"]["steps"] == {"covered": 6, "total": 7, "percent": 85.71}
    (pack,) = coverage["packs"]
    assert pack["pack"] == "packs/deploy.yaml" and pack["digest"].startswith("sha256:")
    assert pack["policy_packs"][0]["path"] == "packs/policies.yaml"
    deploy = pack["playbooks"][0]
    assert deploy["branches"][1] == {
        "step": "migrate", "when": False, "file": "packs/deploy.yaml", "line": 17, "column": 15, "covered": False
    }  # fmt: skip


def test_coverage_out_writes_paths_relative_to_the_file(project: Path):
    result = CliRunner().invoke(cli, ["test", "packs", "--coverage-out", ".opsdsl/coverage.json"])
    assert result.exit_code == 0
    assert "Coverage (" not in result.output  # written, not shown, without --coverage
    document = json.loads((project / ".opsdsl" / "coverage.json").read_text())
    assert document["kind"] == "coverage"
    assert document["packs"][0]["pack"] == "../packs/deploy.yaml"
    assert document["packs"][0]["playbooks"][0]["steps"][0]["file"] == "../packs/deploy.yaml"


def test_fail_under_fails_a_passing_run_below_the_step_coverage(project: Path):
    runner = CliRunner()
    low = runner.invoke(cli, ["test", "packs", "--fail-under", "90"])
    assert low.exit_code == 1
    assert "step coverage 85.7% (6/7) is below --fail-under 90%" in low.output
    assert runner.invoke(cli, ["test", "packs", "--fail-under", "85"]).exit_code == 0


def test_schema_kind_test_prints_the_test_schema():
    runner = CliRunner()
    tests = json.loads(runner.invoke(cli, ["schema", "--kind", "test"]).output)
    packs = json.loads(runner.invoke(cli, ["schema"]).output)
    assert tests["$id"].endswith("/test.schema.json")
    assert packs["$id"].endswith("/pack.schema.json")


# ---- OPS050 --------------------------------------------------------------------------------


def lint_findings(config: Config) -> list[tuple[str, int, str]]:
    result = lint_paths([Path("packs")], config)
    return [(d.span.file, d.span.line, d.message) for d in result.diagnostics if d.code == "OPS050"]


def enabled(root: Path) -> Config:
    (root / ".opsdsl.toml").write_text("require-tested-high-risk = true\n")
    return parse_config({"require-tested-high-risk": True}, str(root / ".opsdsl.toml"))


def write_coverage(root: Path, *args: str) -> None:
    result = CliRunner().invoke(cli, ["test", "packs", "--coverage-out", ".opsdsl/coverage.json", *args])
    assert result.exit_code in (0, 1), result.output


def test_ops050_is_off_unless_enabled(project: Path):
    assert lint_findings(Config()) == []


def test_ops050_without_a_coverage_file_says_it_cannot_tell(project: Path):
    assert lint_findings(enabled(project)) == [
        (
            "packs/deploy.yaml",
            18,
            "cannot tell whether the high-risk steps of this pack are tested: "
            "there is no coverage file .opsdsl/coverage.json",
        )
    ]


def test_ops050_reports_each_high_risk_step_no_case_started(project: Path):
    write_coverage(project, "-k", "failed roll-out")  # starts migrate and roll_out
    assert lint_findings(enabled(project)) == []
    (project / "packs" / "deploy.test.yaml").write_text(
        (FIXTURE / "deploy.test.yaml").read_text().replace("schema_behind: true", "schema_behind: false")
    )
    write_coverage(project)
    assert lint_findings(enabled(project)) == [
        ("packs/deploy.yaml", 18, "high-risk step `migrate` of `deploy` is untested: no test case started it")
    ]


def test_ops050_reports_a_pack_no_test_covers(project: Path):
    write_coverage(project)
    (project / "packs" / "other.yaml").write_text(
        (FIXTURE / "deploy.yaml").read_text().replace("deploy-demo", "other-demo")
    )
    found = [f for f in lint_findings(enabled(project)) if f[0] == "packs/other.yaml"]
    assert [line for _, line, _ in found] == [18, 24]
    assert found[0][2].endswith("is untested: no pack test of this file is in .opsdsl/coverage.json")


@pytest.mark.parametrize("changed", ["deploy.yaml", "policies.yaml"])
def test_ops050_does_not_trust_a_stale_coverage_file(project: Path, changed: str):
    write_coverage(project)
    with (project / "packs" / changed).open("a") as handle:
        handle.write("# edited after the tests ran\n")
    assert lint_findings(enabled(project)) == [
        (
            "packs/deploy.yaml",
            18,
            f"the coverage in .opsdsl/coverage.json is stale for this pack (packs/{changed} changed since the tests"
            " ran); it is not used",
        )
    ]


def test_ops050_through_the_command_reads_the_configured_file(project: Path):
    (project / "pyproject.toml").write_text(
        '[tool.opsdsl]\nrequire-tested-high-risk = true\ncoverage-file = "out/cov.json"\n'
    )
    runner = CliRunner()
    assert runner.invoke(cli, ["test", "packs", "--coverage-out", "out/cov.json"]).exit_code == 0
    result = runner.invoke(cli, ["lint", "packs"])
    assert "OPS050" not in result.output
    (project / "out" / "cov.json").write_text("{}")
    result = runner.invoke(cli, ["lint", "packs"])
    assert "warning[OPS050] cannot tell whether the high-risk steps of this pack are tested: out/cov.json" in (
        result.output
    )


def test_config_keys_are_checked(tmp_path: Path):
    config = parse_config({"require-tested-high-risk": True, "coverage-file": "c.json"}, str(tmp_path / "x.toml"))
    assert config.require_tested_high_risk and config.coverage_path() == tmp_path / "c.json"
    assert Config().coverage_path() == Path(".opsdsl/coverage.json")
    with pytest.raises(ConfigError, match="`require-tested-high-risk` must be true or false"):
        parse_config({"require-tested-high-risk": "yes"}, "x")
    with pytest.raises(ConfigError, match="`coverage-file` must be a path"):
        parse_config({"coverage-file": 3}, "x")
