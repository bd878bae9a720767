"""A runner's round trips (bench/dispatch.py): several rows claimed in one statement,
several results written in one, each still fenced by (row, claimant, epoch); and the HTTP
client a runner's steps share keeps no cookie of one step for another."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opsdsl.runtime import dispatch as D
from opsdsl.runtime.actions.base import ActionRequest
from opsdsl.runtime.actions.http import send, shared_clients
from opsdsl.runtime.pool_runner import DatabaseQueue, claim_rows, renew_lease, write_results
from opsdsl.runtime.store import Store


def enqueue(store: Store, count: int, pool: str = "edge") -> None:
    """`count` rows of `pool`, written as a worker writes them (Dispatcher.enqueue)."""
    dispatcher = D.Dispatcher(store, {"runner": pool, "idempotent": True})  # before: SQLite makes the table
    with store.transaction():
        for n in range(count):
            request = ActionRequest(
                run_id=f"run{n}",
                step_id="s",
                action="http.request",
                inputs={"url": "http://127.0.0.1:9/"},
                attempt=1,
                idempotency_key=f"run{n}:s",
                timeout=5.0,
            )
            dispatcher.enqueue(request)


def states(store: Store) -> dict[int, tuple]:
    rows = store.conn.execute("SELECT id, state, claimant, claim_epoch, result FROM dispatch ORDER BY id")
    return {row[0]: tuple(row[1:]) for row in rows}


def test_one_claim_takes_up_to_its_free_slots_each_with_its_own_epoch(tmp_path):
    store = Store(tmp_path / "state")
    try:
        enqueue(store, 5)
        enqueue(store, 1, pool="other")
        first = claim_rows(store, "edge", "a", 3, 30.0)
        assert [c.row_id for c in first] == sorted(c.row_id for c in first)  # the oldest, in order
        assert len(first) == 3 and {c.epoch for c in first} == {1} and {c.pool for c in first} == {"edge"}
        second = claim_rows(store, "edge", "b", 10, 30.0)
        assert len(second) == 2 and not {c.row_id for c in first} & {c.row_id for c in second}
        assert claim_rows(store, "edge", "c", 10, 30.0) == []  # nothing queued; another pool's row untouched
        now = store.now()
        for row_id, (state, claimant, epoch, _) in states(store).items():
            if row_id in {c.row_id for c in first}:
                assert (state, claimant, epoch) == (D.CLAIMED, "a", 1)
        lease = store.conn.execute(
            "SELECT min(lease_until), max(lease_until) FROM dispatch WHERE state = ?", (D.CLAIMED,)
        )
        low, high = lease.fetchone()
        assert now + 25 < low <= high < now + 35  # the database clock, plus the lease
        assert renew_lease(store, first[0].row_id, "a", 1, 30.0)
        assert not renew_lease(store, first[0].row_id, "b", 1, 30.0)  # not b's claim
    finally:
        store.close()


def test_results_written_together_are_each_fenced(tmp_path):
    store = Store(tmp_path / "state")
    try:
        enqueue(store, 4)
        a, b, c, d = claim_rows(store, "edge", "r", 4, 30.0)
        store.conn.execute(  # d's lease lapsed and the worker sent it back; another runner has it now
            "UPDATE dispatch SET state = ?, claimant = NULL WHERE id = ?", (D.QUEUED, d.row_id)
        )
        (d2,) = claim_rows(store, "edge", "other", 1, 30.0)
        assert (d2.row_id, d2.epoch) == (d.row_id, 2)
        written = write_results(
            store,
            [
                (a.row_id, "r", a.epoch, D.DONE, {"n": 1}, None, False),
                (b.row_id, "r", b.epoch + 1, D.DONE, {"n": 2}, None, False),  # a forged epoch
                (c.row_id, "intruder", c.epoch, D.DONE, {"n": 3}, None, False),  # not its claimant
                (d.row_id, "r", d.epoch, D.FAILED, {"late": True}, "late", True),  # taken from it
            ],
        )
        assert written == {a.row_id}
        rows = states(store)
        assert rows[a.row_id] == (D.DONE, "r", 1, '{"n": 1}')
        assert rows[b.row_id][:2] == (D.CLAIMED, "r") and rows[c.row_id][:2] == (D.CLAIMED, "r")
        assert rows[d.row_id] == (D.CLAIMED, "other", 2, None)  # the new claimant's row, unchanged
        assert write_results(store, [(a.row_id, "r", a.epoch, D.FAILED, {}, "again", False)]) == set()  # once
        assert write_results(store, [(d2.row_id, "other", 2, D.DONE, {}, None, False)]) == {d2.row_id}
    finally:
        store.close()


def test_a_runners_queue_writes_results_that_end_together_in_one_call(tmp_path):
    store = Store(tmp_path / "state")
    queue = DatabaseQueue(store, 30.0)
    try:
        enqueue(store, 6)
        claims = claim_rows(store, "edge", "r", 6, 30.0)
        calls: list[int] = []
        real = write_results

        def counted(store_: Store, results: list[tuple]) -> set[int]:
            calls.append(len(results))
            return real(store_, results)

        async def scenario() -> list[bool]:
            import opsdsl.runtime.pool_runner as P

            P.write_results = counted
            try:
                forged = claims[-1]
                forged.epoch += 1  # refused: the others are written all the same
                return await asyncio.gather(
                    *(queue.finish(claim, "r", D.DONE, {"i": n}, None, False) for n, claim in enumerate(claims))
                )
            finally:
                P.write_results = real

        assert asyncio.run(scenario()) == [True] * 5 + [False]
        assert sum(calls) == 6 and len(calls) <= 2  # the first alone, the rest while it was on its way
        assert [row[0] for row in states(store).values()] == [D.DONE] * 5 + [D.CLAIMED]
    finally:
        queue.close()
        store.close()


def test_a_runners_shared_http_client_keeps_no_cookie_for_the_next_step():
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "session=stolen; Path=/")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"

    async def scenario() -> list[int]:
        async with shared_clients():
            first = await send("GET", url, idempotency_key="run1:a", timeout=5)
            second = await send("GET", url, idempotency_key="run2:b", timeout=5)
        return [first.status, second.status]

    try:
        assert asyncio.run(scenario()) == [200, 200]
    finally:
        server.shutdown()
    assert seen == [None, None]
