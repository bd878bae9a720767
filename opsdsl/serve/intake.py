"""`opsdsl serve`: the HTTP front door of the events engine (`opsdsl.runtime.service`).

Alertmanager webhooks (`POST /v1/alertmanager`) and generic JSON events (`POST /v1/events`)
come in over HTTP. A request is checked in this order; the first check that fails answers:

1. the path and method exist (404, 405); the server is not shutting down (503);
2. the headers' credentials: a bearer token, or signature headers to check once the body
   is read (401);
3. the body: JSON (415), no content coding (415), at most `--max-body` bytes (413), room
   for it in the backlog's bytes (429/503, below), all of it within `--body-timeout` (408);
   each enforced while reading;
4. the HMAC signature (v2: over method, path, timestamp and body; v1, body only, only with
   `--accept-legacy-signatures`), its timestamp (±300 s) and that no accepted request used
   it, even before a restart: spent signatures are in the state database (401);
5. the JSON parses, has the endpoint's shape, and every event can go to the ledger (400),
   checked on a small thread pool, off the event loop, so health checks and signals are
   answered while big bodies are parsed (a body of at most 8 KiB is checked on the loop:
   that takes microseconds, the trip through the pool a loop turn);
6. the backlog has room for the events (429 with Retry-After; 503 on /v1/alertmanager,
   because Alertmanager retries a 5xx answer but gives up on a 4xx);
7. `Service.persist_events` commits them on the intake writer's thread (503 if the database
   refuses); only then the answer is 202 with their ids.

The backlog is bounded in events (`--queue-size`) and in bytes (`--max-backlog-bytes`:
bodies being read and parsed, plus events waiting for the worker). Connections are
bounded by `guard.ConnectionGuard` (header deadline, per-peer cap), the log by
`guard.LogLimiter`.

Step 7 runs on the intake writer's thread, with its own database connection (`IntakeWriter`):
the event loop never waits for an fsync, and the 202 leaves only once the commit is over.
Requests that reach the writer while it commits go in its next transaction together (group
commit): under load, one fsync carries many requests. The signatures of signed requests are
recorded as spent in that same transaction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from opsdsl.errors import OpsdslError, UsageError
from opsdsl.runtime.service import QueueFull, Service, event_key, events_from_payload
from opsdsl.runtime.store import EventKeyReused
from opsdsl.serve.guard import ConnectionGuard, LogLimiter

log = logging.getLogger("opsdsl.serve")

INTAKE_PATHS = {"/v1/alertmanager": "alertmanager", "/v1/events": "http"}  # path → events.source
SIGNATURE_WINDOW = 300  # seconds a signed request's timestamp may be off, either way
SIGNATURE_HEADER, TIMESTAMP_HEADER = "X-Opsdsl-Signature", "X-Opsdsl-Timestamp"
SIGNATURE_V2, SIGNATURE_V1 = "v2", "sha256"  # the schemes of X-Opsdsl-Signature: SCHEME=HEX[, SCHEME=HEX]
MAX_DEPTH = 64  # nesting of an event's JSON; Alertmanager's is 3
RETRY_AFTER_BUSY, RETRY_AFTER_UNAVAILABLE = "1", "5"
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")  # a closed terminal stops the server as SIGTERM does
ANNOUNCE_GRACE = 5.0  # seconds the announcer gets at shutdown to send the last outcomes
PARSE_THREADS = 2  # bodies parsed and checked at once, off the event loop
PARSE_INLINE = 8 * 1024  # bytes: a body up to this size is parsed on the loop (tens of microseconds)
LOG_LIMITER = LogLimiter(burst=20, window=10.0)  # on the handler configure_logging installs


@dataclass(frozen=True)
class ServeOptions:
    """The server's settings, from the command line."""

    host: str = "127.0.0.1"
    port: int = 8095
    token: bytes | None = None
    hmac_secret: bytes | None = None
    max_body: int = 1 << 20
    queue_size: int = 10_000
    max_backlog_bytes: int = 64 << 20
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_peer: int = 64
    max_runs: int = 64
    drain_timeout: float = 30.0
    metrics_no_auth: bool = False
    insecure_no_auth: bool = False
    accept_legacy_signatures: bool = False  # v1: HMAC over timestamp and body only
    # People (the operator API): the single-sign-on proxy's identity header, believed only
    # from these peer addresses; the address people reach the service at (links in
    # announcements); where approval requests are announced; how log lines are written.
    trusted_user_header: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    public_url: str | None = None
    notifiers: tuple[dict, ...] = ()
    follow_ups: Any = None  # runtime.incidents.Tracker: open incidents' follow-ups there ([follow_ups])
    log_format: str = "text"  # text | json
    drive: bool = True  # False (`--no-drive`): intake, API and console only; workers drive runs


def read_credentials(
    token_file: Path | None, hmac_secret_file: Path | None, environ: dict[str, str], insecure_no_auth: bool
) -> tuple[bytes | None, bytes | None]:
    """(bearer token, HMAC secret) from the files or $OPSDSL_TOKEN; refuses a server without either."""
    token = _secret_from_file(token_file, "--token-file") if token_file else None
    if token is None and environ.get("OPSDSL_TOKEN", "").strip():
        token = environ["OPSDSL_TOKEN"].strip().encode()
    secret = _secret_from_file(hmac_secret_file, "--hmac-secret-file") if hmac_secret_file else None
    if insecure_no_auth and (token or secret):
        raise UsageError("--insecure-no-auth together with a token or an HMAC secret: choose one")
    if not insecure_no_auth and not token and not secret:
        raise UsageError(
            "no authentication configured: set $OPSDSL_TOKEN, or give --token-file or --hmac-secret-file "
            "(--insecure-no-auth serves without any, on a trusted network only)"
        )
    return token, secret


