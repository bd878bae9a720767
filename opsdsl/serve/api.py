"""The operator API: runs, approvals, incidents, the ledger and the report, as JSON under `/v1/`.

It lives on the same aiohttp application as the event intake (`intake.Server.application`
calls `add_routes`), and is described by `openapi.json` beside this module (served at
`/v1/openapi.json`, shipped in the wheel). Users' guide: docs/api.md.

- **People, not the machine token.** Every endpoint needs a person (`serve.auth.identify`:
  a user's bearer token, or the trusted proxy's header) and checks the person's role for
  what the endpoint does (`people.allowed`: viewer reads; responder fires, acks, resumes,
  cancels; approver approves and decides). The machine intake (`POST /v1/events`,
  `/v1/alertmanager`) keeps its bearer token and HMAC; a person fires at `POST /v1/fire`,
  and the event's source is `user:NAME`.
- **Errors are RFC 9457 problem details** (`application/problem+json`) everywhere under
  `/v1/` but the machine intake, whose answers stay as documented in docs/serve.md.
- **The event loop stays free for the intake.** Reads (lists, a run's detail, ledger
  verification, the report, incident files and exports) run on two threads, each with its
  own connection to the state database (WAL: readers never block the writer); the
  whole-state ones (verification, the report, exports) one at a time. A change (approve,
  deny, decide, ack, cancel) is resolved, checked and committed on one writer thread with
  its own connection, so its fsync never holds the loop; then the server's driver is woken
  and continues the run at once.
- **Idempotent POSTs.** A POST with an `Idempotency-Key` header is stored (person, key,
  method, path, a digest of the body → the response) in the table `api_idempotency`; the
  same request again gets the stored response (`Idempotent-Replayed: true`), the same key
  with another request 422, and while the first is still being answered 409.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from opsdsl.errors import OpsdslError, UsageError
from opsdsl.runtime import inspect as runview
from opsdsl.runtime import people, runner
from opsdsl.runtime import store as S
from opsdsl.runtime.service import QueueFull
from opsdsl.runtime.store import StateError
from opsdsl.serve import auth

if TYPE_CHECKING:
    from opsdsl.serve.intake import Server

log = logging.getLogger("opsdsl.serve")

MAX_BODY = 64 * 1024  # an approval, a decision, an ack: small JSON; `fire` takes up to --max-body
READ_THREADS = 2  # reads at once, off the event loop
HEAVY_AT_ONCE = 1  # ledger verifications, reports and exports at once (each reads everything)
LEDGER_CACHE_SECONDS = 5.0  # a dashboard polling /v1/ledger does not re-verify each time
IDEMPOTENCY_TTL = 24 * 3600.0  # a stored response is replayed for a day
MAX_KEY = 200
CHUNK = 64 * 1024
MAX_PAGE = 200  # runs in one page of GET /v1/runs

RUN_TEXT = re.compile(r"latest|[0-9a-f-]{1,64}")  # a run id (YYYYMMDD-HHMMSS-hex), a prefix, or latest
STEP_TEXT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")
INCIDENT_TEXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # audit.incident.folder's safe id
EVIDENCE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=,-]{0,254}")
KEY_TEXT = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY}}}")
OUTCOMES = ("retry", "succeeded", "failed")

IDEMPOTENCY_DDL = """
CREATE TABLE IF NOT EXISTS api_idempotency (
    person TEXT NOT NULL,
    key TEXT NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    digest TEXT NOT NULL,
    status INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (person, key)
);
CREATE INDEX IF NOT EXISTS api_idempotency_at ON api_idempotency(at);
"""


# ---- problems --------------------------------------------------------------------------


class Problem(auth.Problem):
    """An RFC 9457 problem (`serve.auth`'s), titled by its status: `type` is about:blank, so
    the title is the status' phrase (RFC 9457 §4.2.1)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status, _phrase(status), detail, headers=headers, **extra)


def problem_response(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return auth.problem(status, _phrase(status), detail, headers=headers)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body, ensure_ascii=False, sort_keys=True).encode() + b"\n",  # a line, for curl
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


# ---- the routes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    act: str  # what people.allowed must grant; "" for any authenticated person
    handler: str  # the Api method
    idempotent: bool = False  # POSTs that honour Idempotency-Key
    max_body: int = MAX_BODY


ROUTES = (
    Route("GET", "/v1/me", "", "me"),
    Route("GET", "/v1/openapi.json", "", "openapi"),
    Route("GET", "/v1/runs", "read", "list_runs"),
    Route("GET", "/v1/runs/{run}", "read", "run_detail"),
    Route("POST", "/v1/runs/{run}/steps/{step}/approve", "approve", "approve", True),
    Route("POST", "/v1/runs/{run}/steps/{step}/deny", "approve", "deny", True),
    Route("POST", "/v1/runs/{run}/steps/{step}/decide", "decide", "decide", True),
    Route("POST", "/v1/runs/{run}/ack", "ack", "ack", True),
    Route("POST", "/v1/runs/{run}/cancel", "cancel", "cancel", True),
    Route("POST", "/v1/runs/{run}/resume", "resume", "resume", True),
    Route("POST", "/v1/fire", "fire", "fire", True, max_body=0),  # 0: the server's --max-body
    Route("GET", "/v1/incidents/{incident}", "read", "incident"),
    Route("GET", "/v1/incidents/{incident}/rca", "read", "incident_rca"),
    Route("GET", "/v1/incidents/{incident}/evidence", "read", "incident_evidence"),
    Route("GET", "/v1/incidents/{incident}/evidence/{name:.+}", "read", "evidence_file"),
    Route("GET", "/v1/incidents/{incident}/export", "read", "incident_export"),
    Route("GET", "/v1/ledger", "read", "ledger"),
    Route("GET", "/v1/report", "read", "report"),
)


def add_routes(app: web.Application, server: Server) -> Api:
    """Add the operator API to the server's application (before it starts)."""
    api = Api(server)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, api.endpoint(route))
    app.middlewares.append(api.problems)
    app.on_cleanup.append(api.close)
    return api


