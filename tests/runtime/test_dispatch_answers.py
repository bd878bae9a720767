"""A worker's waiting runner steps see their answers within ANSWER_LOOK (one query for all
of them, runtime/dispatch.py `_Answers`), not at their own POLL."""

from __future__ import annotations

import asyncio
import time

from test_dispatch_batch import enqueue

from opsdsl.runtime import dispatch as D
from opsdsl.runtime.actions.base import ActionContext
from opsdsl.runtime.pool_runner import claim_rows, write_results
from opsdsl.runtime.store import Store


def test_waiting_steps_see_their_answers_long_before_their_own_poll(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "POLL", 5.0)  # a step's own look: far later than the answers come
    store = Store(tmp_path / "state")
    try:
        enqueue(store, 3)
        rows = [int(r[0]) for r in store.conn.execute("SELECT id FROM dispatch ORDER BY id")]
        claims = claim_rows(store, "edge", "r", 3, 30.0)
        context = ActionContext(evidence_dir=tmp_path / "evidence")

        async def scenario() -> tuple[list[dict], float]:
            waiting = []
            for row_id in rows:
                dispatcher = D.Dispatcher(store, {"runner": "edge", "idempotent": True})
                dispatcher.row_id = row_id
                waiting.append(asyncio.create_task(dispatcher.execute(None, context)))  # type: ignore[arg-type]
            await asyncio.sleep(0.3)  # each has looked once and waits
            write_results(store, [(c.row_id, "r", c.epoch, D.DONE, {"n": c.row_id}, None, False) for c in claims])
            answered = time.monotonic()
            outputs = await asyncio.wait_for(asyncio.gather(*waiting), 4.0)
            return outputs, time.monotonic() - answered

        outputs, took = asyncio.run(scenario())
        assert outputs == [{"n": row_id} for row_id in rows]
        assert took < 1.0, took  # within a few ANSWER_LOOKs, not POLL's 5 s
    finally:
        store.close()
