"""The web console (`/console/`) against a real `opsdsl serve` process, over HTTP as a
browser without JavaScript would use it: sign-in, the session cookie, CSRF, roles, every
page for real runs, every form, hostile run data, the live stream and the drain.

The server, its pack and its people are test_api's (`opsdsl users add`); one server
serves the module, and each test starts runs of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_api import PEOPLE, add_user, write_pack
from test_serve import Server, wait_until

ROOT = Path(__file__).resolve().parents[2]


class Person:
    """A cookie-keeping HTTP client, as a browser with scripts off."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        if token is not None:
            response = self.sign_in(token)
            assert response.status_code == 303, response.text

    def sign_in(self, token: str, next_page: str = "/console/runs") -> httpx.Response:
        page = self.client.get("/console/sign-in")
        assert page.status_code == 200
        signin = re.search(r'name="signin" value="([^"]+)"', page.text).group(1)
        return self.client.post("/console/sign-in", data={"token": token, "signin": signin, "next": next_page})

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def csrf(self, path: str = "/console/runs") -> str:
        page = self.get(path)
        assert page.status_code == 200, page.text
        return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)

    def post(self, path: str, fields: dict[str, str], csrf: str | None = "page", **kwargs: Any) -> httpx.Response:
        data = dict(fields)
        if csrf == "page":
            csrf = self.csrf()
        if csrf is not None:
            data["csrf"] = csrf
        return self.client.post(path, data=data, **kwargs)

    def close(self) -> None:
        self.client.close()


class World:
    def __init__(self, server: Server, tokens: dict[str, str]) -> None:
        self.server = server
        self.tokens = tokens
        self.people: dict[str, Person] = {}

    def as_(self, name: str) -> Person:
        if name not in self.people:
            self.people[name] = Person(self.server.url, self.tokens[name])
        return self.people[name]

    def fire(self, event: dict, who: str = "dave") -> str:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        response = httpx.post(f"{self.server.url}/v1/fire", json=event, headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        event_id = response.json()["ids"][0]

        def found() -> str | None:
            rows = self.server.query("SELECT id FROM runs WHERE event_id = ? AND parent_run IS NULL", event_id)
            return rows[0][0] if rows else None

        return wait_until(found, 60, f"the run of event {event_id}")

    def status(self, run: str) -> str:
        return self.server.query("SELECT status FROM runs WHERE id = ?", run)[0][0]

    def wait_status(self, run: str, *statuses: str, timeout: float = 60) -> str:
        return wait_until(lambda: self.status(run) in statuses and self.status(run), timeout, f"{run} {statuses}")

    def entries(self, run: str, kind: str) -> list[dict]:
        rows = self.server.query("SELECT data FROM ledger WHERE run = ? AND kind = ? ORDER BY seq", run, kind)
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        for person in self.people.values():
            person.close()


def start_world(tmp: Path, *args: str) -> World:
    state = tmp / "state"
    tokens = {name: add_user(state, name, role) for name, role in PEOPLE.items()}
    server = Server(tmp, "--drain-timeout", "5", *args, pack=write_pack(tmp), state=state).start()
    return World(server, tokens)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = start_world(tmp_path_factory.mktemp("console"))
    try:
        yield world
    finally:
        world.close()
        world.server.close()


def paused_change(world: World) -> str:
    run = world.fire({"name": "change", "labels": {"service": "api"}})
    world.wait_status(run, "paused")
    return run


# ---- sign-in and the session ---------------------------------------------------------------


def test_pages_need_a_person_and_send_them_to_sign_in(world: World) -> None:
    anonymous = Person(world.server.url)
    response = anonymous.get("/console/runs?status=paused")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in?next=%2Fconsole%2Fruns%3Fstatus%3Dpaused"
    # a bearer token is the API's credential, not the console's: the console wants its session
    bearer = anonymous.get("/console/runs", headers={"Authorization": f"Bearer {world.tokens['alice']}"})
    assert bearer.status_code == 303
    assert anonymous.post("/console/runs/latest/ack", {}, csrf=None).status_code == 401


def test_a_wrong_token_is_refused_and_sets_no_session(world: World) -> None:
    person = Person(world.server.url)
    for token in ("opsdsl_" + "A" * 43, "", "x" * 5000, world.tokens["alice"] + "x"):
        response = person.sign_in(token)
        assert response.status_code in (401, 413), response.text
        assert "opsdsl_console=" not in response.headers.get("set-cookie", "")
    assert "Unknown or revoked token" in person.sign_in("opsdsl_" + "B" * 43).text
    assert person.get("/console/runs").status_code == 303


def test_signing_in_gives_a_signed_httponly_strict_cookie_and_goes_where_asked(world: World) -> None:
    person = Person(world.server.url)
    response = person.sign_in(world.tokens["carol"], next_page="/console/ledger")
    assert response.status_code == 303 and response.headers["location"] == "/console/ledger"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("opsdsl_console="))
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
    assert "Path=/console" in cookie and "Secure" not in cookie  # plain http on 127.0.0.1
    assert world.tokens["carol"] not in cookie
    page = person.get("/console/runs")
    assert page.status_code == 200 and "carol" in page.text and "(viewer)" in page.text
    # an offsite `next` is not followed
    elsewhere = Person(world.server.url).sign_in(world.tokens["carol"], next_page="//evil.example/x")
    assert elsewhere.headers["location"] == "/console/runs"
    # a cookie changed by one character is no session
    value = person.client.cookies["opsdsl_console"]
    forged = Person(world.server.url)
    payload, signature = value.split(".")
    forged.client.cookies.set("opsdsl_console", payload + "." + signature[:-1] + ("A" if signature[-1] != "A" else "B"))
    assert forged.get("/console/runs").status_code == 303


