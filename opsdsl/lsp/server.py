"""`opsdsl lsp`: the Language Server Protocol over stdio, on pygls.

The protocol work (JSON-RPC framing, document sync, position encodings) is pygls's; this
module maps requests to `opsdsl.lsp.features`. Diagnostics are debounced per document:
an edit after a quiet spell (no lint of the document in the last `DEBOUNCE` seconds) is
linted at once, so a single change shows its findings as fast as lint runs; an edit that
follows closer schedules a lint of the latest text `DEBOUNCE` seconds later, and each newer
edit replaces the scheduled one, so a burst of keystrokes costs one lint. Every handler turns an
unexpected exception into a log message and an empty answer: a half-typed pack must never
take the server down.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import subprocess
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import to_fs_path

from opsdsl import __version__
from opsdsl.lsp import features
from opsdsl.lsp.structure import Outline, Range, outline

DEBOUNCE = 0.05  # seconds: the quiet spell after which an edit is linted at once, and the wait in a burst
T = TypeVar("T")

log = logging.getLogger("opsdsl.lsp")


class OpsServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("opsdsl", __version__, text_document_sync_kind=lsp.TextDocumentSyncKind.Incremental)
        self.pending: dict[str, asyncio.TimerHandle] = {}
        self.linted_at: dict[str, float] = {}  # when each document's last lint finished (loop time)
        self.test_runs: dict[str, int] = {}  # pack tests: the latest `opsdsl test` started, per document
        self.children: list[subprocess.Popen] = []  # `opsdsl test` processes, killed at exit
        atexit.register(self.kill_children)
        self.last_good: dict[str, Outline] = {}
        self._scopes: dict[Path, features.Scope] = {}

    # ------------------------------------------------------------ helpers

    def kill_children(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()

    def path_of(self, uri: str) -> Path:
        return Path(to_fs_path(uri) or uri)

    def text_of(self, uri: str) -> str:
        return self.workspace.get_text_document(uri).source

    def scope_for(self, path: Path) -> features.Scope:
        """Configuration and policy packs as `opsdsl lint` finds them: the nearest config,
        and the policy packs of the workspace folder holding the file (unsaved buffers of
        open policy packs included)."""
        folder = self._folder_of(path)
        if folder in self._scopes:
            return self._scopes[folder]
        from opsdsl.build.pipeline import looks_like_policy_pack
        from opsdsl.lang.config import find_config, load_config
        from opsdsl.lang.loader import discover
        from opsdsl.lint.engine import lint_one

        try:
            config = load_config(find_config(path.parent if path.parent.exists() else Path.cwd()))
        except Exception as exc:  # a broken config is lint's to report; the editor keeps working
            self.log(f"configuration not loaded: {exc}")
            config = features.Config()
        policies: list = []
        open_texts = {self.path_of(uri): doc.source for uri, doc in self.workspace.text_documents.items()}
        try:
            candidates = [p for p in discover([folder], config.exclude) if looks_like_policy_pack(p)]
        except OSError:
            candidates = []
        for candidate in candidates:
            report, own = lint_one(candidate, (), config, text=open_texts.get(candidate))
            if report.kind == "PolicyPack":
                policies.extend(own)
        scope = features.Scope(config, tuple(policies))
        self._scopes[folder] = scope
        return scope

    def _folder_of(self, path: Path) -> Path:
        best = None
        for folder in self.workspace.folders.values():
            root = Path(to_fs_path(folder.uri) or "")
            if root in (path, *path.parents) and (best is None or len(root.parts) > len(best.parts)):
                best = root
        if best is None and self.workspace.root_path:
            root = Path(self.workspace.root_path)
            if root in path.parents:
                best = root
        return best or path.parent

    def log(self, message: str) -> None:
        log.warning(message)
        with contextlib.suppress(Exception):  # nothing to tell it over: the client has gone
            self.window_log_message(lsp.LogMessageParams(lsp.MessageType.Warning, message))

    def safely(self, what: str, fn: Callable[[], T], default: T) -> T:
        try:
            return fn()
        except Exception:
            self.log(f"opsdsl lsp: {what} failed (please report it):\n{traceback.format_exc()}")
            return default

    def to_client(self, uri: str, r: Range) -> lsp.Range:
        doc = self.workspace.get_text_document(uri)
        return doc.range_to_client_units(lsp.Range(lsp.Position(r.line, r.col), lsp.Position(r.end_line, r.end_col)))

    def from_client(self, uri: str, position: lsp.Position) -> tuple[int, int]:
        doc = self.workspace.get_text_document(uri)
        p = doc.position_from_client_units(position)
        return p.line, p.character

    # ------------------------------------------------------------ diagnostics

    def schedule(self, uri: str, delay: float | None = None) -> None:
        """Lint `uri` after `delay` seconds; by default at once after a quiet spell, else
        `DEBOUNCE` after this edit (replacing a lint already scheduled)."""
        if features.is_test(self.path_of(uri)):
            return  # pack tests are checked when opened and saved (check_test)
        loop = asyncio.get_running_loop()
        previous = self.pending.pop(uri, None)
        if previous is not None:
            previous.cancel()
        if delay is None:
            quiet = previous is None and loop.time() - self.linted_at.get(uri, float("-inf")) >= DEBOUNCE
            delay = 0 if quiet else DEBOUNCE
        self.pending[uri] = loop.call_later(delay, self.publish, uri)

    def publish(self, uri: str) -> None:
        self.pending.pop(uri, None)
        if uri not in self.workspace.text_documents:
            return
        doc = self.workspace.get_text_document(uri)
        version = doc.version
        found = self.safely("diagnostics", lambda: self.diagnostics(uri, doc.source), None)
        self.linted_at[uri] = asyncio.get_running_loop().time()
        if found is None:
            return
        self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri, found, version))

    def diagnostics(self, uri: str, text: str) -> list[lsp.Diagnostic]:
        path = self.path_of(uri)
        if features.is_test(path) or not path.name.endswith((".yaml", ".yml", ".ops")):
            return []
        out = []
        doc = self.workspace.get_text_document(uri)
        for d in features.lint_diagnostics(path, text, self.scope_for(path)):
            item = features.to_lsp(d)
            item.range = doc.range_to_client_units(item.range)
            out.append(item)
        return out

    def check_test(self, uri: str) -> None:
        """A pack test, as saved: `opsdsl test FILE` in a daemon thread (an editor closing
        the server never waits for a rehearsal; `exit` kills it); only the latest run's
        answer is published."""
        run = self.test_runs.get(uri, 0) + 1
        self.test_runs[uri] = run
        self.children = [child for child in self.children if child.poll() is None]
        path = self.path_of(uri)
        text = self.text_of(uri)
        version = self.workspace.get_text_document(uri).version
        loop = asyncio.get_running_loop()

        def publish(found: list[lsp.Diagnostic] | None) -> None:
            if found is None or self.test_runs.get(uri) != run or uri not in self.workspace.text_documents:
                return
            doc = self.workspace.get_text_document(uri)
            for item in found:
                item.range = doc.range_to_client_units(item.range)
            self.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri, found, version))

        def work() -> None:
            found = self.safely(
                "pack test diagnostics", lambda: features.test_diagnostics(path, text, self.children.append), None
            )
            loop.call_soon_threadsafe(publish, found)

        threading.Thread(target=work, name=f"opsdsl-test-{run}", daemon=True).start()

    def policy_changed(self, uri: str) -> None:
        """A policy pack changed: every open pack's risky-step rule may read differently."""
        self._scopes.clear()
        for other in list(self.workspace.text_documents):
            if other != uri:
                self.schedule(other)

    def documents(self, uri: str):
        """(uri, path, text) of the files that share names with `uri`: its pack (names are
        pack-local) and the pack tests of the workspace whose `pack:` is that pack; open
        buffers as the editor holds them, other files from disk."""
        from pygls.uris import from_fs_path

        here = self.path_of(uri)
        pack = _tested_pack(here, self.text_of(uri)) if features.is_test(here) else here
        open_docs = {self.path_of(u): (u, d.source) for u, d in list(self.workspace.text_documents.items())}
        if pack is not None:
            found = open_docs.get(pack)
            text = found[1] if found else _read(pack)
            if text is not None:
                yield (found[0] if found else from_fs_path(str(pack))), pack, text
        for path in _workspace_files(self._folder_of(here), features.TEST_SUFFIXES):
            found = open_docs.get(path)
            text = found[1] if found else _read(path)
            if text is not None and pack is not None and _tested_pack(path, text) == pack:
                yield (found[0] if found else from_fs_path(str(path))), path, text


