"""Incident packs: a folder exported as a reproducible tar.gz, and checked without extracting it.

Checking reads the archive with a small tar reader of its own rather than `tarfile`: an
archive to verify is hostile until proven otherwise, and tarfile reads a PAX or GNU
long-name header whole and searches it with backtracking regular expressions
(CVE-2024-6232). The reader knows the few header kinds an export holds (ustar headers,
PAX `x` headers for long or non-ASCII names; GNU long names too) and refuses, before
reading further, an archive over `ArchiveLimits`: too many headers, an extended header
over a few KiB, a member too large, or more inflated bytes in all than the cap.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from opsdsl.audit.incident._common import (
    _MAX_SIGNED_FILE,
    IncidentError,
    IncidentFileError,
    _describe_mode,
    kept_in_memory,
)
from opsdsl.audit.incident.verify import (
    VerifyReport,
    _check_trust,
    _Member,
    _verify_tree,
)
from opsdsl.files import write_atomic_stream


def export_incident(folder: Path, out_tar_gz: Path) -> Path:
    """Pack `folder` into a reproducible tar.gz: sorted names, mtime 0, owner 0, modes 0600/0700 (evidence is private).

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
    write_atomic_stream(out, lambda handle: _write_tar(handle, members), mode=0o600)
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
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.mode, info.size = 0o600, path.stat().st_size
                with open(path, "rb") as source:
                    tar.addfile(info, source)


@dataclass(frozen=True)
class ArchiveLimits:
    """How much of an archive `verify_archive` reads before refusing it as unsafe."""

    members: int = 10_000  # tar headers, the PAX and GNU headers that carry long names included
    extended_header: int = 8 * 1024  # bytes of one PAX or GNU long-name header
    member_bytes: int = 128 * 1024 * 1024  # one file: evidence is capped at 64 MiB when collected
    total_bytes: int = 1024 * 1024 * 1024  # inflated, headers and padding included


class _Refused(Exception):
    """The archive is over a limit: refused as unsafe, nothing else is checked."""


class _Unreadable(Exception):
    """The bytes are not a tar stream this reader understands."""


def verify_archive(
    tar_gz: Path, trusted: Mapping[str, Ed25519PublicKey], *, limits: ArchiveLimits = ArchiveLimits()
) -> VerifyReport:
    """Check an exported incident pack without extracting it: member safety first, then as verify_folder.

    Refused outright (nothing else is checked): absolute paths, `..` or empty components,
    links, devices, duplicate names, anything outside one top-level folder, and an archive
    over `limits`. IncidentFileError (exit 2) when it is not a readable tar.gz at all.
    """
    _check_trust(trusted)
    source = str(tar_gz)
    tree: dict[str, _Member] = {}
    refusals: list[str] = []
    tops: set[str] = set()
    seen: dict[str, str] = {}  # member name → "file" | "dir"
    try:
        with open(tar_gz, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as inflated:
            reader = _TarReader(inflated, limits)
            for member in reader:
                name = member.name
                problem = _unsafe_member(member, seen)
                seen.setdefault(name, "dir" if member.kind == "dir" else "file")
                if problem:
                    refusals.append(f"member {name!r}: {problem}")
                    continue
                top, _, rest = name.partition("/")
                tops.add(top)
                if member.kind != "file":
                    continue
                if not rest:
                    refusals.append(f"member {name!r}: a file outside the incident folder")
                    continue
                tree[rest] = _read_member(reader, member, keep=kept_in_memory(rest))
    except FileNotFoundError:
        raise IncidentFileError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise IncidentFileError(f"{source} is a directory; `incident verify` takes an exported .tar.gz") from None
    except PermissionError as exc:
        raise IncidentFileError(f"{source}: cannot read ({exc.strerror})") from None
    except _Refused as exc:
        return VerifyReport(source, None, None, (), (), (f"unsafe archive, refused: {exc}",))
    except _Unreadable as exc:
        raise IncidentFileError(f"{source}: not a readable tar.gz archive ({exc})") from None
    except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise IncidentFileError(f"{source}: not a readable tar.gz archive ({exc or type(exc).__name__})") from None
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


def _unsafe_member(member: _TarMember, seen: Mapping[str, str]) -> str | None:
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
    if member.kind == "symlink":
        return f"a symlink (to {member.linkname!r})"
    if member.kind == "hard link":
        return f"a hard link (to {member.linkname!r})"
    if member.kind == "device":
        return "a device or FIFO"
    if member.kind not in ("file", "dir"):
        return "an unsupported member type"
    if name in seen:
        return "a duplicate name"
    return None


def _read_member(reader: _TarReader, member: _TarMember, *, keep: bool) -> _Member:
    digest = hashlib.sha256()
    kept = bytearray() if keep and member.size <= _MAX_SIGNED_FILE else None
    for block in reader.content():
        digest.update(block)
        if kept is not None:
            kept += block
    return _Member("file", "sha256:" + digest.hexdigest(), bytes(kept) if kept is not None else None)


# ---- a bounded tar reader ----------------------------------------------------------------

_BLOCK = 512
_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"1": "hard link", b"2": "symlink"}
_KINDS.update({b"3": "device", b"4": "device", b"6": "device"})
_EXTENDED = {b"x": "PAX header", b"g": "PAX global header", b"L": "GNU long name", b"K": "GNU long link name"}


@dataclass(frozen=True)
class _TarMember:
    name: str
    kind: str  # "file", "dir", "symlink", "hard link", "device", or "unsupported"
    linkname: str
    size: int