def test_the_sign_in_form_needs_its_own_token(world: World) -> None:
    client = httpx.Client(base_url=world.server.url, timeout=30)
    response = client.post("/console/sign-in", data={"token": world.tokens["alice"]})
    assert response.status_code == 403 and "opsdsl_console=" not in response.headers.get("set-cookie", "")
    client.close()


def test_every_console_answer_has_the_security_headers(world: World) -> None:
    alice = world.as_("alice")
    for path in ("/console/sign-in", "/console/runs", "/console/report", "/console/static/console.css"):
        response = alice.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert alice.get("/console/runs").headers["cache-control"] == "no-store"


def test_signing_out_ends_the_session_even_for_a_copy_of_the_cookie(world: World) -> None:
    dave = Person(world.server.url, world.tokens["dave"])
    copy = Person(world.server.url)
    copy.client.cookies.set("opsdsl_console", dave.client.cookies["opsdsl_console"])
    assert copy.get("/console/runs").status_code == 200
    response = dave.post("/console/sign-out", {})
    assert response.status_code == 303 and response.headers["location"].startswith("/console/sign-in")
    assert copy.get("/console/runs").status_code == 303
    dave.close()
    copy.close()


def test_a_revoked_token_ends_its_sessions(world: World) -> None:
    token = add_user(world.server.state, "erin", "approver")
    erin = Person(world.server.url, token)
    assert erin.get("/console/runs").status_code == 200
    command = [sys.executable, "-m", "opsdsl", "users", "revoke", "erin", "--state-dir", str(world.server.state)]
    subprocess.run(command, capture_output=True, timeout=60, check=True)
    assert erin.get("/console/runs").status_code == 303
    assert erin.sign_in(token).status_code == 401
    erin.close()


# ---- forms: CSRF, roles, the API's rules ----------------------------------------------------


def test_a_post_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(world: World) -> None:
    run = paused_change(world)
    alice = world.as_("alice")
    path = f"/console/runs/{run}/steps/two_person/approve"
    for csrf in (None, "", "forged-token-123"):
        response = alice.post(path, {"comment": "no csrf"}, csrf=csrf)
        assert response.status_code == 403, response.text
        assert "CSRF" in response.text
    # another person's token is not yours
    bob_csrf = world.as_("bob").csrf()
    assert alice.post(path, {}, csrf=bob_csrf).status_code == 403
    # a cross-site Origin is refused even with the right token
    crossed = alice.post(path, {}, headers={"Origin": "https://evil.example"})
    assert crossed.status_code == 403
    assert world.entries(run, "approval.recorded") == []


