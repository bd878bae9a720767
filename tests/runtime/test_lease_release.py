"""Releasing a lease is one statement of its own, not a writer's transaction: on PostgreSQL
it never queues for the writer lock (runtime/lease.py `release`), and it still fences."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from owned_harness import bare_run

from opsdsl.runtime import lease as L
from opsdsl.runtime import store as S


def test_a_release_does_not_wait_for_the_writer_lock(tmp_path: Path, state_backend: str):
    if state_backend != "postgresql":
        pytest.skip("SQLite has one write lock for every statement: nothing to pass by")
    worker = S.Store(tmp_path / "state")
    writer = S.Store(tmp_path / "state")
    L.ensure_schema(worker)
    worker.fence = L.Fences()
    with worker.transaction():
        worker.insert_run(bare_run("r1"))
    fence = L.claim(worker, "r1", "A", 30)
    assert fence is not None
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        writer.conn.execute("BEGIN IMMEDIATE")  # another process's writer transaction, held open
        released = pool.submit(L.release, worker, fence)
        try:
            assert released.result(timeout=5) is True  # before: it waited for the writer's COMMIT
        finally:
            writer.conn.execute("ROLLBACK")
        row = worker.conn.execute("SELECT lease_owner, lease_until FROM runs WHERE id = 'r1'").fetchone()
        assert tuple(row) == ("A", None)
        assert L.release(worker, fence) is False  # once only
        with pytest.raises(L.LeaseLost), fence.current(), worker.transaction():
            worker.update_run("r1", error="after release")
    finally:
        pool.shutdown(wait=True)
        worker.close()
        writer.close()
