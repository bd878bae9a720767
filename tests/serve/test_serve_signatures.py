"""HMAC signatures, version 2: over method, path, timestamp and body; spent signatures
persist across restarts; version 1 only with --accept-legacy-signatures.

Before v2, the signature covered the timestamp and body only (a request captured on one
endpoint was accepted by the other) and the replay cache lived in memory (a captured
request was accepted again after a restart).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import test_serve
from test_serve import SECRET, alertmanager_body, job, signed

start = test_serve.start  # the fixture: start(*args) → a running Server, stopped at the end
DOCS = Path(__file__).resolve().parents[2] / "docs" / "serve.md"


def hmac_server(start, tmp_path: Path, *args: str, **kwargs):
    secret_file = tmp_path / "hmac.secret"
    secret_file.write_bytes(SECRET + b"\n")
    return start(
        "--hmac-secret-file", str(secret_file), "--metrics-no-auth", *args, env={"OPSDSL_TOKEN": None}, **kwargs
    )


def v1_signed(body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    stamp = str(int(time.time()))
    digest = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-Opsdsl-Timestamp": stamp, "X-Opsdsl-Signature": f"sha256={digest}", "Content-Type": "application/json"}


def test_a_captured_request_replayed_after_a_restart_is_401(start, tmp_path):
    server = hmac_server(start, tmp_path)
    body = json.dumps(job("captured")).encode()
    captured = signed(body)
    assert server.post("/v1/events", content=body, token=None, headers=captured).status_code == 202
    assert server.stop() == 0

    again = hmac_server(start, tmp_path, state=server.state)
    replay = again.post("/v1/events", content=body, token=None, headers=captured)
    assert replay.status_code == 401 and "replay" in replay.json()["error"]
    assert again.event_ids() == server.event_ids() and len(again.event_ids()) == 1
    fresh = again.post("/v1/events", content=body, token=None, headers=signed(body, int(time.time()) + 1))
    assert fresh.status_code == 202  # the same body, signed anew, is a new request


def test_a_signature_made_for_one_path_is_401_on_another(start, tmp_path):
    server = hmac_server(start, tmp_path)
    body = json.dumps(alertmanager_body("db-1")).encode()
    for_events = signed(body, path="/v1/events")
    moved = server.post("/v1/alertmanager", content=body, token=None, headers=for_events)
    assert moved.status_code == 401 and moved.json()["error"] == "bad signature"
    with_query = server.post("/v1/events?x=1", content=body, token=None, headers=for_events)
    assert with_query.status_code == 401
    assert server.post("/v1/events", content=body, token=None, headers=for_events).status_code == 202
    right = signed(body, int(time.time()) + 1, path="/v1/alertmanager")
    assert server.post("/v1/alertmanager", content=body, token=None, headers=right).status_code == 202
    assert len(server.event_ids()) == 2


def test_v1_signatures_are_refused_unless_accepted_explicitly(start, tmp_path):
    server = hmac_server(start, tmp_path)
    body = json.dumps(job("legacy")).encode()
    refused = server.post("/v1/events", content=body, token=None, headers=v1_signed(body))
    assert refused.status_code == 401 and "legacy v1 signature" in refused.json()["error"]
    assert 'version="v2"' in refused.headers["WWW-Authenticate"]
    both = signed(body)  # a sender moving over sends both: the v2 one is checked
    both["X-Opsdsl-Signature"] += ", sha256=" + "0" * 64
    assert server.post("/v1/events", content=body, token=None, headers=both).status_code == 202
    broken_v2 = v1_signed(body)
    broken_v2["X-Opsdsl-Signature"] = "v2=" + "0" * 64 + ", " + broken_v2["X-Opsdsl-Signature"]
    assert server.post("/v1/events", content=body, token=None, headers=broken_v2).status_code == 401
    assert server.stop() == 0

    legacy = hmac_server(start, tmp_path, "--accept-legacy-signatures", state=server.state)
    assert "--accept-legacy-signatures: v1 signatures (sha256=) are accepted" in legacy.log()
    headers = v1_signed(body)
    assert legacy.post("/v1/events", content=body, token=None, headers=headers).status_code == 202
    assert legacy.post("/v1/events", content=body, token=None, headers=headers).status_code == 401  # spent
    assert "accepted a legacy v1 signature from 127.0.0.1" in legacy.log()


def docs_sender_snippet() -> str:
    """The shell snippet docs/serve.md gives senders (the block after `<!-- v2-sender -->`)."""
    text = DOCS.read_text(encoding="utf-8")
    found = re.search(r"<!-- v2-sender -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert found, "docs/serve.md lost its v2 sender snippet"
    return found.group(1)


def test_the_docs_v2_sender_snippet_is_accepted(start, tmp_path):
    server = hmac_server(start, tmp_path)
    snippet = docs_sender_snippet()
    assert "url=http://127.0.0.1:8095\n" in snippet and "secret_file=hmac.secret " in snippet
    snippet = snippet.replace("url=http://127.0.0.1:8095\n", f"url={server.url}\n")
    sender = tmp_path / "sender"
    sender.mkdir()
    (sender / "hmac.secret").write_bytes(SECRET + b"\n")
    if shutil.which("openssl") and shutil.which("curl") and shutil.which("bash"):
        done = subprocess.run(["bash", "-euc", snippet], cwd=sender, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
    else:  # no openssl here: the formula the docs state, in Python
        body = b'{"name": "deploy", "labels": {"service": "api", "version": "1.4.2"}}'
        assert body.decode() in snippet
        response = server.post("/v1/events", content=body, token=None, headers=signed(body))
        answer = response.json()
    assert answer["accepted"] == 1
    (stored,) = server.query("SELECT body FROM events")
    assert json.loads(stored[0])["labels"]["version"] == "1.4.2"


@pytest.mark.parametrize("path", ["/v1/events", "/v1/alertmanager"])
def test_the_python_formula_matches_the_server(path):
    from opsdsl.serve.intake import v2_signature

    headers = signed(b"{}", 1700000000, path=path)
    assert headers["X-Opsdsl-Signature"] == v2_signature(SECRET, "POST", path, "1700000000", b"{}")
