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
from opsdsl.runtime.store import DB_NAME, state_dir


def trusted_keys(state: Path | None, keys: list[Path], trust: Path | None = None, environment: str = "default") -> dict:
    """Public keys by keyid: the given ones, a trust file's, else the state directory's dev key."""
    from opsdsl.build.signing import keyid, load_public_key

    trusted: dict[str, Any] = {}
    for path in keys:
        public = load_public_key(path)
        trusted[keyid(public)] = public
    if trust is not None:
        from opsdsl.build.trust import load_trust

        found, _ = load_trust(trust).environment(environment)
        trusted.update(found)
    if not trusted:
        dev = state_dir(state) / "keys" / "dev.pub"
        if not dev.exists():
            raise UsageError(f"no key to verify with: pass --key PUB (there is no dev key at {dev})")
        public = load_public_key(dev)
        trusted[keyid(public)] = public
    return trusted


def incident_records(root: Path) -> list[Path]:
    return sorted(root.glob("*/*/record.json")) if root.is_dir() else []


def verify_state(state: Path | None, checkpoint_files: list[Path], keys: list[Path], include_incidents: bool = True):
    """Verify the ledger of a state directory against its checkpoints, the given files' and
    (by default) those kept in its incident records."""
    from opsdsl.audit.ledger import read_checkpoints, verify_path

    root = state_dir(state)
    external = []
    for path in checkpoint_files:
        external += read_checkpoints(path)
    if include_incidents:
        for record in incident_records(root / "incidents"):
            external += read_checkpoints(record)  # a record that cannot be read is a finding, not noise
    has_checkpoints = bool(external) or _stored_checkpoints(root / DB_NAME)
    trusted = trusted_keys(state, keys) if (keys or has_checkpoints) else {}
    return verify_path(root / DB_NAME, trusted, external)


def _stored_checkpoints(path: Path) -> bool:
    if not path.is_file():
        return False
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return conn.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchone() is not None
    except sqlite3.DatabaseError:
        return False
    finally:
        conn.close()


def find_incident(state: Path | None, incidents_dir: Path | None, incident_id: str) -> Path:
    root = incidents_dir or (state_dir(state) / "incidents")
    if "/" in incident_id or incident_id.startswith("."):
        raise UsageError(f"{incident_id!r} is not an incident id")
    matches = sorted(root.glob(f"*/{incident_id}"))
    if not matches:
        raise UsageError(f"no incident {incident_id} under {root}")
    return matches[-1]


def ledger_entries(state: Path | None) -> list[dict[str, Any]]:
    path = state_dir(state) / DB_NAME
    if not path.exists():
        return []
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT seq, ts, run, kind, data FROM ledger ORDER BY seq")
        return [{"seq": r[0], "ts": r[1], "run": r[2], "kind": r[3], "data": json.loads(r[4])} for r in rows]
    finally:
        conn.close()


def compute_state_report(state: Path | None, since: str | None):
    from opsdsl.audit.metrics import compute_report

    start = None
    if since:
        try:
            start = date.fromisoformat(since)
        except ValueError:
            raise UsageError(f"--since {since!r}: write a date as YYYY-MM-DD") from None
    return compute_report(ledger_entries(state), since=start)