def test_two_approvers_approve_through_the_form_and_the_run_finishes(world: World) -> None:
    run = paused_change(world)
    alice, bob = world.as_("alice"), world.as_("bob")
    page = alice.get(f"/console/runs/{run}")
    assert page.status_code == 200
    assert 'class="question">Restart the fleet?</p>' in page.text
    assert f'action="/console/runs/{run}/steps/two_person/approve"' in page.text
    response = alice.post(
        f"/console/runs/{run}/steps/two_person/approve", {"answer.nodes": "web-1", "comment": "looks right"}
    )
    assert response.status_code == 303 and response.headers["location"] == f"/console/runs/{run}?done=approved"
    after = alice.get(response.headers["location"])
    assert "Approval recorded." in after.text and "approved by alice" in after.text
    assert "You already approved this step" in after.text
    # the same person twice: the API's rule, shown on the page with its status
    again = alice.post(f"/console/runs/{run}/steps/two_person/approve", {"comment": "again"})
    assert again.status_code == 403 and "Refused:" in again.text
    response = bob.post(f"/console/runs/{run}/steps/two_person/approve", {"answer.nodes": "web-1"})
    assert response.status_code == 303
    world.wait_status(run, "succeeded")
    recorded = world.entries(run, "approval.recorded")
    assert [(e["by"], e.get("via")) for e in recorded] == [("alice", "token"), ("bob", "token")]
    assert recorded[0]["comment"] == "looks right" and recorded[0]["answers"] == {"nodes": "web-1"}
    done = alice.get(f"/console/runs/{run}")
    assert 'data-status="succeeded"' in done.text and "looks right" in done.text
    assert 'data-step="restart" data-status="succeeded"' in done.text  # the DAG's node


def test_a_viewer_sees_no_action_and_is_refused_if_they_post_anyway(world: World) -> None:
    run = paused_change(world)
    carol = world.as_("carol")
    page = carol.get(f"/console/runs/{run}")
    assert page.status_code == 200 and "Restart the fleet?" in page.text
    assert "/approve" not in page.text and "/cancel" not in page.text and "/ack" not in page.text
    assert "does not approve" in page.text
    for path in (f"/console/runs/{run}/steps/two_person/approve", f"/console/runs/{run}/cancel"):
        response = carol.post(path, {})
        assert response.status_code == 403 and "carol is a viewer" in response.text
    assert world.entries(run, "approval.recorded") == []
    assert world.status(run) == "paused"


def test_deny_acknowledge_and_cancel_through_the_forms(world: World) -> None:
    alice, dave = world.as_("alice"), world.as_("dave")
    run = paused_change(world)
    page = dave.get(f"/console/runs/{run}").text  # a responder: ack and cancel, no approval
    assert f"/console/runs/{run}/ack" in page and f"/console/runs/{run}/cancel" in page
    assert "/steps/two_person/approve" not in page and "does not approve" in page
    assert dave.post(f"/console/runs/{run}/steps/two_person/approve", {}).status_code == 403
    assert dave.post(f"/console/runs/{run}/ack", {}).status_code == 303
    assert world.entries(run, "run.acknowledged")[0]["by"] == "dave"
    assert "Acknowledged" in dave.get(f"/console/runs/{run}").text
    denied = alice.post(f"/console/runs/{run}/steps/two_person/deny", {"comment": "not now"})
    assert denied.status_code == 303 and denied.headers["location"].endswith("?done=denied")
    world.wait_status(run, "failed")

    slow = world.fire({"name": "slow"})
    world.wait_status(slow, "running")
    cancelled = dave.post(f"/console/runs/{slow}/cancel", {"comment": "wrong host"})
    assert cancelled.status_code == 303
    world.wait_status(slow, "cancelled", timeout=60)
    # a finished run cannot be cancelled: the API's 409, readable
    again = dave.post(f"/console/runs/{slow}/cancel", {})
    assert again.status_code == 409 and "already cancelled" in again.text


