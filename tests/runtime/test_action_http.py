"""The `http.request` action against a real HTTP server on 127.0.0.1.

`RecordingServer` is also used by the notify and evidence tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from opsdsl.runtime.actions import load_action
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.http import HttpRequestAction


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class RecordingServer:
    """An HTTP server on 127.0.0.1 (port 0) that records every request and answers each
    path from a queue of replies (the last one repeats; unknown paths get 404)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._replies: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def reply(self, path: str, status: int = 200, body: bytes | str | Any = b"", **options: Any) -> None:
        """Queue a reply for `path`; a dict or list body is sent as JSON."""
        headers = dict(options.pop("headers", {}))
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            body = body.encode()
        with self._lock:
            self._replies.setdefault(path, []).append(Reply(status, body, headers, **options))

    def _next_reply(self, path: str) -> Reply:
        with self._lock:
            queue = self._replies.get(path.split("?", 1)[0])
            if not queue:
                return Reply(404, b"not found")
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                with server._lock:
                    server.requests.append(Recorded(self.command, self.path, headers, body))
                reply = server._next_reply(self.path)
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    # A client that stopped reading (a capped body, a cancelled attempt) is fine.
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


def request(inputs: dict[str, Any], attempt: int = 1, timeout: float | None = 10.0) -> ActionRequest:
    return ActionRequest(
        run_id="run-7",
        step_id="invalidate",
        action="http.request",
        inputs=inputs,
        attempt=attempt,
        idempotency_key="run-7:invalidate",
        timeout=timeout,
    )


def run_http(inputs: dict[str, Any], attempt: int = 1, secret: str | None = None) -> dict[str, Any]:
    redact = (lambda text: text.replace(secret, "***")) if secret else (lambda text: text)
    context = ActionContext(evidence_dir=Path("unused"), redact=redact)
    return asyncio.run(HttpRequestAction().run(request(inputs, attempt), context))


def test_registry_returns_the_http_action() -> None:
    assert isinstance(load_action("http.request"), HttpRequestAction)


def test_get_returns_status_json_headers_and_body(server: RecordingServer) -> None:
    server.reply("/v1/plans", 200, {"plans": [1, 2]}, headers={"X-Request-Id": "abc"})
    outputs = run_http({"url": server.url("/v1/plans?cluster=eu-1")})
    assert outputs["status"] == 200
    assert outputs["json"] == {"plans": [1, 2]}
    assert outputs["headers"]["x-request-id"] == "abc"
    assert outputs["headers"]["content-type"] == "application/json"
    assert json.loads(outputs["body"]) == {"plans": [1, 2]}
    assert outputs["truncated"] is False
    (seen,) = server.requests
    assert (seen.method, seen.path) == ("GET", "/v1/plans?cluster=eu-1")
    assert seen.headers["idempotency-key"] == "run-7:invalidate"


def test_a_non_json_body_gives_json_none(server: RecordingServer) -> None:
    server.reply("/text", 200, "plain words")
    outputs = run_http({"url": server.url("/text")})
    assert outputs["json"] is None
    assert outputs["body"] == "plain words"


def test_post_sends_json_and_the_same_idempotency_key_on_every_attempt(server: RecordingServer) -> None:
    server.reply("/invalidate", 503, "busy")
    server.reply("/invalidate", 202, {"queued": True})
    inputs = {"method": "POST", "url": server.url("/invalidate"), "json": {"cluster": "eu-1", "slower_than_ms": 250}}
    with pytest.raises(ActionFailed) as caught:
        run_http(inputs, attempt=1)
    assert caught.value.retryable
    assert caught.value.outputs["status"] == 503
    assert run_http(inputs, attempt=2)["json"] == {"queued": True}
    first, second = server.requests
    assert first.json() == second.json() == {"cluster": "eu-1", "slower_than_ms": 250}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"] == "run-7:invalidate"


def test_an_idempotency_key_set_by_the_step_is_kept(server: RecordingServer) -> None:
    server.reply("/put", 200)
    run_http({"method": "PUT", "url": server.url("/put"), "headers": {"idempotency-KEY": "mine"}, "body": "raw text"})
    (seen,) = server.requests
    assert seen.headers["idempotency-key"] == "mine"
    assert seen.body == b"raw text"


def test_expect_status(server: RecordingServer) -> None:
    server.reply("/gone", 404, "no such plan")
    server.reply("/created", 201)
    assert run_http({"url": server.url("/gone"), "expect_status": [404]})["status"] == 404
    with pytest.raises(ActionFailed) as caught:
        run_http({"url": server.url("/created"), "expect_status": [200]})
    assert "returned 201 (expected 200)" in caught.value.message


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (404, False), (408, True), (429, True), (500, True)])
def test_which_statuses_are_retryable(server: RecordingServer, status: int, retryable: bool) -> None:
    server.reply("/status", status, "answer")
    with pytest.raises(ActionFailed) as caught:
        run_http({"url": server.url("/status")})
    assert caught.value.retryable is retryable
    assert caught.value.outputs["status"] == status
    assert caught.value.outputs["body"] == "answer"


def test_a_refused_connection_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ActionFailed) as caught:
        run_http({"url": f"http://127.0.0.1:{port}/"})
    assert caught.value.retryable
    assert "failed" in caught.value.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "not a url"])
def test_only_http_urls_are_allowed(url: str) -> None:
    with pytest.raises(ActionFailed) as caught:
        run_http({"url": url})
    assert not caught.value.retryable


def test_cancellation_stops_a_slow_request(server: RecordingServer) -> None:
    server.reply("/slow", 200, "late", delay=3.0)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(
            asyncio.wait_for(
                HttpRequestAction().run(request({"url": server.url("/slow")}), ActionContext(Path("unused"))), 0.3
            )
        )
    assert time.monotonic() - started < 2.5


def test_secrets_in_responses_are_redacted(server: RecordingServer) -> None:
    server.reply("/token", 200, {"token": "hunter2", "note": "key hunter2 issued"}, headers={"X-Token": "hunter2"})
    outputs = run_http({"url": server.url("/token")}, secret="hunter2")
    assert outputs["json"] == {"token": "***", "note": "key *** issued"}
    assert outputs["headers"]["x-token"] == "***"
    assert "hunter2" not in outputs["body"]


def test_the_body_is_capped_at_one_mib(server: RecordingServer) -> None:
    server.reply("/big", 200, b"y" * (3 * 1024 * 1024))
    outputs = run_http({"url": server.url("/big")})
    assert outputs["body"] == "y" * (1024 * 1024)
    assert outputs["truncated"] is True
    assert outputs["json"] is None


def test_json_and_body_together_are_refused(server: RecordingServer) -> None:
    with pytest.raises(ActionFailed) as caught:
        run_http({"method": "POST", "url": server.url("/x"), "json": {}, "body": "x"})
    assert not caught.value.retryable
    assert server.requests == []
