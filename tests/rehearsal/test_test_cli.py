"""`opsdsl test` as a real subprocess, on the packs and pack tests in tests/fixtures/rehearsal/:
passing suites, deliberately failing ones that must say why, broken test files, the three
output formats, exit codes, and that rehearsals neither connect, spawn nor sleep."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rehearsal"
REPO = Path(__file__).parents[2]

# The `test` command lives in opsdsl/cli/test.py; registering it here as well keeps these
# tests independent of whether opsdsl/cli/main.py has done so yet (adding it twice is a no-op).
DRIVER = (
    "import sys\n"
    "from opsdsl.cli.main import cli, main\n"
    "from opsdsl.cli.test import COMMANDS\n"
    "for command in COMMANDS:\n"
    "    cli.commands.setdefault(command.name, command)\n"
    "main(sys.argv[1:])\n"
)


def opsdsl_test(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DRIVER, "test", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_passing_suites_exit_0():
    done = opsdsl_test(FIXTURES / "restart", FIXTURES / "slow", FIXTURES / "ops")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("PASS ") == 11
    assert "FAIL" not in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("11 cases: 11 passed in ")


def test_a_wrong_order_and_a_differing_decision_fail_and_say_why():
    done = opsdsl_test(FIXTURES / "failing", "--format", "text")
    assert done.returncode == 1
    out = done.stdout
    test = "tests/fixtures/rehearsal/failing/restart-failing.test.yaml"
    assert (
        f"{test}:15:24: expect.started: steps started in another order: expected `tell_team` at position 2, got `drain`"
        in out
    )
    assert "            +- drain\n             - tell_team\n            -- drain\n" in out
    assert (
        f"{test}:27:18: expect.decisions.restart: the gate said require_approval (high-risk-needs-approval), not allow"
        in out
    )
    assert (
        f"{test}:28:14: expect.decisions.rca: allow came from rca-always-allowed, not high-risk-needs-approval" in out
    )
    assert f"{test}:30:9: expect.outputs.check: the outputs differ" in out
    assert out.rstrip().splitlines()[-1].startswith("2 cases: 0 passed, 2 failed in ")


def test_junit_xml_parses_and_counts():
    done = opsdsl_test(FIXTURES, "--format", "junit")
    assert done.returncode == 1
    root = ET.fromstring(done.stdout)
    assert root.tag == "testsuites"
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    failing = suites["tests/fixtures/rehearsal/failing/restart-failing.test.yaml"]
    assert (failing.get("tests"), failing.get("failures"), failing.get("errors")) == ("2", "2", "0")
    wrong = failing.find("testcase[@name='wrong order']")
    assert wrong.get("line") == "7" and wrong.get("classname") == "tests.fixtures.rehearsal.failing.restart-failing"
    assert "expected `tell_team` at position 2" in wrong.find("failure").get("message")
    malformed = suites["tests/fixtures/rehearsal/broken/malformed.test.yaml"]
    assert malformed.find("testcase/error").get("type") == "OPS002"
    broken = suites["tests/fixtures/rehearsal/broken/unknown-step.test.yaml"]
    assert [c.find("error").get("type") for c in broken.findall("testcase") if c.find("error") is not None] == [
        "OPS062",
        "OPS064",
    ]
    assert broken.find("testcase[@name='sound']").find("error") is None
    total = sum(int(s.get("tests")) for s in suites.values())
    assert root.get("tests") == str(total)


def test_json_output():
    done = opsdsl_test(FIXTURES / "broken", FIXTURES / "slow", "--format", "json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["summary"] | {"seconds": 0} == {
        "cases": 4,
        "passed": 2,
        "failed": 0,
        "errors": 2,
        "file_errors": 1,
        "deselected": 0,
        "seconds": 0,
    }
    files = {f["file"]: f for f in report["files"]}
    (malformed,) = files["tests/fixtures/rehearsal/broken/malformed.test.yaml"]["diagnostics"]
    assert (malformed["code"], malformed["line"], malformed["column"]) == ("OPS002", 7, 15)
    cases = {c["name"]: c for c in files["tests/fixtures/rehearsal/broken/unknown-step.test.yaml"]["cases"]}
    (unknown,) = cases["mocks a step that does not exist"]["diagnostics"]
    assert (unknown["code"], unknown["line"], unknown["column"]) == ("OPS062", 10, 7)
    assert unknown["message"].endswith("has no step `chek`; did you mean `check`?")
    (early,) = cases["expects a step that cannot start that early"]["diagnostics"]
    assert (early["code"], early["line"], early["column"]) == ("OPS064", 14, 24)


def test_no_network_no_subprocess_no_sleeping():
    """slow.yaml waits an hour, backs off for minutes, calls a port nothing listens on and
    a program that does not exist; its rehearsal passes in well under a second."""
    done = opsdsl_test(FIXTURES / "slow", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    (case,) = json.loads(done.stdout)["files"][0]["cases"]
    assert case["status"] == "passed"
    assert case["virtual_seconds"] == 4140  # 3 × 1m of backoff, 1h of wait, a 5m timeout, 1m of backoff
    assert case["seconds"] < 0.5


def test_no_tests_found_is_a_usage_error_unless_allowed(tmp_path):
    (tmp_path / "pack.yaml").write_text("apiVersion: opsdsl/v1\n")
    done = opsdsl_test(tmp_path)
    assert done.returncode == 2
    assert "opsdsl: error: no pack tests found; nothing was run" in done.stderr
    assert "error[OPS060] no pack tests here" in done.stderr
    allowed = opsdsl_test(tmp_path, "--allow-empty")
    assert allowed.returncode == 0
    assert allowed.stdout.strip() == "0 cases: 0 passed in " + allowed.stdout.strip().rsplit(" ", 1)[-1]


def test_k_selects_cases_and_selecting_none_is_a_usage_error():
    done = opsdsl_test(FIXTURES / "restart", "-k", "COOLDOWN")
    assert done.returncode == 0
    assert "PASS  a flapping alert is held back by the cooldown" in done.stdout
    assert "1 case: 1 passed, 6 deselected" in done.stdout
    none = opsdsl_test(FIXTURES / "restart", "-k", "no such case")
    assert none.returncode == 2 and "no case matches -k 'no such case'" in none.stderr


def test_usage_errors_exit_2(tmp_path):
    assert opsdsl_test(tmp_path / "missing").returncode == 2
    pack = FIXTURES / "restart" / "restart.yaml"
    done = opsdsl_test(pack)
    assert done.returncode == 2 and "is not a pack test" in done.stderr
    assert opsdsl_test(FIXTURES / "restart", "--format", "xml").returncode == 2


def test_strict_mocks_and_output_file(tmp_path):
    report = tmp_path / "report.xml"
    done = opsdsl_test(FIXTURES / "restart", "--strict-mocks", "--format", "junit", "-o", report)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "7 cases: 1 passed, 6 failed" in done.stderr  # only the first case mocks every step it runs
    root = ET.parse(report).getroot()
    failures = [f.text for f in root.iter("failure")]
    assert any("step `tell_team` ran without a mock" in text for text in failures)
