"""kill -9 a worker at each commit boundary of a run, with a second worker beside it.

`serve --no-drive` takes the event; two `opsdsl worker`s (lease 2 s) drive the run of
scaleout.yaml's `boundary` playbook: an idempotent reconnect (with a compensation), a
non-idempotent freeze, a failing verify (so the reconnect is compensated), and an
idempotent `finally` step. The Kernel API stand-in answers the step the test aims at
slowly; the worker holding the run is SIGKILLed once that request arrived (after the
step's intent, its side effect in flight), or once it was answered (before the result's
commit). The other worker must finish the run after the lease lapsed.
"""

from __future__ import annotations

import pytest
from harness import Cluster, wait_until
from invariants import check

pytestmark = pytest.mark.kills_runs

NOT_IDEMPOTENT = ("freeze",)


def boundary_event(**sleeps: float) -> dict:
    return {
        "name": "boundary",
        "cluster": "eu1",
        "sleep": {"reconnect": 0, "restore": 0, "freeze": 0, "tell": 0, **sleeps},
    }


def start_and_kill_at(cluster: Cluster, path: str, *, answered: bool = False, **sleeps: float) -> tuple[str, int]:
    """The run of one boundary event, its owner SIGKILLed when `path` arrived (or was answered)."""
    server = cluster.serve()
    cluster.worker("w1"), cluster.worker("w2")
    workers = {p.name: p for p in cluster.processes if p.name in ("w1", "w2")}
    (event,) = cluster.post(server, boundary_event(**sleeps))
    run_id = cluster.run_of(event)

    def reached() -> bool:
        return any(r.finished is not None if answered else True for r in cluster.api.seen("POST", path))

    wait_until(reached, 30, f"POST {path}")
    owner = cluster.owner(run_id)
    workers[owner].kill()
    return run_id, event


def as_the_api_answered(cluster: Cluster, key: str) -> str:
    """An operator's decision for a step in doubt: what the Kernel API did with its key
    (the kill may land on the step after the one aimed at, e.g. the failing verify)."""
    answers = [r.status for r in cluster.api.seen() if r.key == key and r.status is not None]
    if not answers:
        return "retry"
    return "succeeded" if any(200 <= status < 300 for status in answers) else "failed"


def finish(cluster: Cluster, run_id: str) -> None:
    """Wait for the run's end, deciding a step in doubt as an operator would."""
    for _ in range(3):
        status = cluster.until_status(run_id, "failed", "succeeded", "paused", timeout=45)
        if status != "paused":
            return
        doubtful = cluster.query("SELECT step_id FROM steps WHERE run_id = ? AND status = 'in_doubt'", run_id)
        for (step,) in doubtful:
            outcome = as_the_api_answered(cluster, f"{run_id}:{step}")
            decided = cluster.cli("decide", run_id, step, "--as", outcome, "--by", "oncall")
            assert decided.returncode == 0, decided.stderr
        wait_until(lambda: cluster.status(run_id) != "paused", 20, "the decision taken")
    steps = cluster.query("SELECT step_id, status FROM steps WHERE run_id = ?", run_id)
    raise AssertionError(f"{run_id} still {cluster.status(run_id)}: {steps}\n{cluster.logs()}")


def common_checks(cluster: Cluster, run_id: str, event: int) -> None:
    assert cluster.status(run_id) == "failed", cluster.logs()
    check(cluster.url, [cluster.state], cluster.api, [event], non_idempotent=NOT_IDEMPOTENT)
    keys = cluster.api.keys()
    assert keys[f"{run_id}:freeze"] == 1
    assert cluster.api.pool("eu1").generation == 1  # the reconnect, applied once
    assert len(cluster.api.seen("POST", "/v1/pool/restore")) >= 1  # compensated
    assert len(cluster.api.seen("POST", "/v1/finally")) >= 1  # finally ran
    reasons = [
        row[0]
        for row in cluster.query(
            "SELECT data::json->>'reason' FROM ledger WHERE run = ? AND kind = 'run.started' ORDER BY seq", run_id
        )
    ]
    assert reasons[0] == "start" and "recover" in reasons, reasons


def test_killed_after_a_steps_intent_the_other_worker_sends_it_again_with_its_key(cluster: Cluster):
    run_id, event = start_and_kill_at(cluster, "/v1/pool/reconnect", reconnect=3)
    finish(cluster, run_id)
    common_checks(cluster, run_id, event)
    sent = cluster.api.seen("POST", "/v1/pool/reconnect")
    assert len(sent) == 2 and {r.key for r in sent} == {f"{run_id}:reconnect"}


def test_killed_before_a_steps_result_the_step_is_not_sent_twice(cluster: Cluster):
    # `finally` is slow (3 s) so that the run cannot end before the kill lands: the owner
    # commits the freeze's result, fails verify and compensates within the test's polling
    # interval, and a run that ended before its owner was killed is not the case aimed at.
    run_id, event = start_and_kill_at(cluster, "/v1/writes/freeze", answered=True, freeze=0.5, tell=3)
    finish(cluster, run_id)
    common_checks(cluster, run_id, event)
    assert len(cluster.api.seen("POST", "/v1/writes/freeze")) == 1


def test_killed_during_compensation_the_other_worker_finishes_it(cluster: Cluster):
    run_id, event = start_and_kill_at(cluster, "/v1/pool/restore", restore=3)
    finish(cluster, run_id)
    common_checks(cluster, run_id, event)
    assert len(cluster.api.seen("POST", "/v1/pool/reconnect")) == 1


def test_killed_during_finally_the_other_worker_runs_it_again_with_its_key(cluster: Cluster):
    run_id, event = start_and_kill_at(cluster, "/v1/finally", tell=3)
    finish(cluster, run_id)
    common_checks(cluster, run_id, event)
    sent = cluster.api.seen("POST", "/v1/finally")
    assert len(sent) == 2 and {r.key for r in sent} == {f"{run_id}:tell"}
    assert len(cluster.api.seen("POST", "/v1/pool/restore")) == 1
