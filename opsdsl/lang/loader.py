"""Reading pack files: find them, read them as text (refusing binary, oversized and
unreadable files), and hand the text to the reader for its form: YAML
(`opsdsl.lang.yaml_reader`) or the textual .ops form (`opsdsl.lang.ops`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.files import not_regular
from opsdsl.lang.source import Document
from opsdsl.lang.untrusted import read_limited
from opsdsl.lang.yaml_reader import load_text

MAX_FILE_BYTES = 8 * 1024 * 1024
PACK_SUFFIXES = (".yaml", ".yml", ".ops")
TEST_SUFFIXES = (".test.yaml", ".test.yml", ".test.ops")
OPS_SUFFIX = ".ops"  # the textual form, read by opsdsl.lang.ops


def read_source(path: Path) -> tuple[str | None, list[Diagnostic]]:
    """Read a pack file as UTF-8 text, refusing binary, oversized and unreadable files."""
    shown = display_path(path)
    here = Span(shown, 1, 1)
    try:
        info = path.stat()
    except (OSError, ValueError) as exc:
        return None, [Diagnostic("OPS001", Severity.ERROR, f"cannot read file: {_reason(exc)}", here)]
    kind = not_regular(info.st_mode)
    if kind is not None:  # never opened: a FIFO or a device would block or never end
        return None, [
            Diagnostic("OPS001", Severity.ERROR, f"not a regular file ({kind})", here, "packs are regular files")
        ]
    if info.st_size > MAX_FILE_BYTES:
        return None, [_too_big(info.st_size, here)]
    raw, problem = read_limited(path, MAX_FILE_BYTES)
    if raw is None:
        if problem and problem.startswith("larger than"):  # it grew after the stat
            return None, [_too_big(MAX_FILE_BYTES + 1, here)]
        return None, [Diagnostic("OPS001", Severity.ERROR, f"cannot read file: {problem}", here)]
    nul = raw.find(b"\x00")
    if nul >= 0:
        return None, [
            Diagnostic(
                "OPS001",
                Severity.ERROR,
                f"not a text file (a NUL byte at byte {nul})",
                Span(shown, *byte_position(raw, nul)),
                "remove the NUL byte; packs are UTF-8 text",
            )
        ]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, [
            Diagnostic(
                "OPS001",
                Severity.ERROR,
                f"not valid UTF-8 (byte {exc.start})",
                Span(shown, *byte_position(raw, exc.start)),
                "save the file as UTF-8",
            )
        ]
    return text, []


def byte_position(raw: bytes, offset: int) -> tuple[int, int]:
    """The 1-based line and column (in characters, as an editor counts them) of byte `offset`."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    before = raw[line_start:offset]
    if line_start == 0 and before.startswith(b"\xef\xbb\xbf"):  # a BOM is not a column
        before = before[3:]
    return raw.count(b"\n", 0, offset) + 1, len(before.decode("utf-8", "replace")) + 1


def _too_big(size: int, here: Span) -> Diagnostic:
    return Diagnostic(
        "OPS001",
        Severity.ERROR,
        f"file is {size / 1048576:.1f} MiB; packs are limited to {MAX_FILE_BYTES // 1048576} MiB",
        here,
        "split it into several packs",
    )


def _reason(exc: OSError | ValueError) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def load_file(path: Path) -> tuple[Document | None, list[Diagnostic]]:
    text, diagnostics = read_source(path)
    if text is None:
        return None, diagnostics
    return load_source(text, path)


def load_source(text: str, path: Path) -> tuple[Document | None, list[Diagnostic]]:
    """Parse `text` as the file at `path` (its name picks the reader): an editor's unsaved
    buffer goes through the same readers as the file on disk."""
    if path.name.endswith(OPS_SUFFIX):
        from opsdsl.lang.ops import load_text as load_ops_text  # imported only when an .ops file is read

        return load_ops_text(text, display_path(path))
    return load_text(text, display_path(path))


def display_path(path: Path) -> str:
    """Paths are shown relative to the working directory when below it, with `/`."""
    try:
        return Path(os.path.relpath(path)).as_posix() if path.is_absolute() else path.as_posix()
    except ValueError:
        return path.as_posix()


def is_pack_file(path: Path) -> bool:
    name = path.name
    return name.endswith(PACK_SUFFIXES) and not name.endswith(TEST_SUFFIXES)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as a regex over `/`-separated paths: `*` stays within a folder, `**` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def is_excluded(path: Path, patterns: Iterable[str], folder: Path | None = None) -> bool:
    """Whether `path` matches an exclude glob, taken relative to the working directory or
    to the folder being searched; a glob without `/` matches the file name anywhere."""
    shown = [display_path(path)]
    if folder is not None:
        shown.append(path.relative_to(folder).as_posix())
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        if "/" not in pattern:
            if _glob_regex(pattern).match(path.name):
                return True
            continue
        whole, below = _glob_regex(pattern), _glob_regex(pattern + "/**")
        if any(whole.match(s) or below.match(s) for s in shown):
            return True
    return False


def discover(paths: Iterable[Path], exclude: Iterable[str] = ()) -> list[Path]:
    """Pack files named by `paths`: files as given, folders searched recursively.

    In folders, `*.yaml`/`*.yml`/`*.ops` files are packs except `*.test.yaml` and
    `*.test.ops` (pack tests), hidden files and folders, paths matching an `exclude` glob,
    and what is not a regular file (a FIFO, a socket, a device: reading one would block).
    A file named directly is kept whatever it is; `read_source` says why it cannot be read.
    """
    patterns = tuple(exclude)
    found: set[Path] = set()
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    candidate = Path(root, name)
                    if name.startswith(".") or not is_pack_file(candidate):
                        continue
                    if patterns and is_excluded(candidate, patterns, path):
                        continue
                    if _special(candidate):
                        continue
                    found.add(candidate)
        else:
            found.add(path)
    return sorted(found, key=lambda p: p.as_posix())


def _special(path: Path) -> bool:
    """Whether `path` exists and is not a regular file (a broken link or a loop is kept:
    `read_source` reports it)."""
    try:
        return not_regular(path.stat().st_mode) is not None
    except (OSError, ValueError):
        return False