def test_an_unknown_run_or_step_is_a_readable_404(world: World) -> None:
    alice = world.as_("alice")
    for path in ("/console/runs/ffffffff", "/console/runs/<script>", "/console/incidents/INC-none"):
        response = alice.get(path)
        assert response.status_code == 404, path
        assert "<script>" not in response.text
    run = paused_change(world)
    assert alice.post(f"/console/runs/{run}/steps/nope/approve", {}).status_code == 404


# ---- pages ---------------------------------------------------------------------------------


def test_the_runs_list_filters_and_says_what_each_run_waits_for(world: World) -> None:
    run = paused_change(world)
    carol = world.as_("carol")
    page = carol.get("/console/runs?status=paused&severity=SEV-2")
    assert page.status_code == 200
    row = re.search(rf'<tr data-run="{run}" data-status="paused">(.*?)</tr>', page.text, re.S).group(1)
    assert "two_person" in row and "ago</time>" in row and "UTC" in row
    assert 'data-status="succeeded"' not in carol.get("/console/runs?status=paused").text
    assert carol.get("/console/runs?status=bogus").status_code == 422
    hostile = carol.get("/console/runs", params={"pack": '"><script>alert(1)</script>'})
    assert hostile.status_code == 200 and "<script>alert" not in hostile.text
    assert "&#34;&gt;&lt;script&gt;" in hostile.text or "&quot;&gt;&lt;script&gt;" in hostile.text


def test_approvals_waiting_for_me(world: World) -> None:
    run = paused_change(world)
    assert f"/console/runs/{run}#ask-two_person" in world.as_("bob").get("/console/approvals").text
    assert run not in world.as_("carol").get("/console/approvals").text
    world.as_("alice").post(f"/console/runs/{run}/steps/two_person/approve", {})
    assert f"/console/runs/{run}#ask" not in world.as_("alice").get("/console/approvals").text
    assert f"/console/runs/{run}#ask" in world.as_("bob").get("/console/approvals").text


def test_the_ledger_and_report_pages(world: World) -> None:
    carol = world.as_("carol")
    ledger = carol.get("/console/ledger")
    assert ledger.status_code == 200 and "✓ Verified" in ledger.text and "Last checkpoint" in ledger.text
    report = carol.get("/console/report")
    assert report.status_code == 200
    assert report.text.count("<svg") == 3 and "MTTA" in report.text and "Auto-mitigation" in report.text
    assert 'data-verdict="' in report.text


