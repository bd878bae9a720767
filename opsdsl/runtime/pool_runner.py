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
RESULT_BATCH = 64  # most results written in one statement
RESULT_BATCH_BYTES = 1024 * 1024  # and about this much of their outputs and errors at most


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
    pool: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        """A claim as the server sent it (hostile until shown otherwise: ValueError)."""
        try:
            claim = cls(**{name: data[name] for name in cls.__dataclass_fields__})
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a claim: {error}") from None
        if not isinstance(claim.row_id, int) or not isinstance(claim.epoch, int) or not isinstance(claim.attempt, int):
            raise ValueError("not a claim: row_id, epoch and attempt are integers")
        if not all(isinstance(v, str) for v in (claim.run_id, claim.step_id, claim.action, claim.key)):
            raise ValueError("not a claim: run_id, step_id, action and key are strings")
        if not isinstance(claim.secrets, dict) or not isinstance(claim.request, dict):
            raise ValueError("not a claim: secrets and request are objects")
        return claim


class DatabaseQueue:
    """Claims, heartbeats and results straight in the state database, on a thread of their
    own with a connection of their own: a call that hangs (packets dropped, not refused)
    never blocks the event loop, so the heartbeat can still stop the action in time. On
    PostgreSQL the connection gives up well within the lease (`runner_url`)."""

    def __init__(self, store: Any, lease: float = 30.0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.root = store.root
        self.database = runner_url(store.conn.url, lease) if store.postgres else "sqlite"
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="opsdsl-runner-db")
        self._store: Any = None
        self._results: list[tuple[tuple, asyncio.Future]] = []  # results waiting for a write
        self._writer: asyncio.Task | None = None

    def _in_store(self, work: Callable[..., Any], *args: Any) -> Any:
        if self._store is None:
            from opsdsl.runtime.store import Store

            self._store = Store(self.root, create=False, database=self.database)
            D.prepare(self._store)
        return work(self._store, *args)

    async def _call(self, work: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._in_store, work, *args)

    async def claim(self, pool: str, name: str, limit: int, lease: float) -> list[Claim]:
        return await self._call(claim_rows, pool, name, limit, lease)

    async def heartbeat(self, claim: Claim, name: str, lease: float) -> bool:
        return await self._call(renew_lease, claim.row_id, name, claim.epoch, lease)

    async def finish(
        self, claim: Claim, name: str, state: str, outputs: dict, error: str | None, retryable: bool
    ) -> bool:
        """Write the result (fenced, as `write_result`), in one statement with the others that
        are ready by then: results that end while a write is on its way go together in the
        next (one round trip and one commit for all of them). Whether it was written."""
        waiter = asyncio.get_running_loop().create_future()
        self._results.append(((claim.row_id, name, claim.epoch, state, outputs, error, retryable), waiter))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_results())
        return await waiter

    async def _write_results(self) -> None:
        while self._results:
            batch, size = [], 0
            while self._results and len(batch) < RESULT_BATCH and size < RESULT_BATCH_BYTES:
                item = self._results.pop(0)
                batch.append(item)
                size += len(json.dumps(item[0][4])) + len(item[0][5] or "")
            try:
                written = await self._call(write_results, [result for result, _ in batch])
            except Exception as error:  # each waiter says so; their leases lapse
                for _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            for result, waiter in batch:
                if not waiter.done():
                    waiter.set_result(result[0] in written)

    def close(self) -> None:
        """Let go of the thread and its connection, closed on that thread (a call stuck on a
        dead network is left to its socket timeouts: the process need not wait for it)."""
        with contextlib.suppress(RuntimeError):
            self.thread.submit(self._close_store)
        self.thread.shutdown(wait=False)

    def _close_store(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()


def runner_url(url: str, lease: float) -> str:
    """The database URL with what makes a runner's connection give up within its lease on a
    network that drops packets: TCP keepalives, `tcp_user_timeout` (unacknowledged data) and
    `statement_timeout`, each below the lease (libpq parameters; the URL's own win)."""
    from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    below = max(0.5, lease / 3)  # seconds
    defaults = {
        "keepalives": "1",
        "keepalives_idle": str(max(1, int(below))),
        "keepalives_interval": "1",
        "keepalives_count": "3",
        "tcp_user_timeout": str(int(below * 1000)),
    }
    for name, value in defaults.items():
        query.setdefault(name, value)
    timeout = f"-c statement_timeout={int(below * 1000)}"
    query["options"] = f"{query['options']} {timeout}" if query.get("options") else timeout
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


class HttpQueue:
    """The same calls over HTTPS to `opsdsl serve` (`/v1/runners/POOL/…`), for a runner that
    cannot reach the database: outbound only, with a runner token for its pool."""

    TIMEOUT = 10.0  # seconds for one call (and never past the claim's lease: PoolRunner bounds it)
    MAX_BODY = 16 * 1024 * 1024  # what serve takes from a runner (opsdsl.serve.runner_api.MAX_BODY)

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def close(self) -> None:
        pass

    async def claim(self, pool: str, name: str, limit: int, lease: float) -> list[Claim]:
        answer = await self._post(f"/v1/runners/{pool}/claim", {"runner": name, "limit": limit, "lease": lease})
        claims = answer.get("claims")
        if not isinstance(claims, list):
            raise ValueError("the server's answer has no list of claims")
        parsed = [Claim.from_dict(item) for item in claims]
        for claim in parsed:
            claim.pool = pool
        return parsed

    async def heartbeat(self, claim: Claim, name: str, lease: float) -> bool:
        path = f"/v1/runners/{claim.pool}/dispatch/{claim.row_id}/heartbeat"
        answer = await self._post(path, {"runner": name, "epoch": claim.epoch, "lease": lease})
        return answer.get("ok") is True

    async def finish(
        self, claim: Claim, name: str, state: str, outputs: dict, error: str | None, retryable: bool
    ) -> bool:
        """Post the result; one the server refuses as too large (413) is posted again as a
        failure, with its outputs cut down, so the step neither loops nor goes in doubt."""
        import urllib.error

        body = {
            "runner": name,
            "epoch": claim.epoch,
            "state": state,
            "outputs": outputs,
            "error": error,
            "retryable": retryable,
        }
        path = f"/v1/runners/{claim.pool}/dispatch/{claim.row_id}/result"
        size = len(json.dumps(body).encode())
        if size <= self.MAX_BODY:  # else the server would refuse it: say so instead
            try:
                return (await self._post(path, body)).get("ok") is True
            except urllib.error.HTTPError as refused:
                if refused.code != 413:
                    raise
        body.update(
            state=D.FAILED, outputs=truncated(outputs), error=f"result too large ({size} bytes)", retryable=False
        )
        if len(json.dumps(body).encode()) > self.MAX_BODY // 2:
            body["outputs"] = {}
        return (await self._post(path, body)).get("ok") is True

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._post_now, path, body)

    def _post_now(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.request

        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=self.TIMEOUT) as response:
            data = json.loads(response.read(16 * 1024 * 1024))
        if not isinstance(data, dict):
            raise ValueError("the server's answer is not an object")
        return data


