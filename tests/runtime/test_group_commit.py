"""Group commit (docs/runtime.md "Group commit"): steps with no side effect outside the run
share the run's next transaction; a crash loses a whole group or none of it, and a side
effect's intent (with the group before it) is committed before the side effect starts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from pathlib import Path

import pytest
from kernel_api import opsdsl, state_db

from opsdsl.runtime import runner
from opsdsl.runtime import store as S
from opsdsl.runtime.scheduler import GROUP_MAX
from opsdsl.runtime.secrets import Secrets

HEADER = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: grouped, version: 1.0.0, owner: sre}
"""
CHAIN = GROUP_MAX + 36  # two groups: the first flushed when full, the second with the run's end


class Crash(BaseException):
    """The process dies: no handler of the scheduler's runs (as with SIGKILL)."""


class Watching:
    """An outside action that, while it runs, reads the state from another connection."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.seen: list[dict] = []

    def knows(self, action: str) -> bool:
        return action == "http.request"

    async def execute(self, request, context):
        db = state_db(self.state)
        try:
            steps = dict(db.execute("SELECT step_id, status FROM steps WHERE run_id = ?", (request.run_id,)))
            rows = db.execute("SELECT kind, data FROM ledger WHERE run = ? ORDER BY seq", (request.run_id,))
            entries = [(kind, json.loads(data)) for kind, data in rows]
        finally:
            db.close()
        self.seen.append({"step": request.step_id, "steps": steps, "entries": entries})
        return {"status": 200}


def prepare(tmp_path: Path, body: str, executor=None):
    pack = tmp_path / "pack.yaml"
    pack.write_text(HEADER + textwrap.dedent(body))
    state = tmp_path / "state"
    plan = runner.plan_from_pack(pack, [], state)
    runtime = runner.Runtime(state, executor=executor)
    secrets = Secrets(state)
    return runtime, runtime.create_run(plan, runner.Selection("p"), {}, {}, {}, secrets), secrets


def chain(count: int) -> str:
    steps = "\n".join(f"      - {{id: a{i:03d}, action: assert, with: {{that: 'true'}}}}" for i in range(count))
    return f"playbooks:\n  p:\n    severity: SEV-4\n    steps:\n{steps}\n"


@contextlib.contextmanager
def transactions(monkeypatch: pytest.MonkeyPatch, crash_at: int | None = None):
    """Count Store.transaction; the `crash_at`-th dies after its statements, before COMMIT."""
    original = S.Store.transaction
    count = [0]

    @contextlib.contextmanager
    def counted(self, *args, **kwargs):
        count[0] += 1
        with original(self, *args, **kwargs) as conn:
            yield conn
            if count[0] == crash_at:
                raise Crash()

    monkeypatch.setattr(S.Store, "transaction", counted)
    yield count
    monkeypatch.setattr(S.Store, "transaction", original)


def committed(state: Path, run_id: str) -> tuple[dict[str, str], list[str]]:
    """From another connection: each step's status, and the steps the ledger says succeeded."""
    db = state_db(state)
    try:
        steps = dict(db.execute("SELECT step_id, status FROM steps WHERE run_id = ?", (run_id,)))
        rows = db.execute("SELECT data FROM ledger WHERE run = ? AND kind = 'step.succeeded' ORDER BY seq", (run_id,))
        succeeded = [json.loads(data)["step"] for (data,) in rows]
    finally:
        db.close()
    return steps, succeeded


def test_pure_steps_share_one_transaction_with_the_run_start_and_end(tmp_path, monkeypatch):
    runtime, run, secrets = prepare(tmp_path, chain(5))
    with transactions(monkeypatch) as count:
        outcome = asyncio.run(runtime.drive(run, secrets))
    assert outcome.status == "succeeded"
    assert count[0] == 1  # run.started, five steps, run.finished and the checkpoint: one commit
    steps, succeeded = committed(runtime.state, run.id)
    assert set(steps.values()) == {S.SUCCEEDED}
    assert succeeded == [f"a{i:03d}" for i in range(5)]
    assert opsdsl("ledger", "verify", "--state-dir", runtime.state).code == 0


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_crash_inside_a_group_loses_all_of_it_or_none_and_resume_reruns_it(tmp_path, monkeypatch, crash_at):
    runtime, run, secrets = prepare(tmp_path, chain(CHAIN))
    with transactions(monkeypatch, crash_at=crash_at), pytest.raises(Crash):
        asyncio.run(runtime.drive(run, secrets))
    runtime.store.close()
    steps, succeeded = committed(runtime.state, run.id)
    done = sorted(sid for sid, status in steps.items() if status == S.SUCCEEDED)
    # The first group holds run.started and GROUP_MAX - 1 steps; the second, the rest and the end.
    expected = [] if crash_at == 1 else [f"a{i:03d}" for i in range(GROUP_MAX - 1)]
    assert done == expected and succeeded == expected  # whole groups only, tables and ledger alike
    assert all(status in (S.SUCCEEDED, S.PENDING) for status in steps.values())

    again = runner.Runtime(runtime.state)  # a new process resumes
    outcome = asyncio.run(again.drive(again.store.run(run.id), Secrets(runtime.state), "resume"))
    assert outcome.status == "succeeded"
    steps, succeeded = committed(runtime.state, run.id)
    assert set(steps.values()) == {S.SUCCEEDED}
    assert sorted(succeeded) == sorted(steps) and len(succeeded) == CHAIN  # each step completed once
    again.close()
    assert opsdsl("ledger", "verify", "--state-dir", runtime.state).code == 0


def test_an_outside_steps_intent_and_the_group_before_it_are_committed_before_it_starts(tmp_path):
    body = """
    playbooks:
      p:
        severity: SEV-4
        steps:
          - {id: check, action: assert, with: {that: 'true'}}
          - {id: again, needs: [check], action: assert, with: {that: 'true'}}
          - {id: call, needs: [again], action: http.request, with: {url: "http://x/a", method: PUT}, timeout: 5s}
          - {id: after, needs: [call], action: assert, with: {that: 'true'}}
    """
    state = tmp_path / "state"
    watching = Watching(state)
    runtime, run, secrets = prepare(tmp_path, body, executor=watching)
    outcome = asyncio.run(runtime.drive(run, secrets))
    assert outcome.status == "succeeded"
    assert [s["step"] for s in watching.seen] == ["call"]
    [seen] = watching.seen
    assert seen["steps"] == {"check": S.SUCCEEDED, "again": S.SUCCEEDED, "call": S.STARTED, "after": S.PENDING}
    kinds = [(kind, data.get("step")) for kind, data in seen["entries"]]
    assert ("run.started", None) in kinds
    assert kinds[-1] == ("step.intent", "call")  # durable, and last, when the action starts
    assert seen["entries"][-1][1]["idempotency_key"] == f"{run.id}:call"
    runtime.close()
