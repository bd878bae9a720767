"""`opsdsl serve` on SQLite commits its runs' transactions without an fsync and syncs the
log for many of them at once on a thread of its own (opsdsl/runtime/walsync.py). A kill -9
under load loses nothing committed: every event answered 202 is kept, every run ends after
the restart, and the ledger verifies."""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import test_serve
from kernel_api import opsdsl
from test_serve import FIXTURES, TOKEN, wait_until

start = test_serve.start

FINAL = ("succeeded", "failed", "cancelled")


def load_event(seq: int) -> dict:
    return {"name": "load", "labels": {"seq": str(seq)}}


@pytest.mark.kills_runs
def test_a_kill_9_under_load_loses_no_committed_run_and_the_ledger_verifies(start, tmp_path):
    state = tmp_path / "state"
    server = start(state=state, pack=FIXTURES / "load.yaml")
    answered: list[int] = []
    lock = threading.Lock()

    def post(seq: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            response = client.post("/v1/events", json=[load_event(seq)])
            assert response.status_code == 202, response.text
            with lock:
                answered.extend(response.json()["ids"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(post, range(60)))
    # Killed while runs are being driven (some started, some not, some between steps).
    wait_until(lambda: server.query("SELECT COUNT(*) FROM runs")[0][0] >= 10, 60, "runs to start")
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    assert set(answered) <= server.event_ids(), "an event answered 202 was lost by the kill"

    again = start(state=state, pack=FIXTURES / "load.yaml")

    def settled() -> bool:
        if not again.all_events_done():
            return False
        statuses = [row[0] for row in again.query("SELECT status FROM runs")]
        return all(s in FINAL or s == "paused" for s in statuses)  # paused: a step in doubt, for a person

    wait_until(settled, 180, "every event handled and every run ended after the restart")
    runs = again.query("SELECT event_id FROM runs WHERE parent_run IS NULL")
    assert sorted(row[0] for row in runs) == sorted(answered)  # one run per accepted event, none twice
    assert again.stop() == 0
    # The chain and its checkpoints. Incident folders the kill left unwritten are not written
    # again by the restarted server (as before this change: `opsdsl incident pdf` rewrites one).
    verified = opsdsl("ledger", "verify", "--no-incidents", "--state-dir", state)
    assert verified.code == 0, verified.stdout + verified.stderr


# A server whose fsync of the state database's log fails with EIO once the file FAIL_FSYNC
# names exists (only the log's: atomic file writes elsewhere go on as before).
FAILING_DISK = """
import errno, os, sys

real_fsync = os.fsync
trigger = os.environ["FAIL_FSYNC"]

def fsync(fd):
    if os.path.exists(trigger) and os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
        raise OSError(errno.EIO, "Input/output error")
    return real_fsync(fd)

os.fsync = fsync
from opsdsl.cli.main import main
main(sys.argv[1:])
"""


def test_a_failed_fsync_stops_the_server_with_exit_1_and_a_restart_recovers(start, tmp_path):
    # After a failed fsync nothing later can be called durable and every run commit is
    # refused: a server that went on listening would answer every event with an error
    # until someone noticed. It stops instead, so that its process manager restarts it.
    state, trigger = tmp_path / "state", tmp_path / "fail-fsync"
    server = start(state=state, python=("-c", FAILING_DISK), env={"FAIL_FSYNC": str(trigger)})
    before = server.post("/v1/events", test_serve.job("before"))
    assert before.status_code == 202, before.text
    wait_until(server.all_events_done, 60, "the first event handled")

    trigger.touch()
    server.post("/v1/events", test_serve.job("after"))  # its sync fails: an error, never a 202
    exit_code = server.process.wait(timeout=60)
    assert exit_code == 1, server.log()
    assert "cannot sync the state database" in server.log()

    trigger.unlink()
    again = start(state=state)
    assert again.post("/v1/events", test_serve.job("again")).status_code == 202
    wait_until(again.all_events_done, 60, "every event handled after the restart")
    assert set(before.json()["ids"]) <= again.event_ids()
    assert again.stop() == 0
    verified = opsdsl("ledger", "verify", "--state-dir", str(state))
    assert verified.code == 0, verified.stdout + verified.stderr


# Review of 95bb301: the drain before the exit handled the queued events while every run
# commit was refused, and marked each `done` with an error, so the restart never replayed
# them: 202'd events that reached no run.
def test_events_202d_before_a_failed_fsync_still_reach_a_run_after_the_restart(start, tmp_path):
    state, trigger = tmp_path / "state", tmp_path / "fail-fsync"
    server = start(state=state, python=("-c", FAILING_DISK), env={"FAIL_FSYNC": str(trigger)})
    first = server.post("/v1/events", test_serve.job("warm"))
    assert first.status_code == 202, first.text
    wait_until(server.all_events_done, 60, "the first event handled")

    batch = server.post("/v1/events", [test_serve.job(f"k{i}") for i in range(200)])
    assert batch.status_code == 202, batch.text  # durable: every one of them must reach a run
    trigger.touch()  # the disk fails while most of them still wait in the queue
    accepted = set(first.json()["ids"]) | set(batch.json()["ids"])
    assert server.process.wait(timeout=60) == 1, server.log()

    trigger.unlink()
    again = start(state=state)
    wait_until(again.all_events_done, 120, "every event handled after the restart")
    with_run = {row[0] for row in again.query("SELECT event_id FROM runs WHERE parent_run IS NULL")}
    errored = again.query("SELECT id, note FROM events WHERE note LIKE 'error:%'")
    assert again.stop() == 0
    missing = accepted - with_run
    assert not missing, f"{len(missing)} of {len(accepted)} 202'd events reached no run; e.g. {errored[:2]}"
