"""`opsdsl runner --pool NAME`: execute the side-effect steps queued for a runner pool.

A runner claims queued `dispatch` rows of its pool (opsdsl.runtime.dispatch), each claim
raising the row's `claim_epoch` and taking a lease measured by the database clock; it
renews the lease every third of its length while the action runs, with the existing
action code (the in-process executor) and the step's Idempotency-Key. Its result is
written fenced by (row, claimant, epoch): a runner whose row was taken from it (its lease
lapsed and the worker re-queued the step, or the worker withdrew it) changes nothing, and
says so in its log. A runner that cannot renew its lease (the database is unreachable, or
the row is no longer its own) cancels the action (a `shell` action's process group is
killed) once its lease is past, so that a step re-sent elsewhere never runs twice at once.

SIGTERM (or SIGINT) drains: no new claims; running actions finish and their results are
written; then it exits. A second signal cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.runtime import dispatch as D
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest

IDLE_POLL = 0.2  # seconds between looks for queued rows


@dataclass
class Claim:
    row_id: int
    epoch: int
    run_id: str
    step_id: str
    attempt: int
    action: str
    inputs: Any
    secrets: dict[str, Any]
    request: dict[str, Any]
    key: str
    timeout: float | None


class PoolRunner:
    """One runner process's loop over one pool."""

    def __init__(
        self,
        store: Any,
        pool: str,
        name: str,
        lease: float,
        concurrency: int,
        secrets: Any,
        evidence_root: Path,
        log: Callable[[str], None],
    ) -> None:
        from opsdsl.runtime.executor import InProcessExecutor

        self.store = store
        self.pool = pool
        self.name = name
        self.lease = lease
        self.concurrency = concurrency
        self.secrets = secrets
        self.evidence_root = evidence_root
        self.log = log
        self.executor = InProcessExecutor()
        self.running: set[asyncio.Task] = set()
        self.draining = asyncio.Event()
        D.prepare(store)

    # ---- the loop ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Claim and run until drained (`draining` set), then wait for what runs."""
        self.log(f"runner {self.name}: pool {self.pool}, lease {self.lease:g}s, concurrency {self.concurrency}")
        while not self.draining.is_set():
            free = self.concurrency - len(self.running)
            claims: list[Claim] = []
            if free > 0:
                try:
                    claims = self.claim(free)
                except Exception as error:  # the database is away: try again shortly
                    self.log(f"runner {self.name}: cannot claim: {type(error).__name__}: {error}")
            for claim in claims:
                task = asyncio.create_task(self.work(claim), name=f"dispatch-{claim.row_id}")
                self.running.add(task)
                task.add_done_callback(self.running.discard)
            if claims and len(self.running) < self.concurrency:
                continue  # there may be more queued
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.draining.wait(), IDLE_POLL)
        if self.running:
            self.log(f"runner {self.name}: draining {len(self.running)} running action(s)")
            await asyncio.gather(*self.running, return_exceptions=True)
        self.log(f"runner {self.name}: stopped")

    def claim(self, limit: int) -> list[Claim]:
        """Up to `limit` queued rows of the pool, now ours (epoch + 1, a fresh lease)."""
        select = (
            "SELECT id, claim_epoch, run_id, step_id, attempt, action, inputs, secrets, request, idempotency_key,"
            " timeout FROM dispatch WHERE pool = ? AND state = ? ORDER BY id LIMIT ?"
        )
        conn = self.store.conn
        if self.store.postgres:
            # Only the rows: SKIP LOCKED lets runners claim side by side, without the writer lock.
            conn.execute("BEGIN")
            select += " FOR UPDATE SKIP LOCKED"
            transaction: Any = _PgTransaction(conn)
        else:
            transaction = self.store.transaction()
        claims = []
        with transaction:
            now = self.store.now()
            for row in conn.execute(select, (self.pool, D.QUEUED, limit)).fetchall():
                conn.execute(
                    "UPDATE dispatch SET state = ?, claimant = ?, claim_epoch = claim_epoch + 1, lease_until = ?,"
                    " claimed_at = ? WHERE id = ? AND state = ?",
                    (D.CLAIMED, self.name, now + self.lease, now, row[0], D.QUEUED),
                )
                claims.append(
                    Claim(
                        row_id=int(row[0]),
                        epoch=int(row[1]) + 1,
                        run_id=row[2],
                        step_id=row[3],
                        attempt=int(row[4]),
                        action=row[5],
                        inputs=json.loads(row[6]),
                        secrets=json.loads(row[7]),
                        request=json.loads(row[8]),
                        key=row[9],
                        timeout=row[10],
                    )
                )
        for claim in claims:
            self.log(
                f"runner {self.name}: claimed dispatch {claim.row_id} (run {claim.run_id} step {claim.step_id}"
                f" attempt {claim.attempt}, epoch {claim.epoch}, key {claim.key})"
            )
        return claims

    # ---- one claimed row -------------------------------------------------------------------

    async def work(self, claim: Claim) -> None:
        """Run the claimed action beside its heartbeat; write its result if the row is still ours."""
        action = asyncio.create_task(self.perform(claim))
        try:
            lost = await self.heartbeat(claim, action)
        except asyncio.CancelledError:  # a second signal: stop now; the lease lapses, the worker decides
            action.cancel()
            await asyncio.gather(action, return_exceptions=True)
            raise
        try:
            state, outputs, error, retryable = await action
        except asyncio.CancelledError:
            if not lost:
                raise
            self.log(f"runner {self.name}: dispatch {claim.row_id}: action cancelled ({lost}); no result written")
            return
        if lost:
            self.log(f"runner {self.name}: dispatch {claim.row_id}: {lost}; its result is not written")
            return
        self.finish(claim, state, outputs, error, retryable)

    async def heartbeat(self, claim: Claim, action: asyncio.Task) -> str | None:
        """Renew the lease every third of it until the action ends; cancel the action once the
        lease cannot be renewed (the row is not ours, or its lease is past). Why, or None."""
        renewed = time.monotonic()
        while True:
            done, _ = await asyncio.wait({action}, timeout=self.lease / 3)
            if done:
                return None
            sent = time.monotonic()
            try:
                now = self.store.now()
                cursor = self.store.conn.execute(
                    "UPDATE dispatch SET lease_until = ? WHERE id = ? AND claimant = ? AND claim_epoch = ? AND state = ?",
                    (now + self.lease, claim.row_id, self.name, claim.epoch, D.CLAIMED),
                )
                if cursor.rowcount == 0:
                    why = "the row is no longer ours (re-claimed or withdrawn)"
                    self.log(f"runner {self.name}: dispatch {claim.row_id}: {why}; cancelling the action")
                    action.cancel()
                    await asyncio.gather(action, return_exceptions=True)
                    return why
                renewed = sent
            except Exception as error:
                if time.monotonic() - renewed >= self.lease:
                    why = f"the lease could not be renewed for {self.lease:g}s ({type(error).__name__})"
                    self.log(f"runner {self.name}: dispatch {claim.row_id}: {why}; cancelling the action")
                    action.cancel()
                    await asyncio.gather(action, return_exceptions=True)
                    return why
                self.log(f"runner {self.name}: dispatch {claim.row_id}: heartbeat failed: {type(error).__name__}")

    async def perform(self, claim: Claim) -> tuple[str, dict[str, Any], str | None, bool]:
        """(state, outputs, error, retryable), every text redacted of the runner's secrets."""
        from opsdsl.runtime.secrets import SecretError

        redactor = self.secrets.redactor
        try:
            inputs = D.resolve_references(claim.action, claim.inputs, claim.secrets, self.secrets)
        except SecretError as error:
            return D.FAILED, {}, redactor.text(error.message), False
        request = ActionRequest(
            run_id=claim.run_id,
            step_id=claim.step_id,
            action=claim.action,
            inputs=inputs,
            attempt=claim.attempt,
            idempotency_key=claim.key,
            timeout=claim.timeout,
            severity=claim.request.get("severity") or "SEV-4",
            playbook=claim.request.get("playbook") or "",
            pack=claim.request.get("pack") or "",
        )
        context = ActionContext(
            evidence_dir=self.evidence_root / claim.run_id / "evidence",
            redact=redactor.text,
            redact_bytes=redactor.bytes,
            state_dir=self.store.root,
        )
        try:
            if claim.timeout is None:
                outputs = await self.executor.execute(request, context)
            else:
                outputs = await asyncio.wait_for(self.executor.execute(request, context), claim.timeout)
        except TimeoutError:
            return D.FAILED, {}, f"timed out after {claim.timeout:g}s", True
        except ActionFailed as failure:
            return D.FAILED, redactor.data(failure.outputs), redactor.text(failure.message), failure.retryable
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the action's own bug (or an unknown action): not retried
            message = f"action `{claim.action}` crashed: {type(error).__name__}: {error}"
            return D.FAILED, {}, redactor.text(message), False
        return D.DONE, redactor.data(outputs or {}), None, False

    def finish(self, claim: Claim, state: str, outputs: dict[str, Any], error: str | None, retryable: bool) -> None:
        """Write the result, fenced by (row, claimant, epoch): refused unless still ours."""
        try:
            cursor = self.store.conn.execute(
                "UPDATE dispatch SET state = ?, result = ?, error = ?, retryable = ?, finished_at = ?"
                " WHERE id = ? AND claimant = ? AND claim_epoch = ? AND state = ?",
                (
                    state,
                    json.dumps(outputs, sort_keys=True),
                    error,
                    1 if retryable else 0,
                    self.store.now(),
                    claim.row_id,
                    self.name,
                    claim.epoch,
                    D.CLAIMED,
                ),
            )
        except Exception as failure:  # its lease lapses; the worker re-queues it or puts it in doubt
            self.log(f"runner {self.name}: dispatch {claim.row_id}: cannot write the result: {failure}")
            return
        if cursor.rowcount == 0:
            self.log(
                f"runner {self.name}: dispatch {claim.row_id}: result refused: epoch {claim.epoch} is no longer"
                " the row's (its lease was taken); nothing changed"
            )
            return
        self.log(f"runner {self.name}: dispatch {claim.row_id}: {state}" + (f": {error}" if error else ""))


class _PgTransaction:
    """COMMIT on success, ROLLBACK on error, of a transaction already BEGUN."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __enter__(self) -> Any:
        return self.conn

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.conn.execute("ROLLBACK" if kind is not None else "COMMIT")


def run_pool(runner: PoolRunner) -> None:
    """Serve until SIGTERM/SIGINT (drain), a second one cancelling what still runs."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            if runner.draining.is_set():
                for running in list(runner.running):
                    running.cancel()
                return
            runner.log(f"runner {runner.name}: draining (a second signal cancels the running actions)")
            runner.draining.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop)
        await runner.serve()

    asyncio.run(main())
