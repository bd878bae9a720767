"""Leases and fencing epochs: a worker writes a run's state only while the run is its own.

A worker claims a run (or a named duty, such as evaluating the accepted events) with one
UPDATE that succeeds only when nobody holds a live lease: it bumps `lease_epoch`, names
itself in `lease_owner` and sets `lease_until` to the database's clock (`Store.now_sql()`,
read inside the statement) plus the TTL. Every transaction the worker then opens checks,
right after BEGIN (which serializes writers on both backends), that the row still names
it with its epoch, and extends the lease (`Store.transaction` calls `Fences.check`). A
worker presumed dead whose lease another claimed writes nothing: its transaction raises
`LeaseLost` and rolls back. A released lease (`lease_until` NULL: a paused or finished run) fails the check too.

Which fence a transaction checks is the current asyncio task's (a context variable), since
one worker drives many runs at once over one connection.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from opsdsl.errors import OpsdslError

DEFAULT_TTL = 30.0  # seconds a lease lasts unless renewed
EVENTS = "events"  # the named lease of the worker that evaluates accepted events

# SQLite: the named leases' table (PostgreSQL: migration 0002_leases.sql), and the claim index.
_DDL = """
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    lease_owner TEXT,
    lease_epoch INTEGER NOT NULL DEFAULT 0,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS runs_lease ON runs(status, lease_until);
"""

# (table, key column) of what a lease is on.
RUN, NAMED = ("runs", "id"), ("leases", "name")

_current: contextvars.ContextVar[Fence | None] = contextvars.ContextVar("opsdsl_fence", default=None)


class LeaseLost(OpsdslError):
    """Another worker holds the lease now (ours lapsed, or was released): write nothing more."""

    exit_code = 2


@dataclass(frozen=True)
class Fence:
    """A lease held: (row, owner, epoch). `check` runs inside a write transaction."""

    key: str
    owner: str
    epoch: int
    ttl: float
    table: tuple[str, str] = RUN

    def check(self, store: Any) -> None:
        """LeaseLost unless the row still names us with our epoch and a live (unreleased)
        lease; else extend it to now + TTL. Called right after BEGIN. A run's lease also
        reads, in the same statement, whether someone asked to cancel the run: it is left in
        `store.fenced_cancel` as (run, cancel_requested) for the scheduler, which then need
        not ask again in this transaction."""
        table, column = self.table
        # One statement (one round trip): extend the lease if it is still ours, on the database's clock.
        returning = " RETURNING cancel_requested" if self.table == RUN else " RETURNING lease_epoch"
        extended = store.conn.execute(
            f"UPDATE {table} SET lease_until = {store.now_sql()} + ? WHERE {column} = ? AND lease_owner = ?"
            f" AND lease_epoch = ? AND lease_until IS NOT NULL{returning}",
            (self.ttl, self.key, self.owner, self.epoch),
        ).fetchall()  # all: a statement left half-read on SQLite could hold up the COMMIT
        if extended:
            if self.table == RUN:
                store.fenced_cancel = (self.key, extended[0][0])
            return
        row = store.conn.execute(
            f"SELECT lease_owner, lease_epoch, lease_until FROM {table} WHERE {column} = ?", (self.key,)
        ).fetchone()
        holder = "nobody" if row is None or row[2] is None else f"{row[0]} (epoch {row[1]})"
        raise LeaseLost(
            f"lease on {self.key} lost: {self.owner} held epoch {self.epoch}, now {holder}; writing nothing"
        )

    @contextlib.contextmanager
    def current(self) -> Iterator[Fence]:
        """Transactions in this context (and the tasks it starts) are fenced by this lease."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


class Fences:
    """`Store.fence` of a worker: checks the fence of the task that opened the transaction
    (none: an unfenced write, e.g. recording an approval)."""

    def check(self, store: Any) -> None:
        fence = _current.get()
        if fence is not None:
            fence.check(store)

    def run(self) -> str | None:
        """The run whose lease the current task writes under, if any (not a named lease)."""
        fence = _current.get()
        return fence.key if fence is not None and fence.table == RUN else None


@contextlib.contextmanager
def unfenced() -> Iterator[None]:
    """Write outside any lease (a claim, a release)."""
    token = _current.set(None)
    try:
        yield
    finally:
        _current.reset(token)


def ensure_schema(store: Any) -> None:
    """The named leases' table and the claim index on SQLite (PostgreSQL: `opsdsl db migrate`)."""
    if not store.postgres:
        store.conn.executescript(_DDL)


def claim(
    store: Any,
    key: str,
    owner: str,
    ttl: float,
    table: tuple[str, str] = RUN,
    within: Callable[[], None] | None = None,
) -> Fence | None:
    """Take the lease on `key` when nobody holds a live one: the fence, else None.

    A run is claimable while it is live; a named lease's row is made on first use.
    `within`: more writes in the claim's transaction, made only when the claim succeeds."""
    name, column = table
    live = ""
    args: list[Any] = []
    if table == RUN:
        from opsdsl.runtime.store import FINAL_RUN_STATUSES

        live = f" AND status NOT IN ({', '.join('?' for _ in FINAL_RUN_STATUSES)})"
        args = list(FINAL_RUN_STATUSES)
    with unfenced(), store.transaction():
        if table == NAMED:
            store.conn.execute("INSERT OR IGNORE INTO leases (name, lease_epoch) VALUES (?, 0)", (key,))
        # One statement: the database's clock read inside it, the new epoch returned by it.
        now = store.now_sql()
        taken = store.conn.execute(
            f"UPDATE {name} SET lease_owner = ?, lease_epoch = lease_epoch + 1, lease_until = {now} + ?"
            f" WHERE {column} = ? AND (lease_until IS NULL OR lease_until < {now}){live} RETURNING lease_epoch",
            (owner, ttl, key, *args),
        ).fetchall()
        if not taken:
            return None
        if within is not None:
            within()
    return Fence(key, owner, int(taken[0][0]), ttl, table)


def release(store: Any, fence: Fence) -> bool:
    """Give the lease up (`lease_until` NULL), if it is still ours; whether it was.

    One statement, committed by itself (a part of the caller's transaction if one is
    open): not a writer's transaction, so on PostgreSQL it does not queue for the writer
    lock (it writes no ledger entry). The row's own lock orders it with a claim or a
    fenced write of the same row, each of which reads the lease again after waiting."""
    name, column = fence.table
    cursor = store.conn.execute(
        f"UPDATE {name} SET lease_until = NULL WHERE {column} = ? AND lease_owner = ? AND lease_epoch = ?"
        " AND lease_until IS NOT NULL",
        (fence.key, fence.owner, fence.epoch),
    )
    return cursor.rowcount == 1


def renew(store: Any, fence: Fence) -> None:
    """Extend the lease now (a heartbeat): LeaseLost when it is no longer ours."""
    with fence.current(), store.transaction():
        pass
