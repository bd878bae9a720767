"""`pg_ctl stop -m immediate` under load, then start again.

A PostgreSQL server of this module's own (tests/pgserver.py), so stopping it leaves the
session's shared one alone; a fresh migrated database per test. `serve --no-drive` and
two workers take a steady stream of `quick` events; the server is stopped the way a
crash stops it, for a few seconds, and started again.

While the database is down intake answers 503 (its JSON `{"error": …}` with Retry-After),
never a 202 nor a 500; the workers stay up and reconnect; once it is back, every event
that got a 202 reaches a run, every run ends, and the invariants hold.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import Cluster, wait_until
from invariants import check

pytestmark = pytest.mark.kills_runs


@pytest.fixture(scope="module")
def own_server() -> Iterator:
    import pgserver

    reason = pgserver.why_not()
    if reason is not None:
        pytest.skip(reason)
    with pgserver.temporary_server() as server:
        yield server


@pytest.fixture
def own_cluster(tmp_path: Path, own_server, api) -> Iterator[Cluster]:
    from opsdsl.runtime.migrate import migrate

    name = f"restart_{time.monotonic_ns()}"
    url = own_server.create_database(name)
    migrate(url)
    found = Cluster(tmp_path, url, api)
    try:
        yield found
    finally:
        found.close()
        if not own_server.running():
            own_server.start()
        own_server.drop_database(name)


def test_an_immediate_stop_under_load_is_survived(own_cluster: Cluster, own_server):
    cluster = own_cluster
    server = cluster.serve()
    workers = [cluster.worker("w1"), cluster.worker("w2")]
    accepted: list[int] = []
    answers: Counter[str] = Counter()
    unexpected: list[str] = []
    stop = threading.Event()
    down = threading.Event()

    def client() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                response = server.post("/v1/events", [{"name": "quick", "n": n}], timeout=20)
            except httpx.TransportError as error:
                unexpected.append(f"{n}: no answer: {error!r}")
                continue
            if response.status_code == 202:
                accepted.extend(response.json()["ids"])
                answers["202 while down" if down.is_set() else "202"] += 1
            elif response.status_code == 503 and "error" in response.json() and "Retry-After" in response.headers:
                answers["503"] += 1
            else:
                unexpected.append(f"{n}: {response.status_code} {response.text[:300]}")
            time.sleep(0.05)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_until(lambda: answers["202"] >= 10, 30, "events accepted before the stop")
        own_server.stop("immediate")
        down.set()
        wait_until(lambda: answers["503"] >= 3, 30, "503 answers while the database is down")
        time.sleep(2)
        down.clear()
        own_server.start()
        before = answers["202"]
        wait_until(lambda: answers["202"] >= before + 10, 40, "events accepted after the restart")
    finally:
        stop.set()
        thread.join(30)
    assert unexpected == [], unexpected
    assert answers["202 while down"] <= 1  # at most the one committed just before the stop
    assert all(worker.alive() for worker in workers), cluster.logs()
    assert server.alive(), server.log()
    assert "Traceback" not in server.log(), server.log()

    def drained() -> bool:
        busy = cluster.query("SELECT COUNT(*) FROM runs WHERE status NOT IN ('succeeded', 'failed')")
        pending = cluster.query("SELECT COUNT(*) FROM events WHERE status <> 'done'")
        return busy == [(0,)] and pending == [(0,)]

    try:
        wait_until(drained, 45, "every event evaluated and every run ended")
    except AssertionError:
        raise AssertionError(cluster.logs()) from None
    check(cluster.url, [cluster.state], cluster.api, accepted)
    # A step sent twice was in flight when its drive failed on the database: its run was
    # recovered by a worker once the lease lapsed (an idempotent step goes again, same key).
    recovered = {
        run
        for (run,) in cluster.query(
            "SELECT run FROM ledger WHERE kind = 'run.started' AND data::json->>'reason' = 'recover'"
        )
    }
    twice = {key for key, count in cluster.api.keys().items() if count > 1}
    assert {key.rpartition(":")[0] for key in twice} <= recovered, (twice, recovered)