@dataclass
class _Heavy:
    """A bounded queue for work that reads everything (verify, report, export)."""

    slots: asyncio.Semaphore | None = None
    cache: dict[str, tuple[float, Any]] = field(default_factory=dict)

    def semaphore(self) -> asyncio.Semaphore:
        if self.slots is None:
            self.slots = asyncio.Semaphore(HEAVY_AT_ONCE)
        return self.slots


class Api:
    """The handlers of the operator API over one server's Service."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.service = server.service
        self.state: Path = server.service.runtime.state
        self.intake_paths = _intake_paths()
        self.readers = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="opsdsl-api")
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="opsdsl-api-write")  # one writer: writes in order
        self._runtime: runner.Runtime | None = None  # the writer thread's
        self._local = threading.local()  # a reader thread's Store
        self._heavy = _Heavy()
        self._keys_ready = False
        self._keys_in_flight: set[tuple[str, str]] = set()

    async def close(self, app: web.Application) -> None:
        self.readers.shutdown(wait=False, cancel_futures=True)
        self.writer.shutdown(wait=True)  # a write in flight commits before the process ends

    # ---- plumbing ------------------------------------------------------------------------

    @web.middleware
    async def problems(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Under /v1/ (but the machine intake), every error is a problem+json answer."""
        if request.path in self.intake_paths or not (request.path + "/").startswith("/v1/"):
            return await handler(request)  # the intake's requests pass straight through
        try:
            return await handler(request)
        except auth.Problem as problem:
            return problem.response()
        except web.HTTPException as error:
            headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "www-authenticate")}
            detail = {404: "no such endpoint", 405: "method not allowed"}.get(error.status, error.reason)
            if error.status == 413:
                detail = f"request body too large (over {self.server.options.max_body} bytes)"
            return problem_response(error.status, detail, headers)
        except sqlite3.OperationalError as error:
            log.warning("api: %s %s: the state database is busy: %s", request.method, request.path[:200], error)
            return problem_response(503, "the state database is busy; retry", {"Retry-After": "1"})
        except Exception as error:
            log.error(
                "api: internal error on %s %s: %s: %s", request.method, request.path[:200], type(error).__name__, error
            )
            return problem_response(500, "internal error")

    def endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        handler = getattr(self, route.handler)

        async def answer(request: web.Request) -> web.StreamResponse:
            person = self.person(request, route.act)
            if route.method != "POST":
                return await handler(request, person)
            body = await self._body(request, route.max_body or self.server.options.max_body)
            key = request.headers.get("Idempotency-Key")
            if key is None or not route.idempotent:
                return await self._post(handler, request, person, body)
            return await self._idempotent(handler, request, person, body, key)

        return answer

    def person(self, request: web.Request, act: str) -> people.Person:
        """The person making the request (401 if none), allowed to do `act` (403 if not)."""
        person = auth.identify(request, self.server)
        self.server.guard.authenticated(request.protocol)
        if act:
            auth.require(person, act)
        return person

    async def _post(self, handler: Any, request: web.Request, person: Any, body: bytes) -> web.StreamResponse:
        try:
            return await handler(request, person, body)
        except auth.Problem as problem:
            return problem.response()

    async def _body(self, request: web.Request, limit: int) -> bytes:
        """The request body, at most `limit` bytes, JSON; 413 / 415 / 408 otherwise."""
        if request.content_length is not None and request.content_length > limit:
            raise Problem(413, f"request body over {limit} bytes")
        if request.body_exists:
            media = request.content_type
            if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
                raise Problem(415, f"content type {media!r}; send application/json")
            coding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if coding != "identity":
                raise Problem(415, f"content encoding {coding!r}; send the body uncompressed")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.server.options.body_timeout):
                while True:
                    chunk = await request.content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > limit:
                        raise Problem(413, f"request body over {limit} bytes", {"Connection": "close"})
                    chunks.append(chunk)
        except TimeoutError:
            raise Problem(408, "the body did not arrive in time", {"Connection": "close"}) from None
        return b"".join(chunks)

    async def act(self, request: web.Request, expect: Expect, method: str, *args: Any, **kwargs: Any) -> tuple:
        """(run id, `Runtime.method(run id, *args, **kwargs)`) for the run in the path, on the
        writer thread in one go: the run is resolved (404), `expect` checked (404, 409), the
        change made and committed there, so its commit (an fsync) never holds the event loop,
        which the intake's group commits and the runs share. A UsageError of the change is a
        problem: 409 if the state changed meanwhile, else `expect.refused(error)`."""
        text = self._run_text(request)
        loop = asyncio.get_running_loop()
        work = functools.partial(self._act, text, expect, method, args, kwargs)
        return await loop.run_in_executor(self.writer, work)

    def _act(self, text: str, expect: Expect, method: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
        runtime = self._writer_runtime()
        try:
            run_id = runview.resolve_run(runtime.store, text)
        except (UsageError, StateError) as error:
            raise Problem(404, _message(error)) from None
        expect.check(runtime.store, run_id)
        try:
            return run_id, getattr(runtime, method)(run_id, *args, **kwargs)
        except UsageError as error:
            expect.check(runtime.store, run_id)
            raise Problem(expect.refused(error), _message(error)) from None

    def _writer_runtime(self) -> runner.Runtime:
        """The writer thread's own Runtime over the state directory (made there, used only there)."""
        if self._runtime is None:
            self._runtime = runner.Runtime(self.state, clock=self.service.runtime.clock, create=False)
        return self._runtime

    async def read(self, work: Callable[..., Any], *args: Any) -> Any:
        """`work(store, *args)` on a reader thread, with that thread's own connection."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.readers, self._with_store, work, args)

    def _with_store(self, work: Callable[..., Any], args: tuple) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            store = S.Store(self.state, create=False)
            self._local.store = store
        return work(store, *args)

    async def heavy(self, name: str, work: Callable[..., Any], *args: Any, cache: float = 0.0) -> Any:
        """Whole-state work, one at a time, its result reused for `cache` seconds."""
        now = time.monotonic()
        if cache and name in self._heavy.cache and now - self._heavy.cache[name][0] < cache:
            return self._heavy.cache[name][1]
        async with self._heavy.semaphore():
            if cache and name in self._heavy.cache and time.monotonic() - self._heavy.cache[name][0] < cache:
                return self._heavy.cache[name][1]
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.readers, work, *args)
        if cache:
            self._heavy.cache[name] = (time.monotonic(), result)
        return result

    async def resolve(self, request: web.Request) -> str:
        """The full id of the run named in the path (an id, a unique prefix, or `latest`); 404 if none."""
        text = self._run_text(request)
        try:
            return await self.read(runview.resolve_run, text)
        except (UsageError, StateError) as error:
            raise Problem(404, _message(error)) from None

    def _run_text(self, request: web.Request) -> str:
        text = request.match_info["run"]
        if not RUN_TEXT.fullmatch(text):
            raise Problem(404, "no such run: a run id is digits, a-f and '-' (a unique prefix will do), or latest")
        return text

    # ---- who am I, what is there ----------------------------------------------------------

    async def me(self, request: web.Request, person: Any) -> web.Response:
        acts = [act for act in people.ACTS if people.allowed(person, act)]
        return _json(
            {
                "name": person.name,
                "role": person.role,
                "groups": list(person.groups),
                "via": person.via,
                "recorded_as": person.recorded,
                "may": acts,
            }
        )

    async def openapi(self, request: web.Request, person: Any) -> web.Response:
        return web.Response(body=openapi_bytes(), headers={"Content-Type": "application/json"})

    # ---- runs ----------------------------------------------------------------------------

    async def list_runs(self, request: web.Request, person: Any) -> web.Response:
        query = request.query
        unknown = sorted(set(query) - {"status", "pack", "playbook", "severity", "since", "limit", "cursor"})
        if unknown:
            raise Problem(422, f"unknown query parameter {unknown[0]!r}")
        status = query.get("status")
        limit = _int_param(query.get("limit"), "limit", 1, MAX_PAGE, 50)
        try:
            since = runview.parse_since(query["since"]) if "since" in query else None
        except UsageError:
            raise Problem(
                422, "since: a date (2026-11-27), a UTC time (2026-11-27T08:00:00Z), or how long ago (15m, 2h, 7d)"
            ) from None
        filters = {name: query.get(name) for name in ("pack", "playbook", "severity")}
        for name, value in filters.items():
            if value is not None and (not value or len(value) > 200):
                raise Problem(422, f"{name}: 1 to 200 characters")
        cursor = query.get("cursor")
        if cursor is not None and (not cursor or len(cursor) > 500):
            raise Problem(422, "cursor: as given by next_cursor")

        def work(store: S.Store) -> tuple[list[dict], str | None]:
            return runview.list_runs(store, status=status, since=since, limit=limit, cursor=cursor, **filters)

        try:
            runs, next_cursor = await self.read(work)
        except UsageError as error:
            raise Problem(422, _message(error)) from None
        return _json({"runs": runs, "next_cursor": next_cursor})

    async def run_detail(self, request: web.Request, person: Any) -> web.Response:
        run_id = await self.resolve(request)
        try:
            detail = await self.read(runview.run_detail, run_id)
        except (UsageError, StateError) as error:
            raise Problem(404, _message(error)) from None
        return _json(detail)

    async def approve(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        return await self._answer(request, person, body, deny=False)

    async def deny(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        return await self._answer(request, person, body, deny=True)

    async def _answer(self, request: web.Request, person: Any, body: bytes, deny: bool) -> web.Response:
        fields = _object(body, {"answers", "comment"})
        answers = fields.get("answers") or {}
        if not isinstance(answers, dict):
            raise Problem(422, "answers: an object of input name → value")
        texts = {}
        for name, value in answers.items():
            if isinstance(value, bool):
                texts[name] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                texts[name] = str(value)
            else:
                raise Problem(422, f"answers.{name}: a string, number or boolean")
        comment = _comment(fields)
        step = self._step(request)
        run_id, result = await self.act(
            request,
            Expect(step, S.AWAITING_APPROVAL, "an approval", lambda e: 422 if e.message.startswith("--input") else 403),
            "approve",
            step,
            person.recorded,
            deny=deny,
            answers=texts or None,
            comment=comment,
            person=person,
        )
        self._wake(run_id)
        return _json({"run": run_id, "step": step, "by": person.name, **result})

    async def decide(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        fields = _object(body, {"outcome", "comment"})
        outcome = fields.get("outcome")
        if outcome not in OUTCOMES:
            raise Problem(422, f"outcome: one of {', '.join(OUTCOMES)}")
        step = self._step(request)
        expect = Expect(step, S.IN_DOUBT, "a decision", lambda _: 403)
        run_id, _ = await self.act(request, expect, "decide", step, person.recorded, outcome, person=person)
        self._wake(run_id)
        return _json({"run": run_id, "step": step, "by": person.name, "outcome": outcome})

    async def ack(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        _object(body, set())
        run_id, first = await self.act(
            request, Expect(None, None, "", lambda _: 403), "acknowledge", person.recorded, person=person
        )
        return _json({"run": run_id, **first})

    async def cancel(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        reason = _comment(_object(body, {"comment"}))
        expect = Expect(None, None, "cancel", lambda _: 409, live=True)
        run_id, run = await self.act(request, expect, "cancel", person.recorded, person.via, reason=reason)
        self._wake(run_id)
        return _json({"run": run_id, "status": run.status, "by": person.name})

    async def resume(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        _object(body, set())
        run_id = await self.resolve(request)
        await self.read(_expect_live, run_id, "resume")
        try:
            self.service.resume(run_id, person.recorded)
        except UsageError as error:
            await self.read(_expect_live, run_id, "resume")
            raise Problem(409, _message(error)) from None
        status = await self.read(lambda store: store.run(run_id).status)
        return _json({"run": run_id, "status": status, "by": person.name}, status=202)

    async def fire(self, request: web.Request, person: Any, body: bytes) -> web.Response:
        """Events into the packs, as a person: the machine intake's checks, source `user:NAME`."""
        from opsdsl.serve.intake import Refusal, checked_events

        if self.server.stopping:
            raise Problem(503, "shutting down", {"Retry-After": "5", "Connection": "close"})
        if not body:
            raise Problem(422, "no event: send a JSON object (one event) or a list of objects")
        loop = asyncio.get_running_loop()
        try:
            events = await loop.run_in_executor(
                self.server.parsers, checked_events, body, "http", self.server.options.queue_size
            )
        except Refusal as refusal:
            raise Problem(422 if refusal.status == 400 else refusal.status, refusal.reason) from None
        try:
            ids = await self.server.intake.accept(events, f"user:{person.name}")
        except QueueFull:
            raise Problem(429, "backlog full; retry later", {"Retry-After": "1"}) from None
        except (sqlite3.Error, OpsdslError) as error:
            log.error("api: could not persist %d events: %s", len(events), error)
            raise Problem(503, "could not store the events", {"Retry-After": "5"}) from None
        return _json({"accepted": len(ids), "ids": ids, "source": f"user:{person.name}"}, status=202)

    def _step(self, request: web.Request) -> str:
        step = request.match_info["step"]
        if not STEP_TEXT.fullmatch(step):
            raise Problem(404, "no such step: a step id is letters, digits, '_', '-', '.' and ':'")
        return step

    def _wake(self, run_id: str) -> None:
        """Nudge the server's driver: the run goes on now, not at its next timer."""
        wake = getattr(self.service, "wake", None)
        if wake is not None:
            wake(run_id)

    # ---- idempotency ---------------------------------------------------------------------

    async def _idempotent(
        self, handler: Any, request: web.Request, person: Any, body: bytes, key: str
    ) -> web.StreamResponse:
        if not KEY_TEXT.fullmatch(key):
            raise Problem(422, f"Idempotency-Key: 1 to {MAX_KEY} printable ASCII characters")
        digest = hashlib.sha256(b"\n".join([request.method.encode(), request.path.encode(), body])).hexdigest()
        who = person.name
        stored = await self.read(_stored_response, who, key)
        if stored is not None:
            method, path, was, status, content_type, answer = stored
            if (method, path, was) != (request.method, request.path, digest):
                raise Problem(422, "Idempotency-Key already used for another request; use a new key")
            return web.Response(
                body=answer, status=status, headers={"Content-Type": content_type, "Idempotent-Replayed": "true"}
            )
        if (who, key) in self._keys_in_flight:
            raise Problem(409, "a request with this Idempotency-Key is still being answered; retry")
        self._keys_in_flight.add((who, key))
        try:
            response = await self._post(handler, request, person, body)
            if response.status < 500 and isinstance(response, web.Response) and response.body is not None:
                loop = asyncio.get_running_loop()
                stored = (who, key, request.method, request.path, digest, response.status, response.content_type)
                await loop.run_in_executor(self.writer, self._store_response, (*stored, bytes(response.body)))
            return response
        finally:
            self._keys_in_flight.discard((who, key))

    def _store_response(self, row: tuple) -> None:
        """Keep an answer for its Idempotency-Key (on the writer thread, with its connection)."""
        store = self._writer_runtime().store
        now = time.time()
        if not self._keys_ready:
            store.conn.executescript(IDEMPOTENCY_DDL)
            self._keys_ready = True
        with store.transaction():
            store.conn.execute("DELETE FROM api_idempotency WHERE at < ?", (now - IDEMPOTENCY_TTL,))
            store.conn.execute("INSERT OR REPLACE INTO api_idempotency VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (*row, now))

    # ---- incidents -----------------------------------------------------------------------

    async def _incident_folder(self, request: web.Request) -> Path:
        from opsdsl.runtime.state_audit import find_incident

        incident = request.match_info["incident"]
        if not INCIDENT_TEXT.fullmatch(incident) or ".." in incident:
            raise Problem(404, "no such incident: an incident id is letters, digits, '.', '_' and '-'")
        try:
            folder = await asyncio.get_running_loop().run_in_executor(
                self.readers, find_incident, self.state, None, incident
            )
        except UsageError:
            raise Problem(404, f"no incident {incident}") from None
        writer = self.server.service.runtime.incident_writer
        if writer is not None:  # the folders of runs that ended before this request, written off the loop
            await asyncio.wrap_future(writer.written())
        if folder.is_symlink() or not folder.is_dir():
            raise Problem(404, f"no incident {incident}")
        return folder

    async def incident(self, request: web.Request, person: Any) -> web.Response:
        from opsdsl.audit.incident import RECORD_FILE

        folder = await self._incident_folder(request)
        data = await self._file(folder, RECORD_FILE, "its record is not written yet (the run is still live)")
        try:
            document = json.loads(data)
        except ValueError:
            raise Problem(500, "the incident's record.json is not JSON") from None
        return _json(document)

    async def incident_rca(self, request: web.Request, person: Any) -> web.Response:
        from opsdsl.audit.incident import RCA_FILE

        folder = await self._incident_folder(request)
        data = await self._file(folder, RCA_FILE, "its rca.md is not written yet (the run is still live)")
        return web.Response(body=data, headers={"Content-Type": "text/markdown; charset=utf-8"})

    async def incident_evidence(self, request: web.Request, person: Any) -> web.Response:
        folder = await self._incident_folder(request)
        files = await asyncio.get_running_loop().run_in_executor(self.readers, _evidence_files, folder)
        return _json({"incident_id": folder.name, "files": files})

    async def evidence_file(self, request: web.Request, person: Any) -> web.StreamResponse:
        from opsdsl.audit.incident import EVIDENCE_DIR

        folder = await self._incident_folder(request)
        parts = request.match_info["name"].split("/")
        if not all(EVIDENCE_PART.fullmatch(part) and part not in (".", "..") for part in parts):
            raise Problem(404, "no such evidence file")
        relative = "/".join([EVIDENCE_DIR, *parts])
        data = await self._file(folder, relative, "no such evidence file")
        digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
        return web.Response(
            body=data,
            headers={
                "Content-Type": "application/octet-stream",
                "Repr-Digest": f"sha-256=:{digest}:",
                "Content-Disposition": f'attachment; filename="{parts[-1]}"',
                "X-Content-Type-Options": "nosniff",
            },
        )

    async def incident_export(self, request: web.Request, person: Any) -> web.StreamResponse:
        from opsdsl.audit.incident import IncidentError, export_incident

        folder = await self._incident_folder(request)
        scratch = Path(tempfile.mkdtemp(prefix="opsdsl-export-"))
        archive = scratch / f"{folder.name}.tar.gz"
        try:
            try:
                await self.heavy("export", export_incident, folder, archive)
            except IncidentError as error:
                raise Problem(409, _message(error)) from None
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/gzip",
                    "Content-Disposition": f'attachment; filename="{folder.name}.tar.gz"',
                }
            )
            response.content_length = archive.stat().st_size
            await response.prepare(request)
            loop = asyncio.get_running_loop()
            with open(archive, "rb") as handle:
                while chunk := await loop.run_in_executor(self.readers, handle.read, CHUNK):
                    await response.write(chunk)
            await response.write_eof()
            return response
        finally:
            with contextlib.suppress(OSError):
                archive.unlink()
            with contextlib.suppress(OSError):
                scratch.rmdir()

    async def _file(self, folder: Path, relative: str, missing: str) -> bytes:
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self.readers, _read_inside, folder, relative)
        if data is None:
            raise Problem(404, f"incident {folder.name}: {missing}")
        return data

    # ---- the ledger and the report -----------------------------------------------------------

    async def ledger(self, request: web.Request, person: Any) -> web.Response:
        body = await self.heavy("ledger", _ledger_status, self.state, cache=LEDGER_CACHE_SECONDS)
        return _json(body)

    async def report(self, request: web.Request, person: Any) -> web.Response:
        from opsdsl.runtime.state_audit import compute_state_report

        unknown = sorted(set(request.query) - {"since"})
        if unknown:
            raise Problem(422, f"unknown query parameter {unknown[0]!r}")
        since = request.query.get("since")
        if since is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", since):
            raise Problem(422, "since: a date, YYYY-MM-DD")
        try:
            report = await self.heavy(f"report {since}", compute_state_report, self.state, since)
        except UsageError as error:
            raise Problem(422, _message(error)) from None
        return _json(report.to_dict())