TRUNCATED = 4096  # characters kept of each text output of a result too large to send


def truncated(outputs: dict[str, Any]) -> dict[str, Any]:
    """A too-large result's outputs: texts cut to their first TRUNCATED characters, other
    values than numbers, booleans and null dropped."""
    kept: dict[str, Any] = {}
    for key, value in outputs.items():
        if isinstance(value, str):
            kept[key] = value[:TRUNCATED] + ("…" if len(value) > TRUNCATED else "")
        elif value is None or isinstance(value, (bool, int, float)):
            kept[key] = value
    return kept


class PoolRunner:
    """One runner process's loop over one pool."""

    def __init__(
        self,
        queue: Any,
        pool: str,
        name: str,
        lease: float,
        concurrency: int,
        secrets: Any,
        evidence_root: Path,
        log: Callable[[str], None],
    ) -> None:
        from opsdsl.runtime.executor import InProcessExecutor

        self.queue = queue if not hasattr(queue, "conn") else DatabaseQueue(queue, lease)  # a Store: the database
        self.pool = pool
        self.name = name
        self.lease = lease
        self.concurrency = concurrency
        self.secrets = secrets
        self.evidence_root = evidence_root
        self.state_dir = evidence_root.parent  # no action may read it
        self.log = log
        self.executor = InProcessExecutor()
        self.running: set[asyncio.Task] = set()
        self.draining = asyncio.Event()
        self.freed = asyncio.Event()  # a running action ended: a slot is free

    # ---- the loop ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Claim and run until drained (`draining` set), then wait for what runs.

        A claim asks for as many rows as there are free slots, in one round trip. When it
        filled them all the queue may hold more: the next claim is made as soon as a quarter
        of the slots are free again (actions ended; at most IDLE_POLL later), not after a
        poll. Otherwise it looks again every IDLE_POLL."""
        from opsdsl.runtime.actions.http import shared_clients

        self.log(f"runner {self.name}: pool {self.pool}, lease {self.lease:g}s, concurrency {self.concurrency}")
        async with shared_clients():  # the steps' HTTP requests keep their connections open between steps
            await self._serve()
        self.log(f"runner {self.name}: stopped")

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        batch = max(1, self.concurrency // 4)  # slots a claim waits for while the queue holds more
        more = False  # the last claim filled every free slot: the queue may hold more
        while not self.draining.is_set():
            free = self.concurrency - len(self.running)
            claims: list[Claim] = []
            if free > 0:
                asked = time.monotonic()
                try:
                    claims = await self.queue.claim(self.pool, self.name, free, self.lease)
                    self._claimed(claims)
                except Exception as error:  # the database is away: try again shortly
                    self.log(f"runner {self.name}: cannot claim: {type(error).__name__}: {error}")
                more = len(claims) >= free
            for claim in claims:
                task = asyncio.create_task(self.work(claim, asked), name=f"dispatch-{claim.row_id}")
                self.running.add(task)
                task.add_done_callback(self._ended)
            if not more:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.draining.wait(), IDLE_POLL)
                continue
            # Work is waiting: claim again once `batch` slots are free (one round trip for
            # several rows), or IDLE_POLL from now, whichever comes first.
            until = loop.time() + IDLE_POLL
            while self.concurrency - len(self.running) < batch and not self.draining.is_set():
                self.freed.clear()
                left = until - loop.time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.freed.wait(), left)
        if self.running:
            self.log(f"runner {self.name}: draining {len(self.running)} running action(s)")
            await asyncio.gather(*self.running, return_exceptions=True)

    def _ended(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.freed.set()

    def _claimed(self, claims: list[Claim]) -> None:
        for claim in claims:
            self.log(
                f"runner {self.name}: claimed dispatch {claim.row_id} (run {claim.run_id} step {claim.step_id}"
                f" attempt {claim.attempt}, epoch {claim.epoch}, key {claim.key})"
            )

    # ---- one claimed row -------------------------------------------------------------------

    async def work(self, claim: Claim, asked: float | None = None) -> None:
        """Run the claimed action beside its heartbeat; write its result if the row is still ours.
        `asked`: when the claim was asked for (time.monotonic), where its lease may have begun."""
        action = asyncio.create_task(self.perform(claim))
        try:
            lost = await self.heartbeat(claim, action, time.monotonic() if asked is None else asked)
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
        await self.finish(claim, state, outputs, error, retryable)

    async def heartbeat(self, claim: Claim, action: asyncio.Task, since: float) -> str | None:
        """Renew the lease every third of it until the action ends; cancel the action once the
        lease cannot be renewed (the row is not ours), or once it is past, whether or not a
        renewal is still on its way (each is bounded by what is left of the lease). Why, or None."""
        until = since + self.lease  # the lease as this runner can be sure of it (monotonic clock)
        failure: str | None = None
        while True:
            done, _ = await asyncio.wait({action}, timeout=max(0.0, min(self.lease / 3, until - time.monotonic())))
            if done:
                return None
            left = until - time.monotonic()
            if left <= 0:
                why = (
                    f"the lease could not be renewed for {self.lease:g}s ({failure})"
                    if failure
                    else f"the lease is past ({self.lease:g}s without a renewal: this process was held up)"
                )
                return await self._stop(claim, action, why)
            sent = time.monotonic()
            try:
                ours = await asyncio.wait_for(self.queue.heartbeat(claim, self.name, self.lease), left)
            except Exception as error:  # TimeoutError too: the lease is past by now, the loop says so
                failure = type(error).__name__
                self.log(f"runner {self.name}: dispatch {claim.row_id}: heartbeat failed: {failure}")
                continue
            if not ours:
                return await self._stop(claim, action, "the row is no longer ours (re-claimed or withdrawn)")
            until = sent + self.lease

    async def _stop(self, claim: Claim, action: asyncio.Task, why: str) -> str:
        self.log(f"runner {self.name}: dispatch {claim.row_id}: {why}; cancelling the action")
        action.cancel()
        await asyncio.gather(action, return_exceptions=True)
        return why

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
            state_dir=self.state_dir,
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

    async def finish(self, claim: Claim, state: str, outputs: dict, error: str | None, retryable: bool) -> None:
        """Write the result, fenced by (row, claimant, epoch): refused unless still ours."""
        try:
            written = await asyncio.wait_for(
                self.queue.finish(claim, self.name, state, outputs, error, retryable),
                max(self.lease, HttpQueue.TIMEOUT),
            )
        except Exception as failure:  # its lease lapses; the worker re-queues it or puts it in doubt
            self.log(
                f"runner {self.name}: dispatch {claim.row_id}: cannot write the result: {type(failure).__name__}: {failure}"
            )
            return
        if not written:
            self.log(
                f"runner {self.name}: dispatch {claim.row_id}: result refused: epoch {claim.epoch} is no longer"
                " the row's (its lease was taken); nothing changed"
            )
            return
        self.log(f"runner {self.name}: dispatch {claim.row_id}: {state}" + (f": {error}" if error else ""))


# ---- the database side (a runner's own, or the server's for runners over HTTPS) ------------------


def claim_rows(store: Any, pool: str, name: str, limit: int, lease: float) -> list[Claim]:
    """Up to `limit` queued rows of `pool`, now `name`'s (epoch + 1, a lease on the database clock).

    On PostgreSQL one statement, one round trip and one commit for all of them: an UPDATE of
    the rows a `FOR UPDATE SKIP LOCKED` select picked (so runners claim side by side,
    never waiting for each other or for the writer lock), the lease measured by the
    database's clock inside it, RETURNING what the runner needs. Nothing queued: it changes
    nothing and draws no transaction id."""
    if store.postgres:
        now = store.now_sql()
        # The picked rows materialized first: `WHERE id IN (SELECT … LIMIT k …)` may be
        # planned as a join that reads the sub-select more than once, claiming more than k.
        rows = store.conn.execute(
            "WITH picked AS MATERIALIZED (SELECT id FROM dispatch WHERE pool = ? AND state = ? ORDER BY id LIMIT ?"
            " FOR UPDATE SKIP LOCKED)"
            f" UPDATE dispatch SET state = ?, claimant = ?, claim_epoch = claim_epoch + 1,"
            f" lease_until = {now} + ?, claimed_at = {now}"
            " FROM picked WHERE dispatch.id = picked.id AND dispatch.state = ?"
            " RETURNING dispatch.id, claim_epoch, run_id, step_id, attempt, action, inputs, secrets, request,"
            " idempotency_key, timeout",
            (pool, D.QUEUED, limit, D.CLAIMED, name, lease, D.QUEUED),
        ).fetchall()
        return [_claim(row, int(row[1]), pool) for row in sorted(rows, key=lambda row: int(row[0]))]
    select = (
        "SELECT id, claim_epoch, run_id, step_id, attempt, action, inputs, secrets, request, idempotency_key,"
        " timeout FROM dispatch WHERE pool = ? AND state = ? ORDER BY id LIMIT ?"
    )
    conn = store.conn
    if conn.execute("SELECT 1 FROM dispatch WHERE pool = ? AND state = ? LIMIT 1", (pool, D.QUEUED)).fetchone() is None:
        return []  # nothing queued: no write transaction (the drivers' commits need the lock more)
    claims = []
    with store.transaction():
        now = store.now()
        for row in conn.execute(select, (pool, D.QUEUED, limit)).fetchall():
            conn.execute(
                "UPDATE dispatch SET state = ?, claimant = ?, claim_epoch = claim_epoch + 1, lease_until = ?,"
                " claimed_at = ? WHERE id = ? AND state = ?",
                (D.CLAIMED, name, now + lease, now, row[0], D.QUEUED),
            )
            claims.append(_claim(row, int(row[1]) + 1, pool))
    return claims


def _claim(row: Any, epoch: int, pool: str) -> Claim:
    return Claim(
        row_id=int(row[0]),
        epoch=epoch,
        run_id=row[2],
        step_id=row[3],
        attempt=int(row[4]),
        action=row[5],
        inputs=json.loads(row[6]),
        secrets=json.loads(row[7]),
        request=json.loads(row[8]),
        key=row[9],
        timeout=row[10],
        pool=pool,
    )


def renew_lease(store: Any, row_id: int, name: str, epoch: int, lease: float, pool: str | None = None) -> bool:
    """Extend the claim's lease; False when the row is no longer this claim's."""
    where = " AND pool = ?" if pool is not None else ""
    cursor = store.conn.execute(
        f"UPDATE dispatch SET lease_until = {store.now_sql()} + ?"
        " WHERE id = ? AND claimant = ? AND claim_epoch = ? AND state = ?" + where,
        (lease, row_id, name, epoch, D.CLAIMED, *((pool,) if pool is not None else ())),
    )
    return cursor.rowcount > 0


def write_result(
    store: Any,
    row_id: int,
    name: str,
    epoch: int,
    state: str,
    outputs: dict,
    error: str | None,
    retryable: bool,
    pool: str | None = None,
) -> bool:
    """The claim's result, fenced by (row, claimant, epoch); False (nothing changed) when refused."""
    where = " AND pool = ?" if pool is not None else ""
    cursor = store.conn.execute(
        f"UPDATE dispatch SET state = ?, result = ?, error = ?, retryable = ?, finished_at = {store.now_sql()}"
        " WHERE id = ? AND claimant = ? AND claim_epoch = ? AND state = ?" + where,
        (
            state,
            json.dumps(outputs, sort_keys=True),
            error,
            1 if retryable else 0,
            row_id,
            name,
            epoch,
            D.CLAIMED,
            *((pool,) if pool is not None else ()),
        ),
    )
    return cursor.rowcount > 0


