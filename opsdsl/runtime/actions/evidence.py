"""`evidence.collect`: copy files, URL responses and command output into the evidence folder.

Everything lands in `evidence_dir/NAME/` under names this module makes up (`file-01-…`,
`url-01-…`, `command-01-…`), so no path or URL can choose where bytes are written. Every
byte passes through `redact_bytes` first, and `sources.json` beside them says where each
file came from. A source that cannot be read fails the step, but what was collected stays
and is reported: evidence of half an incident beats none.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from opsdsl.files import write_atomic_bytes
from opsdsl.runtime.actions import builtin_schema, check_inputs
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.builtin import BuiltinAction
from opsdsl.runtime.actions.http import check_status, send
from opsdsl.runtime.actions.shell import child_env, run_command

SOURCE_LIMIT = 64 * 1024 * 1024  # bytes kept of each file, response or command stream
SOURCES_FILE = "sources.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_EXTENSIONS = {"application/json": ".json", "text/html": ".html", "text/plain": ".txt", "text/csv": ".csv"}


@dataclass
class _Problem:
    message: str
    retryable: bool


def safe_part(text: str, fallback: str) -> str:
    """A file-name fragment made from `text`: only letters, digits, `_`, `.` and `-`."""
    part = _UNSAFE.sub("_", text).strip("._")[:60]
    return part or fallback


def check_name(name: str) -> None:
    """Refuse an item name that could leave the evidence folder."""
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ActionFailed(
            f"evidence name {name!r} must be a plain file-name stem, without path separators", retryable=False
        )


class _Collector:
    """Writes one evidence item's files and remembers each one's manifest entry."""

    def __init__(self, context: ActionContext, name: str) -> None:
        self.context = context
        self.root = context.evidence_dir.resolve()
        self.folder = self.root / name
        self.files: list[dict[str, Any]] = []
        self.sources: list[dict[str, Any]] = []
        self.problems: list[_Problem] = []

    async def write(self, file_name: str, data: bytes) -> str:
        path = self.folder / file_name
        if path.parent != self.folder or path.name != file_name:
            raise AssertionError(f"generated evidence file name {file_name!r} leaves its folder")
        data = self.context.redact_bytes(data)
        await asyncio.to_thread(write_atomic_bytes, path, data)
        relative = path.relative_to(self.root).as_posix()
        self.files.append({"path": relative, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        return relative

    def fail(self, message: str, retryable: bool) -> None:
        self.problems.append(_Problem(self.context.redact(message), retryable))


class EvidenceCollectAction(BuiltinAction):
    """Collect `files`, `urls` and `commands` into the evidence item `name`."""

    name = "evidence.collect"

    async def _run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        inputs = request.inputs
        if isinstance(inputs, dict) and not any(key in inputs for key in ("files", "urls", "commands")):
            raise ActionFailed("evidence.collect: give at least one of `files`, `urls` or `commands`", retryable=False)
        if isinstance(inputs, dict) and isinstance(inputs.get("name"), str):
            check_name(inputs["name"])
        check_inputs(self.name, builtin_schema(self.name), inputs, context.redact)
        name: str = inputs["name"]
        collector = _Collector(context, name)
        self._check_folder(collector, request)

        for index, source in enumerate(inputs.get("files", []), start=1):
            await self._copy_file(collector, index, source)
        for index, url in enumerate(inputs.get("urls", []), start=1):
            await self._fetch_url(collector, index, url, request)
        for index, argv in enumerate(inputs.get("commands", []), start=1):
            await self._run_command(collector, index, argv, request)

        record = {
            "name": name,
            "run_id": request.run_id,
            "step_id": request.step_id,
            "attempt": request.attempt,
            "sources": collector.sources,
        }
        await collector.write(SOURCES_FILE, _json_bytes(record))
        outputs = {"name": name, "files": collector.files}
        if collector.problems:
            raise ActionFailed(
                "; ".join(problem.message for problem in collector.problems),
                outputs=outputs,
                retryable=all(problem.retryable for problem in collector.problems),
            )
        return outputs

    @staticmethod
    def _check_folder(collector: _Collector, request: ActionRequest) -> None:
        """Refuse a folder that is a symlink (it could point anywhere), or one another step
        filled: two steps writing one item would overwrite each other's evidence (a retry may)."""
        if collector.folder.is_symlink():
            raise ActionFailed(
                f"evidence folder {collector.folder} is a symlink; refusing to write through it", retryable=False
            )
        try:
            earlier = json.loads((collector.folder / SOURCES_FILE).read_bytes())
        except (OSError, ValueError):
            return
        if isinstance(earlier, dict) and (earlier.get("run_id"), earlier.get("step_id")) != (
            request.run_id,
            request.step_id,
        ):
            raise ActionFailed(
                f"evidence item {collector.folder.name!r} was already collected by step "
                f"{earlier.get('step_id')!r}; give this one another name",
                retryable=False,
            )

    @staticmethod
    async def _copy_file(collector: _Collector, index: int, source: str) -> None:
        entry: dict[str, Any] = {"kind": "file", "source": collector.context.redact(source)}
        collector.sources.append(entry)
        try:
            data, truncated = await asyncio.to_thread(_read_capped, Path(source))
        except FileNotFoundError:
            collector.fail(f"file {source!r} does not exist", retryable=False)
            return
        except IsADirectoryError:
            collector.fail(f"{source!r} is a directory; list the files in it", retryable=False)
            return
        except OSError as exc:
            collector.fail(f"cannot read {source!r}: {exc.strerror or exc}", retryable=False)
            return
        entry["truncated"] = truncated
        entry["path"] = await collector.write(f"file-{index:02d}-{safe_part(Path(source).name, 'file')}", data)

    @staticmethod
    async def _fetch_url(collector: _Collector, index: int, url: str, request: ActionRequest) -> None:
        entry: dict[str, Any] = {"kind": "url", "source": collector.context.redact(url)}
        collector.sources.append(entry)
        try:
            response = await send("GET", url, timeout=request.timeout, limit=SOURCE_LIMIT, follow_redirects=True)
        except ActionFailed as failure:
            collector.fail(failure.message, failure.retryable)
            return
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        host = safe_part(httpx.URL(url).host, "url")
        entry.update(status=response.status, content_type=content_type, truncated=response.truncated)
        entry["path"] = await collector.write(
            f"url-{index:02d}-{host}{_EXTENSIONS.get(content_type, '.body')}", response.body
        )
        try:
            check_status(f"GET {url}", response, None, {})
        except ActionFailed as failure:  # the body is kept: an error page is evidence too
            collector.fail(failure.message, failure.retryable)

    @staticmethod
    async def _run_command(collector: _Collector, index: int, argv: list[str], request: ActionRequest) -> None:
        entry: dict[str, Any] = {"kind": "command", "argv": [collector.context.redact(arg) for arg in argv]}
        collector.sources.append(entry)
        try:
            result = await run_command(argv, env=child_env(request), limit=SOURCE_LIMIT)
        except ActionFailed as failure:
            collector.fail(failure.message, failure.retryable)
            return
        stem = f"command-{index:02d}-{safe_part(Path(argv[0]).name, 'command')}"
        entry.update(
            exit_code=result.exit_code,
            truncated=result.stdout_truncated or result.stderr_truncated,
            stdout=await collector.write(f"{stem}.stdout", result.stdout),
            stderr=await collector.write(f"{stem}.stderr", result.stderr),
        )


def _read_capped(path: Path) -> tuple[bytes, bool]:
    with path.open("rb") as handle:
        data = handle.read(SOURCE_LIMIT + 1)
    return data[:SOURCE_LIMIT], len(data) > SOURCE_LIMIT


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
