"""The operator API (`/v1/…` beside the intake) against a real `opsdsl serve` process.

Each test starts the server on 127.0.0.1 with a fresh state directory, a pack of its
own (a two-person approval, a job with evidence, a slow job) and people added with
`opsdsl users add`, and talks to it with httpx. Every answer the tests see is checked
against the OpenAPI document (`openapi_check.OpenApiCheck`), errors included.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_check import OpenApiCheck, load_document
from test_serve import FIXTURES, TOKEN, Server, wait_until

ROOT = Path(__file__).resolve().parents[2]

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: api-fixture, version: 1.0.0, owner: sre}
params:
  python: {type: string, default: PYTHON}
  helper: {type: string, default: HELPER}
triggers:
  change: {on: event, when: event.name == "change"}
  job: {on: event, when: event.name == "job"}
  slow: {on: event, when: event.name == "slow"}
hooks:
  # opsdsl: ignore[OPS042]: every event starts a run
  onChange: {trigger: change, run: change}
  # opsdsl: ignore[OPS042]: every event starts a run
  onJob: {trigger: job, run: job}
  # opsdsl: ignore[OPS042]: every event starts a run
  onSlow: {trigger: slow, run: slow}
playbooks:
  change:
    severity: SEV-2
    steps:
      - id: two_person
        action: approval
        with:
          message: Restart the fleet?
          min_approvals: 2
          inputs:
            nodes: {type: string, default: all}
        timeout: 1h
      - id: restart
        needs: [two_person]
        action: shell
        with:
          argv: ["${{ params.python }}", "${{ params.helper }}", say, restarted, "${{ steps.two_person.outputs.nodes }}"]
        timeout: 30s
  job:
    severity: SEV-4
    inputs:
      key: {type: string, from: event.labels.key, default: none, pattern: "^[a-z0-9-]{1,40}$"}
    steps:
      - id: check
        action: assert
        with: {that: 'inputs.key != ""', message: a job without a key}
      - id: collect
        needs: [check]
        action: evidence.collect
        idempotent: true
        with:
          name: says
          commands: [["${{ params.python }}", "${{ params.helper }}", say, "${{ inputs.key }}"]]
        timeout: 30s
  slow:
    severity: SEV-3
    steps:
      - id: sleep
        action: shell
        with:
          argv: ["${{ params.python }}", "${{ params.helper }}", sleep, "8"]
        timeout: 60s
"""

PEOPLE = {"alice": "approver", "bob": "approver", "carol": "viewer", "dave": "responder", "root": "admin"}


