"""Whatever goes wrong before a step's action starts, the run goes on to its end: the step
fails, completed steps are compensated, `finally` runs, and the run is never left `running`.
(The expression language maps its own errors to evaluation errors; these tests stand in for
a bug of ours in `when:`, rendering or the gate.)"""

from __future__ import annotations

import asyncio

import pytest
from kernel_api import state_db
from test_scheduler import Scripted, kinds, start

from opsdsl.runtime import runner
from opsdsl.runtime.actions.base import ActionFailed
from opsdsl.runtime.gate import Gate
from opsdsl.runtime.scheduler import Scheduler
from opsdsl.runtime.secrets import Secrets

BODY = """
playbooks:
  p:
    severity: SEV-3
    steps:
      - id: first
        action: http.request
        with: {method: PUT, url: "http://x/first"}
        timeout: 5s
        compensate: {action: http.request, with: {method: DELETE, url: "http://x/first"}}
      - {id: second, action: http.request, with: {method: PUT, url: "http://x/second"}, timeout: 5s}
    finally:
      - {id: report, action: report.rca, with: {title: t}}
"""


def _status(runtime, run) -> str:
    return runtime.store.conn.execute("SELECT status FROM runs WHERE id = ?", (run.id,)).fetchone()[0]


def _assert_failed_and_compensated(runtime, run, outcome, executor) -> None:
    assert outcome.status == "failed"
    assert _status(runtime, run) == "failed"
    assert [(e, s) for e, s in executor.log if e == "start"] == [("start", "first"), ("start", "first.compensate")]
    failed = [data for kind, data in _entries(runtime, run) if kind == "step.failed"]
    assert [d["step"] for d in failed] == ["second"]
    assert "could not prepare the step (RuntimeError)" in failed[0]["error"]
    assert ("step.succeeded", "report") in kinds(runtime, run)


def _entries(runtime, run):
    return [(e.kind, e.data) for e in runtime.store.ledger.entries(run=run.id)]


def test_an_exception_in_the_gate_fails_the_step_and_the_run_compensates(tmp_path, monkeypatch):
    judge = Gate.judge

    def broken(self, activation):
        if activation["step"]["id"] == "second":
            raise RuntimeError("a bug")
        return judge(self, activation)

    monkeypatch.setattr(Gate, "judge", broken)
    executor = Scripted()
    runtime, run, outcome = start(tmp_path, BODY, executor)
    _assert_failed_and_compensated(runtime, run, outcome, executor)


def test_an_exception_while_rendering_fails_the_step(tmp_path, monkeypatch):
    render = Scheduler._render

    def broken(self, sid):
        if sid == "second":
            raise RuntimeError("a bug")
        return render(self, sid)

    monkeypatch.setattr(Scheduler, "_render", broken)
    executor = Scripted()
    runtime, run, outcome = start(tmp_path, BODY, executor)
    _assert_failed_and_compensated(runtime, run, outcome, executor)


def test_an_exception_in_when_fails_the_step(tmp_path, monkeypatch):
    body = BODY.replace("id: second,", "id: second, when: 'params.x == 1',").replace(
        "playbooks:", "params: {x: {type: number, default: 1}}\nplaybooks:"
    )
    monkeypatch.setattr(Scheduler, "_evaluate", lambda self, text, activation: (_ for _ in ()).throw(RuntimeError()))
    executor = Scripted()
    runtime, run, outcome = start(tmp_path, body, executor)
    _assert_failed_and_compensated(runtime, run, outcome, executor)


def _failing() -> Scripted:
    return Scripted({"second": [ActionFailed("down", retryable=False)]})


async def _broken_compensation(self):
    raise RuntimeError("a bug in compensation")


def test_an_exception_that_escapes_the_run_leaves_it_interrupted_not_running(tmp_path, monkeypatch):
    monkeypatch.setattr(Scheduler, "_compensate", _broken_compensation)
    with pytest.raises(RuntimeError):
        start(tmp_path, BODY, _failing())
    db = state_db(tmp_path / "state")
    assert db.execute("SELECT status FROM runs").fetchall() == [("interrupted",)]
    (interrupted,) = [row for row in db.execute("SELECT kind, data FROM ledger") if row[0] == "run.interrupted"]
    db.close()
    assert '"error":"RuntimeError"' in interrupted[1]


def test_a_run_resumed_after_such_an_exception_finishes(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(Scheduler, "_compensate", _broken_compensation)
        with pytest.raises(RuntimeError):
            start(tmp_path, BODY, _failing())
    runtime = runner.Runtime(tmp_path / "state", executor=Scripted())
    (run,) = runtime.store.runs()
    outcome = asyncio.run(runtime.drive(run, Secrets(runtime.state), "resume"))
    assert outcome.status == "failed"
    assert _status(runtime, run) == "failed"
