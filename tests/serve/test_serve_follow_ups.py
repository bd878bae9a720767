"""`[follow_ups]` in the service configuration: `opsdsl serve` opens a finished incident's
follow-ups in the tracker by itself (issue 20 part 3's service setting), against a loopback
stand-in for GitHub's REST API that checks the requests as GitHub documents them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from test_serve import Server, wait_until
from test_serve_owns_runs import fire, status

from opsdsl.errors import ConfigError
from opsdsl.serve.config import load_config

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: breaks, version: 1.0.0, owner: sre}
params:
  python: {type: string}
triggers:
  broken:
    on: event
    when: event.name == "broken"
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onBroken: {trigger: broken, run: broken}
playbooks:
  broken:
    severity: SEV-3
    steps:
      - id: restart_pool
        action: shell
        with: {argv: ["${{ params.python }}", "-c", "raise SystemExit(3)"]}
        timeout: 30s
"""


class GitHub(BaseHTTPRequestHandler):
    """POST /repos/OWNER/REPO/issues → 201 {number, html_url}; keeps what it was sent."""

    seen: ClassVar[list[tuple[str, dict, dict]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        type(self).seen.append((self.path, dict(self.headers), body))
        number = len(type(self).seen)
        answer = json.dumps({"number": number, "html_url": f"http://127.0.0.1/acme/sqlx/issues/{number}"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def github() -> Iterator[str]:
    GitHub.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_server_opens_a_failed_incidents_follow_ups_once(tmp_path: Path, github: str) -> None:
    import sys

    pack = tmp_path / "breaks.yaml"
    pack.write_text(PACK)
    config = tmp_path / "opsdsl-serve.toml"
    config.write_text(f'[follow_ups]\nto = "github"\nrepo = "acme/sqlx"\nurl = "{github}"\n', encoding="utf-8")
    server = Server(
        tmp_path,
        "--config", str(config), "--param", f"python={sys.executable}",
        pack=pack, env={"OPSDSL_SECRET_GITHUB_TOKEN": "ghp-test-token"},
    ).start()  # fmt: skip
    try:
        run = fire(server, "broken")
        wait_until(lambda: status(server, run) == "failed", what="the run to fail")
        wait_until(lambda: GitHub.seen, 30, "the follow-up issue")
        path, headers, body = GitHub.seen[0]
        assert path == "/repos/acme/sqlx/issues"
        assert headers["Authorization"] == "Bearer ghp-test-token"
        assert headers["X-GitHub-Api-Version"] == "2022-11-28"
        assert "restart_pool" in body["title"] and body["labels"] == ["opsdsl", "incident"]
        opened = wait_until(
            lambda: server.query("SELECT data FROM ledger WHERE run = ? AND kind = 'incident.follow_up_opened'", run),
            what="the link in the ledger",
        )
        assert json.loads(opened[0][0])["url"].endswith("/acme/sqlx/issues/1")
        assert json.loads(opened[0][0])["by"] == "opsdsl serve"
        server.stop(timeout=30)
        links = server.query("SELECT data FROM ledger WHERE kind = 'incident.follow_up_opened'")
        keys = [json.loads(data)["key"] for (data,) in links]
        assert len(GitHub.seen) == len(keys) == len(set(keys))  # once each: nothing opened twice
        assert "ghp-test-token" not in server.log()
    finally:
        server.close()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('to = "bugzilla"\n', "one of github, gitlab, jira"),
        ('to = "github"\n', "repo"),
        ('to = "github"\nrepo = "not a repo"\n', "OWNER/REPO"),
        ('to = "jira"\nproject = "OPS"\n', "no default address"),
        ('to = "github"\nrepo = "a/b"\nwho = "me"\n', "unknown key"),
    ],
)
def test_a_wrong_follow_ups_table_is_an_error_with_its_line(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "opsdsl-serve.toml"
    path.write_text("[follow_ups]\n" + table, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert message in str(raised.value)
    assert "opsdsl-serve.toml:" in str(raised.value)