def _secret_from_file(path: Path, option: str) -> bytes:
    try:
        value = path.read_bytes().strip()
    except OSError as error:
        raise UsageError(f"{option} {path}: {error.strerror}") from None
    if not value:
        raise UsageError(f"{option} {path} is empty")
    return value


IDEMPOTENCY_KEY = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200


def _idempotency_key(request: web.Request) -> str | None:
    """The request's Idempotency-Key (printable ASCII, at most 200 characters), or None; 400 otherwise."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY or not all(" " < c <= "~" for c in key):
        raise Refusal(400, f"{IDEMPOTENCY_KEY} must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


class Refusal(Exception):
    """A request turned away: its status, and the reason told to the client and the log (no secrets)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        self.close = close

    def response(self) -> web.Response:
        response = web.json_response({"error": self.reason}, status=self.status, headers=self.headers)
        if self.close:
            response.force_close()
        return response


def v2_signature(secret: bytes, method: str, path: str, timestamp: str, body: bytes) -> str:
    """`v2=HEX`: HMAC-SHA256 over "opsdsl-v2", the method, the path (and query, as sent), the
    timestamp, each followed by a newline, and then the body exactly as sent."""
    message = b"\n".join([b"opsdsl-v2", method.encode(), path.encode(), timestamp.encode(), b""]) + body
    return f"{SIGNATURE_V2}={hmac.new(secret, message, hashlib.sha256).hexdigest()}"