@dataclass(frozen=True)
class Expect:
    """What a change needs of its run: a step waiting for something (`step`, `status`,
    `what`), or a live run (`live`); and the status of a refusal the runtime raises."""

    step: str | None
    status: str | None
    what: str
    refused: Callable[[UsageError], int]
    live: bool = False

    def check(self, store: S.Store, run_id: str) -> None:
        if self.step is not None:
            _expect_step(store, run_id, self.step, self.status or "", self.what)
        if self.live:
            _expect_live(store, run_id, self.what)


def _expect_step(store: S.Store, run_id: str, step: str, status: str, what: str) -> None:
    """404 if the run has no such step, 409 if the step is not waiting for `what`."""
    run = store.run(run_id)
    row = store.conn.execute("SELECT status FROM steps WHERE run_id = ? AND step_id = ?", (run_id, step)).fetchone()
    if row is None:
        raise Problem(404, f"run {run_id} has no step {step!r}")
    if row[0] != status:
        raise Problem(
            409,
            f"step {step} of run {run_id} is {row[0]}, not waiting for {what}",
            run_status=run.status,
            step_status=row[0],
        )


def _expect_live(store: S.Store, run_id: str, what: str) -> None:
    """409 if the run is finished."""
    status = store.run(run_id).status
    if status in S.FINAL_RUN_STATUSES:
        raise Problem(409, f"run {run_id} already {status}; there is nothing to {what}", run_status=status)