_HEAVY = {"node_modules", "venv", "__pycache__", "site-packages", "build", "dist"}
MAX_WORKSPACE_FILES = 5000
MAX_READ = 8 * 1024 * 1024


def _workspace_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Regular files below `folder` with these suffixes, skipping hidden folders and
    virtual environments, at most MAX_WORKSPACE_FILES of them."""
    import os

    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _HEAVY)
        for name in sorted(files):
            if name.endswith(suffixes) and not name.startswith("."):
                out.append(Path(root, name))
                if len(out) >= MAX_WORKSPACE_FILES:
                    return out
    return out


def _read(path: Path) -> str | None:
    """A workspace file's text, if it is a regular UTF-8 file within MAX_READ (a FIFO or a
    device is never opened)."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_READ:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _tested_pack(test: Path, text: str) -> Path | None:
    """The pack a pack test names in `pack:` (relative to the test file)."""
    import re

    match = re.search(r"^pack:\s*['\"]?([^'\"#\n]+?)['\"]?\s*(?:#.*)?$", text, re.MULTILINE)
    if match is None:
        return None
    try:
        return (test.parent / match.group(1).strip()).resolve()
    except (OSError, ValueError, RuntimeError):
        return None


server = OpsServer()


def _policy_text(text: str) -> bool:
    import re

    return bool(re.search(r"^(?:kind:\s*['\"]?PolicyPack|policypack)\b", text, re.MULTILINE))


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: OpsServer, params: lsp.DidOpenTextDocumentParams) -> None:
    uri = params.text_document.uri
    if features.is_test(ls.path_of(uri)):
        ls.safely("pack test", lambda: ls.check_test(uri), None)
        return
    ls.schedule(uri, 0)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: OpsServer, params: lsp.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    ls.schedule(uri)
    if _policy_text(ls.text_of(uri)):
        ls.policy_changed(uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: OpsServer, params: lsp.DidSaveTextDocumentParams) -> None:
    uri = params.text_document.uri
    path = ls.path_of(uri)
    if features.is_test(path):
        ls.safely("pack test", lambda: ls.check_test(uri), None)
        return
    ls.schedule(uri, 0)
    # a saved pack changes what its pack tests rehearse
    for other in list(ls.workspace.text_documents):
        if features.is_test(ls.path_of(other)):
            ls.safely("pack test", lambda other=other: ls.check_test(other), None)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: OpsServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    pending = ls.pending.pop(uri, None)
    if pending is not None:
        pending.cancel()
    ls.last_good.pop(uri, None)
    ls.linted_at.pop(uri, None)
    ls.test_runs.pop(uri, None)
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri, []))