def v1_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=HEX` over the timestamp, a dot and the body: covers neither method nor path."""
    return f"{SIGNATURE_V1}={hmac.new(secret, timestamp.encode() + b'.' + body, hashlib.sha256).hexdigest()}"


class SpentSignatures:
    """Signatures of accepted requests, remembered while their timestamp could still pass.

    Spent signatures live in the state database (`spent_signatures`, written in the
    transaction that stores the request's events), so a captured request is refused after
    a restart too. A signature is reserved here while its request is on its way to the
    database, so two copies sent at once cannot both pass; it is released if storing
    fails (429, 503), so a sender can retry the very same signed request.
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self._in_flight: set[str] = set()

    def reserve(self, signature: str, now: float) -> bool:
        if signature in self._in_flight or self.service.signature_spent(signature, now):
            return False
        self._in_flight.add(signature)
        return True

    def release(self, signature: str) -> None:
        """Its request is answered: spent in the database if it was accepted, free again if not."""
        self._in_flight.discard(signature)


class _BodyBudget:
    """The backlog bytes one request's body holds while it is read and parsed."""

    def __init__(self, server: Server, source: str) -> None:
        self.server = server
        self.source = source
        self.held = 0

    def take(self, amount: int) -> None:
        """Hold `amount` more bytes; 413 if the body could never fit, 429/503 if it does not fit now."""
        limit = self.server.options.max_backlog_bytes
        if self.held + amount > limit:
            raise Refusal(413, f"body is over the backlog's limit of {limit} bytes", close=True)
        if self.server.backlog_bytes() + amount > limit:
            raise _busy(self.source, close=True)
        self.held += amount
        self.server.body_bytes += amount

    def release(self) -> None:
        self.server.body_bytes -= self.held
        self.held = 0


@dataclass
class _Intake:
    """One request's events on their way to the database."""

    events: list[str]
    source: str
    spent: tuple[str, float] | None
    keys: list[str | None]
    future: asyncio.Future[list[int]]
    settled: Callable[[], None] | None = None  # called once its transaction is over, committed or not


class GroupCommit:
    """Persists accepted events on the intake writer's thread, several requests per transaction.

    The event loop never waits for a commit: a request's events go to `IntakeWriter`, whose
    thread commits them with its own database connection, and the request is answered (202)
    only when that commit is over. Requests that reach the writer while it commits are
    committed together by its next transaction (group commit: one fsync for many requests).
    Without a writer (`start` not called: tests that drive a Server by hand) the loop commits,
    one transaction per loop turn."""

    def __init__(self, service: Service, room: Any) -> None:
        self.service = service
        self.room = room  # () -> events the backlog can still take
        self.writer: IntakeWriter | None = None
        self.writes: Any = None  # a FairLock the writer takes around its transactions (scheduler.FairLock)
        self._batch: list[_Intake] = []
        self._pending = 0  # events batched or at the writer, not yet queued for the worker

    async def start(self) -> None:
        """Open the writer's connection on its thread (raises what opening it raised)."""
        writer = IntakeWriter(self.service, asyncio.get_running_loop(), self._settle, self.writes)
        await writer.start()
        self.writer = writer

    async def stop(self) -> None:
        """Commit what the writer holds, then close its connection (after the last request)."""
        writer, self.writer = self.writer, None
        if writer is not None:
            await writer.stop()

    async def accept(
        self,
        events: list[str],
        source: str,
        spent: tuple[str, float] | None = None,
        settled: Callable[[], None] | None = None,
        key: str | None = None,
    ) -> list[int]:
        """The ids of the persisted events; QueueFull when the backlog has no room for them all.
        `spent`: the request's (signature, expires_at), recorded with its events; `settled` is
        called once its transaction is over (committed or not), even if the request was cancelled.
        `key`: the request's Idempotency-Key (its events, already stored, are not stored again)."""
        if len(events) > self.room() - self._pending:
            if settled is not None:
                settled()
            raise QueueFull()
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        keys = [event_key(source, key, index) if key is not None else None for index in range(len(events))]
        request = _Intake(events, source, spent, keys, future, settled)
        self._pending += len(events)
        if self.writer is not None:  # straight to the writer: it takes all that waits when it is free
            self.writer.submit([request])
        else:
            if not self._batch:
                asyncio.get_running_loop().call_soon(self._flush)
            self._batch.append(request)
        # A request cancelled meanwhile leaves its commit going (`_settle` skips its answer);
        # no asyncio.shield here: each layer would cost the answer a turn of the loop.
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        for source in dict.fromkeys(item.source for item in batch):
            requests = [item for item in batch if item.source == source]
            self._settle(requests, commit_requests(self.service, self.service.store, requests))

    def _settle(self, requests: list[_Intake], outcomes: list[Any]) -> None:
        """On the loop, in commit order: queue the stored events, answer each request."""
        for request, outcome in zip(requests, outcomes, strict=True):
            self._pending -= len(request.events)
            if request.settled is not None:
                request.settled()
            if isinstance(outcome, BaseException):
                if not request.future.done():
                    request.future.set_exception(outcome)
                continue
            self.service.queue_stored(outcome, request.events, request.source)
            if not request.future.done():
                request.future.set_result(outcome.ids)


def commit_requests(service: Service, store: Any, requests: list[_Intake], relaxed: bool = False) -> list[Any]:
    """One transaction for the requests' events (any sources); each request's StoredEvents,
    or the error that kept it out (then none of that transaction was persisted). A request
    that reused an Idempotency-Key fails alone: the others are committed without it.
    `relaxed`: the commit leaves its fsync to the store's syncer (the caller syncs before
    answering: runtime/walsync.py)."""
    try:
        with store.transaction(relaxed=relaxed):
            stored = [
                service.persist_events(store, r.events, r.source, [r.spent] if r.spent else (), r.keys)
                for r in requests
            ]
    except EventKeyReused as error:
        if len(requests) == 1:
            return [error]
        return [outcome for request in requests for outcome in commit_requests(service, store, [request], relaxed)]
    except Exception as error:
        return [error] * len(requests)
    return stored


class IntakeWriter:
    """The thread that commits accepted events, with its own connection to the state database.

    SQLite's one-writer rule holds: its transactions are BEGIN IMMEDIATE with the busy
    timeout, like the engine's on the loop's connection (WAL lets both connections read).
    It takes every batch waiting when it is free, so one transaction (one fsync) carries
    the requests that arrived during the previous commit. Outcomes go back to the loop in
    commit order (`settle`, through call_soon_threadsafe), after the COMMIT returned."""

    def __init__(self, service: Service, loop: asyncio.AbstractEventLoop, settle: Callable, writes: Any = None) -> None:
        self.service = service
        self.loop = loop
        self.settle = settle
        self.writes = writes if writes is not None else contextlib.nullcontext()
        self._jobs: queue.SimpleQueue[list[_Intake] | None] = queue.SimpleQueue()
        self._opened: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._durable = _durable(service.store)  # read here: the engine's connection is the loop's
        self._thread = threading.Thread(target=self._run, name="opsdsl-intake-writer", daemon=True)

    async def start(self) -> None:
        self._thread.start()
        await asyncio.wrap_future(self._opened)

    def submit(self, batch: list[_Intake]) -> None:
        self._jobs.put(batch)

    async def stop(self) -> None:
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        from opsdsl.runtime.store import Store

        try:
            store = Store(self.service.store.root, durable=self._durable, create=False)
        except BaseException as error:
            self._opened.set_exception(error)
            return
        syncer = getattr(self.service.store, "syncer", None)
        if syncer is not None:  # its commits, too, leave their fsync to the server's syncer
            from opsdsl.runtime.walsync import relax

            relax(store, syncer)
        self._opened.set_result(None)
        try:
            while True:
                job = self._jobs.get()
                stopping = job is None
                requests = list(job or [])
                while not self._jobs.empty():  # everything that arrived meanwhile: one transaction
                    more = self._jobs.get()
                    stopping = stopping or more is None
                    requests += more or []
                if requests:
                    with self.writes:
                        outcomes = commit_requests(self.service, store, requests, relaxed=syncer is not None)
                    if syncer is not None:  # 202 only once the events are on disk (one fsync for many)
                        try:
                            syncer.sync()
                        except Exception as error:
                            outcomes = [error] * len(requests)
                    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for an answer
                        self.loop.call_soon_threadsafe(self.settle, requests, outcomes)
                if stopping:
                    return
        finally:
            store.close()


def _durable(store: Any) -> bool:
    """Whether the engine's connection syncs its commits (rehearsals' throwaway state does not)."""
    if getattr(store, "postgres", False):
        return bool(getattr(store.conn, "_durable", True))
    (synchronous,) = store.conn.execute("PRAGMA synchronous").fetchone()
    return synchronous != 0


class Server:
    """The HTTP endpoints over one Service, and the way it starts and stops."""

    def __init__(self, service: Service, options: ServeOptions) -> None:
        self.service = service
        self.options = options
        self.spent = SpentSignatures(service)
        self.intake = GroupCommit(service, self._room)
        self.stopping = False
        self.exit_code = 0
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.stop_requested = asyncio.Event()
        self.hurry = asyncio.Event()
        self.body_bytes = 0  # of the bodies being read and parsed
        self.guard = ConnectionGuard(options.header_timeout, options.max_connections_per_peer, self._cut_off)
        self.parsers: ThreadPoolExecutor | None = None

    # ---- the application ---------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.options.max_body)
        app.router.add_post("/v1/alertmanager", self.receive)
        app.router.add_post("/v1/events", self.receive)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        __import__("opsdsl.serve.api").serve.api.add_routes(app, self)  # the operator API (docs/api.md)
        __import__("opsdsl.serve.console").serve.console.add_routes(app, self)  # the web console (docs/console.md)
        __import__("opsdsl.serve.runner_api").serve.runner_api.add_routes(
            app, self
        )  # runners over HTTPS (docs/scaleout.md)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Counts requests in flight; turns every refusal into a JSON answer, a metric and a log line."""
        self.in_flight += 1
        self.idle.clear()
        self.guard.request_started(request.protocol)
        try:
            try:
                if self.stopping and request.path in INTAKE_PATHS:
                    raise Refusal(503, "shutting down", {"Retry-After": RETRY_AFTER_UNAVAILABLE}, close=True)
                return await handler(request)
            except Refusal as refusal:
                self._refused(request, refusal.status, refusal.reason)
                return refusal.response()
            except web.HTTPException as error:  # the router's 404 and 405
                reason = {404: "no such endpoint", 405: "method not allowed"}.get(error.status, error.reason)
                self._refused(request, error.status, reason)
                headers = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
                return web.json_response({"error": reason}, status=error.status, headers=headers)
            except Exception as error:
                log.error(
                    "internal error on %s %s: %s: %s", request.method, _path(request), type(error).__name__, error
                )
                self.service.metrics.inc("opsdsl_events_rejected_total", status="500")
                return web.json_response({"error": "internal error"}, status=500)
        finally:
            self.guard.request_finished(request.protocol)
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    def _refused(self, request: web.Request, status: int, reason: str) -> None:
        self.service.metrics.inc("opsdsl_events_rejected_total", status=str(status))
        log.warning("refused %s %s from %s: %d %s", request.method, _path(request), request.remote, status, reason)

    def _cut_off(self, reason: str, peer: str) -> None:
        """A connection closed by the guard: counted, and logged (rate-limited like every line)."""
        self.service.metrics.inc("opsdsl_connections_refused_total", reason=reason)
        if reason == "per-peer":
            why = f"it has {self.options.max_connections_per_peer} connections open that have not authenticated"
        else:
            why = f"no complete request headers within {self.options.header_timeout:g} s"
        log.warning("closed a connection from %s: %s", peer, why)

    # ---- endpoints -----------------------------------------------------------------------

    async def receive(self, request: web.Request) -> web.Response:
        """POST /v1/alertmanager and /v1/events: check, persist, answer 202 with the event ids."""
        started = time.perf_counter()
        source = INTAKE_PATHS[request.path]
        signed = self._authenticate_headers(request)
        if not signed:
            self.guard.authenticated(request.protocol)
        _check_media(request)
        budget = _BodyBudget(self, source)
        try:
            body = await self._read_body(request, budget)
            signature = self._verify_signature(request, body) if signed else None
            if signed:
                self.guard.authenticated(request.protocol)
            assert self.parsers is not None
            loop = asyncio.get_running_loop()
            if len(body) <= PARSE_INLINE:  # microseconds: not worth a trip through the pool and a loop turn
                events = checked_events(body, source, self.options.queue_size)
            else:
                events = await loop.run_in_executor(self.parsers, checked_events, body, source, self.options.queue_size)
            del body
            settled = None
            if signature is not None:
                if not self.spent.reserve(signature[0], time.time()):
                    raise Refusal(401, "signature already used (replay)", self._challenge())
                settled = functools.partial(self.spent.release, signature[0])
            try:
                ids = await self.intake.accept(events, source, signature, settled, _idempotency_key(request))
            except QueueFull:
                raise _busy(source) from None
            except EventKeyReused as error:
                raise Refusal(422, error.message) from None
            except (sqlite3.Error, OpsdslError) as error:
                log.error("could not persist %d events: %s", len(events), error)
                raise Refusal(503, "could not store the events", {"Retry-After": RETRY_AFTER_UNAVAILABLE}) from None
        finally:
            budget.release()
        self.service.metrics.observe("opsdsl_intake_seconds", time.perf_counter() - started)
        return web.json_response({"accepted": len(ids), "ids": ids}, status=202)

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz, without auth: 200 while serving, 503 while draining or when the worker stopped."""
        status = "ok"
        if self.stopping:
            status = "draining"
        elif not self._worker_alive():
            status = "worker-stopped"
        body = {"status": status, "queue": self.service.waiting, "runs_live": len(self.service.runs)}
        return web.json_response(body, status=200 if status == "ok" else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: the engine's metrics in the Prometheus text format, plus this server's gauges."""
        if not (self.options.metrics_no_auth or self.options.insecure_no_auth):
            if self.options.token is None:
                raise Refusal(401, "/metrics needs a bearer token; start with a token or --metrics-no-auth")
            self._check_token(request.headers.get("Authorization"))
            self.guard.authenticated(request.protocol)
        self.service.metrics.set("opsdsl_queue_depth", self.service.waiting)
        text = self.service.metrics.render() + _gauges(
            ("opsdsl_backlog_bytes", "Bytes of bodies being parsed and of events waiting.", self.backlog_bytes()),
            ("opsdsl_runs_live", "Runs this server started that have not finished.", len(self.service.runs)),
            ("opsdsl_runs_waiting", "Runs waiting for a free run slot (--max-runs).", self._waiting_runs()),
            ("opsdsl_serve_draining", "1 while the server shuts down.", int(self.stopping)),
        )
        return web.Response(body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    # ---- checks --------------------------------------------------------------------------

    def _authenticate_headers(self, request: web.Request) -> bool:
        """Whether the body's signature still has to be checked; raises 401 for bad or missing credentials."""
        options = self.options
        authorization = request.headers.get("Authorization")
        if options.token is not None and authorization is not None:
            self._check_token(authorization)
            return False
        if options.hmac_secret is not None and (
            SIGNATURE_HEADER in request.headers or TIMESTAMP_HEADER in request.headers
        ):
            return True
        if options.token is None and options.hmac_secret is None:
            return False  # --insecure-no-auth
        raise Refusal(401, "no credentials", self._challenge())

    def _check_token(self, authorization: str | None) -> None:
        if authorization is None:
            raise Refusal(401, "no credentials", self._challenge())
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Refusal(401, "not a bearer token", self._challenge())
        token = self.options.token or b""
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token):
            raise Refusal(401, "wrong bearer token", self._challenge(invalid=True))

    def _challenge(self, invalid: bool = False) -> dict[str, str]:
        challenges = []
        if self.options.token is not None:
            challenges.append('Bearer realm="opsdsl"' + (', error="invalid_token"' if invalid else ""))
        if self.options.hmac_secret is not None:
            challenges.append(
                f'HMAC-SHA256 realm="opsdsl", version="{SIGNATURE_V2}", headers="{TIMESTAMP_HEADER} {SIGNATURE_HEADER}"'
            )
        return {"WWW-Authenticate": ", ".join(challenges)} if challenges else {}

    async def _read_body(self, request: web.Request, budget: _BodyBudget) -> bytes:
        """The body, refusing as soon as it is longer than the limit (413), has no room in the
        backlog (429/503) or is late (408): never buffers more, never waits longer."""
        limit, length = self.options.max_body, request.content_length
        if length is not None and length > limit:
            raise Refusal(413, f"body of {length} bytes is over the limit of {limit}", close=True)
        if length is not None:
            budget.take(length)
        body = bytearray()
        try:
            async with asyncio.timeout(self.options.body_timeout):
                while chunk := await request.content.read(limit + 1 - len(body)):
                    if length is None:
                        budget.take(len(chunk))
                    body += chunk
                    if len(body) > limit:
                        raise Refusal(413, f"body is over the limit of {limit} bytes", close=True)
        except TimeoutError:
            raise Refusal(408, f"body not received within {self.options.body_timeout:g} s", close=True) from None
        except (ConnectionError, asyncio.IncompleteReadError) as error:
            raise Refusal(400, f"body not read: {type(error).__name__}", close=True) from None
        return bytes(body)

    def _verify_signature(self, request: web.Request, body: bytes) -> tuple[str, float]:
        """(signature, when it expires) of a correctly signed, fresh request; else 401.

        1. the timestamp is unix seconds, within SIGNATURE_WINDOW of our clock;
        2. the header holds a v2 signature, which is the one checked; a v1 signature alone
           is refused unless --accept-legacy-signatures (no silent downgrade);
        3. the signature matches, compared in constant time.
        The replay check (spent signatures) comes after the body is parsed.
        """
        stamp = request.headers.get(TIMESTAMP_HEADER, "").strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise Refusal(401, f"{TIMESTAMP_HEADER} is not unix seconds", self._challenge())
        if abs(time.time() - int(stamp)) > SIGNATURE_WINDOW:
            raise Refusal(401, f"{TIMESTAMP_HEADER} is more than {SIGNATURE_WINDOW} s off", self._challenge())
        given = _signature_schemes(request.headers.get(SIGNATURE_HEADER, ""))
        secret = self.options.hmac_secret or b""
        if SIGNATURE_V2 in given:
            expected = v2_signature(secret, request.method, request.raw_path, stamp, body)
            offered = f"{SIGNATURE_V2}={given[SIGNATURE_V2]}"
        elif SIGNATURE_V1 in given and self.options.accept_legacy_signatures:
            expected = v1_signature(secret, stamp, body)
            offered = f"{SIGNATURE_V1}={given[SIGNATURE_V1]}"
        elif SIGNATURE_V1 in given:
            raise Refusal(
                401,
                "legacy v1 signature (sha256=) refused: it does not cover the method and path; "
                "sign with v2 (see docs/serve.md)",
                self._challenge(invalid=True),
            )
        else:
            raise Refusal(401, f"no v2= signature in {SIGNATURE_HEADER}", self._challenge())
        if not hmac.compare_digest(offered.lower().encode("utf-8", "surrogateescape"), expected.encode()):
            raise Refusal(401, "bad signature", self._challenge(invalid=True))
        if offered.startswith(SIGNATURE_V1):
            log.warning("accepted a legacy v1 signature from %s (--accept-legacy-signatures)", request.remote)
        return expected, int(stamp) + SIGNATURE_WINDOW + 1

    # ---- backlog -------------------------------------------------------------------------

    def _waiting_runs(self) -> int:
        return max(0, len(self.service.runs) - self.options.max_runs)

    def _room(self) -> int:
        """Events the backlog can still take: the queue bound counts waiting events and runs
        waiting for a run slot, because the engine starts a run per firing without waiting."""
        return self.options.queue_size - self.service.waiting - self._waiting_runs()

    def backlog_bytes(self) -> int:
        """Bytes held for the backlog: bodies being read and parsed, events waiting for the worker."""
        return self.body_bytes + self.service.waiting_bytes

    def _worker_alive(self) -> bool:
        worker = getattr(self.service, "_worker", None)
        return worker is None or not worker.done()

    # ---- starting and stopping -----------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT, then drain; the exit code."""
        loop = asyncio.get_running_loop()
        for name in STOP_SIGNALS:
            loop.add_signal_handler(getattr(signal, name), self._on_signal, name)
        # auto_decompress off: bodies with a content coding are refused (415), and aiohttp must
        # not inflate one while discarding it; lingering: how long an unread body is drained.
        runner = web.AppRunner(
            self.application(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            auto_decompress=False,
            lingering_time=2.0,
            keepalive_timeout=self.options.header_timeout,
        )
        self.parsers = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="opsdsl-parse")
        summaries = asyncio.create_task(_log_summaries(), name="opsdsl-log-summaries")
        lag = asyncio.create_task(_sample_loop_lag(self.service.metrics), name="opsdsl-loop-lag")
        # Run-driving work a little per turn of the loop, so the intake's turns come round
        # quickly while many runs are live (runtime/scheduler.py Pacer).
        from opsdsl.runtime.scheduler import pace_loop, unpace_loop

        pacer = pace_loop(loop)
        if not getattr(self.service.store, "postgres", False):
            from opsdsl.runtime.scheduler import FairLock

            pacer.writes = self.intake.writes = FairLock()  # the intake writer and the runs take turns
        unwatch = _watch_children_by_pidfd(loop)
        announcing, opening, done_announcing = None, None, asyncio.Event()
        try:
            announcer = self._announcer()
            if announcer is not None:  # a bad notifier spec stops the start (exit 2), before listening
                announcing = asyncio.create_task(announcer.run(done_announcing), name="opsdsl-announcer")
            if self.options.follow_ups is not None:
                from opsdsl.runtime.incidents import FollowUpOpener

                opener = FollowUpOpener(
                    self.service.runtime.state,
                    self.service.store,
                    self.options.follow_ups,
                    self.service.secrets,
                    runtime=self.service.runtime,
                )
                opening = asyncio.create_task(opener.run(done_announcing), name="opsdsl-follow-ups")
            await self._start_worker()
            syncer = getattr(self.service.store, "syncer", None)
            if syncer is not None:  # a failed fsync is final: stop, so that a restart recovers
                syncer.on_failure = lambda error: loop.call_soon_threadsafe(self._sync_failed, error)
            await self.intake.start()  # the writer thread that commits accepted events
            await runner.setup()
            assert runner.server is not None
            self.guard.attach(runner.server)
            site = web.TCPSite(runner, self.options.host, self.options.port, backlog=1024)
            try:
                await site.start()
            except OSError as error:
                where = f"{self.options.host}:{self.options.port}"
                raise OpsdslError(f"cannot listen on {where}: {error.strerror}") from None
            host, port = runner.addresses[0][:2]
            shown = f"[{host}]" if ":" in host else host
            log.info("listening on http://%s:%d (%s; auth: %s)", shown, port, self._describe(), self._auth_kind())
            await self.stop_requested.wait()
            await self._shutdown()
            done_announcing.set()  # after the drain: the outcomes of runs that ended in it go out
            for task in (announcing, opening):
                if task is not None:
                    await self._until(task, asyncio.get_running_loop().time() + ANNOUNCE_GRACE)
        finally:
            for name in STOP_SIGNALS:
                loop.remove_signal_handler(getattr(signal, name))
            await runner.cleanup()
            await self.intake.stop()  # after the last request: commits what it holds, closes
            self.parsers.shutdown(wait=False, cancel_futures=True)
            summaries.cancel()
            lag.cancel()
            unpace_loop(loop)
            if unwatch is not None:
                unwatch()
            LOG_LIMITER.flush(everything=True)
        return self.exit_code

    def _announcer(self) -> Any:
        """The announcer of approval requests (runtime/announce.py), when notifiers are set."""
        if not self.options.notifiers:
            return None
        from opsdsl.runtime.announce import Announcer

        announcer = Announcer(
            self.service.store, self.options.notifiers, self.options.public_url, secrets=self.service.secrets
        )
        self.service.announcer = announcer
        return announcer

    async def _start_worker(self) -> None:
        """Start the engine's worker (replaying events an earlier process left) and say what was left."""
        if not self.options.drive:  # `--no-drive`: `opsdsl worker` processes evaluate the events and drive runs
            self.service.drives = False
            log.info("--no-drive: events are committed here; `opsdsl worker` processes drive the runs")
            return
        (left,) = self.service.store.conn.execute(
            "SELECT COUNT(*) FROM runs WHERE status IN ('running', 'interrupted') AND parent_run IS NULL"
        ).fetchone()
        replayed = await self.service.start("serve", own_runs=True)
        if replayed:
            log.info("replaying %d events accepted before the last stop", replayed)
        if left:
            log.info("continuing %d runs an earlier process left unfinished", left)
        worker = getattr(self.service, "_worker", None)  # Service offers no public way to watch it
        if worker is not None:
            worker.add_done_callback(self._worker_done)

    def _on_signal(self, name: str) -> None:
        if self.stop_requested.is_set():
            log.warning("%s again: interrupting the runs now", name)
            self.hurry.set()
            return
        log.info("%s: refusing new events, draining (up to %gs)", name, self.options.drain_timeout)
        self.stop_requested.set()

    def _worker_done(self, task: asyncio.Task) -> None:
        if task.cancelled() or self.stopping:
            return
        error = task.exception()
        log.error(
            "the event worker stopped (%s: %s); shutting down so that a restart replays the pending events",
            type(error).__name__,
            error,
        )
        self.exit_code = 1
        self.stop_requested.set()

    def _sync_failed(self, error: OSError) -> None:
        """The state database's log could not be synced: nothing later can be called durable,
        and every run commit is refused; stop with exit code 1 so that the process manager
        restarts the server and SQLite's recovery reads what the log really holds."""
        log.critical(
            "cannot sync the state database (%s): no commit can be made durable any more;"
            " stopping (exit 1) so that a restart recovers it",
            error,
        )
        self.exit_code = 1
        self.service.hold_events()  # the queued events were answered 202: the restart replays them
        self.stop_requested.set()

    async def _shutdown(self) -> None:
        """Refuse new events; let requests in flight finish; handle the queue; wait for the runs."""
        self.stopping = True
        await self.service.stop_driving()  # timers and approvals wait for the next start
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout
        await self._until(self.idle.wait(), deadline)
        queue = self.service.queue
        if queue is not None and not await self._until(queue.join(), deadline):
            left = self.service.waiting
            _release(queue)
            log.warning("drain timeout: %d events stay accepted and are replayed at the next start", left)
        runs = set(self.service.runs)
        if runs and not await self._until(asyncio.wait(runs), deadline):
            log.warning("drain timeout: interrupting %d runs; `opsdsl resume` continues them", len(self.service.runs))
        try:
            await self.service.drain(timeout=0)
        except Exception as error:  # the worker died earlier: stop the runs ourselves
            log.error("drain: %s: %s", type(error).__name__, error)
            for task in list(self.service.runs):
                task.cancel()
            await asyncio.gather(*self.service.runs, return_exceptions=True)
        log.info("stopped")

    async def _until(self, awaitable: Awaitable[Any], deadline: float) -> bool:
        """Wait for `awaitable` until the deadline or a second signal; whether it finished."""
        task = asyncio.ensure_future(awaitable)
        hurry = asyncio.ensure_future(self.hurry.wait())
        timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        done, _ = await asyncio.wait({task, hurry}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if task in done:
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False

    def _describe(self) -> str:
        packs = [p.payload["pack"]["name"] for p in self.service.plans]
        return f"packs: {', '.join(packs)}; state: {self.service.runtime.state}"

    def _auth_kind(self) -> str:
        kinds = [k for k, v in (("bearer token", self.options.token), ("HMAC", self.options.hmac_secret)) if v]
        return " or ".join(kinds) or "NONE (--insecure-no-auth)"


def _busy(source: str, close: bool = False) -> Refusal:
    # Alertmanager retries 5xx answers (with backoff) but drops a notification on any 4xx
    status = 503 if source == "alertmanager" else 429
    return Refusal(status, "backlog full; retry later", {"Retry-After": RETRY_AFTER_BUSY}, close=close)


def checked_events(body: bytes, source: str, queue_size: int) -> list[str]:
    """The events of a request body as the JSON text the ledger stores; Refusal (400, 413)
    if it is not JSON, not the endpoint's shape, or holds an event the ledger cannot record.

    CPU-bound on big bodies: the server runs it on a worker thread."""
    payload = _parse_json(body)
    if source == "alertmanager":
        if not isinstance(payload, dict) or "alerts" not in payload or "version" not in payload:
            raise Refusal(400, "not an Alertmanager webhook body: a JSON object with `version` and `alerts`")
        if payload["version"] != "4":
            raise Refusal(400, f"Alertmanager webhook version {payload['version']!r}; this server reads version 4")
        if not isinstance(payload["alerts"], list):
            raise Refusal(400, "`alerts` is not a list")
    try:
        events = events_from_payload(payload)
    except ValueError as error:
        raise Refusal(400, str(error)) from None
    del payload
    if len(events) > queue_size:
        raise Refusal(413, f"{len(events)} events in one request; the queue holds {queue_size}")
    for index, event in enumerate(events):
        problem = _event_problem(event)
        if problem:
            raise Refusal(400, f"event {index}: {problem}")
    return [json.dumps(event, sort_keys=True, separators=(",", ":")) for event in events]


def _signature_schemes(header: str) -> dict[str, str]:
    """`v2=HEX, sha256=HEX` → {scheme: HEX}; a sender moving to v2 may send both."""
    schemes: dict[str, str] = {}
    for part in header.split(","):
        scheme, _, value = part.strip().partition("=")
        if value:
            schemes.setdefault(scheme.strip().lower(), value.strip())
    return schemes


def _check_media(request: web.Request) -> None:
    media = request.content_type
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise Refusal(415, f"content type {media!r}; send application/json")
    charset = request.charset
    if charset and charset.lower() not in ("utf-8", "utf8"):
        raise Refusal(415, f"charset {charset!r}; JSON is UTF-8")
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding != "identity":
        raise Refusal(415, f"content encoding {coding!r}; send the body uncompressed")


def _parse_json(body: bytes) -> Any:
    """The body's JSON; each event is checked on its own afterwards, so a refusal names it."""
    from opsdsl.lang.untrusted import loads_finite

    try:
        return loads_finite(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Refusal(400, "body is not UTF-8") from None
    except json.JSONDecodeError as error:
        raise Refusal(400, f"not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except (ValueError, RecursionError) as error:
        raise Refusal(400, f"not JSON: {error}") from None


def _event_problem(event: dict) -> str | None:
    """Why the ledger could not record this event (the engine would fail on it later), or None."""
    from opsdsl.lang.untrusted import json_problem

    return json_problem(event, MAX_DEPTH)


def _release(queue: asyncio.Queue) -> int:
    """Empty the queue without handling its events (they stay `accepted` in the database)."""
    count = 0
    while True:
        try:
            queue.get_nowait()
        except asyncio.QueueEmpty:
            return count
        queue.task_done()
        count += 1


def _watch_children_by_pidfd(loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
    """Python 3.11 watches each child process (a `shell` step's) with a thread of its own,
    started on the event loop, which waits for the thread to run: under a busy CPU that was
    a tenth of the loop's time. A pidfd lets the loop itself see the child end (3.12's
    default). Installed for the server's life; the function that puts the old watcher back,
    or None where pidfds are not available (or already the default)."""
    import os
    import sys
    import warnings

    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return None
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel older than 5.3, or a sandbox that forbids it
        return None
    policy = asyncio.get_event_loop_policy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        previous = policy.get_child_watcher()
        watcher = _pidfd_or_thread_watcher()
        watcher.attach_loop(loop)
        policy.set_child_watcher(watcher)

    def restore() -> None:
        with warnings.catch_warnings():  # a child still running (an interrupted step) is left to the OS
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            policy.set_child_watcher(previous)

    return restore


def _pidfd_or_thread_watcher() -> Any:
    """3.11's PidfdChildWatcher, but a child whose pidfd cannot be opened (EMFILE: the
    server's last descriptor went elsewhere) is waited for by a thread of its own, as the
    thread watcher did. The watch is set up after the fork and exec: the program already
    runs, so a failure there must not report it as not started, nor leave it unreaped."""
    import os

    def wait_in_thread(loop: asyncio.AbstractEventLoop, pid: int, callback: Any, args: tuple) -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped elsewhere: as asyncio's own watchers say
            returncode = 255
        else:
            returncode = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(callback, pid, returncode, *args)

    class Watcher(asyncio.PidfdChildWatcher):
        def add_child_handler(self, pid: int, callback: Any, *args: Any) -> None:
            existing = self._callbacks.get(pid)
            if existing is not None:  # as PidfdChildWatcher (3.11) does
                self._callbacks[pid] = existing[0], callback, args
                return
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                threading.Thread(
                    target=wait_in_thread, args=(self._loop, pid, callback, args), name=f"waitpid-{pid}", daemon=True
                ).start()
                return
            self._loop._add_reader(pidfd, self._do_wait, pid)
            self._callbacks[pid] = pidfd, callback, args

    return Watcher()


LAG_SAMPLE = 0.1  # seconds between two looks at how late the event loop is


async def _sample_loop_lag(metrics: Any) -> None:
    """`opsdsl_loop_lag_seconds`: how much later than asked a short sleep on the event loop
    ends, ten times a second; the intake's every answer waits that long per turn it needs."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time()
        await asyncio.sleep(LAG_SAMPLE)
        metrics.observe("opsdsl_loop_lag_seconds", max(0.0, loop.time() - asked - LAG_SAMPLE))


async def _log_summaries() -> None:
    """Print the "N more suppressed" lines of the rate-limited log as their windows end."""
    while True:
        await asyncio.sleep(1.0)
        LOG_LIMITER.flush()


def _gauges(*rows: tuple[str, str, float]) -> str:
    return "".join(f"# HELP {n} {h}\n# TYPE {n} gauge\n{n} {v:.15g}\n" for n, h, v in rows)


def _path(request: web.Request) -> str:
    return request.rel_url.raw_path[:200]


def configure_logging(log_format: str = "text") -> None:
    """One line per message on stderr: text prefixed `opsdsl serve:`, or JSON lines
    (`{"ts", "level", "logger", "message", ...fields}`); aiohttp's own warnings too. The
    run milestones (`opsdsl.runs`: one line per accepted event, run start, pause, approval,
    decision, cancellation and end) are never rate-limited; the rest is (LOG_LIMITER)."""
    import sys

    formatter = JsonLines() if log_format == "json" else logging.Formatter("opsdsl serve: %(message)s")
    limited = logging.StreamHandler(sys.stderr)
    limited.setFormatter(formatter)
    limited.addFilter(LOG_LIMITER)
    every = logging.StreamHandler(sys.stderr)
    every.setFormatter(formatter)
    loggers = (
        ("opsdsl.serve", logging.INFO, limited),
        ("opsdsl.runs", logging.INFO, every),
        ("aiohttp", logging.WARNING, limited),
        ("asyncio", logging.WARNING, limited),
    )
    for name, level, handler in loggers:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


class JsonLines(logging.Formatter):
    """A log record as one JSON object on one line (ASCII: no terminal escapes from event data)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        return json.dumps(line, ensure_ascii=True, default=str)


async def serve(service: Service, options: ServeOptions) -> int:
    """Run the server on the current loop until it is told to stop; the exit code."""
    if options.insecure_no_auth:
        log.warning("--insecure-no-auth: anyone who can reach %s:%d can start runs", options.host, options.port)
    if options.accept_legacy_signatures:
        log.warning(
            "--accept-legacy-signatures: v1 signatures (sha256=) are accepted; they cover neither the "
            "method nor the path, so a captured request can be sent to the other endpoint"
        )
    if options.hmac_secret and not options.token and not options.metrics_no_auth:
        log.warning("no bearer token: /metrics answers 401 (give a token, or --metrics-no-auth)")
    return await Server(service, options).run()
