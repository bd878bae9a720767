"""The worker's side of a runner step reads the database's clock inside its statements (the
row's created_at, whether the runner's lease is past), never in a round trip of its own:
one round trip less in every intent's transaction, under the writer lock."""

from __future__ import annotations

import asyncio
import time

from test_dispatch_batch import enqueue

from opsdsl.runtime import dispatch as D
from opsdsl.runtime.actions.base import ActionContext
from opsdsl.runtime.pool_runner import claim_rows, write_results
from opsdsl.runtime.store import Store


def test_queueing_and_watching_a_row_read_the_clock_inside_their_statements(tmp_path):
    """No round trip of its own for the database's clock: not in the intent's transaction
    (the row's created_at), nor at each look (whether the runner's lease is past)."""
    store = Store(tmp_path / "state")
    clock = store.now

    def no_clock() -> float:
        raise AssertionError("a round trip for the clock")

    try:
        store.now = no_clock  # type: ignore[method-assign]
        enqueue(store, 1)
        store.now = clock  # type: ignore[method-assign]  (a runner's claim on SQLite reads it)
        (claim,) = claim_rows(store, "edge", "r", 1, 30.0)
        store.conn.execute("UPDATE dispatch SET lease_until = lease_until - 60")  # the runner vanished
        created = store.conn.execute("SELECT created_at FROM dispatch").fetchone()[0]
        assert abs(created - time.time()) < 60  # the database's clock, seconds since the epoch
        store.now = no_clock  # type: ignore[method-assign]
        dispatcher = D.Dispatcher(store, {"runner": "edge", "idempotent": True})
        dispatcher.row_id = claim.row_id
        context = ActionContext(evidence_dir=tmp_path / "evidence")

        async def scenario() -> None:
            waiting = asyncio.create_task(dispatcher.execute(None, context))  # type: ignore[arg-type]
            for _ in range(100):  # the lapsed lease sends the row back to the queue
                await asyncio.sleep(0.05)
                if store.conn.execute("SELECT state FROM dispatch").fetchone()[0] == D.QUEUED:
                    break
            store.now = clock  # type: ignore[method-assign]  (a runner's claim on SQLite reads it)
            (again,) = claim_rows(store, "edge", "r2", 1, 30.0)
            write_results(store, [(again.row_id, "r2", again.epoch, D.DONE, {"ok": True}, None, False)])
            assert await asyncio.wait_for(waiting, 5.0) == {"ok": True}

        asyncio.run(scenario())
    finally:
        store.close()
