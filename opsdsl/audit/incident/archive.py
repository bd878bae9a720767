"""Incident packs: a folder exported as a reproducible tar.gz, and checked without extracting it."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import secrets
import stat
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from opsdsl.audit.incident._common import (
    _MAX_SIGNED_FILE,
    MANIFEST_FILE,
    RECORD_FILE,
    IncidentError,
    IncidentFileError,
    _describe_mode,
)
from opsdsl.audit.incident.verify import (
    VerifyReport,
    _check_trust,
    _Member,
    _verify_tree,
)


def export_incident(folder: Path, out_tar_gz: Path) -> Path:
    """Pack `folder` into a reproducible tar.gz: sorted names, mtime 0, owner 0, modes 0644/0755.

    Everything in the folder goes in, so an exported stray file still fails verification;
    symlinks and special files are refused outright.
    """
    folder, out = Path(folder), Path(out_tar_gz)
    if folder.is_symlink() or not folder.is_dir():
        raise IncidentFileError(f"{folder}: no such incident folder")
    if out.resolve().is_relative_to(folder.resolve()):
        raise IncidentError(f"{out} is inside {folder}; write the archive elsewhere")
    members: list[tuple[str, Path | None]] = [(folder.name, None)]
    for current, dirs, names in os.walk(folder, followlinks=False):
        base = Path(current)
        for name in sorted(dirs + names):
            full = base / name
            mode = full.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise IncidentError(f"{full} is {_describe_mode(mode)}; an incident folder holds regular files only")
            arcname = f"{folder.name}/{full.relative_to(folder).as_posix()}"
            members.append((arcname, None if stat.S_ISDIR(mode) else full))
        dirs.sort()
    members.sort(key=lambda member: member[0])
    _write_atomic_stream(out, lambda handle: _write_tar(handle, members))
    return out


def _write_tar(handle: io.BufferedWriter, members: Sequence[tuple[str, Path | None]]) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0, compresslevel=9) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for arcname, path in members:
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, path.stat().st_size
                with open(path, "rb") as source:
                    tar.addfile(info, source)


def _write_atomic_stream(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Like files.write_atomic_bytes, but streamed: archives may be larger than memory should hold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def verify_archive(tar_gz: Path, trusted: Mapping[str, Ed25519PublicKey]) -> VerifyReport:
    """Check an exported incident pack without extracting it: member safety first, then as verify_folder.

    Refused outright (nothing else is checked): absolute paths, `..` or empty components,
    links, devices, duplicate names, and anything outside one top-level folder.
    """
    _check_trust(trusted)
    source = str(tar_gz)
    tree: dict[str, _Member] = {}
    refusals: list[str] = []
    tops: set[str] = set()
    seen: dict[str, str] = {}  # member name → "file" | "dir"
    try:
        with tarfile.open(tar_gz, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                problem = _unsafe_member(member, seen)
                seen.setdefault(name, "dir" if member.isdir() else "file")
                if problem:
                    refusals.append(f"member {name!r}: {problem}")
                    continue
                top, _, rest = name.partition("/")
                tops.add(top)
                if not member.isreg():
                    continue
                if not rest:
                    refusals.append(f"member {name!r}: a file outside the incident folder")
                    continue
                tree[rest] = _read_member(tar, member, keep=rest in (RECORD_FILE, MANIFEST_FILE))
    except FileNotFoundError:
        raise IncidentFileError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise IncidentFileError(f"{source} is a directory; `incident verify` takes an exported .tar.gz") from None
    except PermissionError as exc:
        raise IncidentFileError(f"{source}: cannot read ({exc.strerror})") from None
    except (tarfile.TarError, EOFError, OSError) as exc:  # gzip.BadGzipFile and zlib.error are OSError
        raise IncidentFileError(f"{source}: not a readable tar.gz archive ({exc})") from None
    if len(tops) > 1:
        refusals.append(f"more than one top-level folder ({', '.join(sorted(tops))}); an incident pack holds one")
    parents = {name.rsplit("/", 1)[0] for name in seen if "/" in name}
    refusals += [
        f"member {name!r}: both a file and a folder"
        for name, kind in seen.items()
        if kind == "file" and name in parents
    ]
    if refusals:
        return VerifyReport(
            source, None, None, (), (), tuple(f"unsafe archive, refused: {refusal}" for refusal in refusals)
        )
    if not tops:
        return VerifyReport(source, None, None, (), (), ("the archive is empty",))
    return _verify_tree(tree, tops.pop(), trusted, source)


def _unsafe_member(member: tarfile.TarInfo, seen: Mapping[str, str]) -> str | None:
    """Why this member must not be unpacked, or None."""
    name = member.name
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or name.startswith("\\"):
        return "absolute path"
    if "\\" in name or "\0" in name:
        return "a backslash or NUL in the name"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component"
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' component"
    if member.issym():
        return f"a symlink (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo():
        return "a device or FIFO"
    if not (member.isreg() or member.isdir()):
        return "an unsupported member type"
    if name in seen:
        return "a duplicate name"
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, *, keep: bool) -> _Member:
    handle = tar.extractfile(member)
    assert handle is not None  # regular files always have content
    digest = hashlib.sha256()
    kept = bytearray() if keep and member.size <= _MAX_SIGNED_FILE else None
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
        if kept is not None:
            kept += block
    return _Member("file", "sha256:" + digest.hexdigest(), bytes(kept) if kept is not None else None)
