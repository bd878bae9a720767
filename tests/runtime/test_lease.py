"""Leases and fencing epochs (runtime/lease.py), and a worker driving runs under them
(runtime/worker.py), in process, on both backends (tests/runtime/conftest.py).

The rows are the proof: a late write by a presumed-dead owner changes nothing, and a
paused or finished run holds no lease.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from owned_harness import bare_run

from opsdsl.runtime import lease as L
from opsdsl.runtime import runner
from opsdsl.runtime import store as S
from opsdsl.runtime.service import Service
from opsdsl.runtime.worker import Worker

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: leased, version: 1.0.0, owner: sre}
triggers:
  go:
    on: event
    when: event.name == "go"
  ask:
    on: event
    when: event.name == "ask"
  nap:
    on: event
    when: event.name == "nap"
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onGo: {trigger: go, run: quick}
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onAsk: {trigger: ask, run: asking}
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onNap: {trigger: nap, run: napping}
playbooks:
  quick:
    severity: SEV-3
    steps:
      - id: check
        action: assert
        with: {that: "true"}
  asking:
    severity: SEV-3
    steps:
      - id: agree
        action: approval
        with: {message: "Go?"}
        timeout: 1h
      - id: done
        action: assert
        with: {that: "true"}
  napping:
    severity: SEV-3
    steps:
      - id: nap
        action: wait
        with: {duration: 2s}
      - id: after
        action: assert
        with: {that: "true"}
"""


@pytest.fixture
def stores(tmp_path: Path):
    """Two processes' views of one state database (worker A and worker B)."""
    first = S.Store(tmp_path / "state")
    L.ensure_schema(first)
    second = S.Store(tmp_path / "state")
    for store in (first, second):
        store.fence = L.Fences()
    with first.transaction():
        first.insert_run(bare_run("r1"))
    yield first, second
    first.close()
    second.close()


