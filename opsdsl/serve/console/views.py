"""The console's handlers: sign-in, pages, forms and the live stream.

Reads go through the operator API's reader threads (`Api.read`, `Api.heavy`), changes
through the API's own handlers (`Api.approve`, `Api.decide`, ...) with the form turned
into the JSON body they take, so a rule (a role, an approver list, a step's state) is
checked in one place. A refusal comes back as the API's problem and is shown on the page
it came from, with the problem's status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web

from opsdsl.errors import UsageError
from opsdsl.runtime import inspect as runview
from opsdsl.runtime import people as P
from opsdsl.runtime import store as S
from opsdsl.runtime.store import StateError
from opsdsl.serve import auth
from opsdsl.serve.api import INCIDENT_TEXT, RUN_TEXT, STEP_TEXT, Api, _evidence_files, _ledger_status
from opsdsl.serve.console import draw
from opsdsl.serve.console import session as SS
from opsdsl.serve.console.live import Live, _newest_seq

log = logging.getLogger("opsdsl.serve")

PREFIX = "/console"  # every page, form, file and stream of the console is under it

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self';"
    " frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}
MAX_FORM = 64 * 1024
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
NOTES = {  # ?done= after a form: fixed words, never text from the request
    "approved": "Approval recorded.",
    "denied": "Denial recorded: the step fails, and the run with it.",
    "decided": "Decision recorded.",
    "acknowledged": "Acknowledged.",
    "cancelled": "Cancel requested: the run starts no new step and compensates what was done.",
    "resumed": "Resume requested: the server drives the run now.",
    "signed-out": "Signed out.",
}
PAGE_RUNS = 50
APPROVAL_RUNS = 100  # paused runs looked at for "waiting for me"
SEVERITIES = ("SEV-1", "SEV-2", "SEV-3", "SEV-4")
PACK_FIRINGS = 20  # a pack's last firings and suppressions shown


class Refused(Exception):
    """A page cannot be shown: its status and a sentence for the person."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class Console:
    """The console over one server and its operator API."""

    def __init__(self, server: Any, api: Api) -> None:
        self.server = server
        self.api = api
        self.state: Path = api.state
        self.key = SS.load_key(self.state)
        self.env = jinja2.Environment(
            loader=jinja2.PackageLoader("opsdsl.serve.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            iso=runview.iso_time,
            when=when_text,
            clock=clock_text,
            ago=ago_text,
            duration=runview.duration_text,
            compact=_compact,
        )
        self.env.globals.update(
            prefix=PREFIX, run_look=draw.RUN_LOOK, step_class=draw.STEP_CLASS, step_look=draw.STATUS_LOOK
        )
        self.live = Live(self)
        self._static: dict[str, bytes] = {}
        self._signed_out_ready = False

    def mount(self, app: web.Application) -> None:
        r = app.router
        get, post = r.add_get, r.add_post
        get(PREFIX, self.home)
        get(PREFIX + "/", self.home)
        get(PREFIX + "/static/{name}", self.static)
        get(PREFIX + "/sign-in", self.sign_in_page)
        post(PREFIX + "/sign-in", self.sign_in)
        post(PREFIX + "/sign-out", self.page(self.sign_out, "read", form=True))
        get(PREFIX + "/runs", self.page(self.runs, "read"))
        get(PREFIX + "/runs/{run}", self.page(self.run, "read"))
        get(PREFIX + "/live", self.page(self.live.stream, "read"))
        get(PREFIX + "/approvals", self.page(self.approvals, "read"))
        get(PREFIX + "/ledger", self.page(self.ledger, "read"))
        get(PREFIX + "/report", self.page(self.report, "read"))
        get(PREFIX + "/packs", self.page(self.packs, "read"))
        get(PREFIX + "/incidents/{incident}", self.page(self.incident, "read"))
        get(PREFIX + "/incidents/{incident}/export", self.page(self.incident_export, "read"))
        get(PREFIX + "/incidents/{incident}/evidence/{name:.+}", self.page(self.evidence_file, "read"))
        for action, act in (("approve", "approve"), ("deny", "approve"), ("decide", "decide")):
            post(PREFIX + "/runs/{run}/steps/{step}/" + action, self.page(self.change(action), act, form=True))
        for action, act in (("ack", "ack"), ("cancel", "cancel"), ("resume", "resume")):
            post(PREFIX + "/runs/{run}/" + action, self.page(self.change(action), act, form=True))
        app.on_response_prepare.append(self._headers)
        app.on_shutdown.append(self.live.shutdown)

    # ---- plumbing ----------------------------------------------------------------------------

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Security headers on every console answer; pages are never cached (they hold CSRF tokens)."""
        if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            if not request.path.startswith(PREFIX + "/static/"):
                response.headers.setdefault("Cache-Control", "no-store")

    def render(self, name: str, status: int = 200, **context: Any) -> web.Response:
        html = self.env.get_template(name).render(**context)
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    def page(
        self, handler: Callable[..., Awaitable[web.StreamResponse]], act: str, *, form: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """A handler for a signed-in person whose role allows `act`; a form's CSRF token checked."""

        async def answer(request: web.Request) -> web.StreamResponse:
            try:
                who = await self.who(request)
            except auth.Problem as problem:
                return self._signin_redirect(request, problem.detail)
            if who is None:
                if form:
                    return self.render(
                        "error.html",
                        401,
                        me=None,
                        csrf="",
                        title="Not signed in",
                        detail="Your session ended; sign in again and repeat what you did.",
                    )
                return self._signin_redirect(request, None)
            person, csrf = who
            self.server.guard.authenticated(request.protocol)
            context = {
                "me": person,
                "csrf": csrf,
                "may": {a: P.allowed(person, a) for a in P.ACTS},
                "url": request.path_qs,
            }
            fields: dict[str, str] = {}
            if form:
                try:
                    fields = await self._form(request)
                except Refused as refused:
                    return self.render("error.html", refused.status, title="Refused", detail=refused.detail, **context)
                if not self._same_origin(request) or not SS.same(fields.get("csrf"), csrf):
                    return self.render(
                        "error.html", 403, title="Refused",
                        detail="This form was not sent from the console page (missing or wrong CSRF token). "
                        "Reload the page and try again.", **context,
                    )  # fmt: skip
            try:
                auth.require(person, act)
            except auth.Problem as problem:
                return self.render("error.html", 403, title="Not allowed", detail=problem.detail, **context)
            try:
                if form:
                    return await handler(request, person, context, fields)
                return await handler(request, person, context)
            except Refused as refused:
                return self.render(
                    "error.html",
                    refused.status,
                    title="Not found" if refused.status == 404 else "Refused",
                    detail=refused.detail,
                    **context,
                )
            except auth.Problem as problem:
                return self.render(
                    "error.html", problem.status_code, title=problem.title, detail=problem.detail, **context
                )
            except sqlite3.OperationalError:
                return self.render(
                    "error.html", 503, title="Busy", detail="The state database is busy; reload.", **context
                )

        return answer

    def _signin_redirect(self, request: web.Request, problem: str | None) -> web.StreamResponse:
        if problem:
            return self.render("error.html", 401, me=None, csrf="", title="Not signed in", detail=problem)
        target = request.path_qs if request.method == "GET" and request.path != PREFIX + "/live" else PREFIX + "/runs"
        return _redirect(f"{PREFIX}/sign-in?{urlencode({'next': target})}")

    async def who(self, request: web.Request) -> tuple[P.Person, str] | None:
        """(the person, their CSRF token): the trusted proxy's, or the session cookie's; None if neither."""
        options = self.server.options
        header = options.trusted_user_header
        if (
            header
            and header in request.headers
            and auth.is_trusted_proxy(auth.peer_address(request), tuple(options.trusted_proxies))
        ):
            person = auth.identify(request, self.server)  # the API's own rules (401 problem if the header is bad)
            return person, SS.proxy_csrf(self.key, person.name)
        session = SS.read(self.key, request.cookies.get(SS.COOKIE))
        if session is None:
            return None
        person = await self.api.read(_session_person, session)
        return None if person is None else (person, session.csrf)

    async def _form(self, request: web.Request) -> dict[str, str]:
        if request.content_length is not None and request.content_length > MAX_FORM:
            raise Refused(413, f"The form is over {MAX_FORM // 1024} KiB.")
        if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            raise Refused(415, "Send the form as a browser does.")
        try:
            async with asyncio.timeout(self.server.options.body_timeout):
                data = await request.post()
        except TimeoutError:
            raise Refused(408, "The form did not arrive in time.") from None
        except ValueError:
            raise Refused(413, "The form is too large.") from None
        fields: dict[str, str] = {}
        for name, value in data.items():
            if isinstance(value, str) and name not in fields:
                fields[name] = value
        return fields

    def _same_origin(self, request: web.Request) -> bool:
        """A browser's Origin, when sent, names this server (a second wall behind SameSite and CSRF)."""
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            return origin is None
        host = request.headers.get("Host", "")
        return origin.split("://", 1)[-1] == host

    # ---- static files and sign-in ------------------------------------------------------------

    async def home(self, request: web.Request) -> web.StreamResponse:
        return _redirect(PREFIX + "/runs")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        suffix = name[name.rfind(".") :] if "." in name else ""
        if suffix not in STATIC_TYPES or "/" in name or name.startswith("."):
            raise web.HTTPNotFound()
        if name not in self._static:
            try:
                self._static[name] = resources.files("opsdsl.serve.console").joinpath("static", name).read_bytes()
            except (FileNotFoundError, OSError):
                raise web.HTTPNotFound() from None
        return web.Response(
            body=self._static[name],
            headers={"Content-Type": STATIC_TYPES[suffix], "Cache-Control": "public, max-age=3600"},
        )

    async def sign_in_page(self, request: web.Request, *, error: str | None = None, status: int = 200) -> web.Response:
        cookie, value = SS.signin_token(self.key)
        target = _safe_next(request.query.get("next"))
        response = self.render(
            "signin.html",
            status,
            me=None,
            csrf="",
            signin=value,
            error=error,
            next=target,
            note=NOTES.get(request.query.get("done", "")),
            proxy=bool(self.server.options.trusted_user_header),
        )
        response.set_cookie(
            SS.SIGNIN_COOKIE,
            cookie,
            max_age=SS.SIGNIN_SECONDS,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        return response

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        try:
            fields = await self._form(request)
        except Refused as refused:
            return await self.sign_in_page(request, error=refused.detail, status=refused.status)
        if not self._same_origin(request) or not SS.signin_ok(
            self.key, request.cookies.get(SS.SIGNIN_COOKIE), fields.get("signin")
        ):
            return await self.sign_in_page(request, error="The sign-in form expired; try again.", status=403)
        token = fields.get("token", "").strip()
        found = await self.api.read(_token_person, token)
        if found is None:
            log.warning("console: refused a sign-in from %s: unknown or revoked token", request.remote)
            return await self.sign_in_page(request, error="Unknown or revoked token.", status=401)
        person, token_hash = found
        value, _ = SS.issue(self.key, person.name, token_hash)
        response = _redirect(_safe_next(fields.get("next")))
        response.set_cookie(
            SS.COOKIE,
            value,
            max_age=SS.SESSION_SECONDS,
            path=PREFIX,
            httponly=True,
            samesite="Strict",
            secure=self._secure(request),
        )
        response.del_cookie(SS.SIGNIN_COOKIE, path=PREFIX)
        log.info("console: %s signed in", person.name)
        return response

    async def sign_out(self, request: web.Request, person: P.Person, context: dict, fields: dict) -> web.StreamResponse:
        session = SS.read(self.key, request.cookies.get(SS.COOKIE))
        if session is not None:
            await asyncio.get_running_loop().run_in_executor(self.api.writer, self._end_session, session)
        response = _redirect(f"{PREFIX}/sign-in?done=signed-out")
        response.del_cookie(SS.COOKIE, path=PREFIX)
        return response

    def _end_session(self, session: SS.Session) -> None:
        """Record a signed-out session (on the API's writer thread, with its connection)."""
        store = self.api._writer_runtime().store
        if not self._signed_out_ready:
            store.conn.execute(SS.SIGNED_OUT_DDL)
            self._signed_out_ready = True
        with store.transaction():
            store.conn.execute("DELETE FROM console_signed_out WHERE until < ?", (time.time(),))
            store.conn.execute(
                "INSERT OR REPLACE INTO console_signed_out VALUES (?, ?)", (session.sid, session.expires)
            )

    def _secure(self, request: web.Request) -> bool:
        public = self.server.options.public_url or ""
        return request.secure or public.startswith("https://")

    # ---- pages -------------------------------------------------------------------------------

    async def runs(self, request: web.Request, person: P.Person, context: dict) -> web.Response:
        query = request.query
        filters = {name: (query.get(name) or "").strip() or None for name in ("status", "severity", "pack")}
        if filters["status"] is not None and filters["status"] not in runview.RUN_STATUSES:
            raise Refused(422, f"No run status {filters['status']!r}.")
        for name in ("severity", "pack"):
            if filters[name] is not None and len(filters[name]) > 200:
                raise Refused(422, f"{name}: at most 200 characters.")
        cursor = query.get("cursor") or None
        if cursor is not None and len(cursor) > 500:
            raise Refused(422, "That page of runs does not exist.")

        def work(store: S.Store) -> tuple[list[dict], str | None, int]:
            seq = _newest_seq(store)  # first: an entry landing meanwhile is told by the live stream
            return (*runview.list_runs(store, limit=PAGE_RUNS, cursor=cursor, **filters), seq)

        try:
            items, next_cursor, seq = await self.api.read(work)
        except UsageError as error:
            raise Refused(422, error.message) from None
        more = None
        if next_cursor:
            more = "?" + urlencode({**{k: v for k, v in filters.items() if v}, "cursor": next_cursor})
        return self.render(
            "runs.html", runs=items, filters=filters, statuses=runview.RUN_STATUSES, severities=SEVERITIES,
            more=more, now=time.time(), note=NOTES.get(request.query.get("done", "")), seq=seq, **context,
        )  # fmt: skip

    async def run(self, request: web.Request, person: P.Person, context: dict, **extra: Any) -> web.Response:
        run_id = await self._resolve(request)
        values = {
            "note": NOTES.get(request.query.get("done", "")),
            "error": extra.pop("error", None),
            "form": extra.pop("form", {}),
            **context,
        }
        html = await self.api.read(self.run_html, run_id, person, values)  # off the loop: a page of 200 steps
        return web.Response(text=html, status=extra.pop("status", 200), content_type="text/html", charset="utf-8")

    def run_html(self, store: S.Store, run_id: str, person: P.Person, values: dict[str, Any]) -> str:
        """A run's page (on a reader thread): `inspect.run_detail`, the DAG, what it asks of `person`."""
        detail, playbook = _run_and_plan(store, run_id)
        svg, asks = run_view(detail, playbook, person)
        return self.env.get_template("run.html").render(run=detail, svg=svg, asks=asks, now=time.time(), **values)

    async def approvals(self, request: web.Request, person: P.Person, context: dict) -> web.Response:
        waiting = await self.api.read(_approvals_for, person)
        return self.render("approvals.html", waiting=waiting, now=time.time(), **context)

    async def ledger(self, request: web.Request, person: P.Person, context: dict) -> web.Response:
        status = await self.api.heavy("ledger", _ledger_status, self.state, cache=5.0)
        return self.render("ledger.html", ledger=status, now=time.time(), **context)

    async def report(self, request: web.Request, person: P.Person, context: dict) -> web.Response:
        from opsdsl.audit.metrics import RESPONSE_TIMES, TARGETS, format_duration
        from opsdsl.runtime.state_audit import compute_state_report

        report = await self.api.heavy("report None", compute_state_report, self.state, None, cache=5.0)
        rows = [f for f in report.severities if f.runs or f.severity in SEVERITIES]
        mttr_target = {t.severity: t.threshold for t in TARGETS if t.metric == "mttr"}
        auto_target = {t.severity: t.threshold for t in TARGETS if t.metric == "auto_mitigation"}
        charts = [
            draw.bar_chart(
                "MTTA: mean time to acknowledge (target: the severity's response time)",
                [(f.severity, f.mtta, RESPONSE_TIMES.get(f.severity), f"{f.acknowledged} acknowledged of {f.runs}")
                 for f in rows],
                "time", format_duration,
            ),
            draw.bar_chart(
                "MTTR: mean time to resolve",
                [(f.severity, f.mttr, mttr_target.get(f.severity), f"{f.resolved} resolved of {f.finished}")
                 for f in rows],
                "time", format_duration,
            ),
            draw.bar_chart(
                "Auto-mitigation: runs that succeeded without a person",
                [(f.severity, f.auto_mitigation, auto_target.get(f.severity),
                  f"{f.auto_succeeded} of {f.auto_finished} automatic") for f in rows],
                "rate", lambda v: f"{v * 100:.0f} %",
            ),
        ]  # fmt: skip
        return self.render(
            "report.html", report=report.to_dict(), figures=rows, charts=charts, fmt=format_duration, **context
        )

    async def packs(self, request: web.Request, person: P.Person, context: dict) -> web.Response:
        loaded = [_pack_view(plan) for plan in getattr(self.server.service, "plans", [])]
        firings = await self.api.heavy("console packs", _firings, self.state, cache=5.0)
        for pack in loaded:
            pack["firings"] = [e for e in firings if e["data"].get("pack") == pack["name"]][-PACK_FIRINGS:][::-1]
        return self.render("packs.html", packs=loaded, now=time.time(), **context)

    async def incident(self, request: web.Request, person: P.Person, context: dict) -> web.Response:
        incident = _incident_id(request)
        found = await asyncio.get_running_loop().run_in_executor(self.api.readers, _incident_view, self.state, incident)
        if found is None:
            raise Refused(404, f"No incident {incident} with a written record (a live run's record comes at its end).")
        return self.render("incident.html", incident=found, **context)

    async def incident_export(self, request: web.Request, person: P.Person, context: dict) -> web.StreamResponse:
        _incident_id(request)
        return await self.api.incident_export(request, person)

    async def evidence_file(self, request: web.Request, person: P.Person, context: dict) -> web.StreamResponse:
        _incident_id(request)
        return await self.api.evidence_file(request, person)

    # ---- forms -------------------------------------------------------------------------------

    def change(self, action: str) -> Callable[..., Awaitable[web.StreamResponse]]:
        """A form's handler: the API's handler for `action` with the form as its JSON body."""

        async def handle(request: web.Request, person: P.Person, context: dict, fields: dict) -> web.StreamResponse:
            text = request.match_info["run"]
            if not RUN_TEXT.fullmatch(text) or (
                "step" in request.match_info and not STEP_TEXT.fullmatch(request.match_info["step"])
            ):
                raise Refused(404, "No such run or step.")
            body: dict[str, Any] = {}
            comment = fields.get("comment", "").strip()
            if action in ("approve", "deny"):
                answers = {k[len("answer.") :]: v for k, v in fields.items() if k.startswith("answer.") and v != ""}
                body = {"answers": answers} if answers else {}
                if comment:
                    body["comment"] = comment
            elif action == "decide":
                body = {"outcome": fields.get("outcome", "")}
            elif action == "cancel" and comment:
                body = {"comment": comment}
            handler = getattr(self.api, action)
            try:
                answer = await handler(request, person, json.dumps(body).encode())
            except auth.Problem as problem:
                if problem.status_code == 404:
                    raise Refused(404, problem.detail) from None
                return await self.run(
                    request, person, context, status=problem.status_code, error=problem.detail, form=fields
                )
            run_id = json.loads(answer.body)["run"]
            done = {"approve": "approved", "deny": "denied", "decide": "decided", "ack": "acknowledged",
                    "cancel": "cancelled", "resume": "resumed"}[action]  # fmt: skip
            return _redirect(f"{PREFIX}/runs/{run_id}?done={done}")

        return handle

    async def _resolve(self, request: web.Request, text: str | None = None) -> str:
        text = request.match_info["run"] if text is None else text
        if not RUN_TEXT.fullmatch(text):
            raise Refused(404, "No such run: a run id is digits, a-f and '-' (a unique prefix will do), or latest.")
        try:
            return await self.api.read(runview.resolve_run, text)
        except (UsageError, StateError) as error:
            raise Refused(404, getattr(error, "message", str(error))) from None


# ---- work on the reader threads -------------------------------------------------------------


def _session_person(store: S.Store, session: SS.Session) -> P.Person | None:
    """The person a session cookie names, with their current role and groups; None if their
    token was revoked or replaced since, or the session was signed out."""
    try:
        row = store.conn.execute(
            "SELECT name, role, groups, token_hash FROM users WHERE name = ? AND revoked_at IS NULL", (session.name,)
        ).fetchone()
    except sqlite3.OperationalError:
        return None
    if row is None or not SS.same(session.token, SS.fingerprint(row[3])):
        return None
    try:
        if store.conn.execute("SELECT 1 FROM console_signed_out WHERE sid = ?", (session.sid,)).fetchone():
            return None
    except sqlite3.OperationalError:  # no one signed out yet: no table
        pass
    return P.Person(row[0], row[1], tuple(json.loads(row[2])), "token")


def _token_person(store: S.Store, token: str) -> tuple[P.Person, str] | None:
    """(the person, their token's stored hash) for a token, as the API authenticates it."""
    if not token or len(token) > 200:
        return None
    try:
        person = P.People(store).authenticate(token)
    except sqlite3.OperationalError:
        return None
    return None if person is None else (person, P.token_digest(token))


def _run_and_plan(store: S.Store, run_id: str) -> tuple[dict, dict]:
    """A run's detail (`inspect.run_detail`, as every view tells it) and its compiled playbook."""
    from opsdsl.runtime.plans import _payload_of

    detail = runview.run_detail(store, run_id)
    row = store.run(run_id)
    try:
        playbook = json.loads(_payload_of(row.envelope))["playbooks"][row.playbook]
    except Exception:  # a damaged row: the page without its drawing
        playbook = {}
    return detail, playbook


def run_view(detail: dict, playbook: dict, person: P.Person) -> tuple[str, list[dict]]:
    """(the DAG as SVG coloured by each step's live status, the approvals the run waits for
    with each one's inputs and whether `person` may still give it)."""
    statuses = {step["id"]: step["status"] for step in detail["steps"]}
    svg = draw.dag_svg(playbook, statuses, f"{detail['playbook']} — run {detail['id']}")
    nodes = {node.get("id"): node for node in playbook.get("nodes", []) if isinstance(node, dict)}
    asks = []
    for wait in detail["waiting_for"]:
        if wait["kind"] != "approval":
            continue
        inputs = ((nodes.get(wait["step"]) or {}).get("with") or {}).get("inputs") or {}
        mine = P.may_approve(person, wait["approvers"] or []) and not any(
            P.same_person_key(str(by)) == P.same_person_key(person.recorded) for by in wait["approved_by"]
        )
        asks.append({**wait, "inputs": inputs if isinstance(inputs, dict) else {}, "mine": mine})
    return svg, asks


def _approvals_for(store: S.Store, person: P.Person) -> list[dict]:
    """Approvals waiting for `person`: steps of paused runs whose approvers admit them and that
    they have not approved yet (their role must allow approving at all)."""
    if not P.allowed(person, "approve"):
        return []
    runs, _ = runview.list_runs(store, status=S.PAUSED, limit=APPROVAL_RUNS)
    out = []
    for item in runs:
        if not item["pending_approvals"]:
            continue
        detail = runview.run_detail(store, item["id"])
        for wait in detail["waiting_for"]:
            if wait["kind"] != "approval" or not P.may_approve(person, wait["approvers"] or []):
                continue
            if any(P.same_person_key(str(by)) == P.same_person_key(person.recorded) for by in wait["approved_by"]):
                continue
            out.append({"run": item, "wait": wait})
    return out


def _pack_view(plan: Any) -> dict:
    """A loaded pack as the packs page shows it: name, version, digest, how it was trusted,
    its triggers, hooks and playbooks (from the verified plan the server runs)."""
    payload = getattr(plan, "payload", {}) or {}
    pack = payload.get("pack") or {}
    playbooks = payload.get("playbooks") or {}
    return {
        "name": pack.get("name"),
        "version": pack.get("version"),
        "owner": pack.get("owner"),
        "digest": getattr(plan, "digest", None) or pack.get("digest"),
        "path": getattr(plan, "path", None),
        "triggers": sorted((payload.get("triggers") or {}).items()),
        "hooks": sorted((payload.get("hooks") or {}).items()),
        "playbooks": sorted((name, (body or {}).get("severity")) for name, body in playbooks.items()),
    }


def _firings(state: Path) -> list[dict]:
    """The newest trigger firings and hook suppressions, oldest first (one read connection)."""

    from opsdsl.runtime.service import HOOK_SUPPRESSED, TRIGGER_FIRED

    with S.read_only(state) as conn:
        rows = conn.execute(
            "SELECT seq, ts, kind, data FROM ledger WHERE kind IN (?, ?) ORDER BY seq DESC LIMIT ?",
            (TRIGGER_FIRED, HOOK_SUPPRESSED, PACK_FIRINGS * 20),
        ).fetchall()
    return [{"seq": r[0], "ts": r[1], "kind": r[2], "data": json.loads(r[3])} for r in reversed(rows)]


def _incident_view(state: Path, incident: str) -> dict | None:
    """An incident's record summary, its rca.md as safe HTML, its evidence and its verification."""
    from opsdsl.audit.incident import RCA_FILE, RECORD_FILE
    from opsdsl.runtime.state_audit import find_incident
    from opsdsl.serve.api import _read_inside
    from opsdsl.serve.console.markdown import to_html

    try:
        folder = find_incident(state, None, incident)
    except UsageError:
        return None
    if folder.is_symlink() or not folder.is_dir():
        return None
    data = _read_inside(folder, RECORD_FILE)
    if data is None:
        return None
    try:
        envelope = json.loads(data)
        record = envelope.get("record", envelope) if isinstance(envelope, dict) else {}
    except ValueError:
        record = {}
    rca = _read_inside(folder, RCA_FILE)
    return {
        "id": folder.name,
        "record": record if isinstance(record, dict) else {},
        "rca_html": to_html(rca.decode("utf-8", "replace")) if rca is not None else None,
        "evidence": _evidence_files(folder),
        "problems": _verify_incident(state, folder),
    }


def _verify_incident(state: Path, folder: Path) -> list[str]:
    """`opsdsl incident verify` of the folder with the state directory's own key; [] when it verifies."""
    from opsdsl.build.signing import keyid
    from opsdsl.runtime.state_config import state_public_key

    try:
        from opsdsl.audit.incident.verify import verify_folder

        found = state_public_key(state)
        if found is None:
            return ["no public key in the state directory to check the record's signature with"]
        return list(verify_folder(folder, {keyid(found[0]): found[0]}))
    except Exception as error:  # a verification that cannot run is a problem to show, not a 500
        return [f"could not verify: {getattr(error, 'message', None) or error}"]


# ---- small helpers ------------------------------------------------------------------------


def _incident_id(request: web.Request) -> str:
    incident = request.match_info["incident"]
    if not INCIDENT_TEXT.fullmatch(incident) or ".." in incident:
        raise Refused(404, "No such incident: an incident id is letters, digits, '.', '_' and '-'.")
    return incident


def _redirect(location: str) -> web.Response:
    """303 See Other (redirect-after-POST), returned, not raised: the intake's guard turns
    raised HTTP exceptions into JSON answers."""
    return web.Response(status=303, headers={"Location": location})


def _safe_next(value: Any) -> str:
    """Where to go after signing in: a console path only (never another site)."""
    if (
        isinstance(value, str)
        and value.startswith(PREFIX + "/")
        and "//" not in value
        and "\\" not in value
        and len(value) <= 1000
        and value.isprintable()
    ):
        return value
    return PREFIX + "/runs"


def when_text(ts: float | None) -> str:
    """An absolute UTC time, to the second."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock_text(ts: float | None) -> str:
    """The time of day, UTC, for rows of one run (the full time is the element's title)."""
    return "—" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def ago_text(ts: float | None, now: float | None = None) -> str:
    """How long ago, in words a glance reads ("4m ago")."""
    if ts is None:
        return "—"
    seconds = (time.time() if now is None else now) - ts
    if seconds < 0:
        return "in " + runview.age_text(-seconds).removesuffix(" ago")
    return runview.age_text(seconds)


def _compact(value: Any, limit: int = 2000) -> str:
    """A value as one JSON line, cut at `limit` characters (the API has all of it)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