# ---- helpers (run on reader threads where they read files or the database) --------------


def _intake_paths() -> frozenset[str]:
    from opsdsl.serve.intake import INTAKE_PATHS  # intake imports this module: not at import time

    return frozenset(INTAKE_PATHS)


@functools.cache
def openapi_bytes() -> bytes:
    """The OpenAPI 3.1 document shipped beside this module (package data: it is in the wheel)."""
    return resources.files("opsdsl.serve").joinpath("openapi.json").read_bytes()


def _message(error: Exception) -> str:
    return getattr(error, "message", None) or str(error)


def _object(body: bytes, allowed: set[str]) -> dict[str, Any]:
    """The body as a JSON object with only `allowed` fields ({} for an empty body); 422 otherwise."""
    if not body.strip():
        return {}
    from opsdsl.lang.untrusted import json_problem, loads_finite

    try:
        value = loads_finite(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise Problem(422, "the body is not UTF-8") from None
    except (ValueError, RecursionError) as error:
        raise Problem(422, f"the body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise Problem(422, f"the body is a JSON object, not {type(value).__name__}")
    problem = json_problem(value, 8)
    if problem:
        raise Problem(422, problem)
    extra = sorted(set(value) - allowed)
    if extra:
        fields = ", ".join(sorted(allowed)) or "none"
        raise Problem(422, f"unknown field {extra[0]!r} (fields: {fields})")
    return value


def _comment(fields: dict[str, Any]) -> str | None:
    comment = fields.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > 4000):
        raise Problem(422, "comment: a string of at most 4000 characters")
    return comment


def _int_param(text: str | None, name: str, low: int, high: int, default: int) -> int:
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise Problem(422, f"{name}: a whole number from {low} to {high}")
    return int(text)


def _stored_response(store: S.Store, who: str, key: str) -> tuple | None:
    try:
        return store.conn.execute(
            "SELECT method, path, digest, status, content_type, body FROM api_idempotency"
            " WHERE person = ? AND key = ? AND at >= ?",
            (who, key, time.time() - IDEMPOTENCY_TTL),
        ).fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return None
        raise


def _read_inside(folder: Path, relative: str) -> bytes | None:
    """A regular file below `folder`, never through a symlink; None if there is none."""
    current = folder
    for part in relative.split("/"):
        current = current / part
        try:
            mode = current.lstat().st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    if not stat.S_ISREG(mode):
        return None
    try:
        fd = os.open(current, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _evidence_files(folder: Path) -> list[dict[str, Any]]:
    """Every regular file below the folder's evidence/ (links and special files left out), with its digest."""
    from opsdsl.audit.incident import EVIDENCE_DIR

    root = folder / EVIDENCE_DIR
    if root.is_symlink() or not root.is_dir():
        return []
    found = []
    for current, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(names):
            full = Path(current) / name
            info = full.lstat()
            if not stat.S_ISREG(info.st_mode):
                continue
            digest = hashlib.sha256()
            with open(full, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
            found.append(
                {
                    "name": full.relative_to(root).as_posix(),
                    "size": info.st_size,
                    "digest": f"sha256:{digest.hexdigest()}",
                }
            )
    return found


def _ledger_status(state: Path) -> dict[str, Any]:
    """`opsdsl ledger verify` with the state directory's own key, plus the last checkpoint and the key."""
    from opsdsl.audit.ledger import LedgerError
    from opsdsl.build.signing import keyid
    from opsdsl.runtime.state_audit import verify_state
    from opsdsl.runtime.state_config import read_config, state_public_key

    try:
        report = verify_state(state, [], [])
        verdict = report.to_dict()
    except (LedgerError, UsageError) as error:
        verdict = {"ok": False, "problem": _message(error), "problems": [_message(error)]}
    key = None
    with contextlib.suppress(OpsdslError, OSError, ValueError):
        found = state_public_key(state)
        if found is not None:
            key = {"keyid": keyid(found[0]), "mode": read_config(state).mode}
    checkpoint = None
    with contextlib.suppress(sqlite3.DatabaseError), S.read_only(state) as conn:
        row = conn.execute("SELECT seq, ts, keyid FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
        if row is not None:
            checkpoint = {"seq": row[0], "ts": row[1], "keyid": row[2]}
    return {
        "ok": bool(verdict.get("ok")),
        "entries": verdict.get("entries"),
        "checkpoints": verdict.get("checkpoints"),
        "first_bad": verdict.get("first_bad"),
        "problem": verdict.get("problem"),
        "problems": verdict.get("problems", []),
        "warnings": verdict.get("warnings", []),
        "notes": verdict.get("notes", []),
        "last_checkpoint": checkpoint,
        "key": key,
        "checked_at": time.time(),
    }
