"""`http.request`: one HTTP request, and `send`, the request every networked action makes.

Requests carry `Idempotency-Key: RUN_ID:STEP_ID`, the same on every attempt, so a server
that honours it applies a retried POST once. Time limits are the scheduler's: it cancels
the attempt, and httpx closes the connection mid-flight.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json as jsonlib
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from opsdsl.runtime.actions import builtin_schema, check_inputs, redact_outputs
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.builtin import BuiltinAction

BODY_LIMIT = 1024 * 1024
MAX_REDIRECTS = 3  # same-origin hops `send(follow_redirects=True)` takes; another origin: none
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})  # timeout, too early, too many requests
_NO_JSON = object()


@dataclass(frozen=True)
class HttpResponse:
    """A response read up to a limit: status, lower-case headers, and the body's first bytes."""

    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool
    encoding: str = "utf-8"

    def text(self) -> str:
        return self.body.decode(self.encoding, errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON; None when it is empty, cut short or not JSON."""
        if self.truncated or not self.body.strip():
            return None
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            return None


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context for every request: loading the CA bundle costs ~60 ms, and a new
    client per request would pay it each time, blocking the event loop. The bundle is
    $SSL_CERT_FILE when set, else certifi's (httpx's own default)."""
    import certifi

    return ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or certifi.where())


# One client per TLS setting for every request of a task that set it (`shared_clients`):
# a pool runner keeps its connections open between steps rather than making a client and a
# connection for each. Nothing else is shared: the limits, timeout and redirect rule are
# each request's, and the clients keep no cookies.
_SHARED: contextvars.ContextVar[dict[bool, httpx.AsyncClient] | None] = contextvars.ContextVar(
    "opsdsl_http_clients", default=None
)


def _client(verify: bool, shared: bool = False) -> httpx.AsyncClient:
    if not shared:
        return httpx.AsyncClient(verify=_tls_context() if verify else False)
    from http.cookiejar import CookieJar, DefaultCookiePolicy

    return httpx.AsyncClient(
        verify=_tls_context() if verify else False,
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),  # one step's cookie is never another's
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32, keepalive_expiry=5.0),
    )


@contextlib.asynccontextmanager
async def shared_clients() -> AsyncIterator[None]:
    """Within it (and the tasks started within it), `send` reuses one client per TLS
    setting, with its pool of open connections; closed on the way out."""
    clients: dict[bool, httpx.AsyncClient] = {}
    token = _SHARED.set(clients)
    try:
        yield
    finally:
        _SHARED.reset(token)
        for client in clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()


async def send(
    method: str,
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    json: Any = _NO_JSON,
    content: str | bytes | None = None,
    idempotency_key: str | None = None,
    verify: bool = True,
    timeout: float | None = None,
    limit: int = BODY_LIMIT,
    follow_redirects: bool = False,
) -> HttpResponse:
    """Send one request and read at most `limit` bytes of the response body.

    Raises ActionFailed for a URL that is not http(s) (not retryable) and for a failed
    connection (retryable, except a certificate that does not verify). Any status is a
    response; `check_status` decides whether it is the expected one.

    `follow_redirects` follows at most MAX_REDIRECTS redirects, and only within the URL's
    origin (scheme, host and port): a redirect to any other origin fails, not retryable,
    without a request to it. A URL whose host a hostile value chose can then reach no
    further than that host (an internal service, a metadata endpoint) on its own.
    """
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ActionFailed(f"invalid URL {url!r}: {exc}", retryable=False) from None
    if target.scheme not in ("http", "https") or not target.host:
        raise ActionFailed(f"refusing URL {url!r}: only http:// and https:// URLs are allowed", retryable=False)
    request_headers = dict(headers or {})
    if idempotency_key is not None and not any(name.lower() == "idempotency-key" for name in request_headers):
        request_headers["Idempotency-Key"] = idempotency_key
    body: dict[str, Any] = {"json": json} if json is not _NO_JSON else {"content": content}
    shared = _SHARED.get()
    try:
        async with contextlib.AsyncExitStack() as stack:
            if shared is None:
                client = await stack.enter_async_context(_client(verify))
            else:
                client = shared.get(verify) or shared.setdefault(verify, _client(verify, shared=True))
            outgoing = client.build_request(method, target, headers=request_headers, timeout=timeout, **body)
            hops = 0
            while True:
                response = await client.send(outgoing, stream=True)
                try:
                    if not (follow_redirects and response.is_redirect and response.next_request is not None):
                        return await _read_response(response, limit)
                    outgoing = _redirect_within_origin(method, url, target, response.next_request, hops)
                    hops += 1
                finally:
                    await response.aclose()
    except httpx.HTTPError as exc:
        raise ActionFailed(f"{method} {url} failed: {_describe(exc)}", retryable=not _certificate_refused(exc)) from exc