def test_an_incident_page_with_evidence_digests_verification_and_a_working_export(world: World) -> None:
    run = world.fire({"name": "job", "labels": {"key": "k-1"}})
    world.wait_status(run, "succeeded")
    incident = world.server.query("SELECT incident_id FROM runs WHERE id = ?", run)[0][0]
    carol = world.as_("carol")
    page = wait_until(
        lambda: (r := carol.get(f"/console/incidents/{incident}")).status_code == 200 and r, 30, "the record"
    )
    assert "✓ Verified" in page.text, page.text
    digests = re.findall(r"sha256:[0-9a-f]{64}", page.text)
    assert digests
    link = re.search(rf'href="(/console/incidents/{re.escape(incident)}/evidence/[^"]+)"', page.text).group(1)
    evidence = carol.get(link)
    assert evidence.status_code == 200 and f"sha256:{hashlib.sha256(evidence.content).hexdigest()}" in digests
    export = carol.get(f"/console/incidents/{incident}/export")
    assert export.status_code == 200 and export.headers["content-type"] == "application/gzip"
    assert "attachment" in export.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(export.content)) as archive:
        assert any(name.endswith("record.json") for name in archive.getnames())
    archive_path = world.server.tmp / f"{incident}.tar.gz"
    archive_path.write_bytes(export.content)
    verify = subprocess.run(
        [sys.executable, "-m", "opsdsl", "incident", "verify", str(archive_path), "--state-dir", str(world.server.state)],
        capture_output=True, text=True, timeout=120, cwd=world.server.tmp,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "<h2>RCA</h2>" in page.text and 'class="rca"' in page.text


def test_hostile_run_data_is_rendered_inert(world: World) -> None:
    labels = {
        "x": "<script>alert(1)</script>",
        "y": '"><img src=x onerror=alert(1)>',
        "u": "javascript:alert(1)",
        "z_big": "A" * 200_000,
    }
    run = world.fire({"name": "change", "labels": labels})
    world.wait_status(run, "paused")
    alice = world.as_("alice")
    comment = '</textarea><script>alert(2)</script><a href="javascript:alert(3)">x</a>'
    alice.post(f"/console/runs/{run}/steps/two_person/approve", {"comment": comment, "answer.nodes": "<b>n</b>"})
    page = alice.get(f"/console/runs/{run}")
    assert page.status_code == 200
    text = page.text
    assert "<script>alert" not in text and "<img src=x" not in text and 'href="javascript:' not in text
    assert "<b>n</b>" not in text and "</textarea><script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len(text) < 400_000  # a huge label is cut, not echoed whole
    for script in re.findall(r"<script[^>]*>", text):
        assert 'src="/console/static/' in script


# ---- live updates --------------------------------------------------------------------------


def _stream_lines(url: str, cookie: str, lines: list[str], stop: threading.Event, path: str) -> None:
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(30, read=60)) as client,
        client.stream("GET", path, cookies={"opsdsl_console": cookie}) as response,
    ):
        lines.append(f"status {response.status_code}")
        for line in response.iter_lines():
            lines.append(line)
            if stop.is_set():
                break


def test_the_live_stream_says_when_a_runs_ledger_moves(world: World) -> None:
    run = paused_change(world)
    alice = world.as_("alice")
    lines: list[str] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=_stream_lines,
        args=(world.server.url, alice.client.cookies["opsdsl_console"], lines, stop, f"/console/live?run={run}"),
        daemon=True,
    )
    reader.start()
    wait_until(lambda: "status 200" in lines, 30, "the stream to open")
    time.sleep(1.0)
    alice.post(f"/console/runs/{run}/steps/two_person/approve", {})
    wait_until(lambda: "event: changed" in lines, 30, "a changed event")
    # a page rendered before an entry landed, whose stream opens after it, is told at once
    late: list[str] = []
    cookie = alice.client.cookies["opsdsl_console"]
    threading.Thread(
        target=_stream_lines,
        args=(world.server.url, cookie, late, stop, f"/console/live?run={run}&since=1"),
        daemon=True,
    ).start()
    wait_until(lambda: "event: changed" in late, 10, "a changed event for a late stream")
    page = alice.get(f"/console/runs/{run}")
    since = re.search(r"since=(\d+)", page.text).group(1)
    assert int(since) == world.server.query("SELECT MAX(seq) FROM ledger WHERE run = ?", run)[0][0]
    stop.set()


def test_live_streams_are_bounded_per_person(world: World) -> None:
    bob = world.as_("bob")
    stop = threading.Event()
    streams = [[] for _ in range(4)]
    readers = [
        threading.Thread(
            target=_stream_lines,
            args=(world.server.url, bob.client.cookies["opsdsl_console"], lines, stop, "/console/live"),
            daemon=True,
        )
        for lines in streams
    ]
    for reader in readers:
        reader.start()
    wait_until(lambda: all("status 200" in lines for lines in streams), 30, "four streams")
    extra = bob.get("/console/live")
    assert extra.status_code == 429
    stop.set()


def test_the_server_drains_promptly_with_live_pages_open(tmp_path: Path) -> None:
    world = start_world(tmp_path)
    try:
        carol = world.as_("carol")
        lines: list[str] = []
        stop = threading.Event()
        reader = threading.Thread(
            target=_stream_lines,
            args=(world.server.url, carol.client.cookies["opsdsl_console"], lines, stop, "/console/live"),
            daemon=True,
        )
        reader.start()
        wait_until(lambda: "status 200" in lines, 30, "the stream to open")
        started = time.monotonic()
        assert world.server.stop(timeout=60) == 0
        reader.join(timeout=30)
        assert not reader.is_alive(), "the stream did not end with the server"
        assert time.monotonic() - started < 30, "the drain waited on the live page"  # drain timeout is 5 s
        assert "drain timeout" not in world.server.log()
    finally:
        world.close()
        world.server.close()


