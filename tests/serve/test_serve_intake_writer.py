"""`opsdsl serve`'s intake writer: events are committed on their own thread, and a 202 leaves
only after the commit (opsdsl/serve/intake.py `IntakeWriter`).

Real server processes (tests/serve/test_serve.py's `Server`), real sockets; the state
database is read from another connection, as another process would.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import test_serve
from test_serve import TOKEN, job, wait_until

start = test_serve.start  # the fixture: start(*args) → a running Server, stopped at the end


def stored(state_db, ids: list[int]) -> set[int]:
    """Which of `ids` another connection sees committed in the events table."""
    with sqlite3.connect(f"file:{state_db}?mode=ro", uri=True, timeout=10) as conn:
        marks = ",".join("?" * len(ids))
        return {row[0] for row in conn.execute(f"SELECT id FROM events WHERE id IN ({marks})", ids)}


def test_a_202_leaves_only_after_its_events_are_committed(start):
    server = start()
    db = server.state / "state.db"
    unseen: list[tuple[int, list[int]]] = []
    lock = threading.Lock()

    def post(seq: int) -> int:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            response = client.post("/v1/events", json=[job("one-run") for _ in range(1 + seq % 3)])
            assert response.status_code == 202, response.text
            ids = response.json()["ids"]
            missing = set(ids) - stored(db, ids)  # read the moment the 202 arrives
            if missing:
                with lock:
                    unseen.append((seq, sorted(missing)))
            return len(ids)

    with ThreadPoolExecutor(16) as pool:  # bursts: requests that reach the writer together
        sent = sum(pool.map(post, range(120)))
    assert not unseen, f"202 before the commit: {unseen[:5]}"
    assert len(server.event_ids()) == sent
    wait_until(server.all_events_done, 120, "the events to be handled")  # one run: the rest share its key


@pytest.mark.kills_runs
def test_a_burst_answered_202_survives_a_kill_9_right_after(start, tmp_path):
    state = tmp_path / "state"
    server = start(state=state)
    barrier = threading.Barrier(24)

    def post(seq: int) -> list[int]:
        with httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            barrier.wait()  # the burst: every request leaves at once
            response = client.post("/v1/events", json=[job("burst")])
            assert response.status_code == 202, response.text
            return response.json()["ids"]

    with ThreadPoolExecutor(24) as pool:
        answered = [i for ids in pool.map(post, range(24)) for i in ids]
    server.process.send_signal(signal.SIGKILL)  # the instant the last 202 is in
    server.process.wait(timeout=10)
    assert len(set(answered)) == 24
    assert set(answered) <= server.event_ids(), "an event answered 202 was lost by the kill"

    again = start(state=state)
    wait_until(again.all_events_done, 120, "the burst's events to be handled after the restart")
    assert set(answered) <= again.event_ids()
