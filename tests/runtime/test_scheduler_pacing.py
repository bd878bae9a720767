"""A server's runs are paced (scheduler.Pacer): a few pieces of run-driving work per turn of
the event loop, so the HTTP intake's turns come round quickly while many runs are live."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

from opsdsl.runtime import runner
from opsdsl.runtime import scheduler as sched
from opsdsl.runtime.secrets import Secrets

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: paced, version: 1.0.0, owner: sre}
playbooks:
  p:
    severity: SEV-4
    steps:
      - {id: check, action: assert, with: {that: "1 == 1"}}
      - {id: again, needs: [check], action: assert, with: {that: "2 == 2"}}
"""


class Turns:
    """Counts the event loop's turns: a callback that schedules itself runs once per turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = 0
        self.stopped = False
        loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.now += 1
        if not self.stopped:
            self.loop.call_soon(self._tick)


def test_pacer_lets_a_few_through_per_turn_in_the_order_they_asked():
    async def main() -> tuple[list[int], list[int]]:
        loop = asyncio.get_running_loop()
        pacer = sched.Pacer(loop, per_turn=2)
        turns = Turns(loop)
        order: list[int] = []
        when: list[int] = []

        async def work(index: int) -> None:
            await pacer.turn()
            order.append(index)
            when.append(turns.now)

        await asyncio.gather(*(work(i) for i in range(12)))
        turns.stopped = True
        return order, when

    order, when = asyncio.run(main())
    assert order == list(range(12))
    per_turn = {t: when.count(t) for t in set(when)}
    assert max(per_turn.values()) <= 2 * 2, per_turn  # the turn's own two, and two woken for it
    assert len(per_turn) >= 4  # spread over several turns, not all at once


def test_a_cancelled_waiter_does_not_hold_up_the_others():
    async def main() -> list[int]:
        pacer = sched.Pacer(asyncio.get_running_loop(), per_turn=1)
        done: list[int] = []

        async def work(index: int) -> None:
            await pacer.turn()
            done.append(index)

        tasks = [asyncio.create_task(work(i)) for i in range(6)]
        await asyncio.sleep(0)  # every task has asked
        tasks[2].cancel()
        tasks[3].cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        assert pacer.waiting == 0
        return done

    assert asyncio.run(main()) == [0, 1, 4, 5]


def _runs(tmp_path: Path, count: int):
    tmp_path.mkdir(parents=True, exist_ok=True)
    pack = tmp_path / "pack.yaml"
    pack.write_text(textwrap.dedent(PACK))
    state = tmp_path / "state"
    plan = runner.plan_from_pack(pack, [], state)
    runtime = runner.Runtime(state)
    secrets = Secrets(state)
    runs = [runtime.create_run(plan, runner.Selection("p"), {}, {}, {}, secrets) for _ in range(count)]
    return runtime, secrets, runs


def _commits_per_turn(tmp_path: Path, paced: bool, monkeypatch) -> tuple[list[str], dict[int, int]]:
    """Drive 16 runs at once; (their outcomes, transactions of the runs per loop turn)."""
    runtime, secrets, runs = _runs(tmp_path, 16)
    per_turn: dict[int, int] = {}
    turns: Turns | None = None
    commit = sched.Scheduler._commit

    def counted(self, *args, **kwargs):
        if not kwargs.get("defer") and turns is not None:
            per_turn[turns.now] = per_turn.get(turns.now, 0) + 1
        return commit(self, *args, **kwargs)

    monkeypatch.setattr(sched.Scheduler, "_commit", counted)

    async def main() -> list[str]:
        nonlocal turns
        loop = asyncio.get_running_loop()
        if paced:
            sched.pace_loop(loop, per_turn=2)
        turns = Turns(loop)
        try:
            outcomes = await asyncio.gather(*(runtime.drive(run, secrets) for run in runs))
        finally:
            turns.stopped = True
            sched.unpace_loop(loop)
        return [o.status for o in outcomes]

    return asyncio.run(main()), per_turn


def test_paced_runs_spread_their_transactions_over_the_loops_turns(tmp_path, monkeypatch):
    statuses, per_turn = _commits_per_turn(tmp_path / "paced", True, monkeypatch)
    assert statuses == ["succeeded"] * 16
    assert sum(per_turn.values()) == 16  # each run: one transaction (its pure steps ride on its end)
    assert max(per_turn.values()) <= 4, per_turn


def test_unpaced_runs_all_commit_in_one_turn(tmp_path, monkeypatch):
    """The control: without a pacer (the CLI) the same runs all commit in the same turn, so
    the paced test above would fail without pacing."""
    statuses, per_turn = _commits_per_turn(tmp_path / "unpaced", False, monkeypatch)
    assert statuses == ["succeeded"] * 16
    assert max(per_turn.values()) == 16, per_turn


def test_paced_and_unpaced_runs_write_the_same_ledger(tmp_path, monkeypatch):
    kinds = []
    for paced in (False, True):
        runtime, secrets, runs = _runs(tmp_path / str(paced), 3)

        async def main(runtime=runtime, secrets=secrets, runs=runs, paced=paced) -> None:
            if paced:
                sched.pace_loop(per_turn=1)
            try:
                await asyncio.gather(*(runtime.drive(run, secrets) for run in runs))
            finally:
                sched.unpace_loop()

        asyncio.run(main())
        kinds.append([[e.kind for e in runtime.store.ledger.entries(run=run.id)] for run in runs])
    assert kinds[0] == kinds[1]


def test_fair_lock_is_handed_over_in_the_order_asked():
    import threading
    import time

    lock = sched.FairLock()
    got: list[int] = []
    lock.acquire()
    threads = []
    for index in range(5):
        thread = threading.Thread(target=lambda i=index: (lock.acquire(), got.append(i), lock.release()))
        thread.start()
        threads.append(thread)
        time.sleep(0.02)  # each is waiting before the next asks
    # The holder releases and asks again at once: it must queue behind the five, not barge.
    lock.release()
    with lock:
        got.append(-1)
    for thread in threads:
        thread.join(5)
    assert got == [0, 1, 2, 3, 4, -1]
