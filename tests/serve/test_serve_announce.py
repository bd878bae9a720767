"""Announcements and `opsdsl serve`: a webhook announcement signed with `hmac_secret` is
accepted by a real server (docs/serve.md says one opsdsl server can receive another's
announcements at /v1/events); a server with a `[[notifiers]]` webhook announces the run an
event paused."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import test_serve
from test_serve import SECRET, wait_until

from opsdsl.runtime import runner
from opsdsl.runtime.announce import Announcer
from opsdsl.runtime.secrets import Secrets

start = test_serve.start  # the fixture: start(*args) → a running Server, stopped at the end

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: asks, version: 1.0.0, owner: sre}
playbooks:
  ask:
    severity: SEV-3
    steps:
      - id: go
        action: approval
        with: {message: "Go on?"}
        timeout: 10m
"""


def test_a_signed_webhook_announcement_is_accepted_by_opsdsl_serve(start, tmp_path: Path) -> None:
    secret_file = tmp_path / "hmac.secret"
    secret_file.write_bytes(SECRET + b"\n")
    server = start("--hmac-secret-file", str(secret_file), env={"OPSDSL_TOKEN": None})

    pack = tmp_path / "asks.yaml"
    pack.write_text(PACK)
    state = tmp_path / "announcing"
    runtime = runner.Runtime(state)
    try:
        secrets = Secrets(state)
        run = runtime.create_run(runner.plan_from_pack(pack, [], state), runner.Selection("ask"), {}, {}, {}, secrets)
        assert asyncio.run(runtime.drive(run, secrets)).status == "paused"
        spec = {"kind": "webhook", "url": f"{server.url}/v1/events", "hmac_secret": "serve_hmac"}
        announcer = Announcer(runtime.store, [spec], None, secrets={"serve_hmac": SECRET.decode()})
        asyncio.run(announcer.tick())
        (entry,) = [e.data for e in runtime.store.ledger.entries() if e.kind == "approval.announced"]
    finally:
        runtime.close()
    assert (entry["delivered"], entry["detail"]) == (True, "HTTP 202")
    (event_id,) = server.event_ids()
    assert event_id == 1
    assert json.dumps(entry).find(SECRET.decode()) == -1


SERVED_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: served, version: 1.0.0, owner: sre}
triggers:
  ask:
    on: event
    when: event.name == "please-ask"
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onAsk: {trigger: ask, run: ask}
playbooks:
  ask:
    severity: SEV-2
    steps:
      - id: go
        name: Fail over the primary
        action: approval
        with: {message: "${{ event.labels.summary }}", approvers: [alice]}
        timeout: 10m
"""


class Hook(BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1 that keeps the JSON bodies it is sent."""

    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_serve_announces_a_paused_run_to_a_loopback_webhook(tmp_path: Path) -> None:
    Hook.bodies = []
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=receiver.serve_forever, args=(0.05,), daemon=True).start()
    (tmp_path / "packs").mkdir()
    (tmp_path / "packs" / "served.yaml").write_text(SERVED_PACK)
    (tmp_path / "token").write_text("announce-token-1\n")
    (tmp_path / "opsdsl-serve.toml").write_text(
        f"""
state_dir = "state"
public_url = "https://opsdsl.example.test"

[packs]
paths = ["packs"]

[intake]
token_file = "token"

[[notifiers]]
kind = "webhook"
url = "http://127.0.0.1:{receiver.server_address[1]}/hook"
"""
    )
    log = tmp_path / "serve.log"
    environ = {k: v for k, v in os.environ.items() if k != "OPSDSL_TOKEN"}
    command = [sys.executable, "-m", "opsdsl", "serve", "--config", "opsdsl-serve.toml", "--port", "0"]
    with open(log, "w", encoding="utf-8") as stderr:
        process = subprocess.Popen(command, cwd=tmp_path, env=environ, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        port = wait_until(lambda: _port(log, process), 60, "the listening line")
        event = {"name": "please-ask", "labels": {"summary": "Fail over db-1? <!channel>"}}
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/events", json=event, headers={"Authorization": "Bearer announce-token-1"}
        )
        assert answer.status_code == 202, answer.text
        wait_until(lambda: Hook.bodies, 20, "the announcement")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        receiver.shutdown()
        receiver.server_close()
    (body,) = Hook.bodies
    facts = body["fields"]
    assert facts["what"] == "request" and facts["step"] == {"id": "go", "name": "Fail over the primary"}
    assert facts["ask"]["message"] == "Fail over db-1? <!channel>"
    assert facts["approvals"] == {"needed": 1, "approvers": ["alice"]}
    assert facts["approve"]["url"] == f"https://opsdsl.example.test/v1/runs/{facts['run']}"


def _port(log: Path, process: subprocess.Popen) -> int | None:
    found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text(encoding="utf-8"))
    assert found or process.poll() is None, f"serve exited:\n{log.read_text(encoding='utf-8')}"
    return int(found.group(1)) if found else None