async def _read_response(response: httpx.Response, limit: int) -> HttpResponse:
    kept = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        room = limit - len(kept)
        if len(chunk) > room:
            kept += chunk[:room]
            truncated = True
            break
        kept += chunk
    return HttpResponse(
        status=response.status_code,
        headers={name.lower(): value for name, value in response.headers.items()},
        body=bytes(kept),
        truncated=truncated,
        encoding=response.charset_encoding or "utf-8",
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port or {"http": 80, "https": 443}.get(url.scheme))


def _redirect_within_origin(
    method: str, url: str, first: httpx.URL, redirect: httpx.Request, hops: int
) -> httpx.Request:
    """The redirect's request, if it stays within `first`'s origin and the hop limit."""
    if _origin(redirect.url) != _origin(first):
        raise ActionFailed(
            f"{method} {url} redirected to another origin ({redirect.url.scheme}://{redirect.url.netloc.decode()}); "
            "redirects are followed only within the URL's own scheme, host and port",
            retryable=False,
        )
    if hops >= MAX_REDIRECTS:
        raise ActionFailed(f"{method} {url} redirected more than {MAX_REDIRECTS} times", retryable=False)
    return redirect


def _describe(exc: httpx.HTTPError) -> str:
    detail = str(exc) or type(exc).__name__
    return f"timed out ({detail})" if isinstance(exc, httpx.TimeoutException) else detail


def _certificate_refused(exc: BaseException) -> bool:
    """A certificate that does not verify will not verify on the next attempt either."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def status_expected(status: int, expect: list[int] | None) -> bool:
    return status in expect if expect else 200 <= status < 300


def check_status(what: str, response: HttpResponse, expect: list[int] | None, outputs: dict[str, Any]) -> None:
    """Fail (with `outputs`) unless the status is expected; a client error other than
    408/425/429 will not change on a retry."""
    if status_expected(response.status, expect):
        return
    wanted = " or ".join(map(str, expect)) if expect else "2xx"
    client_error = 400 <= response.status < 500 and response.status not in RETRYABLE_CLIENT_ERRORS
    raise ActionFailed(
        f"{what} returned {response.status} (expected {wanted})", outputs=outputs, retryable=not client_error
    )


class HttpRequestAction(BuiltinAction):
    """One HTTP request; the response's status, headers and body become the outputs."""

    name = "http.request"

    async def _run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        inputs = request.inputs
        check_inputs(self.name, builtin_schema(self.name), inputs, context.redact)
        method = inputs.get("method", "GET")
        response = await send(
            method,
            inputs["url"],
            headers=inputs.get("headers"),
            json=inputs.get("json", _NO_JSON),
            content=inputs.get("body"),
            idempotency_key=request.idempotency_key,
            verify=inputs.get("verify_tls", True),
            timeout=request.timeout,
        )
        outputs = redact_outputs(
            {
                "status": response.status,
                "json": response.json(),
                "headers": response.headers,
                "body": response.text(),
                "truncated": response.truncated,
            },
            context.redact,
        )
        check_status(f"{method} {inputs['url']}", response, inputs.get("expect_status"), outputs)
        return outputs
