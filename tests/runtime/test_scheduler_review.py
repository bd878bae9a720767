"""Review of 7bbf76e (serve under a busy CPU): a drive cancelled while it waits for its
first Pacer turn, a shell step's child whose pidfd cannot be opened, and a FairLock wait
that is interrupted."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import sys
import threading
import time
import types

import pytest

from opsdsl.runtime import runner as sched_runner
from opsdsl.runtime import scheduler as sched
from opsdsl.runtime.actions.base import ActionFailed
from opsdsl.runtime.actions.shell import run_command
from opsdsl.runtime.board import Board
from opsdsl.runtime.secrets import Secrets
from tests.runtime.test_scheduler_pacing import _runs


def test_a_drive_cancelled_waiting_for_its_turn_is_recorded_interrupted(tmp_path):
    """A server draining under load (SIGTERM, drain timeout, `service.drain` cancels the
    run tasks) while drives wait for their first Pacer turn."""
    runtime, secrets, runs = _runs(tmp_path, 4)

    async def main() -> None:
        sched.pace_loop(per_turn=1)
        try:
            tasks = [asyncio.create_task(runtime.drive(run, secrets)) for run in runs]
            await asyncio.sleep(0)  # each drive has asked for its turn; one went ahead
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            sched.unpace_loop()

    asyncio.run(main())
    statuses = [runtime.store.run(run.id).status for run in runs]
    kinds = [[e.kind for e in runtime.store.ledger.entries(run=run.id)] for run in runs]
    # Cancelled mid-drive, a run says so (run.interrupted, status interrupted), as the
    # Service does for one cancelled while it waited for a run slot.
    assert "running" not in statuses, (statuses, kinds)
    # The one that went ahead may have finished before the cancellation reached it.
    assert statuses.count("interrupted") >= len(runs) - 1, (statuses, kinds)
    for status, entries in zip(statuses, kinds, strict=True):
        if status == "interrupted":
            assert entries[-1] == "run.interrupted", kinds


@pytest.mark.skipif(sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"), reason="the 3.11 pidfd watcher")
def test_a_child_whose_pidfd_cannot_be_opened_is_awaited_and_reaped(tmp_path, monkeypatch):
    """The pidfd watch is set up *after* the fork/exec: a pidfd_open that fails (EMFILE) must
    not report a program that runs as "cannot start" (not retryable), nor leave it unreaped."""
    from opsdsl.serve.intake import _watch_children_by_pidfd

    marker = tmp_path / "ran"
    real = os.pidfd_open
    calls: list[int] = []

    async def main() -> object:
        unwatch = _watch_children_by_pidfd(asyncio.get_running_loop())
        assert unwatch is not None

        def flaky(pid: int, flags: int = 0) -> int:
            calls.append(pid)
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(os, "pidfd_open", flaky)
        try:
            return await run_command(["sh", "-c", f"touch {marker}; exit 3"], env={"PATH": os.environ["PATH"]})
        except ActionFailed as failure:
            return failure.message
        finally:
            monkeypatch.setattr(os, "pidfd_open", real)
            unwatch()

    result = asyncio.run(main())
    assert calls, "the pidfd watcher was not used"
    assert marker.exists()
    assert not (isinstance(result, str) and result.startswith("cannot start")), result
    # awaited: its exit status is the program's, and it was reaped (no zombie left)
    assert "3" in repr(result), result
    with pytest.raises(ChildProcessError):
        os.waitpid(calls[0], os.WNOHANG)


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX timers")
def test_an_interrupted_fair_lock_wait_does_not_keep_the_lock():
    """A waiter whose acquire() raises (a signal handler's exception) must leave the queue:
    else the holder's release() hands the lock to that dead waiter, held forever."""

    class Interrupted(Exception):
        pass

    lock = sched.FairLock()
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)

    def interrupt(signum, frame):
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            lock.acquire()  # the main thread's wait, interrupted
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    release.set()
    thread.join(5)

    got = threading.Event()

    def later() -> None:
        with lock:
            got.set()

    other = threading.Thread(target=later, daemon=True)
    other.start()
    assert got.wait(2), "the lock went to the interrupted waiter and is held forever"


def test_a_fair_lock_handed_to_an_interrupted_waiter_is_passed_on(monkeypatch):
    """The lock handed over just as the waiter's wait raised: it goes on to the next."""
    lock = sched.FairLock()
    lock.acquire()
    first_waiting = threading.Event()

    class Interrupted(BaseException):
        pass

    real_lock = threading.Lock

    class Waiter:
        """A waiter lock whose blocking acquire succeeds, then raises (handed, then interrupted)."""

        def __init__(self) -> None:
            self._lock = real_lock()

        def acquire(self, *args: object, **kwargs: object) -> bool:
            if not args and not kwargs and self._lock.locked():
                first_waiting.set()
                self._lock.acquire()
                raise Interrupted()
            return self._lock.acquire(*args, **kwargs)

        def release(self) -> None:
            self._lock.release()

    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            lock.acquire()
        except Interrupted as error:
            errors.append(error)

    monkeypatch.setattr(sched, "threading", types.SimpleNamespace(Lock=Waiter))  # the waiter's lock only
    thread = threading.Thread(target=waiter)
    thread.start()
    assert first_waiting.wait(5)
    monkeypatch.setattr(sched, "threading", threading)
    time.sleep(0.05)
    lock.release()  # handed to the waiter, whose wait then raises
    thread.join(5)
    assert errors
    got = threading.Event()

    def later() -> None:
        with lock:
            got.set()

    threading.Thread(target=later, daemon=True).start()
    assert got.wait(2), "the lock was handed to a waiter that was interrupted, and kept"