@server.feature(
    lsp.TEXT_DOCUMENT_COMPLETION,
    lsp.CompletionOptions(trigger_characters=[".", ":", " ", "-"]),
)
def completion(ls: OpsServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    uri = params.text_document.uri

    def run() -> lsp.CompletionList:
        line, col = ls.from_client(uri, params.position)
        text = ls.text_of(uri)
        info = outline(text, features.expression_keys())
        if info is not None:
            ls.last_good[uri] = info
        items = features.complete(ls.path_of(uri), text, line, col, info or ls.last_good.get(uri))
        return lsp.CompletionList(is_incomplete=False, items=items)

    return ls.safely("completion", run, lsp.CompletionList(is_incomplete=False, items=[]))


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: OpsServer, params: lsp.HoverParams) -> lsp.Hover | None:
    uri = params.text_document.uri

    def run() -> lsp.Hover | None:
        line, col = ls.from_client(uri, params.position)
        found = features.hover(ls.path_of(uri), ls.text_of(uri), line, col)
        if found is None:
            return None
        text, where = found
        return lsp.Hover(lsp.MarkupContent(lsp.MarkupKind.Markdown, text), ls.to_client(uri, where))

    return ls.safely("hover", run, None)


def _target(ls: OpsServer, uri: str, position: lsp.Position):
    line, col = ls.from_client(uri, position)
    return features.symbol_at(ls.path_of(uri), ls.text_of(uri), line, col)


def _locations(ls: OpsServer, found) -> list[lsp.Location]:
    out = []
    for uri, symbol in found:
        if uri in ls.workspace.text_documents:
            where = ls.to_client(uri, symbol.range)
        else:
            r = symbol.range
            where = lsp.Range(lsp.Position(r.line, r.col), lsp.Position(r.end_line, r.end_col))
        out.append(lsp.Location(uri, where))
    return out


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
def definition(ls: OpsServer, params: lsp.DefinitionParams) -> list[lsp.Location]:
    uri = params.text_document.uri

    def run() -> list[lsp.Location]:
        target = _target(ls, uri, params.position)
        if target is None:
            return []
        return _locations(ls, features.find(ls.documents(uri), target, definitions=True))

    return ls.safely("definition", run, [])