def write_pack(folder: Path) -> Path:
    text = PACK.replace("PYTHON", json.dumps(sys.executable)).replace(
        "HELPER", json.dumps(str(FIXTURES / "serve_helper.py"))
    )
    path = folder / "api.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def add_user(state: Path, name: str, role: str) -> str:
    command = [sys.executable, "-m", "opsdsl", "users", "add", name, "--role", role, "--state-dir", str(state)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip().splitlines()[0]


class Api:
    """An httpx client for one person; every answer is checked against the OpenAPI document."""

    def __init__(self, server: Server, token: str | None, check: OpenApiCheck) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(
            base_url=server.url, timeout=30, headers=headers, event_hooks={"response": [check.check]}
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        return self.client.post(path, **kwargs)

    def close(self) -> None:
        self.client.close()


class World:
    """A running server, its people and their clients."""

    def __init__(self, server: Server, tokens: dict[str, str], check: OpenApiCheck) -> None:
        self.server = server
        self.tokens = tokens
        self.check = check
        self.clients: dict[str, Api] = {}

    def as_(self, name: str) -> Api:
        if name not in self.clients:
            self.clients[name] = Api(self.server, self.tokens.get(name, name), self.check)
        return self.clients[name]

    def fire(self, event: dict, who: str = "dave") -> list[int]:
        response = self.as_(who).post("/v1/fire", event)
        assert response.status_code == 202, response.text
        return response.json()["ids"]

    def run_of(self, event_id: int, timeout: float = 60) -> str:
        def found() -> str | None:
            rows = self.server.query("SELECT id FROM runs WHERE event_id = ? AND parent_run IS NULL", event_id)
            return rows[0][0] if rows else None

        return wait_until(found, timeout, f"the run of event {event_id}")

    def status(self, run: str) -> str:
        return self.server.query("SELECT status FROM runs WHERE id = ?", run)[0][0]

    def wait_status(self, run: str, *statuses: str, timeout: float = 60) -> str:
        return wait_until(lambda: self.status(run) in statuses and self.status(run), timeout, f"{run} {statuses}")

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


@pytest.fixture
def check() -> OpenApiCheck:
    return OpenApiCheck()


@pytest.fixture
def world(tmp_path: Path, check: OpenApiCheck) -> Iterator[World]:
    state = tmp_path / "state"
    tokens = {name: add_user(state, name, role) for name, role in PEOPLE.items()}
    server = Server(tmp_path, "--drain-timeout", "5", pack=write_pack(tmp_path), state=state).start()
    world = World(server, tokens, check)
    try:
        yield world
    finally:
        world.close()
        server.close()
    assert check.checked, "no answer was checked against the OpenAPI document"


def problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# ---- the document ---------------------------------------------------------------------------


def test_the_openapi_document_is_valid_openapi_3_1_and_names_every_route(world: World) -> None:
    from openapi_spec_validator import validate

    from opsdsl.serve.api import ROUTES

    document = load_document()
    validate(document)
    served = world.as_("carol").get("/v1/openapi.json")
    assert served.status_code == 200 and served.json() == document
    described = {(method, path) for path, item in document["paths"].items() for method in item}
    routes = {(r.method.lower(), r.path.replace("{name:.+}", "{name}")) for r in ROUTES}
    assert described == routes


def test_the_document_ships_in_the_package() -> None:
    from importlib import resources

    assert resources.files("opsdsl.serve").joinpath("openapi.json").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'packages = ["opsdsl"]' in pyproject  # hatch puts every file below opsdsl/ in the wheel
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "opsdsl/serve/openapi.json"], cwd=ROOT, capture_output=True
    ).returncode
    assert ignored == 1, "openapi.json is git-ignored, so hatch would leave it out of the wheel"


# ---- who may do what -----------------------------------------------------------------------


def test_people_are_identified_and_roles_enforced(world: World) -> None:
    me = world.as_("carol").get("/v1/me")
    assert me.status_code == 200
    assert me.json() | {"may": None} == {
        "name": "carol", "role": "viewer", "groups": [], "via": "token", "recorded_as": "carol", "may": None
    }  # fmt: skip
    assert me.json()["may"] == ["read"]
    assert "approve" in world.as_("alice").get("/v1/me").json()["may"]

    nobody = world.as_("")
    for path in ("/v1/runs", "/v1/me", "/v1/ledger", "/v1/openapi.json"):
        body = problem(nobody.get(path), 401)
        assert "credentials" in body["detail"]
    refused = world.as_("opsdsl_" + "A" * 43).get("/v1/runs")
    problem(refused, 401)
    assert "invalid_token" in refused.headers["www-authenticate"]
    # the machine intake's token is a sender's, not a person's
    problem(world.as_(TOKEN).get("/v1/runs"), 401)

    problem(world.as_("carol").post("/v1/fire", {"name": "job"}), 403)
    assert world.as_("carol").get("/v1/runs").status_code == 200
    # the machine intake is unchanged: its token, its JSON answers
    sent = world.server.post("/v1/events", {"name": "job", "labels": {"key": "machine"}})
    assert sent.status_code == 202
    assert world.server.post("/v1/events", {"name": "job"}, token=world.tokens["root"]).status_code == 401