def test_a_person_through_the_trusted_proxy_needs_no_cookie_but_a_csrf_token(tmp_path: Path) -> None:
    world = start_world(tmp_path, "--trusted-user-header", "X-Forwarded-Email", "--trusted-proxy", "127.0.0.1")
    try:
        run = paused_change(world)
        proxy = httpx.Client(base_url=world.server.url, timeout=30, headers={"X-Forwarded-Email": "alice"})
        page = proxy.get(f"/console/runs/{run}")
        assert page.status_code == 200 and "alice" in page.text and "Sign out" not in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        path = f"/console/runs/{run}/steps/two_person/approve"
        assert proxy.post(path, data={"comment": "x"}).status_code == 403
        assert proxy.post(path, data={"csrf": csrf}).status_code == 303
        assert [(e["by"], e.get("via")) for e in world.entries(run, "approval.recorded")] == [("alice", "proxy")]
        proxy.close()
    finally:
        world.close()
        world.server.close()


def test_static_files_are_the_vendored_bytes(world: World) -> None:
    anonymous = Person(world.server.url)
    vendored = json.loads((ROOT / "opsdsl/serve/console/static/VENDORED.json").read_text())
    for entry in vendored["files"]:
        response = anonymous.get(f"/console/static/{entry['file']}")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/javascript")
        assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
    for name in ("VENDORED.json", "..%2f..%2fapi.py", "nope.js"):
        assert anonymous.get(f"/console/static/{name}").status_code == 404


def test_the_packs_page_shows_triggers_hooks_and_the_last_firings(world: World) -> None:
    run = paused_change(world)
    page = world.as_("carol").get("/console/packs")
    assert page.status_code == 200
    assert 'data-pack="api-fixture"' in page.text and "api-fixture 1.0.0" in page.text
    assert "event.name == &#34;change&#34;" in page.text or "event.name == &quot;change&quot;" in page.text
    assert "change → change" in page.text and "onChange" in page.text
    assert f'href="/console/runs/{run}"' in page.text and 'data-kind="trigger.fired"' in page.text


def test_resume_and_decide_forms_go_through_the_api_rules(world: World) -> None:
    run = paused_change(world)
    alice, carol = world.as_("alice"), world.as_("carol")
    resumed = alice.post(f"/console/runs/{run}/resume", {})
    assert resumed.status_code == 303 and resumed.headers["location"].endswith("?done=resumed")
    # no step in doubt: the API's 409, readable on the run page
    decided = alice.post(f"/console/runs/{run}/steps/two_person/decide", {"outcome": "succeeded"})
    assert decided.status_code == 409 and "not waiting for a decision" in decided.text
    bad = alice.post(f"/console/runs/{run}/steps/two_person/decide", {"outcome": "maybe"})
    assert bad.status_code == 422 and "outcome" in bad.text
    assert carol.post(f"/console/runs/{run}/resume", {}).status_code == 403


def test_a_live_stream_ends_with_its_session(world: World) -> None:
    token = add_user(world.server.state, "frank", "viewer")
    frank = Person(world.server.url, token)
    lines: list[str] = []
    reader = threading.Thread(
        target=_stream_lines,
        args=(world.server.url, frank.client.cookies["opsdsl_console"], lines, threading.Event(), "/console/live"),
        daemon=True,
    )
    reader.start()
    wait_until(lambda: "status 200" in lines, 30, "the stream to open")
    assert frank.post("/console/sign-out", {}).status_code == 303
    reader.join(timeout=40)  # the session is checked at each heartbeat (15 s)
    assert not reader.is_alive(), "the stream outlived its session"
    frank.close()
