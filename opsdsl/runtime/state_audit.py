"""What auditors run against a state directory: ledger verification, incident lookup,
trusted keys, and the section-12 report. Glue between the state directory's layout and
`opsdsl.audit.ledger`, `opsdsl.audit.incident` and `opsdsl.audit.metrics`."""

from __future__ import annotations

import json
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any

from opsdsl.errors import UsageError
from opsdsl.runtime.store import DB_NAME, has_state, read_only, state_dir

SELF_TRUST_WARNING = (
    "trusting the key found in the directory being checked ({source}); whoever can write it could have"
    " re-signed a rewritten ledger with a planted key: pass --key/--trust from outside for an audit"
)


def trusted_keys(
    state: Path | None, keys: list[Path], trust: Path | None = None, environment: str | None = None
) -> dict:
    """Public keys by keyid: the given ones, a trust file's, else the state directory's own."""
    return _trusted(state, keys, trust, environment)[0]


def _trusted(
    state: Path | None, keys: list[Path], trust: Path | None, environment: str | None
) -> tuple[dict[str, Any], str | None]:
    """(keys by keyid, None) from --key/--trust; else (the state directory's own key, where it was found)."""
    from opsdsl.build.signing import keyid, load_public_key

    trusted: dict[str, Any] = {}
    for path in keys:
        public = load_public_key(path)
        trusted[keyid(public)] = public
    if trust is not None:
        from opsdsl.build.trust import load_trust

        found, _ = load_trust(trust).environment(environment)
        trusted.update(found)
    if trusted:
        return trusted, None
    from opsdsl.runtime.state_config import state_public_key

    root = state_dir(state)
    own = state_public_key(root)
    if own is None:
        raise UsageError(f"no key to verify with: pass --key PUB or --trust FILE (there is no key in {root / 'keys'})")
    public, source = own
    return {keyid(public): public}, source