def test_fire_with_an_idempotency_key_stores_the_events_once(world: World) -> None:
    dave = world.as_("dave")
    key = {"Idempotency-Key": "fire-0b9d"}
    events = [{"name": "job", "labels": {"key": "once"}}, {"name": "other"}]
    first = dave.post("/v1/fire", events, headers=key)
    again = dave.post("/v1/fire", events, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and first.json()["accepted"] == 2
    assert again.headers["idempotent-replayed"] == "true"
    assert world.server.query("SELECT COUNT(*) FROM events")[0][0] == 2
    problem(dave.post("/v1/fire", events[:1], headers=key), 422)


# ---- runs ----------------------------------------------------------------------------------


def test_runs_are_listed_newest_first_a_page_at_a_time_with_filters(world: World) -> None:
    ids = [world.fire({"name": "job", "labels": {"key": f"k{i}"}})[0] for i in range(5)]
    runs = [world.run_of(event_id) for event_id in ids]
    for run in runs:
        world.wait_status(run, "succeeded")
    assert world.server.query("SELECT DISTINCT source FROM events") == [("user:dave",)]
    carol = world.as_("carol")

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, "playbook": "job"} | ({"cursor": cursor} if cursor else {})
        page = carol.get("/v1/runs", params=params).json()
        seen += [run["id"] for run in page["runs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(reversed(runs))

    def listed(**params: Any) -> list[str]:
        response = carol.get("/v1/runs", params=params)
        assert response.status_code == 200, response.text
        return [run["id"] for run in response.json()["runs"]]

    assert set(listed(status="succeeded", severity="SEV-4", pack="api-fixture")) == set(runs)
    assert listed(status="paused") == []
    assert listed(since="2999-01-01") == []
    assert set(listed(since="2000-01-01T00:00:00Z")) == set(runs)
    assert listed(pack="no-such-pack") == []
    for params in ({"status": "bogus"}, {"limit": "0"}, {"limit": "201"}, {"limit": "x"}, {"cursor": "%%%"},
                   {"since": "yesterday-ish"}, {"colour": "red"}):  # fmt: skip
        problem(carol.get("/v1/runs", params=params), 422)


def test_a_runs_detail_by_id_prefix_and_latest(world: World) -> None:
    run = world.run_of(world.fire({"name": "job", "labels": {"key": "detail"}})[0])
    world.wait_status(run, "succeeded")
    carol = world.as_("carol")
    detail = carol.get(f"/v1/runs/{run}").json()
    assert detail["id"] == run and detail["status"] == "succeeded"
    steps = {step["id"]: step for step in detail["steps"]}
    assert steps["check"]["status"] == "succeeded" and steps["collect"]["attempts"] >= 1, steps["collect"]
    assert steps["collect"]["outputs"]["name"] == "says"
    kinds = [entry["kind"] for entry in detail["ledger"]]
    assert kinds[0] == "run.created" and "run.finished" in kinds
    assert carol.get(f"/v1/runs/{run[:12]}").json()["id"] == run
    assert carol.get("/v1/runs/latest").json()["id"] == run
    for text in ("nope", "20", "%25", "%2525", "_", "r%C3%A9sum%C3%A9", "..", "x" * 300, "latest%00"):
        problem(carol.get(f"/v1/runs/{text}"), 404)


# ---- people answer -------------------------------------------------------------------------


def test_a_two_person_approval_answered_over_the_api(world: World) -> None:
    run = world.run_of(world.fire({"name": "change"}, who="dave")[0])
    world.wait_status(run, "paused")
    path = f"/v1/runs/{run}/steps/two_person"
    alice, bob, carol = world.as_("alice"), world.as_("bob"), world.as_("carol")
    assert carol.get(f"/v1/runs/{run}").json()["pending_approvals"] == ["two_person"]

    problem(carol.post(f"{path}/approve", {}), 403)  # a viewer
    problem(world.as_("dave").post(f"{path}/approve", {}), 403)  # a responder
    problem(alice.post(f"/v1/runs/{run}/steps/restart/approve", {}), 409)  # not waiting
    problem(alice.post(f"/v1/runs/{run}/steps/nosuch/approve", {}), 404)
    problem(alice.post(f"{path}/approve", {"answers": {"colour": "red"}}), 422)
    problem(alice.post(f"{path}/approve", {"answers": {"nodes": ["a"]}}), 422)
    problem(alice.post(f"{path}/approve", {"comment": 7}), 422)
    problem(alice.post(f"{path}/approve", {"surprise": True}), 422)

    body = {"answers": {"nodes": "db-1"}, "comment": "go ahead"}
    key = {"Idempotency-Key": "approve-7f3e"}
    first = alice.post(f"{path}/approve", body, headers=key)
    assert first.status_code == 200, first.text
    assert first.json() | {"run": None} == {
        "run": None, "step": "two_person", "by": "alice", "decision": "approve", "approved": 1, "needed": 2
    }  # fmt: skip
    again = alice.post(f"{path}/approve", body, headers=key)
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    problem(alice.post(f"{path}/approve", {**body, "comment": "changed"}, headers=key), 422)
    problem(alice.post(f"/v1/runs/{run}/ack", {}, headers=key), 422)  # same key, another request
    problem(alice.post(f"{path}/approve", body), 403)  # approvals count distinct people
    recorded = world.server.query("SELECT data FROM ledger WHERE kind = 'approval.recorded' AND run = ?", run)
    assert len(recorded) == 1  # the replay recorded nothing

    second = bob.post(f"{path}/approve", {}, headers={"Idempotency-Key": "approve-7f3e"})  # keys are per person
    assert second.status_code == 200 and second.json()["approved"] == 2
    entries = [json.loads(row[0]) for row in world.server.query(
        "SELECT data FROM ledger WHERE kind = 'approval.recorded' AND run = ? ORDER BY seq", run)]  # fmt: skip
    assert [(e["by"], e.get("via")) for e in entries] == [("alice", "token"), ("bob", "token")]
    assert entries[0]["answers"] == {"nodes": "db-1"} and entries[0]["comment"] == "go ahead"

    world.wait_status(run, "succeeded", timeout=60)  # no `resume`: the server went on by itself
    detail = carol.get(f"/v1/runs/{run}").json()
    assert {s["id"]: s["status"] for s in detail["steps"]} == {"two_person": "succeeded", "restart": "succeeded"}
    assert [a["by"] for a in detail["approvals"]] == ["alice", "bob"]
    problem(alice.post(f"{path}/deny", {}), 409)  # over: nothing waits any more


def test_a_denial_fails_the_step(world: World) -> None:
    run = world.run_of(world.fire({"name": "change"})[0])
    world.wait_status(run, "paused")
    denied = world.as_("bob").post(f"/v1/runs/{run}/steps/two_person/deny", {"comment": "not now"})
    assert denied.status_code == 200 and denied.json()["decision"] == "deny"
    world.wait_status(run, "failed", timeout=60)


def test_decide_ack_resume_refuse_what_does_not_apply(world: World) -> None:
    run = world.run_of(world.fire({"name": "job", "labels": {"key": "ack"}})[0])
    world.wait_status(run, "succeeded")
    dave, alice = world.as_("dave"), world.as_("alice")
    problem(dave.post(f"/v1/runs/{run}/steps/check/decide", {"outcome": "retry"}), 403)  # needs an approver
    problem(alice.post(f"/v1/runs/{run}/steps/check/decide", {"outcome": "retry"}), 409)  # not in doubt
    problem(alice.post(f"/v1/runs/{run}/steps/check/decide", {"outcome": "maybe"}), 422)
    problem(alice.post(f"/v1/runs/{run}/steps/check/decide", {}), 422)
    problem(dave.post(f"/v1/runs/{run}/resume"), 409)  # finished

    first = dave.post(f"/v1/runs/{run}/ack")
    assert first.status_code == 200 and first.json()["new"] is True and first.json()["by"] == "dave"
    later = alice.post(f"/v1/runs/{run}/ack", {})
    assert later.status_code == 200 and later.json()["new"] is False and later.json()["by"] == "dave"
    problem(world.as_("carol").post(f"/v1/runs/{run}/ack"), 403)


def test_cancel_a_running_run(world: World) -> None:
    run = world.run_of(world.fire({"name": "slow"})[0])
    world.wait_status(run, "running")
    problem(world.as_("carol").post(f"/v1/runs/{run}/cancel", {}), 403)
    key = {"Idempotency-Key": "cancel-1"}
    cancelled = world.as_("dave").post(f"/v1/runs/{run}/cancel", {"comment": "wrong host"}, headers=key)
    assert cancelled.status_code == 200, cancelled.text
    world.wait_status(run, "cancelled", timeout=60)  # the step in flight ends first
    replay = world.as_("dave").post(f"/v1/runs/{run}/cancel", {"comment": "wrong host"}, headers=key)
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    problem(world.as_("dave").post(f"/v1/runs/{run}/cancel", {}), 409)
    assert world.as_("carol").get(f"/v1/runs/{run}").json()["status"] == "cancelled"


# ---- incidents, the ledger, the report -----------------------------------------------------


def test_incident_record_rca_evidence_and_export(world: World, tmp_path: Path) -> None:
    run = world.run_of(world.fire({"name": "job", "labels": {"key": "evidence"}})[0])
    world.wait_status(run, "succeeded")
    carol = world.as_("carol")
    incident = carol.get(f"/v1/runs/{run}").json()["incident_id"]

    record = carol.get(f"/v1/incidents/{incident}")
    assert record.status_code == 200 and record.json()["record"]["incident_id"] == incident
    rca = carol.get(f"/v1/incidents/{incident}/rca")
    assert rca.status_code == 200 and rca.headers["content-type"].startswith("text/markdown")
    assert incident in rca.text
    files = carol.get(f"/v1/incidents/{incident}/evidence").json()["files"]
    names = {f["name"]: f for f in files}
    assert "says/sources.json" in names and "says/command-01-python3.stdout" in names
    import base64
    import hashlib

    for name, item in names.items():
        got = carol.get(f"/v1/incidents/{incident}/evidence/{name}")
        assert got.status_code == 200
        assert item["digest"] == "sha256:" + hashlib.sha256(got.content).hexdigest() and item["size"] == len(
            got.content
        )
        assert (
            got.headers["repr-digest"] == f"sha-256=:{base64.b64encode(hashlib.sha256(got.content).digest()).decode()}:"
        )

    export = carol.get(f"/v1/incidents/{incident}/export")
    assert export.status_code == 200 and export.headers["content-type"] == "application/gzip"
    assert f'filename="{incident}.tar.gz"' in export.headers["content-disposition"]
    archive = tmp_path / "incident.tar.gz"
    archive.write_bytes(export.content)
    with tarfile.open(fileobj=io.BytesIO(export.content)) as tar:
        assert f"{incident}/record.json" in tar.getnames()
    verified = subprocess.run(
        [sys.executable, "-m", "opsdsl", "incident", "verify", str(archive), "--state-dir", str(world.server.state)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # hostile names: traversal, encodings, unicode, a glob
    for bad in ("..", "%2e%2e", "..%2f..%2fetc", "INC-*", "INC-%5B", "%E2%80%AE" + incident, "x" * 300, "%00"):
        problem(carol.get(f"/v1/incidents/{bad}"), 404)
        problem(carol.get(f"/v1/incidents/{bad}/rca"), 404)
    # (httpx removes literal dot segments; the encoded ones reach the server as written)
    for bad in ("..%2frecord.json", "%2e%2e/record.json", "says/%2e%2e/%2e%2e/record.json", "nosuch",
                "says/sources.json%00", "%2fetc%2fpasswd", "says//sources.json"):  # fmt: skip
        problem(carol.get(f"/v1/incidents/{incident}/evidence/{bad}"), 404)
    # a symlink planted in the evidence folder is not followed
    folder = next((world.server.state / "incidents").glob(f"*/{incident}"))
    (folder / "evidence" / "planted").symlink_to(folder / "record.json")
    problem(carol.get(f"/v1/incidents/{incident}/evidence/planted"), 404)
    listed = carol.get(f"/v1/incidents/{incident}/evidence").json()["files"]
    assert "planted" not in {f["name"] for f in listed}
    problem(carol.get(f"/v1/incidents/{incident}/export"), 409)  # an incident folder holds regular files only


def test_ledger_status_and_report(world: World) -> None:
    run = world.run_of(world.fire({"name": "job", "labels": {"key": "report"}})[0])
    world.wait_status(run, "succeeded")
    carol = world.as_("carol")
    ledger = carol.get("/v1/ledger").json()
    assert ledger["ok"] is True and ledger["entries"] > 0 and ledger["first_bad"] is None
    assert ledger["last_checkpoint"]["seq"] > 0 and len(ledger["key"]["keyid"]) == 64
    report = carol.get("/v1/report").json()
    assert report["kind"] == "Report" and report["severities"]["SEV-4"]["runs"] >= 1
    assert {t["severity"] for t in report["targets"]} >= {"SEV-2"}
    assert carol.get("/v1/report", params={"since": "2999-01-01"}).json()["runs"] == 0
    problem(carol.get("/v1/report", params={"since": "soon"}), 422)
    problem(carol.get("/v1/report", params={"until": "2999-01-01"}), 422)


# ---- hostile requests ----------------------------------------------------------------------


def test_hostile_bodies_and_paths(world: World) -> None:
    alice = world.as_("alice")
    run = world.run_of(world.fire({"name": "change"})[0])
    world.wait_status(run, "paused")
    path = f"/v1/runs/{run}/steps/two_person/approve"
    huge = b'{"comment": "' + b"x" * (70 * 1024) + b'"}'
    problem(alice.post(path, content=huge, headers={"Content-Type": "application/json"}), 413)
    chunked = alice.client.post(path, content=iter([huge[:40_000], huge[40_000:]]),
                                headers={"Content-Type": "application/json"})  # fmt: skip
    problem(chunked, 413)
    problem(alice.post(path, content=b"{}", headers={"Content-Type": "text/plain"}), 415)
    problem(alice.post(path, content=b"{not json", headers={"Content-Type": "application/json"}), 422)
    problem(alice.post(path, content=b"\xff\xfe", headers={"Content-Type": "application/json"}), 422)
    problem(alice.post(path, content=b"[1, 2]", headers={"Content-Type": "application/json"}), 422)
    problem(alice.post(path, content=b'{"comment": NaN}', headers={"Content-Type": "application/json"}), 422)
    deep = b'{"answers": ' + b'{"a": ' * 200 + b"1" + b"}" * 200 + b"}"
    problem(alice.post(path, content=deep, headers={"Content-Type": "application/json"}), 422)
    problem(alice.post(path, {}, headers={"Idempotency-Key": "x" * 201}), 422)
    problem(alice.post(path, {}, headers={"Idempotency-Key": "café".encode()}), 422)
    big_fire = {"name": "job", "labels": {"key": "y" * (2 << 20)}}
    problem(world.as_("dave").post("/v1/fire", big_fire), 413)
    problem(world.as_("dave").post("/v1/fire", [1, 2]), 422)
    problem(world.as_("dave").post("/v1/fire", content=b"", headers={"Content-Type": "application/json"}), 422)
    problem(alice.get("/v1/nothing-here"), 404)
    problem(alice.client.delete(f"/v1/runs/{run}"), 405)
    problem(alice.get(f"/v1/runs/{run}/steps/%2e%2e/approve"), 405)
    problem(alice.post(f"/v1/runs/{run}/steps/..%2f..%2fledger/approve", {}), 404)
    problem(alice.post(f"/v1/runs/{run}/steps/%25/approve", {}), 404)
    problem(alice.post(f"/v1/runs/{run}/steps/\u00e9tape/approve", {}), 404)
    # the run still waits, untouched
    assert world.status(run) == "paused"
    assert world.server.process is not None and world.server.process.poll() is None


def test_every_response_seen_was_checked(check: OpenApiCheck, tmp_path: Path) -> None:
    """The checker itself refuses an answer the document does not describe."""
    request = httpx.Request("GET", "http://127.0.0.1/v1/runs")
    wrong = httpx.Response(200, json={"runs": "not a list", "next_cursor": None}, request=request)
    with pytest.raises(AssertionError, match=r"not a list|is not of type"):
        check.check(wrong)
    teapot = httpx.Response(418, json={}, request=request)
    with pytest.raises(AssertionError, match="418"):
        check.check(teapot)
