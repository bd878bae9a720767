"""Writing files so that a reader sees the old version or the new one, never half of either;
folders only their owner can enter."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never half."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it."""
    write_atomic_stream(path, lambda handle: handle.write(data), mode)


def write_atomic_stream(path: Path, write: Callable[[BinaryIO], object], mode: int = 0o644) -> None:
    """`write_atomic_bytes` for content written piece by piece (an archive larger than memory
    should hold): `write(handle)` fills a temporary file, which then replaces `path`."""
    import secrets  # here, not at import: it costs `opsdsl lint` ~10 ms of start-up

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL | O_NOFOLLOW: never write through a file or symlink someone planted there.
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def write_atomic_files(files: Sequence[tuple[Path, bytes]], mode: int = 0o644) -> None:
    """`write_atomic_bytes` for several files at once, with each flush done once.

    Each file goes to a temporary beside it, written and flushed to disk (fdatasync: its
    bytes and size, not its timestamps) through the descriptor that wrote it; only when
    every one is on disk are they renamed over their paths, in the order given, and then
    each folder holding them is flushed once, so the renames are durable too. A crash
    leaves each path with its old content or its new one, never part of either. The
    parent folders must exist.
    """
    import secrets

    pending: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            # O_EXCL | O_NOFOLLOW: never write through a file or symlink someone planted there.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            pending.append((temp, path))
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                _datasync(fd)
            finally:
                os.close(fd)
        for temp, path in pending:
            os.replace(temp, path)
    finally:
        for temp, _ in pending:
            if os.path.lexists(temp):
                os.unlink(temp)
    for folder in dict.fromkeys(path.parent for _, path in pending):
        fsync_path(folder, directory=True)


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """Flush a file (never through a symlink) or a folder (its entries: renames into it) to disk."""
    flags = getattr(os, "O_DIRECTORY", 0) if directory else getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


_KINDS = (
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def not_regular(mode: int) -> str | None:
    """What a file that is not a regular one is ("a named pipe (FIFO)"), from its `st_mode`;
    None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def make_private_dirs(folder: Path, tighten: tuple[Path, ...] = ()) -> None:
    """Create `folder` and its missing parents 0700, then tighten `folder` and each of
    `tighten` that already existed with a looser mode (symlinks are left alone)."""
    missing = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for made in reversed(missing):
        made.mkdir(mode=0o700, exist_ok=True)
    for known in (folder, *tighten):
        if not known.is_symlink() and stat.S_IMODE(known.stat().st_mode) != 0o700:
            os.chmod(known, 0o700)