def incident_records(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/record.json")) if root.is_dir() else []


def verify_state(
    state: Path | None,
    checkpoint_files: list[Path],
    keys: list[Path],
    include_incidents: bool = True,
    trust: Path | None = None,
    environment: str | None = None,
):
    """Verify the ledger of a state directory against its checkpoints, the given files' and
    (by default) those kept in its incident records; a finished run whose incident record is
    gone is a finding too. Without `keys` or `trust`, the report warns that it trusted the
    state directory's own key."""
    from dataclasses import replace

    from opsdsl.audit.ledger import read_checkpoints

    root = state_dir(state)
    external = []
    for path in checkpoint_files:
        external += read_checkpoints(path)
    if include_incidents:
        for record in incident_records(root / "incidents"):
            external += read_checkpoints(record)  # a record that cannot be read is a finding, not noise
    has_checkpoints = bool(external) or _stored_checkpoints(root)
    trusted, source = {}, None
    if keys or trust or has_checkpoints or _finished_runs(root):
        trusted, source = _trusted(state, keys, trust, environment)
    report = verify_state_ledger(root, trusted, external)
    records = [*checkpoint_files, *(incident_records(root / "incidents") if include_incidents else [])]
    disagree = record_anchor_problems(root, records)
    if disagree:
        report = replace(
            report, ok=False, problem=report.problem or disagree[0], problems=(*report.problems, *disagree)
        )
    if include_incidents:
        missing = [
            f"run {run} finished, but its incident record {folder}/record.json is gone"
            for run, folder in _finished_runs(root)
            if not (Path(folder) / "record.json").is_file()
        ]
        if missing:
            report = replace(
                report,
                ok=False,
                problem=report.problem or missing[0],
                problems=(*report.problems, *missing),
            )
    if source is not None:
        report = replace(report, warnings=(*report.warnings, SELF_TRUST_WARNING.format(source=source)))
    return report


def record_anchor_problems(root: Path, paths: list[Path]) -> list[str]:
    """Each incident record's `ledger` anchor checked against the ledger: its run's entries
    from first_seq to last_seq, their count and `entries_digest` (over the stored hashes,
    which the chain walk has recomputed, or over the entries' content for older records).
    Files that are checkpoints rather than records are skipped."""
    from opsdsl.audit.incident.record import HASHES, entries_digest, entry_hashes_digest

    anchors = [(path, anchor) for path in paths if (anchor := _record_anchor(path)) is not None]
    if not anchors or not has_state(root):
        return []
    problems = []
    with read_only(root) as conn:
        for path, (run, ledger) in anchors:
            first, last = ledger.get("first_seq"), ledger.get("last_seq")
            if not _well_formed_anchor(run, first, last, ledger.get("entries")):
                problems.append(
                    f"{path}: its ledger anchor is malformed (run {_short(run)}, first_seq {_short(first)}, "
                    f"last_seq {_short(last)}, entries {_short(ledger.get('entries'))}): the record changed"
                )
                continue
            rows = conn.execute(
                "SELECT seq, ts, run, kind, data, hash FROM ledger WHERE run = ? AND seq >= ? AND seq <= ? ORDER BY seq",
                (run, first, last),
            ).fetchall()
            digest_of = ledger.get("entries_digest_of")
            if digest_of == HASHES:
                try:
                    digest = entry_hashes_digest(bytes(row[5]) for row in rows) if rows else None
                except (TypeError, ValueError):  # a row not chained (yet), or not 32 bytes
                    digest = None
            elif digest_of is None:
                entries = [{"seq": r[0], "ts": r[1], "run": r[2], "kind": r[3], "data": json.loads(r[4])} for r in rows]
                digest = entries_digest(entries)
            else:
                problems.append(f"{path}: digests its entries as {digest_of!r}, which this opsdsl does not know")
                continue
            held = (rows[0][0], rows[-1][0], len(rows)) if rows else (None, None, 0)
            if held != (first, last, ledger.get("entries")) or digest != ledger.get("entries_digest"):
                problems.append(
                    f"{path}: the record anchors run {run}'s entries {first}–{last} ({ledger.get('entries')}, "
                    f"{ledger.get('entries_digest')}), the ledger holds {held[0]}–{held[1]} ({held[2]}, {digest}): "
                    "the ledger or the record changed"
                )
    return problems


_MAX_SEQ = (1 << 63) - 1  # what a ledger's seq column holds (SQLite INTEGER, PostgreSQL bigint)


def _well_formed_anchor(run: object, first: object, last: object, entries: object) -> bool:
    """Whether a record's anchor can be looked up at all: a hostile record.json must give a
    finding, not a database error that ends `ledger verify` with none of its findings."""

    def seq(value: object) -> bool:
        return type(value) is int and 1 <= value <= _MAX_SEQ

    return (
        isinstance(run, str)
        and 0 < len(run) <= 200
        and seq(first)
        and seq(last)
        and first <= last  # type: ignore[operator]
        and type(entries) is int
        and 0 < entries <= _MAX_SEQ
    )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _record_anchor(path: Path) -> tuple[str, dict] | None:
    """(run, the record's `ledger` field) of an incident record.json (signed or bare); None for other files."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # read_checkpoints has reported it
    record = document.get("record") if isinstance(document, dict) else None
    record = record if isinstance(record, dict) else document
    if not isinstance(record, dict) or not isinstance(record.get("ledger"), dict) or "run" not in record:
        return None
    return record["run"], record["ledger"]


def verify_state_ledger(root: Path, trusted: dict, external: list) -> Any:
    """`verify_ledger` on the state of `root`: its state.db read-only, or the PostgreSQL database."""
    from opsdsl.audit.ledger import LedgerError, verify_ledger, verify_path
    from opsdsl.runtime.database import database_url

    if database_url() is None:
        return verify_path(root / DB_NAME, trusted, external)
    try:
        with read_only(root) as conn:
            return verify_ledger(conn, trusted, external)
    except sqlite3.Error as error:
        raise LedgerError(f"cannot read the ledger: {error}") from None


def _finished_runs(root: Path) -> list[tuple[str, str]]:
    """(run id, incident folder) of the finished runs in the runs table, oldest first."""
    if not has_state(root):
        return []
    try:
        with read_only(root) as conn:
            rows = conn.execute(
                "SELECT id, incident_dir FROM runs WHERE status IN ('succeeded', 'failed') ORDER BY created_at, id"
            )
            return [(row[0], row[1]) for row in rows]
    except sqlite3.DatabaseError:
        return []


def _stored_checkpoints(root: Path) -> bool:
    if not has_state(root):
        return False
    try:
        with read_only(root) as conn:
            return conn.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone() is not None
    except sqlite3.DatabaseError:
        return False


def find_incident(state: Path | None, incidents_dir: Path | None, incident_id: str) -> Path:
    root = incidents_dir or (state_dir(state) / "incidents")
    if "/" in incident_id or incident_id.startswith("."):
        raise UsageError(f"{incident_id!r} is not an incident id")
    matches = sorted(root.glob(f"*/{incident_id}"))
    if not matches:
        raise UsageError(f"no incident {incident_id} under {root}")
    return matches[-1]


def ledger_entries(state: Path | None) -> list[dict[str, Any]]:
    root = state_dir(state)
    if not has_state(root):
        return []
    with read_only(root) as conn:
        rows = conn.execute("SELECT seq, ts, run, kind, data FROM ledger ORDER BY seq")
        return [{"seq": r[0], "ts": r[1], "run": r[2], "kind": r[3], "data": json.loads(r[4])} for r in rows]


def compute_state_report(state: Path | None, since: str | None, until: str | None = None):
    from opsdsl.audit.metrics import compute_report

    bounds = []
    for flag, text in (("--since", since), ("--until", until)):
        try:
            bounds.append(date.fromisoformat(text) if text else None)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: write a date as YYYY-MM-DD") from None
    return compute_report(ledger_entries(state), since=bounds[0], until=bounds[1])
