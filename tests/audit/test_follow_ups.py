"""`opsdsl incident follow-ups`: one tracker issue per open follow-up, links signed into the folder, idempotent.

A loopback tracker (a real HTTP server on 127.0.0.1) answers as GitHub, GitLab and Jira
do, and refuses any request that is not what their REST documentation says:

- GitHub "Create an issue": POST /repos/{owner}/{repo}/issues, `Authorization: Bearer`,
  `Accept: application/vnd.github+json`, `X-GitHub-Api-Version`; JSON {title, body?, labels?: [str]}
  → 201 {number, html_url}.
- GitLab "New issue": POST /api/v4/projects/:id/issues (id or URL-encoded path),
  `PRIVATE-TOKEN`; {title, description?, labels?: "a,b"} → 201 {iid, web_url}.
- Jira "Create issue": POST /rest/api/2/issue or /rest/api/3/issue; {fields: {project: {key},
  summary, issuetype: {name}, description (v2: text; v3: an ADF doc), labels?: [no spaces]}}
  → 201 {id, key, self}.

The incidents are real: `opsdsl run` of a fixture pack against the Kernel API stand-in,
then `opsdsl incident review` with follow-ups (one of them hostile).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kernel_api import FIXTURES, KernelAPI, cli_env, opsdsl, param_args, shell_params

from opsdsl.errors import UsageError
from opsdsl.runtime import runner
from opsdsl.runtime.incidents import Tracker, TrackerError, open_follow_ups

TOKEN = "tok-s3cr3t-value"
HOSTILE = "@sre-team ![x](http://127.0.0.1:9/pixel) <script>alert(1)</script> ``` {noformat} `"
GITHUB_FIELDS = {"title", "body", "assignee", "assignees", "milestone", "labels", "type"}
GITLAB_FIELDS = {"title", "description", "labels", "assignee_ids", "confidential", "due_date", "milestone_id"}


class Tracker_:
    """The loopback tracker: validates each request, records it, answers like the real service."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.fail_at: int | None = None  # the n-th POST (1-based) answers 500
        self.answer: bytes | None = None  # answer this body instead
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Tracker_:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                tracker.requests.append({"path": self.path, "headers": headers, "body": body})
                if tracker.fail_at == len(tracker.requests):
                    return self._send(500, {"message": f"boom; you sent {headers.get('authorization')}"})
                if tracker.answer is not None:
                    return self._send_raw(201, tracker.answer)
                try:
                    payload = json.loads(body)
                    status, answer = tracker.check(self.path, headers, payload, len(tracker.requests))
                except (ValueError, AssertionError, KeyError, TypeError) as exc:
                    tracker.problems.append(f"{self.path}: {exc!r}")
                    status, answer = 422, {"message": "Validation Failed"}
                self._send(status, answer)

            def _send(self, status: int, answer: dict) -> None:
                self._send_raw(status, json.dumps(answer).encode())

            def _send_raw(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def check(self, path: str, headers: dict, payload: dict, n: int) -> tuple[int, dict]:
        assert headers.get("content-type", "").startswith("application/json"), headers
        if path.startswith("/repos/"):
            assert path == "/repos/acme/sqlx/issues", path
            assert headers["authorization"] == f"Bearer {TOKEN}"
            assert headers["accept"] == "application/vnd.github+json"
            assert headers["x-github-api-version"] == "2022-11-28"
            assert set(payload) <= GITHUB_FIELDS and isinstance(payload["title"], str) and payload["title"]
            assert isinstance(payload.get("body", ""), str)
            assert all(isinstance(label, str) for label in payload.get("labels", []))
            return 201, {"id": 1000 + n, "number": n, "html_url": f"{self.url}/acme/sqlx/issues/{n}"}
        if path.startswith("/api/v4/projects/"):
            assert path == "/api/v4/projects/sre%2Fsqlx/issues", path
            assert headers["private-token"] == TOKEN
            assert set(payload) <= GITLAB_FIELDS and isinstance(payload["title"], str) and payload["title"]
            assert isinstance(payload.get("labels", ""), str)  # comma-separated, not a list
            return 201, {"id": 2000 + n, "iid": n, "web_url": f"{self.url}/sre/sqlx/-/issues/{n}"}
        if path in ("/rest/api/2/issue", "/rest/api/3/issue"):
            assert set(payload) == {"fields"}
            fields = payload["fields"]
            assert set(fields) <= {"project", "summary", "issuetype", "description", "labels"}
            assert fields["project"] == {"key": "OPS"} and fields["issuetype"] == {"name": "Task"}
            assert isinstance(fields["summary"], str) and "\n" not in fields["summary"] and len(fields["summary"]) < 256
            assert all(" " not in label for label in fields.get("labels", []))
            if path.endswith("/3/issue"):
                doc = fields["description"]
                assert doc["type"] == "doc" and doc["version"] == 1 and isinstance(doc["content"], list)
            else:
                assert isinstance(fields["description"], str)
            return 201, {"id": str(10000 + n), "key": f"OPS-{n}", "self": f"{self.url}/rest/api/2/issue/{10000 + n}"}
        raise AssertionError(f"no such endpoint {path}")

    def payloads(self) -> list[dict]:
        return [json.loads(request["body"]) for request in self.requests]


@pytest.fixture
def tracker() -> Iterator[Tracker_]:
    with Tracker_() as server:
        yield server


@pytest.fixture(scope="module")
def incidents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A state dir with four finished, reviewed incidents (a run each, two follow-ups each): one per test that opens."""
    state = tmp_path_factory.mktemp("follow-ups") / "state"
    found = []
    with KernelAPI() as api:
        for _ in range(4):
            result = opsdsl(
                "run", "--pack", FIXTURES / "driver_failure.yaml", "--state-dir", state, "--log-format", "json",
                *param_args(**shell_params(api)),
            )  # fmt: skip
            assert result.code == 0, result.stderr
            incident = Path(result.end["incident_folder"]).name
            review = opsdsl(
                "incident", "review", incident, "--state-dir", state, "--by", "carol",
                "--root-cause", "pool exhausted", "--impact", "errors for 4 minutes",
                "--follow-up", "Raise the pool's ceiling", "--follow-up", HOSTILE,
            )  # fmt: skip
            assert review.code == 0, review.stderr
            found.append(incident)
    return state, found


def follow_ups_cli(state: Path, incident: str, *args: str, token: str | None = TOKEN):
    env = cli_env({"github_token": token} if token else None)
    return opsdsl("incident", "follow-ups", incident, "--state-dir", state, *args, env=env)


def test_github_one_issue_per_follow_up_signed_and_idempotent(incidents, tracker: Tracker_, tmp_path: Path) -> None:
    state, (incident, *_) = incidents
    first = follow_ups_cli(state, incident, "--to", "github", "--repo", "acme/sqlx", "--url", tracker.url)
    assert first.code == 0, first.stderr
    assert tracker.problems == []
    payloads = tracker.payloads()
    assert len(payloads) == 2  # the review's two follow-ups (a reviewed run has no "review it" follow-up)
    assert {p["title"] for p in payloads} >= {f"[{incident}] Raise the pool's ceiling"}
    hostile = next(p for p in payloads if "sre-team" in p["title"])
    # The body is one fenced block (longer than any backtick run in it): no mention, image or HTML acts.
    fence = hostile["body"].split("text\n", 1)[0]
    assert set(fence) == {"`"} and len(fence) > 3 and hostile["body"].endswith("\n" + fence)
    assert f"opsdsl-follow-up: {incident}/fu-" in hostile["body"]
    assert "opened http://127.0.0.1" in first.stdout and "2 issue(s) opened in github" in first.stdout

    again = follow_ups_cli(state, incident, "--to", "github", "--repo", "acme/sqlx", "--url", tracker.url)
    assert again.code == 0 and len(tracker.requests) == 2  # nothing new
    assert "0 issue(s) opened" in again.stdout and again.stdout.count("already open") == 2

    folder = next((state / "incidents").glob(f"*/{incident}"))
    rca = (folder / "rca.md").read_text()
    assert f"Raise the pool's ceiling — <{tracker.url}/acme/sqlx/issues/" in rca
    amendment = json.loads((folder / "follow-ups.json").read_text())
    assert amendment["payloadType"] == "application/vnd.opsdsl.follow-ups+json"
    assert len(amendment["amendment"]["links"]) == 2 and amendment["signatures"]
    archive = tmp_path / "inc.tar.gz"
    exported = opsdsl("incident", "export", incident, "-o", archive, "--state-dir", state)
    assert exported.code == 0, exported.stderr
    verified = opsdsl("incident", "verify", archive, "--state-dir", state)
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "follow-ups: 2 opened in a tracker" in verified.stdout
    assert "RCA PDF: rca.pdf" in verified.stdout or "exported without rca.pdf" in exported.stderr


def test_an_amendment_moved_to_another_record_fails(incidents, tracker: Tracker_, tmp_path: Path) -> None:
    state, (incident, other, *_) = incidents
    assert follow_ups_cli(state, incident, "--to", "github", "--repo", "acme/sqlx", "--url", tracker.url).code == 0
    source = next((state / "incidents").glob(f"*/{incident}"))
    target = next((state / "incidents").glob(f"*/{other}"))
    copy = tmp_path / other
    import shutil

    shutil.copytree(target, copy)
    (copy / "follow-ups.json").write_bytes((source / "follow-ups.json").read_bytes())
    from opsdsl.audit.incident import MANIFEST_PAYLOAD_TYPE, digest_folder, signed_file_bytes, verify_folder
    from opsdsl.runtime.state_audit import trusted_keys

    signer = runner.Runtime(state, create=False)
    try:  # even re-signed by the state's own key, the amendment names another record
        manifest = signed_file_bytes(MANIFEST_PAYLOAD_TYPE, "manifest", {"files": digest_folder(copy)}, [signer.signer])
    finally:
        signer.close()
    (copy / "manifest.json").write_bytes(manifest)
    problems = verify_folder(copy, trusted_keys(state, [], None, None))
    assert any(p.startswith("follow-ups.json: amends record sha256:") for p in problems), problems


def in_process(state: Path, incident: str, tracker: Tracker, **kwargs):
    runtime = runner.Runtime(state, create=False)
    try:
        return open_follow_ups(runtime, incident, tracker, lambda: TOKEN, by="carol", **kwargs)
    finally:
        runtime.close()


def test_gitlab_and_jira_payloads_as_documented(incidents, tracker: Tracker_) -> None:
    state, (_, incident, third, _) = incidents
    opened = in_process(state, incident, Tracker("gitlab", "sre/sqlx", base_url=tracker.url))
    assert [item.new for item in opened] == [True, True] and tracker.problems == []
    assert all(p["labels"] == "opsdsl,incident" for p in tracker.payloads())
    assert all("/sre/sqlx/-/issues/" in item.url for item in opened)
    # Jira, v3 (ADF) for the third incident; v2 (wiki text in {noformat}) checked on the payload itself.
    opened = in_process(state, third, Tracker("jira", "OPS", base_url=tracker.url, jira_api=3, labels=("sre ops",)))
    assert tracker.problems == [] and [item.url.rsplit("/", 1)[1] for item in opened] == ["OPS-3", "OPS-4"]
    fields = tracker.payloads()[-1]["fields"]
    assert fields["labels"] == ["sre-ops"]
    from opsdsl.audit.incident.followups import jira_payload

    record = {"incident_id": "INC-1", "run": "r", "severity": "SEV-2", "playbook": "p", "status": "failed", "times": {}}
    v2 = jira_payload(
        record, {"summary": HOSTILE, "kind": "review", "step": None, "key": "fu-1"}, ["x"], "OPS", "Task", 2
    )
    description = v2["fields"]["description"]
    assert description.startswith("{noformat}\n") and description.endswith("\n{noformat}")
    assert description.count("{noformat}") == 2  # the one in the text cannot close the block


def test_a_failure_midway_keeps_what_was_opened_and_a_rerun_opens_the_rest(tmp_path: Path, tracker: Tracker_) -> None:
    state = tmp_path / "state"
    with KernelAPI() as api:
        result = opsdsl(
            "run", "--pack", FIXTURES / "driver_failure.yaml", "--state-dir", state, "--log-format", "json",
            *param_args(**shell_params(api)),
        )  # fmt: skip
    incident = Path(result.end["incident_folder"]).name
    review = opsdsl(
        "incident", "review", incident, "--state-dir", state, "--by", "carol", "--root-cause", "x", "--impact", "y",
        "--follow-up", "one", "--follow-up", "two", "--follow-up", "three",
    )  # fmt: skip
    assert review.code == 0, review.stderr
    tracker.fail_at = 2
    with pytest.raises(TrackerError) as raised:
        in_process(state, incident, Tracker("github", "acme/sqlx", base_url=tracker.url))
    assert "HTTP 500" in raised.value.message and "1 opened and recorded" in raised.value.message
    assert TOKEN not in raised.value.message  # the tracker echoed the token; we mask it
    tracker.fail_at = None
    opened = in_process(state, incident, Tracker("github", "acme/sqlx", base_url=tracker.url))
    assert sum(item.new for item in opened) == 2 and len(opened) == 3
    assert len(tracker.requests) == 4  # 1 + the failed one + 2: nothing opened twice


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (json.dumps({"number": 1, "html_url": "javascript:alert(1)"}).encode(), "names no issue"),
        (json.dumps({"number": 1}).encode(), "names no issue"),
        (b"<html>not json</html>", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b" " * (2 * 1024 * 1024), "larger than"),
    ],
    ids=["javascript-url", "no-url", "html", "array", "huge"],
)
def test_hostile_tracker_answers_are_refused(incidents, tracker: Tracker_, answer: bytes, expected: str) -> None:
    state, (*_, incident) = incidents  # never opened: every answer here is refused
    tracker.answer = answer
    runtime = runner.Runtime(state, create=False)
    try:
        before = len(list(runtime.store.ledger.entries(run=None)))
        with pytest.raises(TrackerError, match=expected):
            open_follow_ups(runtime, incident, Tracker("github", "acme/sqlx", base_url=tracker.url), lambda: TOKEN)
        assert len(list(runtime.store.ledger.entries(run=None))) == before  # nothing recorded
    finally:
        runtime.close()


def test_usage_errors_and_dry_run(incidents, tracker: Tracker_) -> None:
    state, (*_, incident) = incidents  # nothing opened yet: the token is needed
    missing = follow_ups_cli(state, incident, "--to", "github", "--repo", "acme/sqlx", "--url", tracker.url, token=None)
    assert missing.code == 2 and "OPSDSL_SECRET_GITHUB_TOKEN" in missing.stderr
    assert "Traceback" not in missing.stderr
    for args, message in [
        (["--to", "github", "--project", "x"], "--repo"),
        (["--to", "github", "--repo", "not-a-repo"], "OWNER/REPO"),
        (["--to", "jira", "--project", "OPS"], "--url"),
        (["--to", "jira", "--project", "ops; drop", "--url", tracker.url], "project key"),
        (["--to", "gitlab", "--project", "1", "--url", "file:///etc/passwd"], "http(s)"),
    ]:
        result = follow_ups_cli(state, incident, *args)
        assert result.code == 2 and message in result.stderr, (args, result.stderr)
    dry = follow_ups_cli(state, "no-such-incident", "--to", "github", "--repo", "a/b", "--dry-run")
    assert dry.code == 2 and "no incident" in dry.stderr
    assert tracker.requests == []
    with pytest.raises(UsageError):
        Tracker("gitlab", "", base_url=tracker.url)


def test_at_most_limit_issues_per_call_the_rest_next_time(incidents, tracker: Tracker_) -> None:
    state, (*_, incident) = incidents  # its two follow-ups are still open (hostile answers opened none)
    first = in_process(state, incident, Tracker("github", "acme/sqlx", base_url=tracker.url), limit=1)
    assert [(item.new, item.url is None) for item in first] == [(True, False), (False, True)]
    second = in_process(state, incident, Tracker("github", "acme/sqlx", base_url=tracker.url), limit=1)
    assert sum(item.new for item in second) == 1 and all(item.url for item in second)
    assert len(tracker.requests) == 2


def test_endpoints_and_auth_per_tracker() -> None:
    import base64

    enterprise = Tracker("github", "acme/sqlx", base_url="https://ghe.example/api/v3/")
    assert enterprise.endpoint() == "https://ghe.example/api/v3/repos/acme/sqlx/issues"
    assert Tracker("github", "acme/sqlx").endpoint() == "https://api.github.com/repos/acme/sqlx/issues"
    assert Tracker("gitlab", "42").endpoint() == "https://gitlab.com/api/v4/projects/42/issues"
    assert (
        Tracker("gitlab", "g/p", base_url="https://gl.example/api/v4").endpoint()
        == "https://gl.example/api/v4/projects/g%2Fp/issues"
    )
    cloud = Tracker("jira", "OPS", base_url="https://x.atlassian.net", jira_user="me@example.com", jira_api=3)
    assert cloud.endpoint() == "https://x.atlassian.net/rest/api/3/issue"
    assert cloud.headers("t")["Authorization"] == "Basic " + base64.b64encode(b"me@example.com:t").decode()
    assert Tracker("jira", "OPS", base_url="https://jira.example").headers("t")["Authorization"] == "Bearer t"
    assert cloud.link_of({"id": "1", "key": "OPS-7"}) == ("https://x.atlassian.net/browse/OPS-7", "OPS-7")
    with pytest.raises(TrackerError):
        cloud.link_of({"id": "1", "key": "OPS-7/../../x"})
