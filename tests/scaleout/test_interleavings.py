"""Driver / runner / approval interleavings against a model (hypothesis, stateful), in
process, on SQLite and on PostgreSQL.

Two workers (A, B) and two runners (r1, r2), each with its own Store (connection) on one
database, act through the product's own calls: `lease.claim/release` and fenced
transactions (`Fence.current()` + `Store.transaction()`), `pool_runner.claim_rows /
renew_lease / write_result`, and `Dispatcher._lapsed` (what a driver polling a row does
when its runner's lease lapsed). Leases are long; the test lapses them by moving
`lease_until` into the past in the database, which is how time passes for them.

The model says what each call must answer (a claim taken or not and its epoch, a fenced
write done or refused, a heartbeat or result accepted or refused), and the invariants
hold after every step: the rows are what the model says; a non-idempotent step's side
effect happens at most once plus once per decided `retry`; a claimed row has one claimant
and a lease; a paused run holds no lease; the ledger verifies.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from opsdsl.runtime import dispatch as D
from opsdsl.runtime import lease as L
from opsdsl.runtime import store as S

TTL = 600.0  # leases lapse only when the test moves them into the past
WORKERS, RUNNERS = ("A", "B"), ("r1", "r2")
POOL = "edge"


@dataclass
class RunModel:
    status: str = S.INTERRUPTED  # live, unowned
    epoch: int = 0
    holder: tuple[str, int] | None = None  # (worker, epoch) with lease_until set
    waiting: str | None = None  # "approval" or "in_doubt": a person decides
    decided: bool = False  # the step's outcome is known (its row done or failed, or decided `succeeded`)
    lapsed: bool = False  # its lease_until is in the past


@dataclass
class RowModel:
    run: str
    key: str
    idempotent: bool
    attempt: int
    state: str = D.QUEUED
    claimant: str | None = None
    epoch: int = 0
    lapsed: bool = False


@dataclass
class Held:
    """A claim as its runner believes it (possibly stale)."""

    row: int
    epoch: int
    key: str
    performed: bool = False


@dataclass
class World:
    runs: dict[str, RunModel] = field(default_factory=dict)
    rows: dict[int, RowModel] = field(default_factory=dict)
    fences: dict[tuple[str, str], L.Fence] = field(default_factory=dict)  # (worker, run) → fence
    held: dict[str, list[Held]] = field(default_factory=lambda: {r: [] for r in RUNNERS})
    sent: Counter = field(default_factory=Counter)  # side effects per Idempotency-Key
    retries: Counter = field(default_factory=Counter)  # decided `retry` per key


def run_row(run_id: str, now: float) -> S.RunRow:
    return S.RunRow(
        id=run_id, incident_id="INC-1", pack="p", playbook="b", severity="SEV-3", status=S.INTERRUPTED,
        phase="steps", created_at=now, updated_at=now, finished_at=None, envelope=b"{}", plan_digest="d",
        trust="dev", params={}, inputs={}, event={}, hook=None, trig=None, escalate=None, parent_run=None,
        parent_step=None, incident_dir="/nonexistent", error=None, owner_pid=None,
    )  # fmt: skip


def reset_postgres(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'"
            )
        ]
        conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")


def machine(database: str | None) -> type[RuleBasedStateMachine]:
    class Interleavings(RuleBasedStateMachine):
        @initialize()
        def open(self) -> None:
            self.root = Path(tempfile.mkdtemp(prefix="opsdsl-interleave-"))
            if database:
                reset_postgres(database)
            self.stores: dict[str, S.Store] = {}
            for name in (*WORKERS, *RUNNERS, "person"):
                store = S.Store(self.root / "state", database=database)
                L.ensure_schema(store)
                D.prepare(store)
                store.fence = L.Fences()
                self.stores[name] = store
            self.world = World()
            self.count = 0

        def teardown(self) -> None:
            for store in getattr(self, "stores", {}).values():
                store.close()
            if hasattr(self, "root"):
                shutil.rmtree(self.root, ignore_errors=True)

        # ---- helpers -----------------------------------------------------------------

        @property
        def person(self) -> S.Store:
            return self.stores["person"]

        def one(self, sql: str, *args: Any) -> Any:
            return self.person.conn.execute(sql, args).fetchone()

        def row_of(self, run_id: str) -> tuple[int, RowModel]:
            return max((i, r) for i, r in self.world.rows.items() if r.run == run_id)

        def enqueue(self, run_id: str, key: str, idempotent: bool, attempt: int) -> None:
            """A step's intent and its dispatch row, in one transaction (what a driver writes)."""
            store = self.person
            with L.unfenced(), store.transaction():
                store.ledger.append("step.intent", run_id, {"step": "s", "attempt": attempt, "idempotency_key": key})
                cursor = store.conn.execute(
                    "INSERT INTO dispatch (run_id, step_id, attempt, pool, action, inputs, secrets, request,"
                    " idempotency_key, idempotent, timeout, state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (run_id, "s", attempt, POOL, "http.request", "{}", "{}", "{}", key, int(idempotent), None,
                     D.QUEUED, store.now()),
                )  # fmt: skip
                row_id = int(cursor.lastrowid)
            self.world.rows[row_id] = RowModel(run_id, key, idempotent, attempt)

        # ---- runs and their leases ---------------------------------------------------

        @rule(idempotent=st.booleans())
        def create_run(self, idempotent: bool) -> None:
            self.count += 1
            run_id = f"run-{self.count}"
            with L.unfenced(), self.person.transaction():
                self.person.insert_run(run_row(run_id, self.person.now()))
                self.person.ledger.append("run.created", run_id, {"idempotent": idempotent})
            self.world.runs[run_id] = RunModel()
            self.enqueue(run_id, f"{run_id}:s", idempotent, 1)

        @precondition(lambda self: self.world.runs)
        @rule(worker=st.sampled_from(WORKERS), data=st.data())
        def worker_claims(self, worker: str, data: st.DataObject) -> None:
            run_id = data.draw(st.sampled_from(sorted(self.world.runs)))
            run = self.world.runs[run_id]
            fence = L.claim(self.stores[worker], run_id, worker, TTL)
            claimable = run.status not in S.FINAL_RUN_STATUSES and (run.holder is None or run.lapsed)
            assert (fence is not None) == bool(claimable), (run, fence)
            if fence is not None:
                assert fence.epoch == run.epoch + 1
                run.epoch, run.holder = fence.epoch, (worker, fence.epoch)
                run.lapsed = False
                self.world.fences[(worker, run_id)] = fence

        @precondition(lambda self: self.world.fences)
        @rule(data=st.data(), outcome=st.sampled_from(["step", "pause", "finish"]))
        def worker_writes(self, data: st.DataObject, outcome: str) -> None:
            """A fenced transaction of the worker's drive: a step's progress, a pause for a
            person (then the lease is released), or the run's end (then released)."""
            worker, run_id = data.draw(st.sampled_from(sorted(self.world.fences)))
            fence, run = self.world.fences[(worker, run_id)], self.world.runs[run_id]
            store = self.stores[worker]
            _, row = self.row_of(run_id)
            if outcome == "finish" and not (row.state == D.DONE or run.decided):
                outcome = "step"
            ours = run.holder == (worker, fence.epoch)
            try:
                with fence.current(), store.transaction():
                    store.ledger.append(f"test.{outcome}", run_id, {"worker": worker, "epoch": fence.epoch})
                    if outcome == "pause":
                        store.conn.execute("UPDATE runs SET status = ? WHERE id = ?", (S.PAUSED, run_id))
                    elif outcome == "finish":
                        store.conn.execute("UPDATE runs SET status = ? WHERE id = ?", (S.SUCCEEDED, run_id))
                    else:
                        store.conn.execute("UPDATE runs SET updated_at = ? WHERE id = ?", (store.now(), run_id))
            except L.LeaseLost:
                assert not ours, f"{worker} epoch {fence.epoch} refused, yet the model says it holds {run_id}"
                return
            assert ours, f"{worker} epoch {fence.epoch} wrote to {run_id} held by {run.holder}"
            run.lapsed = False  # the fence check extends the lease
            if outcome == "pause":
                run.status, run.waiting = S.PAUSED, run.waiting or "approval"
            if outcome == "finish":
                run.status = S.SUCCEEDED
            if outcome in ("pause", "finish"):
                assert L.release(store, fence)
                run.holder = None

        @precondition(lambda self: self.world.fences)
        @rule(data=st.data())
        def worker_releases(self, data: st.DataObject) -> None:
            worker, run_id = data.draw(st.sampled_from(sorted(self.world.fences)))
            fence, run = self.world.fences[(worker, run_id)], self.world.runs[run_id]
            released = L.release(self.stores[worker], fence)
            assert released == (run.holder == (worker, fence.epoch))
            if released:
                run.holder = None

        @precondition(lambda self: any(r.holder for r in self.world.runs.values()))
        @rule(data=st.data())
        def run_lease_lapses(self, data: st.DataObject) -> None:
            run_id = data.draw(st.sampled_from(sorted(i for i, r in self.world.runs.items() if r.holder)))
            with L.unfenced():
                self.person.conn.execute(
                    "UPDATE runs SET lease_until = ? WHERE id = ?", (self.person.now() - 1, run_id)
                )
            self.world.runs[run_id].lapsed = True

        # ---- a person ----------------------------------------------------------------

        @precondition(lambda self: any(r.waiting == "approval" for r in self.world.runs.values()))
        @rule(data=st.data())
        def approve(self, data: st.DataObject) -> None:
            run_id = data.draw(
                st.sampled_from(sorted(i for i, r in self.world.runs.items() if r.waiting == "approval"))
            )
            store = self.person
            with L.unfenced(), store.transaction():
                store.ledger.append("approval.recorded", run_id, {"step": "gate", "by": "alice"})
                store.set_timer(run_id, "", "approval", store.now())
            self.world.runs[run_id].waiting = None

        @precondition(lambda self: any(r.state == D.LOST for r in self.world.rows.values()))
        @rule(data=st.data(), decision=st.sampled_from(["retry", "succeeded"]))
        def decide(self, data: st.DataObject, decision: str) -> None:
            """A person decides a step in doubt (its row lost): `retry` queues a new attempt
            with the same key; `succeeded` lets the run finish."""
            lost = sorted(i for i, r in self.world.rows.items() if r.state == D.LOST)
            row_id = data.draw(st.sampled_from(lost))
            row = self.world.rows[row_id]
            if self.row_of(row.run)[0] != row_id:
                return  # an older attempt: already decided
            store = self.person
            with L.unfenced(), store.transaction():
                store.ledger.append("step.decided", row.run, {"step": "s", "decision": decision, "by": "alice"})
            run = self.world.runs[row.run]
            run.waiting = None
            if decision == "retry":
                self.world.retries[row.key] += 1
                self.enqueue(row.run, row.key, row.idempotent, row.attempt + 1)
            else:
                run.decided = True

        # ---- runners -----------------------------------------------------------------

        @rule(runner=st.sampled_from(RUNNERS))
        def runner_claims(self, runner: str) -> None:
            from opsdsl.runtime.pool_runner import claim_rows

            queued = sorted(i for i, r in self.world.rows.items() if r.state == D.QUEUED)
            claims = claim_rows(self.stores[runner], POOL, runner, 1, TTL)
            assert [c.row_id for c in claims] == queued[:1]
            for claim in claims:
                row = self.world.rows[claim.row_id]
                assert claim.epoch == row.epoch + 1 and claim.key == row.key
                row.state, row.claimant, row.epoch, row.lapsed = D.CLAIMED, runner, claim.epoch, False
                self.world.held[runner].append(Held(claim.row_id, claim.epoch, claim.key))

        def _held(self, data: st.DataObject) -> tuple[str, Held]:
            choices = [(r, i) for r in RUNNERS for i in range(len(self.world.held[r]))]
            runner, index = data.draw(st.sampled_from(choices))
            return runner, self.world.held[runner][index]

        def _current(self, runner: str, held: Held) -> bool:
            row = self.world.rows[held.row]
            return row.state == D.CLAIMED and row.claimant == runner and row.epoch == held.epoch

        @precondition(lambda self: any(self.world.held.values()))
        @rule(data=st.data())
        def runner_acts(self, data: st.DataObject) -> None:
            """The side effect, once per claim, whatever the claim's state (a runner does
            not ask before acting: the fence is what keeps claims apart)."""
            _, held = self._held(data)
            if not held.performed:
                held.performed = True
                self.world.sent[held.key] += 1

        @precondition(lambda self: any(self.world.held.values()))
        @rule(data=st.data())
        def runner_heartbeats(self, data: st.DataObject) -> None:
            from opsdsl.runtime.pool_runner import renew_lease

            runner, held = self._held(data)
            current = self._current(runner, held)
            assert renew_lease(self.stores[runner], held.row, runner, held.epoch, TTL) == current
            if current:
                self.world.rows[held.row].lapsed = False

        @precondition(lambda self: any(self.world.held.values()))
        @rule(data=st.data(), succeeded=st.booleans())
        def runner_finishes(self, data: st.DataObject, succeeded: bool) -> None:
            from opsdsl.runtime.pool_runner import write_result

            runner, held = self._held(data)
            current = self._current(runner, held)
            state = D.DONE if succeeded else D.FAILED
            written = write_result(
                self.stores[runner], held.row, runner, held.epoch, state, {"ok": succeeded}, None, False
            )
            assert written == current, (runner, held, self.world.rows[held.row])
            if written:
                self.world.rows[held.row].state = state
                if state == D.FAILED:  # the step failed: the run's driver ends it
                    self.world.runs[self.world.rows[held.row].run].decided = True
            self.world.held[runner].remove(held)

        @precondition(lambda self: any(self.world.held.values()))
        @rule(runner=st.sampled_from(RUNNERS))
        def runner_dies(self, runner: str) -> None:
            self.world.held[runner] = []

        @precondition(lambda self: any(r.state == D.CLAIMED for r in self.world.rows.values()))
        @rule(data=st.data())
        def dispatch_lease_lapses(self, data: st.DataObject) -> None:
            row_id = data.draw(st.sampled_from(sorted(i for i, r in self.world.rows.items() if r.state == D.CLAIMED)))
            self.person.conn.execute(
                "UPDATE dispatch SET lease_until = ? WHERE id = ?", (self.person.now() - 1, row_id)
            )
            self.world.rows[row_id].lapsed = True

        @precondition(lambda self: any(r.state == D.CLAIMED for r in self.world.rows.values()))
        @rule(data=st.data())
        def driver_polls(self, data: st.DataObject) -> None:
            """What Dispatcher.execute does on each poll of a claimed row."""
            row_id = data.draw(st.sampled_from(sorted(i for i, r in self.world.rows.items() if r.state == D.CLAIMED)))
            row = self.world.rows[row_id]
            dispatcher = D.Dispatcher(self.person, {"runner": POOL, "idempotent": row.idempotent}, "tag")
            dispatcher.row_id = row_id
            state, epoch, lease_until = self.one(
                "SELECT state, claim_epoch, lease_until FROM dispatch WHERE id = ?", row_id
            )
            if state == D.CLAIMED and lease_until is not None and lease_until < self.person.now():
                dispatcher._lapsed(int(epoch))
            if not row.lapsed:
                return
            if row.idempotent:
                row.state, row.claimant = D.QUEUED, None
            else:
                row.state = D.LOST
                self.world.runs[row.run].waiting = "in_doubt"

        # ---- invariants --------------------------------------------------------------

        @invariant()
        def rows_are_what_the_model_says(self) -> None:
            if not hasattr(self, "world"):
                return
            found = {
                int(r[0]): (r[1], r[2], int(r[3]))
                for r in self.person.conn.execute("SELECT id, state, claimant, claim_epoch FROM dispatch").fetchall()
            }
            expected = {i: (r.state, r.claimant, r.epoch) for i, r in self.world.rows.items()}
            assert found == expected
            for run_id, run in self.world.runs.items():
                status, owner, epoch, until = self.one(
                    "SELECT status, lease_owner, lease_epoch, lease_until FROM runs WHERE id = ?", run_id
                )
                assert status == run.status and int(epoch) == run.epoch
                assert (until is not None) == (run.holder is not None), (run_id, until, run)
                if run.holder is not None:
                    assert owner == run.holder[0]

        @invariant()
        def a_non_idempotent_step_is_done_at_most_once_per_decision(self) -> None:
            if not hasattr(self, "world"):
                return
            for row in self.world.rows.values():
                if not row.idempotent:
                    assert self.world.sent[row.key] <= 1 + self.world.retries[row.key], row.key

        @invariant()
        def claimed_rows_have_a_claimant_and_a_lease(self) -> None:
            if not hasattr(self, "world"):
                return
            bad = self.person.conn.execute(
                "SELECT id FROM dispatch WHERE state = ? AND (claimant IS NULL OR lease_until IS NULL)", (D.CLAIMED,)
            ).fetchall()
            assert bad == []

        @invariant()
        def a_paused_run_holds_no_lease(self) -> None:
            if not hasattr(self, "world"):
                return
            held = self.person.conn.execute(
                "SELECT id FROM runs WHERE status = ? AND lease_until IS NOT NULL", (S.PAUSED,)
            ).fetchall()
            paused_then_claimed = {i for i, r in self.world.runs.items() if r.status == S.PAUSED and r.holder}
            assert {r[0] for r in held} <= paused_then_claimed  # only a worker that claimed it since

        @invariant()
        def the_ledger_verifies(self) -> None:
            if not hasattr(self, "world"):
                return
            from opsdsl.audit.ledger import verify_ledger

            report = verify_ledger(self.person.conn, {})
            assert report.ok, report.render()

    return Interleavings


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_url") if request.param == "postgresql" else None


def test_interleavings_keep_the_invariants(database: str | None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OPSDSL_DATABASE", raising=False)
    monkeypatch.delenv("OPSDSL_LEDGER_MODE", raising=False)
    run_state_machine_as_test(
        machine(database),
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
        ),
    )
