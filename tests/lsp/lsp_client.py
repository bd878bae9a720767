"""A small LSP client for the tests: JSON-RPC with `Content-Length` framing over the
stdin/stdout of a real `opsdsl lsp` process (the messages are lsprotocol's, converted by
its converter, so they are what an editor would send)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lsprotocol.converters import get_converter

CONVERTER = get_converter()


class Client:
    def __init__(self, root: Path, encoding: str | None = None) -> None:
        self.root = root
        self.process = subprocess.Popen(
            [sys.executable, "-m", "opsdsl", "lsp"],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.messages: queue.Queue[dict] = queue.Queue()
        self.notifications: list[dict] = []
        self.next_id = 0
        self.versions: dict[str, int] = {}
        threading.Thread(target=self._read, daemon=True).start()
        capabilities: dict[str, Any] = {"textDocument": {"publishDiagnostics": {"versionSupport": True}}}
        if encoding:
            capabilities["general"] = {"positionEncodings": [encoding]}
        self.initialize_result = self.request(
            "initialize",
            {
                "processId": None,
                "rootUri": root.as_uri(),
                "workspaceFolders": [{"uri": root.as_uri(), "name": "packs"}],
                "capabilities": capabilities,
            },
        )
        self.notify("initialized", {})

    def _read(self) -> None:
        stream = self.process.stdout
        while True:
            headers = {}
            while True:
                line = stream.readline()
                if not line:
                    return
                line = line.decode("ascii").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                headers[name.lower()] = value.strip()
            body = stream.read(int(headers["content-length"]))
            self.messages.put(json.loads(body))

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode("utf-8")
        self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.process.stdin.flush()

    def _wait(self, predicate, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer from opsdsl lsp")
            try:
                message = self.messages.get(timeout=remaining)
            except queue.Empty:
                code = self.process.poll()
                raise TimeoutError(f"no answer from opsdsl lsp (exit code {code})") from None
            if predicate(message):
                return message  # consumed: a later wait for the same thing needs a new message
            if "method" in message and "id" not in message:
                self.notifications.append(message)
            if "method" in message and "id" in message:  # a request from the server
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})

    def request(self, method: str, params: Any, timeout: float = 30) -> Any:
        self.next_id += 1
        ident = self.next_id
        if not isinstance(params, dict):
            params = CONVERTER.unstructure(params)
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        answer = self._wait(lambda m: m.get("id") == ident and "method" not in m, timeout)
        if "error" in answer:
            raise LspError(answer["error"])
        return answer.get("result")

    def notify(self, method: str, params: Any) -> None:
        if not isinstance(params, dict):
            params = CONVERTER.unstructure(params)
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    # ------------------------------------------------------------ documents

    def uri(self, name: str) -> str:
        return (self.root / name).as_uri()

    def open(self, name: str, text: str | None = None) -> str:
        uri = self.uri(name)
        text = (self.root / name).read_text() if text is None else text
        self.versions[uri] = 1
        language = "yaml" if name.endswith((".yaml", ".yml")) else "opsdsl"
        self.notify(
            "textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": language, "version": 1, "text": text}}
        )
        return uri

    def change(self, name: str, text: str) -> None:
        uri = self.uri(name)
        self.versions[uri] += 1
        self.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": self.versions[uri]}, "contentChanges": [{"text": text}]},
        )

    def edit(self, name: str, line: int, character: int, end_line: int, end_character: int, new: str) -> None:
        uri = self.uri(name)
        self.versions[uri] += 1
        change = {
            "range": {
                "start": {"line": line, "character": character},
                "end": {"line": end_line, "character": end_character},
            },
            "text": new,
        }
        self.notify(
            "textDocument/didChange",
            {"textDocument": {"uri": uri, "version": self.versions[uri]}, "contentChanges": [change]},
        )

    def diagnostics(self, name: str, timeout: float = 30) -> list[dict]:
        """The diagnostics published for the document's current version."""
        uri = self.uri(name)
        version = self.versions[uri]

        def wanted(m: dict) -> bool:
            return (
                m.get("method") == "textDocument/publishDiagnostics"
                and m["params"]["uri"] == uri
                and m["params"].get("version") == version
            )

        for message in self.notifications:
            if wanted(message):
                self.notifications.remove(message)
                return message["params"]["diagnostics"]
        return self._wait(wanted, timeout)["params"]["diagnostics"]

    def at(self, name: str, line: int, character: int) -> dict:
        return {"textDocument": {"uri": self.uri(name)}, "position": {"line": line, "character": character}}

    def close(self) -> int:
        try:
            self.request("shutdown", None, timeout=10)
            self.notify("exit", None)
            return self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


class LspError(Exception):
    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message"))
        self.error = error


def position_of(text: str, needle: str, nth: int = 0, offset: int = 0) -> tuple[int, int]:
    """(line, character) of the nth occurrence of `needle` in `text`, plus `offset`."""
    index = -1
    for _ in range(nth + 1):
        index = text.index(needle, index + 1)
    index += offset
    line = text.count("\n", 0, index)
    return line, index - (text.rfind("\n", 0, index) + 1)
