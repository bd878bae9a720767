"""What a new user tripped on (issue 13 #9–#12), run as the user runs it: a real `opsdsl`
process in a fresh folder holding a copy of packs/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKS = Path(__file__).resolve().parents[2] / "packs"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def opsdsl(folder: Path, *args: object, stdin: str = "", timeout: float = 60) -> Result:
    env = {k: v for k, v in os.environ.items() if k != "OPSDSL_HOME"}
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", *map(str, args)],
        cwd=folder,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(PACKS, tmp_path / "packs")
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--pack", "packs/org-policies.yaml"),
        ("run", "--pack", "packs/org-policies.yaml", "--dry-run"),
        ("fire", "--pack", "packs/org-policies.yaml", "-"),
        ("watch", "--pack", "packs/org-policies.yaml"),
        ("serve", "--pack", "packs/org-policies.yaml", "--insecure-no-auth"),
    ],
    ids=["run", "dry-run", "fire", "watch", "serve"],
)
def test_a_policy_pack_given_as_the_pack_is_a_usage_error(folder: Path, args: tuple[str, ...]):
    result = opsdsl(folder, *args, stdin="{}\n")
    assert result.code == 2, result
    assert "internal error" not in result.stderr and "StopIteration" not in result.stderr
    assert "is a policy pack" in result.stderr and "--policies" in result.stderr
    assert not (folder / ".opsdsl").exists()


TINY = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: tiny, version: 1.0.0, owner: sre}
triggers:
  down:
    on: alert
    when: event.labels.alertname == "Down"
hooks:
  onDown: {trigger: down, run: respond}
playbooks:
  respond:
    severity: SEV-3
    inputs: {cluster: {type: string, from: event.labels.cluster}}
    steps:
      - {id: look, action: assert, with: {that: "true"}}
      - {id: restart, risk: high, action: assert, with: {that: "true"}}
  other:
    severity: SEV-4
    steps:
      - {id: look, action: assert, with: {that: "true"}}
"""

GATES = """\
apiVersion: opsdsl/v1
kind: PolicyPack
metadata: {name: gates, version: 1.0.0, owner: sre}
policies:
  - id: ask-before-risk
    when: step.risk == "high"
    effect: require_approval
    message: ask first
"""

WEBHOOK = {
    "version": "4",
    "status": "firing",
    "receiver": "opsdsl",
    "groupKey": '{}:{alertname="Down"}',
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "Down", "cluster": "eu-1"},
            "annotations": {},
            "startsAt": "2026-01-01T00:00:00Z",
            "fingerprint": "abc",
        }
    ],
}


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    return tmp_path


def test_report_without_state_is_a_usage_error_like_runs(tmp_path: Path):
    for command in ("runs", "report"):
        result = opsdsl(tmp_path, command)
        assert result.code == 2, (command, result)
        assert "no opsdsl state" in result.stderr
    assert not (tmp_path / ".opsdsl").exists()


def test_a_usage_error_leaves_no_state_dir_and_no_key(folder: Path):
    result = opsdsl(folder, "run", "--pack", "packs/sev2.yaml")
    assert result.code == 2, result
    assert "--playbook" in result.stderr
    assert not (folder / ".opsdsl").exists()
    result = opsdsl(folder, "run", "--pack", "packs/sev2.yaml", "--playbook", "nope")
    assert result.code == 2 and not (folder / ".opsdsl").exists()


def test_run_event_unwraps_an_alertmanager_webhook_body_as_fire_does(tiny: Path):
    (tiny / "webhook.json").write_text(json.dumps(WEBHOOK))
    result = opsdsl(tiny, "run", "--pack", "tiny.yaml", "--event", "webhook.json", "--log-format", "json")
    assert result.code == 0, result
    assert "no trigger" not in result.stderr
    started = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert any("respond" in json.dumps(line) for line in started)


def test_run_event_refuses_a_webhook_body_of_several_alerts_pointing_at_fire(tiny: Path):
    body = dict(WEBHOOK, alerts=WEBHOOK["alerts"] * 2)
    (tiny / "webhook.json").write_text(json.dumps(body))
    result = opsdsl(tiny, "run", "--pack", "tiny.yaml", "--event", "webhook.json")
    assert result.code == 2 and "opsdsl fire" in result.stderr, result


def test_graph_shows_the_gates_of_the_policy_packs_beside_the_pack(tiny: Path):
    alone = opsdsl(tiny, "graph", "tiny.yaml", "--playbook", "respond")
    assert alone.code == 0 and "needs approval" not in alone.stdout, alone
    (tiny / "gates.yaml").write_text(GATES)
    beside = opsdsl(tiny, "graph", "tiny.yaml", "--playbook", "respond")
    assert beside.code == 0 and "needs approval" in beside.stdout, beside
    stopped = opsdsl(
        tiny, "run", "--pack", "tiny.yaml", "--playbook", "respond", "--input", "cluster=x", "--log-format", "text"
    )
    assert stopped.code == 4, stopped  # `run` stops at the gate the graph shows


SLOW = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: slow, version: 1.0.0, owner: sre}
playbooks:
  slow:
    severity: SEV-4
    steps:
      - {id: pause, action: wait, with: {duration: 6s}}
"""


def test_resuming_a_run_another_process_drives_names_its_pid_and_exits_2(tmp_path: Path):
    """Issue 13 #10: not `failed: internal error` (JSON exit_code 3) while exiting 2."""
    import time

    (tmp_path / "slow.yaml").write_text(SLOW)
    env = {k: v for k, v in os.environ.items() if k != "OPSDSL_HOME"}
    first = subprocess.Popen(
        [sys.executable, "-m", "opsdsl", "run", "--pack", "slow.yaml", "--log-format", "quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        run_id = None
        deadline = time.monotonic() + 30
        while run_id is None and time.monotonic() < deadline:
            time.sleep(0.2)
            listed = opsdsl(tmp_path, "runs", "--format", "json", "--status", "running")
            rows = json.loads(listed.stdout) if listed.code == 0 and listed.stdout.strip() else []
            run_id = rows[0]["id"] if rows else None
        assert run_id is not None, "the first run never showed as running"
        second = opsdsl(tmp_path, "resume", run_id, "--log-format", "json")
        assert first.poll() is None, "the first run ended before the second resume was tried"
        assert second.code == 2, second
        assert f"being driven by pid {first.pid}" in second.stderr
        assert "internal error" not in second.stderr + second.stdout
        ends = [json.loads(line) for line in second.stdout.splitlines() if '"event":"end"' in line]
        assert all(end["exit_code"] == 2 and end["status"] != "failed" for end in ends), ends
    finally:
        assert first.wait(timeout=60) == 0
    assert json.loads(opsdsl(tmp_path, "runs", "--format", "json").stdout)[0]["status"] == "succeeded"