def lease_row(store: S.Store, run_id: str = "r1") -> tuple:
    return tuple(
        store.conn.execute(
            "SELECT status, error, lease_owner, lease_epoch, lease_until IS NOT NULL FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    )


def lapse(store: S.Store, run_id: str = "r1") -> None:
    """Time passes for the lease (as if its owner had stopped renewing it)."""
    with L.unfenced(), store.transaction():
        store.conn.execute("UPDATE runs SET lease_until = ? WHERE id = ?", (store.now() - 1, run_id))


def test_a_claim_bumps_the_epoch_and_a_live_lease_cannot_be_claimed(stores):
    a, b = stores
    fence = L.claim(a, "r1", "A", 30)
    assert fence is not None and fence.epoch == 1
    assert L.claim(b, "r1", "B", 30) is None
    assert lease_row(b) == ("interrupted", None, "A", 1, True)
    with fence.current(), a.transaction():  # A's own writes pass the fence
        a.update_run("r1", error="still mine")
    assert lease_row(b)[1] == "still mine"


def test_a_late_write_after_another_claimed_the_run_changes_nothing(stores):
    a, b = stores
    old = L.claim(a, "r1", "A", 30)
    lapse(a)  # A is presumed dead
    new = L.claim(b, "r1", "B", 30)
    assert new is not None and new.epoch == 2
    with pytest.raises(L.LeaseLost, match="lease on r1 lost"), old.current(), a.transaction():
        a.update_run("r1", status=S.FAILED, error="late")
        a.ledger.append("run.note", "r1", {"late": True}, ts=a.now())
    assert lease_row(b) == ("interrupted", None, "B", 2, True)
    assert b.conn.execute("SELECT COUNT(*) FROM ledger WHERE run = 'r1'").fetchone() == (0,)
    assert L.release(a, old) is False  # nor can A release B's lease
    assert lease_row(b)[2:] == ("B", 2, True)


def test_a_released_lease_fences_its_holder_and_is_claimable_again(stores):
    a, b = stores
    fence = L.claim(a, "r1", "A", 30)
    assert L.release(a, fence) is True
    assert lease_row(b) == ("interrupted", None, "A", 1, False)
    with pytest.raises(L.LeaseLost), fence.current(), a.transaction():
        a.update_run("r1", error="after release")
    assert lease_row(b)[1] is None
    again = L.claim(b, "r1", "B", 30)
    assert again is not None and again.epoch == 2


def test_a_finished_run_is_never_claimed(stores):
    a, _ = stores
    with a.transaction():
        a.update_run("r1", status=S.SUCCEEDED)
    assert L.claim(a, "r1", "A", 30) is None


def test_the_check_extends_the_lease_by_the_database_clock(stores):
    a, _ = stores
    fence = L.claim(a, "r1", "A", 30)
    lapse(a)  # lapsed, but nobody claimed it: still A's, and a write renews it
    L.renew(a, fence)
    (until,) = a.conn.execute("SELECT lease_until FROM runs WHERE id = 'r1'").fetchone()
    assert a.now() + 25 < until <= a.now() + 30


def test_the_events_lease_is_held_by_one_worker_at_a_time(stores):
    a, b = stores
    first = L.claim(a, L.EVENTS, "A", 30, L.NAMED)
    assert first is not None and first.epoch == 1
    assert L.claim(b, L.EVENTS, "B", 30, L.NAMED) is None
    assert L.release(a, first)
    second = L.claim(b, L.EVENTS, "B", 30, L.NAMED)
    assert second is not None and second.epoch == 2
    with pytest.raises(L.LeaseLost), first.current(), a.transaction():
        pass


# ---- a worker in process -----------------------------------------------------------------


def worker_service(tmp_path: Path) -> Service:
    pack = tmp_path / "leased.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    return Service(state, [runner.plan_from_pack(pack, [], state)])


async def until(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


def test_a_worker_evaluates_accepted_events_drives_the_runs_and_holds_no_lease_after(tmp_path):
    intake = worker_service(tmp_path)  # `serve --no-drive`: commits events, drives nothing
    intake.drives = False
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=5, poll=0.05)

    def runs() -> dict[str, tuple]:
        rows = svc.store.conn.execute("SELECT playbook, status, lease_owner, lease_epoch, lease_until FROM runs")
        return {row[0]: tuple(row[1:]) for row in rows}

    async def main() -> None:
        await worker.start()
        intake.accept([{"name": "go"}, {"name": "ask"}], "test")
        await until(lambda: runs().get("quick", ("",))[0] == "succeeded" and runs().get("asking", ("",))[0] == "paused")
        await until(lambda: not svc.driving)
        assert runs()["quick"] == ("succeeded", "w1", 1, None)
        assert runs()["asking"] == ("paused", "w1", 1, None)  # paused: no lease
        assert svc.store.conn.execute("SELECT COUNT(*) FROM events WHERE status = 'accepted'").fetchone() == (0,)
        (asking,) = [r for r in svc.store.runs() if r.playbook == "asking"]
        intake.runtime.approve(asking.id, "agree", "alice")  # from another process: a durable nudge
        await until(lambda: runs()["asking"][0] == "succeeded")
        await until(lambda: not svc.driving)
        assert runs()["asking"] == ("succeeded", "w1", 2, None)
        await worker.stop(5)

    try:
        asyncio.run(main())
    finally:
        svc.close()
        intake.close()


@pytest.mark.kills_runs  # the run stays `running` under the lease the test took
def test_a_worker_cut_off_from_its_lease_stops_its_drive_and_writes_nothing_more(tmp_path):
    svc = worker_service(tmp_path)
    worker = Worker(svc, "w1", ttl=3, poll=0.05)
    thief = S.Store(tmp_path / "state")

    def snapshot(run_id: str) -> tuple:
        ledger = thief.conn.execute("SELECT COUNT(*) FROM ledger WHERE run = ?", (run_id,)).fetchone()
        steps = thief.conn.execute("SELECT step_id, status FROM steps WHERE run_id = ? ORDER BY step_id", (run_id,))
        run = thief.conn.execute("SELECT status, lease_owner, lease_epoch FROM runs WHERE id = ?", (run_id,))
        return ledger, steps.fetchall(), run.fetchone()

    async def main() -> None:
        await worker.start()
        svc.accept([{"name": "nap"}], "test")
        await until(lambda: any(r.status == "running" for r in thief.runs()) and bool(svc.driving))
        (run,) = thief.runs()
        await until(lambda: thief.steps(run.id)["nap"].status in (S.STARTED, S.WAITING))
        lapse(thief, run.id)  # the worker is presumed dead (it is only slow, or cut off)
        assert L.claim(thief, run.id, "B", 60) is not None
        taken = snapshot(run.id)
        assert taken[2] == ("running", "B", 2)
        await until(lambda: not svc.driving, timeout=10)  # the heartbeat (every 1 s) stopped the drive
        await asyncio.sleep(2.5)  # past the end of the wait: nothing more comes from w1
        assert snapshot(run.id) == taken
        assert thief.steps(run.id)["after"].status == S.PENDING
        await worker.stop(5)

    try:
        asyncio.run(main())
    finally:
        svc.close()
        thief.close()
