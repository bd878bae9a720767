"""What every stage of an incident folder shares: file names, payload types, errors, and small helpers."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsdsl.canonical import canonical_json
from opsdsl.errors import OpsdslError
from opsdsl.files import not_regular

RECORD_PAYLOAD_TYPE = "application/vnd.opsdsl.incident+json"
MANIFEST_PAYLOAD_TYPE = "application/vnd.opsdsl.manifest+json"
RECORD_FILE = "record.json"
RCA_FILE = "rca.md"
MANIFEST_FILE = "manifest.json"
PDF_FILE = "rca.pdf"
FOLLOW_UPS_FILE = "follow-ups.json"
EXCERPT_FILE = "ledger/excerpt.json"
EVIDENCE_DIR = "evidence"
_MAX_SAFE_INT = 2**53 - 1
_MAX_SIGNED_FILE = 64 * 1024 * 1024  # record.json / manifest.json kept in memory while verifying


class IncidentError(OpsdslError):
    """An incident folder or archive was refused: tampered with, incomplete, or unsafe to unpack."""

    exit_code = 1


class IncidentFileError(IncidentError):
    """The folder or archive to check cannot be read at all: missing, unreadable, not a tar.gz."""

    exit_code = 2


def kept_in_memory(relpath: str) -> bool:
    """Files verification reads (not only hashes): the signed files and the evidence pack's structured files."""
    return relpath in (RECORD_FILE, MANIFEST_FILE, FOLLOW_UPS_FILE, EXCERPT_FILE) or relpath.startswith("plan/")


@functools.lru_cache(maxsize=1024)
def iso_time(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and `Z`: `2025-03-01T10:04:12.250Z`.

    Cached: a run's entries share few timestamps (a group commit stamps its batch with one),
    and a record writes each several times.
    """
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def json_safe(value: Any) -> Any:
    """`value` with integers beyond ±2^53 as decimal strings, which RFC 8785 (so a signature) cannot carry.

    Plans refuse such numbers at load time; events cannot be refused, and a nanosecond
    timestamp in an alert is enough to need this. Always a new tree: every dict and list is
    copied (tuples become lists), so the result shares no container with `value` (a record
    edited later never edits the ledger entries it was built from).
    """
    kind = type(value)
    if kind is dict:
        return {key: item if type(item) in _LEAVES else json_safe(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [item if type(item) in _LEAVES else json_safe(item) for item in value]
    if kind is int:
        return value if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else str(value)
    if isinstance(value, dict):  # subclasses: as plain dicts, like the types above
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


_LEAVES = frozenset({str, float, bool, type(None)})  # what json_safe returns as it is, without a call


def _canonical(value: Any) -> bytes:
    try:
        return canonical_json(value)
    except ValueError:  # rfc8785's IntegerDomainError
        return canonical_json(json_safe(value))


def _pick(data: Mapping, *fields: str) -> dict:
    return {field: data.get(field) for field in fields}


def _brief(text: object, limit: int = 240) -> str:
    """One line of at most `limit` characters: what timelines and tables can hold."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _walk_files(folder: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every non-directory below `folder`; links are not followed."""
    for current, dirs, names in os.walk(folder, followlinks=False):
        base = Path(current)
        # A symlink to a directory shows up in `dirs`; report it as the link it is.
        names = names + [name for name in dirs if (base / name).is_symlink()]
        dirs[:] = sorted(name for name in dirs if not (base / name).is_symlink())
        for name in sorted(names):
            relative = (base / name).relative_to(folder).as_posix()
            yield (f"{prefix}/{relative}" if prefix else relative), base / name


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _describe_mode(mode: int) -> str:
    return not_regular(mode) or "a regular file"
