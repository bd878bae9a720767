"""Group commit on the failure paths: a failing assert, then compensation and finally
steps with outside actions; every pure step's result must be durable before them."""

from __future__ import annotations

import asyncio

from test_group_commit import Watching, prepare

from opsdsl.runtime import store as S


def test_failing_assert_then_compensation_and_finally(tmp_path):
    body = """
    playbooks:
      p:
        severity: SEV-4
        steps:
          - {id: call, action: http.request, with: {url: "http://x/a", method: PUT}, timeout: 5s,
             compensate: {action: http.request, with: {url: "http://x/undo", method: PUT}}}
          - {id: ok, needs: [call], action: assert, with: {that: 'true'}}
          - {id: bad, needs: [ok], action: assert, with: {that: 'false'}}
        finally:
          - {id: r, action: report.rca, with: {title: t, summary: s}}
          - {id: fin, needs: [r], action: http.request, with: {url: "http://x/f", method: PUT}}
    """
    state = tmp_path / "state"
    watching = Watching(state)
    runtime, run, secrets = prepare(tmp_path, body, executor=watching)
    outcome = asyncio.run(runtime.drive(run, secrets))
    assert outcome.status == "failed", outcome
    order = [s["step"] for s in watching.seen]
    assert len(order) == 3, order
    undo, fin = watching.seen[1], watching.seen[2]
    assert undo["steps"]["ok"] == S.SUCCEEDED and undo["steps"]["bad"] == S.FAILED, undo["steps"]
    assert fin["steps"]["r"] == S.SUCCEEDED, fin["steps"]
    runtime.close()