def write_results(store: Any, results: list[tuple]) -> set[int]:
    """Several claims' results, each fenced by (row, claimant, epoch) as in `write_result`:
    (row_id, name, epoch, state, outputs, error, retryable) each. The ids written; the
    others were refused and changed nothing. On PostgreSQL one statement (one commit)."""
    if not store.postgres or len(results) == 1:
        return {result[0] for result in results if write_result(store, *result)}
    values = ", ".join(["(?::bigint, ?, ?::bigint, ?, ?, ?, ?::bigint)"] * len(results))
    parameters: list[Any] = []
    for row_id, name, epoch, state, outputs, error, retryable in results:
        parameters += [row_id, name, epoch, state, json.dumps(outputs, sort_keys=True), error, 1 if retryable else 0]
    rows = store.conn.execute(
        "UPDATE dispatch AS d SET state = r.state, result = r.result, error = r.error, retryable = r.retryable,"
        f" finished_at = {store.now_sql()} FROM (VALUES {values})"
        " AS r(id, claimant, epoch, state, result, error, retryable)"
        " WHERE d.id = r.id AND d.claimant = r.claimant AND d.claim_epoch = r.epoch AND d.state = ? RETURNING d.id",
        (*parameters, D.CLAIMED),
    ).fetchall()
    return {int(row[0]) for row in rows}


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
            runner.freed.set()  # stop waiting for a slot

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop)
        try:
            await runner.serve()
        finally:
            close = getattr(runner.queue, "close", None)
            if close is not None:
                close()

    asyncio.run(main())
