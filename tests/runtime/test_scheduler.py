"""Scheduler semantics through the executor seam: order, concurrency, retries, compensation,
approvals and crash recovery, with a scripted executor standing in for the outside world.
(End-to-end tests with real processes and a real HTTP server are in test_run_*.py.)"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from kernel_api import state_db

from opsdsl.runtime import runner
from opsdsl.runtime.actions.base import ActionFailed
from opsdsl.runtime.secrets import Secrets

HEADER = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: sched, version: 1.0.0, owner: sre}
"""


class Scripted:
    """Runs nothing: records each request and answers from a script per step id."""

    def __init__(self, script: dict | None = None, delay: float = 0.0) -> None:
        self.script = script or {}
        self.delay = delay
        self.log: list[tuple[str, str]] = []  # (event, step)
        self.requests = []

    def knows(self, action: str) -> bool:
        return action in ("shell", "http.request", "notify", "evidence.collect")

    async def execute(self, request, context):
        self.requests.append(request)
        self.log.append(("start", request.step_id))
        answers = self.script.get(request.step_id, [{}])
        answer = answers[min(request.attempt, len(answers)) - 1]
        if isinstance(answer, float):
            await asyncio.sleep(answer)
            answer = {}
        else:
            await asyncio.sleep(self.delay)
        self.log.append(("end", request.step_id))
        if isinstance(answer, Exception):
            raise answer
        return answer


def start(tmp_path: Path, body: str, executor: Scripted, playbook: str = "p", **kw):
    pack = tmp_path / "pack.yaml"
    pack.write_text(HEADER + textwrap.dedent(body))
    state = tmp_path / "state"
    plan = runner.plan_from_pack(pack, [], state)
    runtime = runner.Runtime(state, executor=executor)
    secrets = Secrets(state)
    run = runtime.create_run(plan, runner.Selection(playbook), {}, kw.get("inputs", {}), {}, secrets)
    outcome = asyncio.run(runtime.drive(run, secrets))
    return runtime, run, outcome


def kinds(runtime, run) -> list[tuple[str, str | None]]:
    return [(e.kind, e.data.get("step")) for e in runtime.store.ledger.entries(run=run.id)]


def test_independent_steps_run_concurrently(tmp_path):
    executor = Scripted(delay=0.05)
    body = """
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: a, needs: [], action: http.request, with: {url: "http://x/a"}, timeout: 5s}
          - {id: b, needs: [], action: http.request, with: {url: "http://x/b"}, timeout: 5s}
          - {id: c, needs: [a, b], action: http.request, with: {url: "http://x/c"}, timeout: 5s}
    """
    _runtime, _run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "succeeded"
    assert executor.log[:2] == [("start", "a"), ("start", "b")]  # both before either ended
    assert executor.log[-2:] == [("start", "c"), ("end", "c")]


def test_failure_compensates_in_reverse_completion_order_then_finally(tmp_path):
    executor = Scripted({"third": [ActionFailed("boom", retryable=False)]})
    comp = "compensate: {action: http.request, with: {url: 'http://x/undo', method: DELETE}, timeout: 5s}"
    body = f"""
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {{id: first, action: http.request, with: {{url: "http://x/1", method: PUT}}, timeout: 5s, {comp}}}
          - {{id: second, action: http.request, with: {{url: "http://x/2", method: PUT}}, timeout: 5s, {comp}}}
          - {{id: third, action: http.request, with: {{url: "http://x/3", method: PUT}}, timeout: 5s}}
          - {{id: never, action: http.request, with: {{url: "http://x/4"}}, timeout: 5s}}
        finally:
          - {{id: tidy, action: http.request, with: {{url: "http://x/tidy"}}, timeout: 5s}}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "failed" and "third" in outcome.error
    started = [step for event, step in executor.log if event == "start"]
    assert started == ["first", "second", "third", "second.compensate", "first.compensate", "tidy"]
    finished = next(e.data for e in runtime.store.ledger.entries(run=run.id) if e.kind == "run.finished")
    assert finished["compensated"] == ["first", "second"] and finished["failed_steps"] == ["third"]


def test_retries_back_off_and_keep_the_idempotency_key(tmp_path, monkeypatch):
    executor = Scripted({"flaky": [ActionFailed("503"), ActionFailed("503"), {"status": 200}]})
    body = """
    playbooks:
      p:
        severity: SEV-3
        steps:
          - id: flaky
            action: http.request
            with: {url: "http://x/flaky", method: PUT}
            timeout: 5s
            retry: {attempts: 3, backoff: exponential, initial: 10ms, max: 15ms, jitter: false}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "succeeded"
    assert [r.attempt for r in executor.requests] == [1, 2, 3]
    assert {r.idempotency_key for r in executor.requests} == {f"{run.id}:flaky"}
    waits = [e.data["retry_in"] for e in runtime.store.ledger.entries(run=run.id) if e.kind == "attempt.failed"]
    assert waits == [0.01, 0.015]  # 10ms, then doubled but capped at 15ms