NOT_IDEMPOTENT_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: once, version: 1.0.0, owner: sre}
playbooks:
  p:
    severity: SEV-4
    steps:
      - id: touch
        action: shell
        with: {argv: [%s, -c, "import sys; open(sys.argv[1], 'a').write('x')", %s]}
"""


def test_a_drive_cancelled_after_an_intent_but_before_its_action_leaves_the_step_pending(tmp_path):
    """A server's step waits for its intent's fsync and then a Pacer turn before its action
    starts; a drain that cancels the run there has sent nothing. The step is not in flight:
    resumed, it runs (once), and a non-idempotent step is not put in doubt for a person."""
    import json

    marker = tmp_path / "sent"
    pack = tmp_path / "pack.yaml"
    pack.write_text(NOT_IDEMPOTENT_PACK % (json.dumps(sys.executable), json.dumps(str(marker))))
    state = tmp_path / "state"
    plan = sched_runner.plan_from_pack(pack, [], state)
    runtime = sched_runner.Runtime(state)
    secrets = Secrets(state)
    run = runtime.create_run(plan, sched_runner.Selection("p"), {}, {}, {}, secrets)
    reached = asyncio.Event()

    async def never_durable() -> None:  # the intent's fsync, still in progress when the drain cancels
        reached.set()
        await asyncio.Event().wait()

    async def main() -> None:
        runtime.store.durable = never_durable
        task = asyncio.create_task(runtime.drive(run, secrets))
        await reached.wait()
        task.cancel()
        outcome = await task
        assert outcome.status == "interrupted"

    asyncio.run(main())
    row = runtime.store.steps(run.id)["touch"]
    assert (row.status, row.attempts) == ("pending", 0)
    entries = [(e.kind, e.data) for e in runtime.store.ledger.entries(run=run.id)]
    assert entries[-1] == ("run.interrupted", {"running": [], "not_started": ["touch"]}), entries
    assert not marker.exists()

    board = Board({"id": run.id}, [{"id": "touch", "action": "shell"}])  # what `opsdsl inspect` shows
    for entry in runtime.store.ledger.entries(run=run.id):
        board.apply(entry.to_dict())
    assert board.rows["touch"].status == "interrupted", board.rows["touch"]

    del runtime.store.durable
    outcome = asyncio.run(runtime.drive(runtime.store.run(run.id), secrets, reason="resume"))
    assert outcome.status == "succeeded", outcome
    assert marker.read_text() == "x"  # sent once, after the resume
    kinds = [e.kind for e in runtime.store.ledger.entries(run=run.id)]
    assert "step.in_doubt" not in kinds
    runtime.close()


# Review of 841cc44: the handler between a step's intent and its action also caught the
# cancellation the playbook's timeout sends (_time_out): the step, failed by the timeout,
# stayed `not_started` with its attempt taken back, so a later drain listed a failed step
# as not started and its row said attempt 0 though its step.intent said attempt 1.
TIMED_OUT_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: once, version: 1.0.0, owner: sre}
playbooks:
  p:
    severity: SEV-4
    timeout: 1s
    steps:
      - id: touch
        action: shell
        with: {argv: [%s, -c, "import sys; open(sys.argv[1], 'a').write('x')", %s]}
    finally:
      - id: tidy
        action: shell
        with: {argv: [%s, -c, "import time; time.sleep(30)"]}
"""


def test_a_step_the_playbook_timeout_failed_is_not_listed_as_not_started(tmp_path):
    marker = tmp_path / "sent"
    py = json.dumps(sys.executable)
    (tmp_path / "pack.yaml").write_text(TIMED_OUT_PACK % (py, json.dumps(str(marker)), py))
    state = tmp_path / "state"
    plan = sched_runner.plan_from_pack(tmp_path / "pack.yaml", [], state)
    runtime = sched_runner.Runtime(state)
    secrets = Secrets(state)
    run = runtime.create_run(plan, sched_runner.Selection("p"), {}, {}, {}, secrets)
    calls = 0

    async def slow_first_durable() -> None:  # the first intent's fsync outlasts the playbook's timeout
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)

    async def main() -> None:
        runtime.store.durable = slow_first_durable
        task = asyncio.create_task(runtime.drive(run, secrets))
        for _ in range(100):  # until `tidy` (finally) is running
            await asyncio.sleep(0.1)
            if runtime.store.steps(run.id)["tidy"].status == "running":
                break
        task.cancel()  # a drain
        assert (await task).status == "interrupted"

    asyncio.run(main())
    touch = runtime.store.steps(run.id)["touch"]
    entries = [e.to_dict() for e in runtime.store.ledger.entries(run=run.id)]
    interrupted = [e["data"] for e in entries if e["kind"] == "run.interrupted"]
    intents = [e["data"].get("attempt") for e in entries if e["kind"] == "step.intent" and e["data"]["step"] == "touch"]
    board = Board({"id": run.id}, [{"id": "touch", "action": "shell"}, {"id": "tidy", "action": "shell"}])
    for entry in entries:
        board.apply(entry)
    runtime.close()
    assert not marker.exists()
    assert touch.status == "failed", touch
    assert interrupted == [{"running": ["tidy"]}], interrupted
    assert board.rows["touch"].status == "failed", board.rows["touch"]
    assert touch.attempts == intents[-1], (touch.attempts, intents)
