"""The bundled packs' own tests (packs/sev1.test.yaml … sev4.test.yaml) pass through a real
`opsdsl test`, and cover every `risk: high` step; plus the two rehearsal bugs writing them
found (event cases and the case's secrets; a step name two hook playbooks share)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from opsdsl.rehearsal import run_tests

REPO = Path(__file__).resolve().parents[2]
PACKS = REPO / "packs"


def opsdsl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("pack", ["sev1", "sev2", "sev3", "sev4"])
def test_every_seed_pack_has_tests(pack: str):
    assert (PACKS / f"{pack}.test.yaml").is_file()


def test_the_pack_tests_pass_with_strict_mocks():
    done = opsdsl("test", "packs/", "--strict-mocks")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FAIL" not in done.stdout and "ERROR" not in done.stdout
    assert " passed in " in done.stdout.rstrip().splitlines()[-1]


def test_the_pack_tests_start_every_high_risk_step():
    done = opsdsl("test", "packs/", "--coverage", "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    coverage = json.loads(done.stdout)["coverage"]
    assert {Path(p["pack"]).name for p in coverage["packs"]} == {"sev1.yaml", "sev2.yaml", "sev3.yaml", "sev4.yaml"}
    untested = [
        f"{pack['pack']}: {book['name']}/{step['id']}"
        for pack in coverage["packs"]
        for book in pack["playbooks"]
        for step in book["steps"]
        if step["risk"] == "high" and not step["covered"]
    ]
    assert untested == []
    high = coverage["summary"]["high_risk_steps"]
    assert high["total"] > 0 and high["percent"] == 100.0


# ---- what writing them found ----------------------------------------------------------------

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: found, version: 1.0.0, owner: sre}
triggers:
  down: {on: alert, when: event.labels.alertname == "Down"}
  slow: {on: alert, when: event.labels.alertname == "Slow"}
hooks:
  onDown: {trigger: down, run: respond, cooldown: 10m}
  onSlow: {trigger: slow, run: tune, cooldown: 10m}
playbooks:
  respond:
    severity: SEV-2
    steps:
      - {id: check, action: http.request, with: {url: "http://127.0.0.1:9/check"}, timeout: 5s}
      - {id: page, action: playbook.call, with: {playbook: pager}, timeout: 1m}
  tune:
    severity: SEV-3
    steps:
      - id: check
        when: event.labels.tier == "gold"
        action: http.request
        with: {url: "http://127.0.0.1:9/c"}
        timeout: 5s
  pager:
    severity: SEV-2
    steps:
      - id: send
        action: notify
        with: {kind: pagerduty, url: "http://127.0.0.1:9/pd", routing_key: "${{ secrets.pd_key }}", message: down}
        timeout: 10s
"""


def rehearse(tmp_path: Path, cases: str):
    (tmp_path / "found.yaml").write_text(PACK)
    test = tmp_path / "found.test.yaml"
    body = textwrap.indent(textwrap.dedent(cases), "  ")
    test.write_text(f"apiVersion: opsdsl/v1\nkind: PackTest\npack: found.yaml\npolicies: []\ncases:\n{body}")
    (result,) = run_tests([test]).files
    assert not result.diagnostics, [d.render() for d in result.diagnostics]
    return result.cases


def test_an_event_case_gives_its_sub_runs_the_case_secrets_and_never_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSDSL_SECRET_PD_KEY", "from-the-environment")
    given, not_given = rehearse(
        tmp_path,
        """
        - name: given
          event: {status: firing, labels: {alertname: Down}}
          secrets: {pd_key: from-the-case}
          expect: {status: succeeded}
        - name: not given
          event: {status: firing, labels: {alertname: Down}}
          expect: {status: failed}
        """,
    )
    assert (given.status, given.failures) == ("passed", [])
    assert (not_given.status, not_given.failures) == ("passed", [])
    (run,) = not_given.observed.subruns
    assert "secret `pd_key` has no value: give it under the case's `secrets:`" in run.error


def test_a_step_name_two_hook_playbooks_share_is_judged_by_both(tmp_path):
    (case,) = rehearse(
        tmp_path,
        """
        - name: the tune playbook's check is skipped
          event: {status: firing, labels: {alertname: Slow, tier: silver}}
          expect: {skipped: [check]}
        """,
    )
    assert (case.status, case.diagnostics, case.failures) == ("passed", [], [])