def test_attempt_timeout_fails_the_step(tmp_path):
    executor = Scripted({"slow": [2.0]})
    body = """
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: slow, action: http.request, with: {url: "http://x/slow"}, timeout: 100ms}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "failed"
    assert "timed out after 0.1s" in runtime.store.steps(run.id)["slow"].error


def test_skipped_step_does_not_skip_its_dependents(tmp_path):
    executor = Scripted()
    body = """
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: maybe, when: "false", action: http.request, with: {url: "http://x/m"}, timeout: 5s}
          - {id: after, action: http.request, with: {url: "http://x/a"}, timeout: 5s}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "succeeded"
    assert [r.step_id for r in executor.requests] == ["after"]
    assert runtime.store.steps(run.id)["maybe"].status == "skipped"


def test_a_denied_step_never_reaches_the_executor(tmp_path):
    executor = Scripted()
    body = """
    policies:
      - {id: no-deletes, when: 'step.with.method == "DELETE"', effect: deny, message: deletes are not allowed}
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: drop, action: http.request, with: {url: "http://x/d", method: DELETE}, timeout: 5s}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "failed" and executor.requests == []
    decision = next(e.data for e in runtime.store.ledger.entries(run=run.id) if e.kind == "policy.decision")
    assert decision["decision"] == "deny" and decision["policies"][0]["id"] == "no-deletes"


def test_policy_approval_pauses_before_the_intent_and_resumes(tmp_path):
    executor = Scripted()
    body = """
    policies:
      - {id: two-people, when: 'step.risk == "high"', effect: require_approval, approvals: 2, message: two people}
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: risky, risk: high, action: http.request, with: {url: "http://x/r", method: PUT}, timeout: 5s,
             compensate: {action: http.request, with: {url: "http://x/u", method: PUT}, timeout: 5s}}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "paused" and outcome.pending == ["risky"] and executor.requests == []
    assert ("step.intent", "risky") not in kinds(runtime, run)
    runtime.approve(run.id, "risky", "alice")
    with pytest.raises(Exception, match="already answered"):
        runtime.approve(run.id, "risky", "alice")
    secrets = Secrets(runtime.state)
    assert asyncio.run(runtime.drive(runtime.store.run(run.id), secrets, "resume")).status == "paused"
    runtime.approve(run.id, "risky", "bob")
    assert asyncio.run(runtime.drive(runtime.store.run(run.id), secrets, "resume")).status == "succeeded"
    assert [r.step_id for r in executor.requests] == ["risky"]


def test_crash_recovery_reruns_idempotent_steps_and_doubts_the_others(tmp_path):
    executor = Scripted()
    body = """
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: put, needs: [], action: http.request, with: {url: "http://x/p", method: PUT}, timeout: 5s}
          - {id: post, needs: [], action: http.request, with: {url: "http://x/q", method: POST}, timeout: 5s}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "succeeded"
    # Simulate a crash mid-flight: both steps were running when the process died.
    db = state_db(runtime.state)
    db.execute("UPDATE steps SET status = 'running' WHERE run_id = ?", (run.id,))
    db.execute("UPDATE runs SET status = 'running', phase = 'steps' WHERE id = ?", (run.id,))
    db.commit()
    db.close()
    executor.requests.clear()
    secrets = Secrets(runtime.state)
    outcome = asyncio.run(runtime.drive(runtime.store.run(run.id), secrets, "resume"))
    assert outcome.status == "paused" and outcome.in_doubt == ["post"] and outcome.pending == []
    assert [r.step_id for r in executor.requests] == ["put"]  # idempotent: re-run, same key
    runtime.decide(run.id, "post", "carol", "succeeded")
    assert asyncio.run(runtime.drive(runtime.store.run(run.id), secrets, "resume")).status == "succeeded"
    assert [r.step_id for r in executor.requests] == ["put"]  # the POST was not repeated


def test_a_failing_run_abandons_steps_still_waiting_for_approval(tmp_path):
    executor = Scripted({"breaks": [ActionFailed("boom", retryable=False)]})
    body = """
    playbooks:
      p:
        severity: SEV-3
        steps:
          - {id: ask, needs: [], action: approval, with: {message: go?}, timeout: 1h}
          - {id: breaks, needs: [], action: http.request, with: {url: "http://x/b", method: PUT}, timeout: 5s}
    """
    runtime, run, outcome = start(tmp_path, body, executor)
    assert outcome.status == "failed" and outcome.pending == []
    assert runtime.store.steps(run.id)["ask"].status == "skipped"
