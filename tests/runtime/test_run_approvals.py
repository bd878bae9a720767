"""Runs that wait for people: `opsdsl run` pauses (exit 4), `opsdsl approve` records votes,
`opsdsl resume` continues. Against the Kernel API stand-in in tests/kernel_api.py, with the
pack and policy pack in tests/fixtures/runtime/approvals/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from kernel_api import FIXTURES, KernelAPI, Result, ledger_rows, opsdsl, param_args, run_status

from opsdsl.cli.main import cli
from opsdsl.errors import UsageError

PACK = FIXTURES / "approvals" / "approvals.yaml"


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def start(playbook: str, state: Path, api: KernelAPI) -> Result:
    return opsdsl(
        "run", "--pack", PACK, "--playbook", playbook, "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url),
    )  # fmt: skip


def resume(run: str, state: Path) -> Result:
    return opsdsl("resume", run, "--state-dir", state, "--log-format", "json")


def approve(state: Path, run: str, step: str, *args: str):
    """`opsdsl approve` in this process, through click's CliRunner."""
    return CliRunner().invoke(cli, ["approve", run, step, *args, "--state-dir", str(state)])


def refusal(result) -> str:
    """The usage error an approve command was refused with (the CLI's main() prints it, exit 2)."""
    assert isinstance(result.exception, UsageError), result.output
    assert result.exception.exit_code == 2
    return result.exception.message


def posts(api: KernelAPI) -> list[str]:
    return [r.path for r in api.seen("POST")]


def test_a_two_person_rule_needs_two_different_people(api: KernelAPI, state: Path) -> None:
    started = start("migration-rollback", state, api)
    assert started.code == 4, started.stdout + started.stderr
    run = started.run_id
    assert started.end["pending_approvals"] == ["rollback"]
    listed = run_status(state, run)
    assert listed["status"] == "paused"
    assert listed["pending_approvals"] == ["rollback"]
    (requested,) = [r["data"] for r in ledger_rows(state, "approval.requested")]
    assert requested["step"] == "rollback"
    assert requested["min_approvals"] == 2
    assert requested["policies"] == ["migration-rollback-two-person-rule"]
    assert posts(api) == ["/v1/writes/freeze"]

    first = opsdsl("approve", run, "rollback", "--by", "alice", "--state-dir", state)
    assert first.code == 0, first.stderr
    assert "1 of 2" in first.stdout
    still = resume(run, state)
    assert still.code == 4, still.stdout + still.stderr
    assert run_status(state, run)["pending_approvals"] == ["rollback"]
    assert posts(api) == ["/v1/writes/freeze"]

    again = opsdsl("approve", run, "rollback", "--by", "alice", "--state-dir", state)
    assert again.code == 2, again.stdout + again.stderr
    assert "alice has already answered" in again.stderr
    assert len(ledger_rows(state, "approval.recorded")) == 1

    second = approve(state, run, "rollback", "--by", "bob")
    assert second.exit_code == 0, second.output
    assert "2 of 2" in second.output
    done = resume(run, state)
    assert done.code == 0, done.stdout + done.stderr
    assert posts(api) == ["/v1/writes/freeze", "/v1/migrations/rollback"]
    assert [r.path for r in api.seen("GET")] == ["/v1/migrations/status"]
    assert run_status(state, run)["status"] == "succeeded"
    votes = [r["data"] for r in ledger_rows(state, "approval.recorded")]
    assert [(v["by"], v["via"], v["decision"]) for v in votes] == [
        ("local:alice", "local", "approve"),
        ("local:bob", "local", "approve"),
    ]
    (finished,) = ledger_rows(state, "run.finished")
    assert finished["data"]["human"] is True
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0


