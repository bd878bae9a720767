"""The server's driver in process (runtime/driver.py): what it drives, what it leaves alone,
and that it never spins — a timer it cannot act on must not make it look again at once.

The end-to-end behaviour (real `opsdsl serve`, real CLI, a moved clock) is in
tests/serve/test_serve_owns_runs.py; these tests pin the driver's own rules, fast.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from owned_harness import ManualClock as Clock

from opsdsl.runtime import runner
from opsdsl.runtime.driver import Driver
from opsdsl.runtime.service import Service

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: driven, version: 1.0.0, owner: sre}
triggers:
  two:
    on: event
    when: event.name == "two"
  nap:
    on: event
    when: event.name == "nap"
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onTwo: {trigger: two, run: two-people}
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onNap: {trigger: nap, run: outer}
playbooks:
  two-people:
    severity: SEV-3
    steps:
      - id: agree
        action: approval
        with: {message: "Go?", min_approvals: 2}
        timeout: 1h
      - id: done
        action: assert
        with: {that: "true"}
  outer:
    severity: SEV-3
    steps:
      - id: call
        action: playbook.call
        with: {playbook: inner}
  inner:
    severity: SEV-3
    steps:
      - id: nap
        action: wait
        with: {duration: 30s}
      - id: after
        action: assert
        with: {that: "true"}
"""


def service(tmp_path: Path, clock: Clock) -> Service:
    pack = tmp_path / "driven.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    runtime = runner.Runtime(state, clock=clock)
    return Service(state, [runner.plan_from_pack(pack, [], state)], clock=clock, runtime=runtime)


def statuses(svc: Service) -> dict[str, str]:
    return {run.playbook: run.status for run in svc.store.runs()}


def started(svc: Service, run_id: str) -> list[str]:
    return [e.data["reason"] for e in svc.store.ledger.entries(run=run_id) if e.kind == "run.started"]


async def settle(svc: Service) -> None:
    """Let the runs being driven finish (or pause)."""
    for _ in range(200):
        if not svc.driving:
            return
        await asyncio.sleep(0.01)


def test_one_approval_of_two_drives_nothing_and_the_second_drives_once(tmp_path):
    clock = Clock()
    svc = service(tmp_path, clock)

    async def main() -> None:
        await svc.start("serve", own_runs=True)
        svc.driver.poll = 0.05
        svc.accept([{"name": "two"}], "test")
        await svc.queue.join()
        await settle(svc)
        (run,) = svc.store.runs()
        assert run.status == "paused"
        svc.runtime.approve(run.id, "agree", "alice")
        assert svc.driver.look() == []  # one of two: nothing to do
        svc.runtime.approve(run.id, "agree", "bob")
        assert svc.driver.look() == [run.id]
        await settle(svc)
        assert svc.store.run(run.id).status == "succeeded"
        assert svc.driver.look() == []
        assert started(svc, run.id) == ["start", "approval"]
        await svc.drain()

    try:
        asyncio.run(main())
    finally:
        svc.close()


def test_a_parked_wait_in_a_sub_run_wakes_its_caller_once_and_its_timer_is_gone(tmp_path):
    clock = Clock()
    svc = service(tmp_path, clock)

    async def main() -> None:
        await svc.start("serve", own_runs=True)
        svc.accept([{"name": "nap"}], "test")
        await svc.queue.join()
        await settle(svc)
        assert statuses(svc) == {"outer": "paused", "inner": "paused"}
        outer = next(r for r in svc.store.runs() if r.playbook == "outer")
        assert svc.driver.look() == []  # not due yet
        clock.now += 31
        assert svc.driver.look() == [outer.id]
        await settle(svc)
        assert statuses(svc) == {"outer": "succeeded", "inner": "succeeded"}
        assert svc.store.conn.execute("SELECT COUNT(*) FROM timers WHERE kind = 'wait'").fetchone() == (0,)
        assert svc.driver.look() == []
        await svc.drain()

    try:
        asyncio.run(main())
    finally:
        svc.close()


