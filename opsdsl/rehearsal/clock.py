"""Virtual time for rehearsals: an event loop whose clock jumps instead of sleeping.

A discrete-event simulation on top of asyncio's own scheduler. Every timer in the loop —
`asyncio.sleep` (retry backoff, `wait` steps, mocked durations), `asyncio.wait_for` (step
timeouts) and `asyncio.wait(timeout=…)` (the playbook's deadline) — is a `call_at` handle
keyed by `loop.time()`. The loop asks its selector to block until the earliest of them;
ours never blocks: when nothing is ready (every task waits on a timer), it moves the clock
forward to that timer at once. So the clock advances only when every task is blocked, by
the loop's own definition of blocked, and a `wait: 1h` takes microseconds.

Why the loop and not only an injected `sleep`: the scheduler's per-attempt timeouts and
the playbook deadline are loop timers too; with a real loop clock they would run in real
time while retries and waits ran in virtual time, and the two would disagree.

Rehearsals do no real I/O (actions are mocked; SQLite is synchronous). If every task waits
and no timer is pending, nothing can ever happen: that is a deadlock, reported as `Stalled`
after a short real-time grace for stray I/O, instead of hanging the test run.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")
DEFAULT_EPOCH = "2026-01-01T00:00:00Z"
STALL_GRACE = 0.5  # real seconds to wait for real I/O before calling the loop stalled


class Stalled(RuntimeError):
    """Every task waits and no timer is pending: the rehearsal can never go on."""


class VirtualClock:
    """Seconds since the rehearsal began (`elapsed`), and the wall-clock time they stand for."""

    def __init__(self, epoch: float) -> None:
        self.epoch = epoch
        self.elapsed = 0.0

    @classmethod
    def at(cls, iso: str | None) -> VirtualClock:
        """A clock starting at an ISO 8601 time (`2026-11-27T07:50:00Z`); naive times are UTC."""
        return cls(parse_iso(iso or DEFAULT_EPOCH))

    def now(self) -> float:
        """Epoch seconds, like `time.time()`: what the runtime's `clock` is given."""
        return self.epoch + self.elapsed

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self.elapsed += seconds


def parse_iso(text: str) -> float:
    """Epoch seconds of an ISO 8601 time; raises ValueError on anything else."""
    stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


class _JumpingSelector(selectors.BaseSelector):
    """Polls the real selector without blocking; a wait for a timer becomes a clock jump."""

    def __init__(self, clock: VirtualClock) -> None:
        self._real = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj, events, data=None):
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self._real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None):
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only real I/O could still wake anything
            ready = self._real.select(STALL_GRACE)
            if not ready:
                raise Stalled("every task is waiting and no timer is pending")
            return ready
        self._clock.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_map(self):
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is the virtual clock's and whose waits are jumps."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(selector=_JumpingSelector(clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.elapsed


def run_virtual(coroutine: Coroutine[Any, Any, T], clock: VirtualClock) -> T:
    """Run `coroutine` to completion on a fresh virtual-time loop, then close the loop."""
    loop = VirtualTimeLoop(clock)
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except Stalled:
            pass
        finally:
            loop.close()