def test_an_approval_step_asks_questions_whose_answers_flow_on(api: KernelAPI, state: Path) -> None:
    started = start("isolate-nodes", state, api)
    assert started.code == 4, started.stdout + started.stderr
    run = started.run_id
    assert run_status(state, run)["pending_approvals"] == ["choose"]

    unknown = approve(state, run, "choose", "--by", "carol", "--input", "region=eu")
    assert "asks for nodes, reason" in refusal(unknown)
    answered = approve(state, run, "choose", "--by", "carol", "--input", 'nodes=["k1", "k2"]', "--input", "reason=leak")
    assert answered.exit_code == 0, answered.output
    done = resume(run, state)

    assert done.code == 0, done.stdout + done.stderr
    (isolate,) = api.seen("POST", "/v1/nodes/isolate")
    assert isolate.json() == {"nodes": ["k1", "k2"], "reason": "leak", "approved_by": ["carol"]}
    (chosen,) = [r["data"] for r in ledger_rows(state, "step.succeeded") if r["data"]["step"] == "choose"]
    assert chosen["outputs"] == {"nodes": ["k1", "k2"], "reason": "leak", "approved_by": ["carol"]}


def test_an_approval_without_answers_takes_the_defaults(api: KernelAPI, state: Path) -> None:
    started = start("isolate-nodes", state, api)
    assert started.code == 4, started.stdout + started.stderr

    assert approve(state, started.run_id, "choose", "--by", "carol").exit_code == 0
    done = resume(started.run_id, state)

    assert done.code == 0, done.stdout + done.stderr
    assert api.seen() == []  # no nodes chosen: `isolate` is skipped
    assert [r["data"]["step"] for r in ledger_rows(state, "step.skipped")] == ["isolate"]


def test_a_denial_fails_the_step_and_compensates(api: KernelAPI, state: Path) -> None:
    started = start("migration-rollback", state, api)
    assert started.code == 4, started.stdout + started.stderr
    run = started.run_id

    denied = approve(state, run, "rollback", "--by", "alice", "--deny", "--comment", "not during business hours")
    assert denied.exit_code == 0, denied.output
    assert "denied" in denied.output
    done = resume(run, state)

    assert done.code == 1, done.stdout + done.stderr
    assert posts(api) == ["/v1/writes/freeze", "/v1/writes/unfreeze"]
    (failed,) = [r["data"] for r in ledger_rows(state, "step.failed") if r["data"]["step"] == "rollback"]
    assert "denied by alice" in failed["error"]
    (finished,) = ledger_rows(state, "run.finished")
    assert finished["data"]["status"] == "failed"
    assert finished["data"]["compensated"] == ["freeze_writes"]
    assert run_status(state, run)["status"] == "failed"
    record = json.loads((Path(done.end["incident_folder"]) / "record.json").read_text())["record"]
    assert record["status"] == "failed"


def test_an_unanswered_approval_proceeds_when_it_times_out_with_approve(api: KernelAPI, state: Path) -> None:
    started = start("warm-caches", state, api)
    assert started.code == 4, started.stdout + started.stderr
    assert api.seen() == []

    time.sleep(1.1)
    done = resume(started.run_id, state)

    assert done.code == 0, done.stdout + done.stderr
    assert posts(api) == ["/v1/cache/warm"]
    (timed_out,) = [r["data"] for r in ledger_rows(state, "approval.timed_out")]
    assert timed_out == {"step": "objection_window", "outcome": "approve"}
    (finished,) = ledger_rows(state, "run.finished")
    assert finished["data"]["human"] is False


def test_a_compensation_waiting_for_approval_holds_back_the_older_ones(api: KernelAPI, state: Path) -> None:
    pack = FIXTURES / "approvals" / "compensation_approval.yaml"
    started = opsdsl(
        "run", "--pack", pack, "--state-dir", state, "--log-format", "json", *param_args(kernel_url=api.url)
    )
    assert started.code == 4, started.stdout + started.stderr
    run = started.run_id
    assert run_status(state, run)["pending_approvals"] == ["switch_traffic.compensate"]
    assert posts(api) == ["/v1/open/replica", "/v1/switch", "/v1/fail"]  # nothing undone before the newest

    assert approve(state, run, "switch_traffic.compensate", "--by", "alice").exit_code == 0
    done = resume(run, state)

    assert done.code == 1, done.stdout + done.stderr
    assert posts(api)[3:] == ["/v1/undo/switch_traffic", "/v1/undo/open_replica"]