def test_a_timer_left_by_a_finished_run_is_dropped_and_never_makes_the_driver_spin(tmp_path):
    clock = Clock()
    svc = service(tmp_path, clock)

    async def main() -> None:
        await svc.start("serve", own_runs=True)
        svc.accept([{"name": "two"}], "test")
        await svc.queue.join()
        await settle(svc)
        (run,) = svc.store.runs()
        for person in ("alice", "bob"):
            svc.runtime.approve(run.id, "agree", person)
        svc.driver.look()
        await settle(svc)
        assert svc.store.run(run.id).status == "succeeded"
        # The approval's deadline timer outlives the run; a stray one of an unknown run too.
        with svc.store.transaction():
            svc.store.set_timer("no-such-run", "x", "wait", clock.now - 5)
        clock.now += 2 * 3600
        assert svc.driver.look() == []
        left = svc.store.conn.execute("SELECT run_id, kind FROM timers WHERE kind != 'escalate'").fetchall()
        assert left == []
        await svc.drain()

    try:
        asyncio.run(main())
    finally:
        svc.close()


def test_a_due_timer_the_driver_cannot_act_on_does_not_make_it_look_in_a_loop(tmp_path):
    """A live run that is being driven already, with a due timer: the driver sleeps its poll."""
    clock = Clock()
    svc = service(tmp_path, clock)
    looks = 0

    def count() -> None:
        nonlocal looks
        looks += 1

    async def main() -> None:
        await svc.start("serve", own_runs=True)
        svc.accept([{"name": "two"}], "test")
        await svc.queue.join()
        await settle(svc)
        await svc.drain()
        (run,) = svc.store.runs()
        driver = Driver(svc.store, lambda run_id, reason: None, lambda: [run.id], clock=clock, poll=0.2)
        driver.after_look = count
        with svc.store.transaction():
            svc.store.set_timer(run.id, "agree", "approval_timeout", clock.now - 1)
        task = asyncio.create_task(driver.run())
        await asyncio.sleep(1.0)
        task.cancel()
        left = svc.store.conn.execute("SELECT COUNT(*) FROM timers WHERE kind = 'approval_timeout'").fetchone()
        assert left == (1,)  # kept for when the run is free again

    try:
        asyncio.run(main())
    finally:
        svc.close()
    assert 2 <= looks <= 7  # ~5 looks in a second at a 0.2 s poll, not thousands


SECRET_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: secretive, version: 1.0.0, owner: sre}
params:
  token: {type: string, secret: true}
triggers:
  go:
    on: event
    when: event.name == "go"
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onGo: {trigger: go, run: guarded}
playbooks:
  guarded:
    severity: SEV-3
    steps:
      - id: agree
        action: approval
        with: {message: "Go?"}
        timeout: 1h
      - id: done
        action: assert
        with: {that: "size(params.token) > 0"}
"""


def test_a_run_that_cannot_start_for_a_missing_secret_is_tried_again_later_not_at_every_look(tmp_path, monkeypatch):
    clock = Clock()
    pack = tmp_path / "secretive.yaml"
    pack.write_text(SECRET_PACK)
    state = tmp_path / "state"

    def served() -> Service:
        plan = runner.plan_from_pack(pack, [], state)
        return Service(state, [plan], params=[{}], clock=clock, runtime=runner.Runtime(state, clock=clock))

    async def first() -> str:  # a server with the secret starts the run, which pauses
        svc = served()
        svc.params = [{"token": "s3cret"}]
        try:
            await svc.start("serve", own_runs=True)
            svc.accept([{"name": "go"}], "test")
            await svc.queue.join()
            await settle(svc)
            (run,) = svc.store.runs()
            assert run.status == "paused"
            await svc.drain()
            return run.id
        finally:
            svc.close()

    async def second(run_id: str) -> None:  # the next server has no value for it
        svc = served()
        try:
            await svc.start("serve", own_runs=True)
            svc.runtime.approve(run_id, "agree", "alice")
            assert svc.driver.look() == []  # the secret is missing: it cannot start
            (retry,) = svc.store.conn.execute("SELECT due_at FROM timers WHERE kind = 'retry'").fetchall()
            assert retry[0] == clock.now + 60
            assert svc.driver.look() == []  # and it is not tried again at once
            monkeypatch.setenv("OPSDSL_SECRET_TOKEN", "s3cret")
            clock.now += 61
            assert svc.driver.look() == [run_id]
            await settle(svc)
            assert svc.store.run(run_id).status == "succeeded"
            await svc.drain()
        finally:
            svc.close()

    monkeypatch.delenv("OPSDSL_SECRET_TOKEN", raising=False)
    run_id = asyncio.run(first())
    asyncio.run(second(run_id))
