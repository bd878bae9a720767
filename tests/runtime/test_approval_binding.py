"""What people approve is what runs: a step held for a policy's approval runs only if it
renders the same when approved as when the approval was asked for (`approval.requested`
records the digest of its rendered `with:`). Otherwise it fails, unrun."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from owned_harness import ManualClock as Clock

from opsdsl.runtime import runner
from opsdsl.runtime.secrets import Secrets

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: bound, version: 1.0.0, owner: sre}
params:
  python: {type: string}
  switch_at: {type: number}
playbooks:
  restart:
    severity: SEV-3
    steps:
      - id: restart
        risk: high
        action: shell
        with:
          argv: ["${{ params.python }}", "-c", "print('restarting')", "${{ now > params.switch_at ? 'all' : 'one' }}"]
        timeout: 30s
"""

POLICY = """\
apiVersion: opsdsl/v1
kind: PolicyPack
metadata: {name: hold-high-risk, version: 1.0.0, owner: platform}
policies:
  - id: high-risk-needs-approval
    when: step.risk == "high"
    effect: require_approval
    message: high-risk steps need an approval
"""


def drive(tmp_path: Path, later: float) -> tuple[str, dict]:
    (tmp_path / "bound.yaml").write_text(PACK)
    (tmp_path / "policies.yaml").write_text(POLICY)
    state, clock = tmp_path / "state", Clock()
    runtime = runner.Runtime(state, clock=clock)
    try:
        plan = runner.plan_from_pack(tmp_path / "bound.yaml", [tmp_path / "policies.yaml"], state)
        secrets = Secrets(state)
        params = {"python": sys.executable, "switch_at": clock.now + 60}
        run = runtime.create_run(plan, runner.Selection("restart"), params, {}, {}, secrets)
        assert asyncio.run(runtime.drive(run, secrets)).status == "paused"
        runtime.approve(run.id, "restart", "alice")
        clock.now += later
        run = runtime.store.run(run.id)
        run.params = params
        outcome = asyncio.run(runtime.drive(run, secrets, "approval"))
        return outcome.status, runtime.store.steps(run.id)["restart"].__dict__
    finally:
        runtime.close()


def test_a_step_that_renders_as_asked_runs_once_approved(tmp_path):
    status, step = drive(tmp_path, later=10)
    assert status == "succeeded" and step["status"] == "succeeded"


def test_a_step_that_renders_differently_once_approved_fails_unrun(tmp_path):
    status, step = drive(tmp_path, later=120)  # `now` passed the switch: the argv says "all", not "one"
    assert status == "failed"
    assert step["status"] == "failed" and step["attempts"] == 0
    assert step["error"] == "the step's inputs changed since its approval was asked for; it was not run"