class _TarReader:
    """The members of an uncompressed tar stream, read block by block within `limits`.

    Iterating yields each member; `content()` yields the current member's bytes, and what
    is left unread of it is skipped (within the limits too) before the next header.
    """

    def __init__(self, stream: io.BufferedIOBase | gzip.GzipFile, limits: ArchiveLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.read_total = 0
        self.headers = 0
        self._unread = 0  # bytes of the current member not read yet, its padding included
        self._content = 0  # of those, the content

    def __iter__(self) -> Iterator[_TarMember]:
        extended: dict[bytes, bytes | dict[str, str]] = {}
        while True:
            self._skip(self._unread)
            self._unread = 0
            block = self._read(_BLOCK, at_header=True)
            if not block or block == bytes(_BLOCK):
                return  # the end-of-archive marker, or the stream ends at a header boundary
            self.headers += 1
            if self.headers > self.limits.members:
                raise _Refused(f"more than {self.limits.members} tar headers")
            _check_checksum(block)
            name, kind, size = _field(block[0:100]), block[156:157], _number(block[124:136])
            if kind in _EXTENDED:
                if size > self.limits.extended_header:
                    raise _Refused(f"a {_EXTENDED[kind]} of {size} bytes (the limit is {self.limits.extended_header})")
                data = self._read(size)
                self._skip(-size % _BLOCK)
                if kind in (b"x", b"g"):
                    records = _pax_records(data)
                    if kind == b"x":
                        extended[b"x"] = records
                else:
                    extended[kind] = data.split(b"\0", 1)[0]
                continue
            member = self._member(block, name, kind, size, extended)
            extended = {}
            if member.size > self.limits.member_bytes:
                raise _Refused(
                    f"member {member.name!r} of {member.size} bytes (the limit is {self.limits.member_bytes})"
                )
            has_content = member.kind in ("file", "unsupported")
            self._unread = member.size + (-member.size % _BLOCK) if has_content else 0
            self._content = member.size if has_content else 0
            yield member

    def content(self) -> Iterator[bytes]:
        """The current member's bytes, in blocks of at most 1 MiB."""
        while self._content:
            chunk = self._read(min(self._content, 1 << 20))
            self._content -= len(chunk)
            self._unread -= len(chunk)
            yield chunk

    def _member(
        self, block: bytes, name: bytes, kind: bytes, size: int, extended: dict[bytes, bytes | dict[str, str]]
    ) -> _TarMember:
        pax = extended.get(b"x") or {}
        assert isinstance(pax, dict)
        if block[257:265] == b"ustar\x0000" and block[345] != 0:
            name = _field(block[345:500]) + b"/" + name
        linkname = _field(block[157:257])
        text = pax.get("path") or _text(extended.get(b"L", name))
        link = pax.get("linkpath") or _text(extended.get(b"K", linkname))
        if "size" in pax:
            size = int(pax["size"])
        member_kind = _KINDS.get(kind, "unsupported")
        if kind in (b"0", b"\0") and text.endswith("/"):
            member_kind = "dir"  # the old V7 way to write a folder
        if any(key.startswith("GNU.sparse") for key in pax):
            member_kind = "unsupported"
        if member_kind == "dir":
            text = text.rstrip("/")
        return _TarMember(text, member_kind, link, size)

    def _read(self, size: int, at_header: bool = False) -> bytes:
        if self.read_total + size > self.limits.total_bytes:
            raise _Refused(f"more than {self.limits.total_bytes} bytes uncompressed")
        data = bytearray()
        while len(data) < size:
            chunk = self.stream.read(min(size - len(data), 1 << 20))
            if not chunk:
                break
            data += chunk
        self.read_total += len(data)
        if len(data) < size and not (at_header and not data):
            raise _Unreadable("the tar stream is truncated")
        return bytes(data)

    def _skip(self, size: int) -> None:
        while size > 0:
            size -= len(self._read(min(size, 1 << 20)))


def _check_checksum(block: bytes) -> None:
    stored = _number(block[148:156])
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = unsigned - 256 * sum(1 for byte in block[:148] + block[156:] if byte > 127)
    if stored not in (unsigned, signed):
        raise _Unreadable("bad header checksum")


def _field(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _text(raw: bytes | dict[str, str]) -> str:
    assert isinstance(raw, bytes)
    return raw.decode("utf-8", "surrogateescape")


def _number(raw: bytes) -> int:
    """A numeric header field: octal digits, or GNU's base-256 for large values."""
    if raw and raw[0] == 0x80:
        return int.from_bytes(raw[1:], "big")
    if raw and raw[0] & 0x80:
        raise _Unreadable("a negative number in a header")
    digits = raw.split(b"\0", 1)[0].strip(b" ")
    if digits and not re.fullmatch(rb"[0-7]{1,12}", digits):
        raise _Unreadable("a header number that is not octal")
    return int(digits, 8) if digits else 0


def _pax_records(data: bytes) -> dict[str, str]:
    """The `LENGTH KEY=VALUE\\n` records of a PAX header (already bounded in size)."""
    records: dict[str, str] = {}
    position = 0
    while position < len(data) and data[position] != 0:
        space = data.find(b" ", position, position + 12)
        length = data[position:space]
        if space < 0 or not length.isdigit():
            raise _Unreadable("a malformed PAX record")
        end = position + int(length)
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise _Unreadable("a malformed PAX record")
        key, _, value = record[:-1].partition(b"=")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unreadable("a PAX record that is not UTF-8") from None
        position = end
    if "size" in records and not re.fullmatch(r"[0-9]{1,20}", records["size"]):
        raise _Unreadable("a malformed PAX record (size)")
    return records