@server.feature(lsp.TEXT_DOCUMENT_REFERENCES)
def references(ls: OpsServer, params: lsp.ReferenceParams) -> list[lsp.Location]:
    uri = params.text_document.uri

    def run() -> list[lsp.Location]:
        target = _target(ls, uri, params.position)
        if target is None:
            return []
        wanted = None if params.context.include_declaration else False
        return _locations(ls, features.find(ls.documents(uri), target, definitions=wanted))

    return ls.safely("references", run, [])


@server.feature(lsp.TEXT_DOCUMENT_PREPARE_RENAME)
def prepare_rename(ls: OpsServer, params: lsp.PrepareRenameParams) -> lsp.Range | None:
    uri = params.text_document.uri

    def run() -> lsp.Range | None:
        target = _target(ls, uri, params.position)
        if target is None or target.kind != "step":
            return None
        return ls.to_client(uri, target.range)

    return ls.safely("prepareRename", run, None)


@server.feature(lsp.TEXT_DOCUMENT_RENAME)
def rename(ls: OpsServer, params: lsp.RenameParams) -> lsp.WorkspaceEdit | None:
    uri = params.text_document.uri

    def run() -> lsp.WorkspaceEdit | str | None:
        target = _target(ls, uri, params.position)
        if target is None:
            return None
        docs = list(ls.documents(uri))
        steps = [
            s.name
            for _, p, t in docs
            if not features.is_test(p)
            for s in features.symbols_in(p, t)
            if s.kind == "step" and s.definition and s.scope == target.scope
        ]
        problem = features.rename_problem(target, params.new_name, steps)
        if problem:
            return problem
        changes: dict[str, list[lsp.TextEdit]] = {}
        for where in _locations(ls, features.find(docs, target)):
            changes.setdefault(where.uri, []).append(lsp.TextEdit(where.range, params.new_name))
        return lsp.WorkspaceEdit(changes=changes)

    answer = ls.safely("rename", run, None)
    if isinstance(answer, str):
        from pygls.exceptions import JsonRpcInvalidParams

        raise JsonRpcInvalidParams(answer)
    return answer


@server.feature(
    lsp.TEXT_DOCUMENT_CODE_ACTION,
    lsp.CodeActionOptions(code_action_kinds=[lsp.CodeActionKind.QuickFix]),
)
def code_action(ls: OpsServer, params: lsp.CodeActionParams) -> list[lsp.CodeAction]:
    uri = params.text_document.uri

    def run() -> list[lsp.CodeAction]:
        doc = ls.workspace.get_text_document(uri)
        diagnostics = []
        for d in params.context.diagnostics:  # client units → code points, as the edits are built
            r = doc.range_from_client_units(d.range)
            where = lsp.Range(lsp.Position(r.start.line, r.start.character), lsp.Position(r.end.line, r.end.character))
            diagnostics.append(
                lsp.Diagnostic(where, d.message, severity=d.severity, code=d.code, source=d.source, data=d.data)
            )
        actions = features.code_actions(uri, doc.source, diagnostics, ops=features.is_ops(ls.path_of(uri)))
        for action, original in zip(actions, _originals(actions, params.context.diagnostics, diagnostics), strict=True):
            action.diagnostics = [original]
            for edits in (action.edit.changes or {}).values():
                for edit in edits:
                    edit.range = doc.range_to_client_units(edit.range)
        return actions

    return ls.safely("codeAction", run, [])


def _originals(actions: list[lsp.CodeAction], originals: list[lsp.Diagnostic], copies: list[lsp.Diagnostic]) -> list:
    by_id = {id(c): o for c, o in zip(copies, originals, strict=True)}
    return [by_id.get(id(a.diagnostics[0]), a.diagnostics[0]) if a.diagnostics else None for a in actions]


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(ls: OpsServer, params: lsp.DocumentFormattingParams) -> list[lsp.TextEdit] | None:
    uri = params.text_document.uri

    def run() -> list[lsp.TextEdit] | None:
        text = ls.text_of(uri)
        formatted = features.format_ops(ls.path_of(uri), text)
        if formatted is None or formatted == text:
            return [] if formatted is not None else None
        doc = ls.workspace.get_text_document(uri)
        end = doc.position_to_client_units(lsp.Position(len(doc.lines), 0))
        return [lsp.TextEdit(lsp.Range(lsp.Position(0, 0), end), formatted)]

    return ls.safely("formatting", run, None)


def serve(**_: Any) -> None:
    """Serve one client over stdin/stdout until it sends `exit` or closes the stream."""
    logging.basicConfig(level=logging.WARNING, format="opsdsl lsp: %(message)s")
    server.start_io()
