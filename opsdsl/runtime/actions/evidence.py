"""`evidence.collect`: copy files, URL responses and command output into the evidence folder.

Everything lands in `evidence_dir/NAME/` under names this module makes up (`file-01-…`,
`url-01-…`, `command-01-…`), so no path or URL can choose where bytes are written. Every
byte passes through `redact_bytes` first, files are 0600 in 0700 folders, and
`sources.json` beside them says where each file came from. A source that cannot be read
fails the step, but what was collected stays and is reported: evidence of half an
incident beats none.

A `files:` path may come from event data, which whoever raises the alert controls, so
only files under the operator's evidence roots are read (`ActionContext.evidence_roots`,
else `OPSDSL_EVIDENCE_ROOTS`; none by default), and never the state directory, the
evidence folder, /proc, /sys, /dev or a key file, whatever the roots say. The path is
opened one component at a time from the root with O_NOFOLLOW, so no symlink or `..` leads
out; only regular files with a single link are read (a FIFO would hang the step, a hard
link could be a file from anywhere). `urls:` follow redirects only within their origin.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from opsdsl.canonical import indented_json
from opsdsl.files import make_private_dirs, not_regular, write_atomic_bytes
from opsdsl.runtime.actions import builtin_schema, check_inputs
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.builtin import BuiltinAction
from opsdsl.runtime.actions.http import check_status, send
from opsdsl.runtime.actions.shell import child_env, run_command

SOURCE_LIMIT = 64 * 1024 * 1024  # bytes kept of each file, response or command stream
SOURCES_FILE = "sources.json"
ROOTS_ENV = "OPSDSL_EVIDENCE_ROOTS"  # os.pathsep-separated absolute folders, set by the operator
NEVER_READ = (Path("/proc"), Path("/sys"), Path("/dev"))  # whatever the roots say
STATE_MARKER = "state.db"  # how a state directory is recognised when the context does not name it
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
        await asyncio.to_thread(_write_private, path, data)
        relative = path.relative_to(self.root).as_posix()
        self.files.append({"path": relative, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        return relative

    def fail(self, message: str, retryable: bool) -> None:
        self.problems.append(_Problem(self.context.redact(message), retryable))

    def name_part(self, text: str, fallback: str) -> str:
        """A file-name fragment from a source: redacted first, since file names are not."""
        return safe_part(self.context.redact(text), fallback)


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

        if inputs.get("files"):
            policy = file_policy(context)
            for index, source in enumerate(inputs["files"], start=1):
                await self._copy_file(collector, policy, index, source)
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
    async def _copy_file(collector: _Collector, policy: FilePolicy, index: int, source: str) -> None:
        entry: dict[str, Any] = {"kind": "file", "source": collector.context.redact(source)}
        collector.sources.append(entry)
        try:
            data, truncated = await asyncio.to_thread(read_evidence_file, source, policy)
        except ActionFailed as refused:
            collector.fail(refused.message, refused.retryable)
            return
        except FileNotFoundError:
            collector.fail(f"file {source!r} does not exist", retryable=False)
            return
        except OSError as exc:
            collector.fail(f"cannot read {source!r}: {exc.strerror or exc}", retryable=False)
            return
        entry["truncated"] = truncated
        entry["path"] = await collector.write(
            f"file-{index:02d}-{collector.name_part(PurePosixPath(source).name, 'file')}", data
        )

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
        host = collector.name_part(httpx.URL(url).host, "url")
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
        stem = f"command-{index:02d}-{collector.name_part(Path(argv[0]).name, 'command')}"
        entry.update(
            exit_code=result.exit_code,
            truncated=result.stdout_truncated or result.stderr_truncated,
            stdout=await collector.write(f"{stem}.stdout", result.stdout),
            stderr=await collector.write(f"{stem}.stderr", result.stderr),
        )


# ---- files: which may be read, and reading them without following anything -------------


@dataclass(frozen=True)
class FilePolicy:
    """Where `files:` may be read from: the operator's roots (each as configured and as
    resolved), minus the folders no evidence may come from, whatever the roots say."""

    roots: tuple[tuple[Path, Path], ...]
    forbidden: tuple[Path, ...]
    forbidden_ids: frozenset[tuple[int, int]]  # (st_dev, st_ino): a bind mount of one is it too
    origin: str  # where the roots were configured, for messages


def file_policy(context: ActionContext) -> FilePolicy:
    """The roots from the context (the runtime's options), else from OPSDSL_EVIDENCE_ROOTS;
    a relative root is refused rather than resolved against whatever the current folder is."""
    if context.evidence_roots is not None:
        configured, origin = [str(root) for root in context.evidence_roots], "the runtime's evidence roots"
    else:
        configured, origin = os.environ.get(ROOTS_ENV, "").split(os.pathsep), ROOTS_ENV
    roots = []
    for text in configured:
        if not text:
            continue
        if not os.path.isabs(text):
            raise ActionFailed(
                f"evidence root {text!r} in {origin} is not an absolute path; no file was read", retryable=False
            )
        roots.append((Path(os.path.normpath(text)), Path(os.path.realpath(text))))
    forbidden = [*NEVER_READ, *_state_dirs(context), context.evidence_dir]
    resolved = tuple(dict.fromkeys(Path(os.path.realpath(path)) for path in forbidden))
    ids = set()
    for path in resolved:
        try:
            info = os.stat(path)
        except OSError:
            continue
        ids.add((info.st_dev, info.st_ino))
    return FilePolicy(tuple(roots), resolved, frozenset(ids), origin)


def _state_dirs(context: ActionContext) -> list[Path]:
    """The state directory as the runtime named it, else the nearest folder above the
    evidence folder that holds a state database; and $OPSDSL_HOME, when set."""
    found = []
    if context.state_dir is not None:
        found.append(context.state_dir)
    else:
        for folder in Path(os.path.abspath(context.evidence_dir)).parents:
            if (folder / STATE_MARKER).exists():
                found.append(folder)
                break
    if os.environ.get("OPSDSL_HOME"):
        found.append(Path(os.environ["OPSDSL_HOME"]).absolute())
    return found


def is_key_file(name: str) -> bool:
    """Private keys by their usual names: `*.key` (our dev key, TLS keys), `id_*` (SSH)."""
    lowered = name.lower()
    return lowered.endswith(".key") or lowered.startswith("id_")


def read_evidence_file(source: str, policy: FilePolicy) -> tuple[bytes, bool]:
    """The first SOURCE_LIMIT bytes of `source` (and whether there was more), or
    ActionFailed (not retryable) saying why the file may not be read. OSError for a file
    that is simply not there or not readable."""
    path = _checked_path(source, policy)
    root, rest = _root_of(path, source, policy)
    _refuse_forbidden(root.joinpath(*rest), source, policy)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    directory = os.open(root, flags & ~os.O_NOFOLLOW | os.O_DIRECTORY)  # the operator's root may be a link
    try:
        _refuse_forbidden_id(directory, source, policy)
        for part in rest[:-1]:
            try:
                inner = os.open(part, flags | os.O_DIRECTORY, dir_fd=directory)
            except OSError as exc:
                _explain_link(exc, part, directory, source)
                raise
            os.close(directory)
            directory = inner
            _refuse_forbidden_id(directory, source, policy)
        try:
            handle = os.open(rest[-1], flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=directory)
        except OSError as exc:
            _explain_link(exc, rest[-1], directory, source)
            raise
    finally:
        os.close(directory)
    try:
        info = os.fstat(handle)
        if stat.S_ISDIR(info.st_mode):
            raise ActionFailed(f"{source!r} is a directory; list the files in it", retryable=False)
        if not stat.S_ISREG(info.st_mode):
            raise ActionFailed(
                f"{source!r} is {not_regular(info.st_mode)}, not a regular file; only regular files are collected",
                retryable=False,
            )
        if info.st_nlink > 1:
            raise ActionFailed(
                f"{source!r} has {info.st_nlink} hard links; a linked file may be one from outside the "
                "evidence roots, so it is not read",
                retryable=False,
            )
        return _read_capped(handle)
    finally:
        os.close(handle)


def _checked_path(source: str, policy: FilePolicy) -> PurePosixPath:
    """`source` as an absolute path without `..`, refused early when its own spelling
    names a forbidden place or a key file."""
    if "\0" in source or not source.startswith("/"):
        raise ActionFailed(f"evidence file {source!r} must be an absolute path", retryable=False)
    path = PurePosixPath(source)
    if ".." in path.parts:
        raise ActionFailed(f"evidence file {source!r} contains `..`; give the path without it", retryable=False)
    if len(path.parts) < 2:
        raise ActionFailed(f"{source!r} is a directory; list the files in it", retryable=False)
    if is_key_file(path.name):
        raise ActionFailed(
            f"evidence file {source!r} looks like a private key; key files are never collected", retryable=False
        )
    _refuse_forbidden(Path(path), source, policy)
    return path


def _root_of(path: PurePosixPath, source: str, policy: FilePolicy) -> tuple[Path, tuple[str, ...]]:
    """The deepest root `path` is under (as configured or as resolved): its resolved form,
    and the components below it."""
    if not policy.roots:
        raise ActionFailed(
            f"evidence file {source!r} refused: no evidence roots are configured; the operator lists the "
            f"folders files may be collected from in {ROOTS_ENV} (absolute paths, separated by {os.pathsep!r})",
            retryable=False,
        )
    best: tuple[Path, tuple[str, ...]] | None = None
    for configured, resolved in policy.roots:
        for base in (configured, resolved):
            if path.is_relative_to(base) and path != PurePosixPath(base):
                rest = path.relative_to(base).parts
                if best is None or len(rest) < len(best[1]):
                    best = (resolved, rest)
    if best is None:
        shown = ", ".join(str(configured) for configured, _ in policy.roots)
        raise ActionFailed(
            f"evidence file {source!r} is outside the evidence roots ({shown}, from {policy.origin})",
            retryable=False,
        )
    return best


def _refuse_forbidden(path: Path, source: str, policy: FilePolicy) -> None:
    for place in policy.forbidden:
        if path.is_relative_to(place):
            raise ActionFailed(
                f"evidence file {source!r} is under {place}, which is never collected "
                "(the state directory, the evidence folder, /proc, /sys and /dev)",
                retryable=False,
            )


def _refuse_forbidden_id(directory: int, source: str, policy: FilePolicy) -> None:
    info = os.fstat(directory)
    if (info.st_dev, info.st_ino) in policy.forbidden_ids:
        raise ActionFailed(
            f"evidence file {source!r} leads into a folder that is never collected (mounted or linked there)",
            retryable=False,
        )


def _explain_link(exc: OSError, part: str, directory: int, source: str) -> None:
    """Turn "too many links" / "not a directory" from O_NOFOLLOW into a refusal that says so."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
        return
    try:
        mode = os.stat(part, dir_fd=directory, follow_symlinks=False).st_mode
    except OSError:
        return
    if stat.S_ISLNK(mode):
        raise ActionFailed(
            f"evidence file {source!r}: {part!r} is a symlink; symlinks are not followed", retryable=False
        ) from None
    if exc.errno == errno.ENOTDIR:
        raise ActionFailed(f"evidence file {source!r}: {part!r} is not a directory", retryable=False) from None


def _read_capped(handle: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while size <= SOURCE_LIMIT:
        chunk = os.read(handle, min(1024 * 1024, SOURCE_LIMIT + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    data = b"".join(chunks)
    return data[:SOURCE_LIMIT], len(data) > SOURCE_LIMIT


# ---- writing: private files in private folders ----------------------------------------------


def _write_private(path: Path, data: bytes) -> None:
    """Write `path` 0600, making its folder (and the evidence folder) 0700 first."""
    make_private_dirs(path.parent, (path.parent.parent,))
    write_atomic_bytes(path, data, mode=0o600)


def _json_bytes(value: Any) -> bytes:
    return (indented_json(value) + "\n").encode("utf-8")
