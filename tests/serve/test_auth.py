"""Who is asking, over real HTTP on 127.0.0.1: user tokens, the trusted proxy's header only from
trusted peers, RFC 9457 problems for 401 and 403, and hostile credentials."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from opsdsl.runtime.people import People, Person
from opsdsl.runtime.store import Store
from opsdsl.serve.auth import Problem, identify, is_trusted_proxy, problem, require, trusted_networks
from opsdsl.serve.intake import ServeOptions

HEADER = "X-Forwarded-Email"
PROXY = "127.0.0.2"  # loopback is a /8: a client bound here reaches a server on 127.0.0.1


@pytest.fixture
def store(tmp_path: Path):
    opened = Store(tmp_path / "state")
    yield opened
    opened.close()


def fake_server(store: Store, **options: Any) -> SimpleNamespace:
    return SimpleNamespace(options=ServeOptions(**options), service=SimpleNamespace(store=store))


def exchange(server: SimpleNamespace, requests: list[dict[str, Any]], local: str = "127.0.0.1") -> list[tuple]:
    """Serve `whoami` on 127.0.0.1 (identify, then require the `act` query) and send each request
    from `local`: (status, content type, headers, JSON body) per request."""

    async def whoami(request: web.Request) -> web.Response:
        person = identify(request, server)
        require(person, request.query.get("act", "read"))
        return web.json_response({"name": person.name, "role": person.role, "via": person.via, "by": person.recorded})

    async def main() -> list[tuple]:
        app = web.Application()
        app.router.add_get("/whoami", whoami)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        answers = []
        try:
            connector = aiohttp.TCPConnector(local_addr=(local, 0))
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                for spec in requests:
                    url = f"http://127.0.0.1:{port}/whoami"
                    async with session.get(url, headers=spec.get("headers"), params=spec.get("params")) as reply:
                        body = await reply.read()
                        answers.append((reply.status, reply.content_type, dict(reply.headers), json.loads(body)))
        finally:
            await runner.cleanup()
        return answers

    return asyncio.run(main())


def bearer(token: str) -> dict[str, str]:
    return {"headers": {"Authorization": f"Bearer {token}"}}


def test_a_user_token_identifies_its_person_and_roles_are_enforced_with_problems(store: Store) -> None:
    people = People(store)
    viewer, approver = people.add("vera", "viewer"), people.add("Alice", "approver", ["OnCall"])
    server = fake_server(store, token=b"machine-token")
    answers = exchange(
        server,
        [
            bearer(approver),
            {**bearer(approver), "params": {"act": "approve"}},
            {**bearer(viewer), "params": {"act": "approve"}},
            {**bearer(viewer), "params": {"act": "read"}},
        ],
    )
    assert answers[0][0] == 200 and answers[0][3] == {
        "name": "alice",
        "role": "approver",
        "via": "token",
        "by": "alice",
    }
    assert answers[1][0] == 200
    status, kind, _, body = answers[2]
    assert (status, kind) == (403, "application/problem+json")
    assert body["status"] == 403 and body["title"] == "Forbidden" and body["type"] == "about:blank"
    assert "vera is a viewer" in body["detail"] and body["act"] == "approve"
    assert answers[3][0] == 200


def test_no_unknown_revoked_or_malformed_tokens_are_401_with_a_challenge(store: Store) -> None:
    people = People(store)
    token = people.add("bob", "responder")
    other = people.add("carol", "responder")
    people.revoke("bob")
    server = fake_server(store)
    answers = exchange(
        server,
        [
            {},
            bearer(token),  # revoked
            bearer(other[:-1] + ("A" if other[-1] != "A" else "B")),  # one character off
            {"headers": {"Authorization": f"Basic {other}"}},
            bearer("machine-token"),  # the intake's shared token is not a person
            bearer(other),
        ],
    )
    for status, kind, headers, body in answers[:5]:
        assert (status, kind) == (401, "application/problem+json"), body
        assert headers["WWW-Authenticate"].startswith('Bearer realm="opsdsl"')
        assert body["status"] == 401 and body["detail"]
    assert 'error="invalid_token"' in answers[1][2]["WWW-Authenticate"]
    assert answers[5][0] == 200 and answers[5][3]["name"] == "carol"


def test_the_proxy_header_is_ignored_from_an_untrusted_peer(store: Store) -> None:
    People(store).add("root", "admin")
    server = fake_server(store, trusted_user_header=HEADER, trusted_proxies=(PROXY,))
    token = People(store).add("vera", "viewer")
    answers = exchange(
        server,
        [
            {"headers": {HEADER: "root"}, "params": {"act": "admin"}},  # no token: the header alone is nothing
            {"headers": {HEADER: "root", "Authorization": f"Bearer {token}"}, "params": {"act": "admin"}},
        ],
        local="127.0.0.1",
    )
    assert answers[0][0] == 401 and "no credentials" in answers[0][3]["detail"]
    # With a token, the token speaks: vera, a viewer, whatever the header claims.
    assert answers[1][0] == 403 and "vera is a viewer" in answers[1][3]["detail"]


def test_the_proxy_header_is_believed_from_a_trusted_peer(store: Store) -> None:
    people = People(store)
    people.add("alice@example.com", "approver", ["oncall"])
    people.add("mallory@example.com", "admin")
    people.revoke("mallory@example.com")
    server = fake_server(store, trusted_user_header=HEADER, trusted_proxies=("127.0.0.0/30",))
    answers = exchange(
        server,
        [
            {"headers": {HEADER: "Alice@Example.com"}, "params": {"act": "approve"}},
            {"headers": {HEADER: "newcomer@example.com"}},
            {"headers": {HEADER: "newcomer@example.com"}, "params": {"act": "fire"}},
            {"headers": {HEADER: "mallory@example.com"}},
        ],
        local=PROXY,
    )
    assert answers[0][0] == 200
    assert answers[0][3] == {"name": "alice@example.com", "role": "approver", "via": "proxy", "by": "alice@example.com"}
    # Someone the proxy let in, unknown here: a viewer.
    assert answers[1][0] == 200 and answers[1][3]["role"] == "viewer" and answers[1][3]["via"] == "proxy"
    assert answers[2][0] == 403
    assert answers[3][0] == 401 and "revoked" in answers[3][3]["detail"]


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.com, root@example.com",  # a list: which one?
        "alice@example.com,root@example.com",
        "a" * 5000 + "@example.com",  # huge
        "аlice@example.com",  # Cyrillic а: not a name of ours, never alice
        "root\u202e@example.com",  # a bidi override
        "",
    ],
)
def test_a_proxy_header_that_is_not_one_plain_name_is_refused(store: Store, value: str) -> None:
    People(store).add("alice@example.com", "admin")
    server = fake_server(store, trusted_user_header=HEADER, trusted_proxies=(PROXY,))
    ((status, kind, headers, body),) = exchange(server, [{"headers": {HEADER: value}}], local=PROXY)
    assert (status, kind) == (401, "application/problem+json"), body
    assert "WWW-Authenticate" in headers


def test_a_header_with_a_newline_or_sent_twice_is_refused(store: Store) -> None:
    """What a real client cannot send (aiohttp refuses to), checked on a mocked request."""
    server = fake_server(store, trusted_user_header=HEADER, trusted_proxies=(PROXY,))
    transport = SimpleNamespace(get_extra_info=lambda name, default=None: (PROXY, 4711) if name == "peername" else None)
    newline = make_mocked_request("GET", "/", headers={HEADER: "alice\nX-Role: admin"}, transport=transport)
    with pytest.raises(Problem) as refused:
        identify(newline, server)
    assert refused.value.status == 401
    from multidict import CIMultiDict

    twice = make_mocked_request(
        "GET", "/", headers=CIMultiDict([(HEADER, "alice"), (HEADER, "root")]), transport=transport
    )
    with pytest.raises(Problem) as refused:
        identify(twice, server)
    assert "2 times" in refused.value.detail


@pytest.mark.parametrize(
    "token",
    [
        "opsdsl_" + "\udcff" * 43,  # odd bytes (surrogate-escaped)
        "opsdsl_" + "é" * 43,
        "opsdsl_" + "A" * 10_000,
        "opsdsl_" + "A" * 42 + "\x00",
        "\x00",
        "",
        "opsdsl_" + "A" * 43,  # well formed, unknown
    ],
)
def test_odd_tokens_authenticate_nobody_and_never_raise(store: Store, token: str) -> None:
    People(store).add("alice", "admin")
    assert People(store).authenticate(token) is None


def test_huge_and_odd_authorization_headers_over_http(store: Store) -> None:
    People(store).add("alice", "admin")
    server = fake_server(store)
    answers = exchange(
        server,
        [
            {"headers": {"Authorization": "Bearer opsdsl_" + "A" * 7000}},
            {"headers": {"Authorization": "Bearer " + "opsdsl_ä" + "A" * 42}},
            {"headers": {"Authorization": "Bearer"}},
        ],
    )
    assert [a[0] for a in answers] == [401, 401, 401]


def test_trusted_proxies_are_exact_addresses_or_networks() -> None:
    assert is_trusted_proxy("10.0.0.7", ("10.0.0.7",))
    assert not is_trusted_proxy("10.0.0.8", ("10.0.0.7",))
    assert is_trusted_proxy("10.0.0.8", ("10.0.0.0/28",))
    assert not is_trusted_proxy("10.0.0.8", ("10.0.0.0/29",))
    assert is_trusted_proxy("::ffff:10.0.0.7", ("10.0.0.7",))  # IPv4 seen through an IPv6 socket
    assert not is_trusted_proxy(None, ("10.0.0.7",))
    assert not is_trusted_proxy("not-an-address", ("10.0.0.7",))
    assert not is_trusted_proxy("10.0.0.7", ())
    assert not is_trusted_proxy("10.0.0.7", ("proxy.internal",))  # a bad entry trusts nobody
    from opsdsl.errors import UsageError

    with pytest.raises(UsageError, match="not an IP address"):
        trusted_networks(("proxy.internal",))


def test_problem_is_rfc_9457_json() -> None:
    answer = problem(409, "Conflict", "step ask is not waiting for an approval", run="r1")
    assert answer.status == 409 and answer.content_type == "application/problem+json"
    assert json.loads(answer.text) == {
        "type": "about:blank",
        "title": "Conflict",
        "status": 409,
        "detail": "step ask is not waiting for an approval",
        "run": "r1",
    }
    raised = Problem(403, "Forbidden", "no", headers={"X-A": "1"}, act="approve")
    again = raised.response()
    assert raised.status == again.status == 403 and again.headers["X-A"] == "1"
    assert json.loads(again.text) == json.loads(raised.text)


def test_a_person_records_local_names_with_their_channel() -> None:
    assert Person("alice", "admin").recorded == "local:alice"
    assert Person("alice", "admin", via="token").recorded == "alice"
    assert Person("alice@example.com", "viewer", via="proxy").recorded == "alice@example.com"
