"""Who is asking: people on the operator API, and RFC 9457 problems when they may not.

`identify(request, server)` turns a request into a `Person`, checking in this order:

1. the single-sign-on proxy's header (`ServeOptions.trusted_user_header`, such as
   `X-Forwarded-Email`), believed **only** when the TCP peer is one of
   `ServeOptions.trusted_proxies` (addresses or networks). From any other peer the header
   is ignored, as if it were not there: anyone can send it, only the proxy is believed;
2. else `Authorization: Bearer TOKEN`, a token from `opsdsl users add` (an active one).

Nothing else identifies a person: no, unknown, revoked or malformed credentials are a
401 problem with a `WWW-Authenticate` challenge. `require(person, act)` is the role check
(403). The machine intake (`/v1/events`, `/v1/alertmanager`) keeps its own shared bearer
token and HMAC signatures (`opsdsl.serve.intake`): a person's token is not a sender's.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web

from opsdsl.errors import UsageError
from opsdsl.runtime.people import People, Person, allowed, roles_for, user_name

log = logging.getLogger("opsdsl.serve")

PROBLEM_JSON = "application/problem+json"
CHALLENGE = 'Bearer realm="opsdsl"'
PROXY_DEFAULT_ROLE = "viewer"  # a proxy's person with no `users` row
MAX_IDENTITY = 320  # characters of the proxy's header: the longest email address is 254


def problem(
    status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
) -> web.Response:
    """An RFC 9457 `application/problem+json` answer: `type` (default `about:blank`),
    `title`, `status`, `detail`, and any extension members given as keywords."""
    body = {"type": extra.pop("type", "about:blank"), "title": title, "status": status, "detail": detail, **extra}
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


class Problem(web.HTTPError):
    """A refusal to raise from a handler: an `aiohttp` HTTP error whose body is problem+json.

    A middleware should answer `problem.response()` (a fresh Response); uncaught, aiohttp
    sends the exception itself, which is the same answer."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None, **extra: Any
    ) -> None:
        self.status_code = status  # read by HTTPException.__init__
        self.title, self.detail, self.extra = title, detail, dict(extra)
        self.problem_headers = dict(headers or {})
        body = {"type": self.extra.get("type", "about:blank"), "title": title, "status": status, "detail": detail}
        body.update({k: v for k, v in self.extra.items() if k != "type"})
        super().__init__(
            headers=self.problem_headers, text=json.dumps(body, ensure_ascii=False), content_type=PROBLEM_JSON
        )

    def response(self) -> web.Response:
        return problem(self.status_code, self.title, self.detail, headers=self.problem_headers, **self.extra)


def unauthorized(detail: str, invalid: bool = False) -> Problem:
    challenge = CHALLENGE + (', error="invalid_token"' if invalid else "")
    return Problem(401, HTTPStatus.UNAUTHORIZED.phrase, detail, headers={"WWW-Authenticate": challenge})


def require(person: Person, act: str) -> None:
    """403 unless `person`'s role allows `act` (`opsdsl.runtime.people.ACTS`)."""
    if not allowed(person, act):
        roles = roles_for(act)
        raise Problem(
            403,
            HTTPStatus.FORBIDDEN.phrase,
            f"{person.name} is a {person.role}; to {act} needs the role {' or '.join(roles)}",
            role=person.role,
            act=act,
        )


def people_of(server: Any) -> People:
    """The server's `People` (made once: the `users` table is created on first use)."""
    people = getattr(server, "people", None)
    if people is None:
        people = People(server.service.store)
        server.people = people
    return people


def identify(request: web.Request, server: Any) -> Person:
    """The person making `request` (see the module's docstring), or raise a 401 `Problem`."""
    options = server.options
    people = people_of(server)
    header = options.trusted_user_header
    if header and header in request.headers:
        peer = peer_address(request)
        if is_trusted_proxy(peer, tuple(options.trusted_proxies)):
            return _proxy_person(request.headers.getall(header), header, people, options)
        log.warning("ignored %s from %s: not a trusted proxy (--trusted-proxy); a token is needed", header, peer or "?")
    authorization = request.headers.get("Authorization")
    if authorization is None:
        raise unauthorized("no credentials: send `Authorization: Bearer TOKEN` with a token from `opsdsl users add`")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise unauthorized("not a bearer token: send `Authorization: Bearer TOKEN`")
    person = people.authenticate(token.strip())
    if person is None:
        raise unauthorized("unknown or revoked token", invalid=True)
    return person


def _proxy_person(values: list[str], header: str, people: People, options: Any) -> Person:
    """The person the trusted proxy names: their `users` row's role and groups, else the default role."""
    if len(values) != 1:
        raise unauthorized(f"{header} sent {len(values)} times; the proxy must name one person")
    value = values[0]
    if len(value) > MAX_IDENTITY or "," in value:
        raise unauthorized(f"{header} does not name one person (a list, or over {MAX_IDENTITY} characters)")
    try:
        name = user_name(value, header)
    except UsageError as error:
        raise unauthorized(f"{header}: {error.message}") from None
    if people.revoked(name):
        raise unauthorized(f"{name} was revoked (`opsdsl users list`)")
    known = people.get(name)
    if known is not None:
        return Person(known.name, known.role, known.groups, "proxy")
    role = getattr(options, "proxy_default_role", None) or PROXY_DEFAULT_ROLE
    return Person(name, role, (), "proxy")


def peer_address(request: web.Request) -> str | None:
    """The TCP peer's address, as the socket says (never a header such as X-Forwarded-For)."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peername, (tuple, list)) and peername:
        return str(peername[0])
    return None


def is_trusted_proxy(peer: str | None, trusted: tuple[str, ...]) -> bool:
    """Whether `peer` is one of `trusted` (addresses, or networks such as 10.0.0.0/24)."""
    if not peer or not trusted:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    try:
        networks = trusted_networks(trusted)
    except UsageError as error:  # checked at start; should one slip through, trust nobody
        log.error("%s", error.message)
        return False
    return any(address in network for network in networks)


@functools.lru_cache(maxsize=16)
def trusted_networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """`--trusted-proxy` values as networks (an address is a network of one); UsageError for a bad one."""
    networks = []
    for text in trusted:
        try:
            networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            raise UsageError(
                f"--trusted-proxy {text!r}: not an IP address or network (such as 10.0.0.7 or 10.0.0.0/24)"
            ) from None
    return tuple(networks)
