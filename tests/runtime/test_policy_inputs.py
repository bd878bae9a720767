"""Policies see the run's inputs as `run.inputs` (issue 13 #15): in the runtime gate, in a
dry run, and in lint, which knows the root. Secrets among them are redacted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from opsdsl.lang.config import Config
from opsdsl.lint.engine import lint_paths
from opsdsl.runtime import runner
from opsdsl.runtime.dryrun import dry_run
from opsdsl.runtime.secrets import Secrets

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: workspaces, version: 1.0.0, owner: sre}
params:
  token: {type: string, secret: true}
playbooks:
  rollback:
    severity: SEV-3
    inputs:
      workspace: {type: string}
      note: {type: string, default: none}
    steps:
      - {id: undo, action: assert, with: {that: "true"}}
policies:
  - id: never-roll-back-system
    description: the system workspace is rolled back by hand only
    when: has(run.inputs.workspace) && run.inputs.workspace == "system" && step.id == "undo"
    effect: deny
    message: the system workspace is never rolled back automatically
  - id: no-secret-in-notes
    description: a policy sees redacted inputs, never a secret's value
    when: run.inputs.note == "hunter22-secret"
    effect: deny
    message: saw a secret
"""


class Nothing:
    def knows(self, action: str) -> bool:
        return False


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLICY_INPUTS_TOKEN", "hunter22-secret")


def secrets_in(state: Path) -> Secrets:
    return Secrets(state, {"token": ("env", "POLICY_INPUTS_TOKEN")})


def start(tmp_path: Path, inputs: dict):
    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    plan = runner.plan_from_pack(pack, [], state)
    runtime = runner.Runtime(state, executor=Nothing())
    secrets = secrets_in(state)
    values = runner.resolve_params(plan.payload, {}, secrets)
    run = runtime.create_run(plan, runner.Selection("rollback"), values, inputs, {}, secrets)
    try:
        return asyncio.run(runtime.drive(run, secrets))
    finally:
        runtime.close()


def test_a_policy_denies_by_the_runs_inputs(tmp_path: Path):
    outcome = start(tmp_path, {"workspace": "system", "note": "x"})
    assert outcome.status == "failed"
    assert "never-roll-back-system" in (outcome.error or "") or "denied" in (outcome.error or "")


def test_other_inputs_pass_the_same_policy(tmp_path: Path):
    assert start(tmp_path, {"workspace": "billing", "note": "x"}).status == "succeeded"


def test_policies_see_inputs_redacted_of_secrets(tmp_path: Path):
    assert start(tmp_path, {"workspace": "billing", "note": "hunter22-secret"}).status == "succeeded"


def test_a_dry_run_shows_the_same_verdict(tmp_path: Path):
    from opsdsl.runtime.plans import plan_for_dry_run

    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK)
    plan = plan_for_dry_run(pack, None, [], None, "default", tmp_path / "state")
    secrets = secrets_in(tmp_path / "state")
    text = dry_run(plan, "rollback", None, {}, {"workspace": "system"}, secrets)
    assert "never-roll-back-system" in text
    assert "never-roll-back-system" not in dry_run(plan, "rollback", None, {}, {"workspace": "web"}, secrets)


def test_lint_knows_run_inputs_in_policies(tmp_path: Path):
    (tmp_path / "pack.yaml").write_text(PACK)
    result = lint_paths([tmp_path / "pack.yaml"], Config())
    codes = [d.code for d in result.diagnostics]
    assert not [c for c in codes if c.startswith("OPS02")], codes
    (tmp_path / "pack.yaml").write_text(PACK.replace("run.inputs.workspace", "run.input.workspace"))
    assert any(d.code.startswith("OPS02") for d in lint_paths([tmp_path / "pack.yaml"], Config()).diagnostics)
