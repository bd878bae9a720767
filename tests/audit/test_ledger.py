"""The audit ledger: appending, the hash formula, checkpoints, and verification against tampering.

Real SQLite files throughout. Tampering is done the way an attacker would: raw SQL on the
file, after dropping the append-only triggers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import pickle
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.audit import entries as kinds
from opsdsl.audit.ledger import (
    CHECKPOINT_PAYLOAD_TYPE,
    GENESIS,
    Checkpoint,
    Entry,
    Ledger,
    LedgerError,
    LedgerReport,
    create_tables,
    entry_hash,
    open_database,
    read_checkpoints,
    ts_text,
    verify_ledger,
    verify_path,
)
from opsdsl.build.signing import encode_base64, keyid, pae, sign_envelope
from opsdsl.canonical import canonical_json
from opsdsl.errors import OpsdslError

ROOT = Path(__file__).resolve().parents[2]


def seeded_key(byte: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


OPS, MALLORY = seeded_key(7), seeded_key(9)
TRUSTED = {keyid(OPS.public_key()): OPS.public_key()}
T0 = 1716212345.25


def fill(path: Path, count: int, *, checkpoint_at: tuple[int, ...] = ()) -> sqlite3.Connection:
    """A ledger of `count` step-like entries over two runs (and a few with no run), checkpointed as asked."""
    conn = open_database(path)
    ledger = Ledger(conn)
    for seq in range(1, count + 1):
        conn.execute("BEGIN IMMEDIATE")
        run = None if seq % 5 == 0 else f"run-{seq % 2}"
        ledger.append(kinds.STEP_INTENT, run, {"step": f"s{seq}", "attempt": 1, "with": {"n": seq}}, ts=T0 + seq)
        conn.execute("COMMIT")
        if seq in checkpoint_at:
            ledger.checkpoint(OPS)
    return conn


def raw(path: Path) -> sqlite3.Connection:
    """The file as an attacker sees it: plain SQL, autocommit, no append-only triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_update")
    conn.execute("DROP TRIGGER IF EXISTS ledger_no_delete")
    return conn


def row(conn: sqlite3.Connection, seq: int) -> tuple:
    return conn.execute("SELECT seq, ts, run, kind, data, prev, hash FROM ledger WHERE seq = ?", (seq,)).fetchone()


def rehash_from(conn: sqlite3.Connection, start: int) -> None:
    """Recompute every hash from `start` on, as a careful attacker would (the docs give the formula)."""
    prev = GENESIS if start == 1 else row(conn, start - 1)[6]
    for seq, ts, run, kind, data, _prev, _hash in conn.execute(
        "SELECT seq, ts, run, kind, data, prev, hash FROM ledger WHERE seq >= ? ORDER BY seq", (start,)
    ).fetchall():
        digest = entry_hash(prev, seq, ts, run, kind, data)
        conn.execute("UPDATE ledger SET prev = ?, hash = ? WHERE seq = ?", (prev, digest, seq))
        prev = digest


def renumber_up(conn: sqlite3.Connection, start: int) -> None:
    """Make room at `start`: every seq from there on moves up by one."""
    conn.execute("UPDATE ledger SET seq = -(seq + 1) WHERE seq >= ?", (start,))
    conn.execute("UPDATE ledger SET seq = -seq WHERE seq < 0")


def verify(path: Path, trusted=TRUSTED, external=()) -> LedgerReport:
    return verify_path(path, trusted, external)


# --- the database -----------------------------------------------------------------------


def test_open_database_sets_the_pragmas_and_tables(tmp_path):
    conn = open_database(tmp_path / "state.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000
    assert conn.isolation_level is None
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"ledger", "checkpoints", "ledger_run"} <= names
    create_tables(conn)  # idempotent
    conn.execute("BEGIN")
    create_tables(conn)  # inside the caller's transaction: does not commit it
    assert conn.in_transaction
    conn.execute("COMMIT")


def test_open_database_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(LedgerError) as info:
        open_database(path)
    assert info.value.exit_code == 2


def test_the_ledger_table_is_append_only_for_honest_code(tmp_path):
    conn = fill(tmp_path / "state.db", 2)
    for statement in ("UPDATE ledger SET kind = 'x' WHERE seq = 1", "DELETE FROM ledger WHERE seq = 2"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)


# --- appending --------------------------------------------------------------------------


def test_append_chains_entries_and_reads_them_back(tmp_path):
    conn = open_database(tmp_path / "state.db")
    ledger = Ledger(conn)
    assert ledger.head() == (0, GENESIS)
    conn.execute("BEGIN IMMEDIATE")
    first = ledger.append(kinds.RUN_CREATED, "r1", {"pack": "sqlx", "severity": "sev2"}, ts=T0)
    second = ledger.append(kinds.RUN_STARTED, "r2", {"reason": "start", "by": None}, ts=T0 + 1)
    third = ledger.append(kinds.RUN_FINISHED, "r1", {"status": "succeeded"})
    conn.execute("COMMIT")
    assert (first.seq, second.seq, third.seq) == (1, 2, 3)
    assert first.prev == GENESIS and second.prev == first.hash and third.prev == second.hash
    assert ledger.head() == (3, third.hash)
    assert list(ledger.entries()) == [first, second, third]
    assert list(ledger.entries(run="r1")) == [first, third]
    assert list(ledger.entries(after=1)) == [second, third]
    assert list(ledger.entries(run="r1", after=1)) == [third]
    stored = conn.execute("SELECT data FROM ledger WHERE seq = 1").fetchone()[0]
    assert stored == '{"pack":"sqlx","severity":"sev2"}'  # canonical JSON
    assert first.to_dict() == {
        "seq": 1,
        "ts": T0,
        "run": "r1",
        "kind": "run.created",
        "data": {"pack": "sqlx", "severity": "sev2"},
        "prev": "00" * 32,
        "hash": first.hash.hex(),
    }
    # r1 finished without a checkpoint: every finished run is checkpointed, so that is a finding.
    unchecked = verify_ledger(conn, TRUSTED)
    assert not unchecked.ok and "run r1 finished at seq 3, but no trusted checkpoint covers it" in unchecked.problem
    Ledger(conn).checkpoint(OPS)
    assert verify_ledger(conn, TRUSTED).ok


def test_append_outside_a_transaction_is_refused(tmp_path):
    ledger = Ledger(open_database(tmp_path / "state.db"))
    with pytest.raises(RuntimeError, match="BEGIN IMMEDIATE"):
        ledger.append(kinds.RUN_STARTED, "r1", {})


@pytest.mark.parametrize(
    ("kind", "run", "data", "error"),
    [
        ("", "r1", {}, ValueError),
        ("run\0started", "r1", {}, ValueError),
        ("run.started", "", {}, ValueError),
        ("run.started", "r\0", {}, ValueError),
        ("run.started", 7, {}, ValueError),
        ("run.started", "r1", ["not", "an", "object"], TypeError),
    ],
)
def test_append_refuses_what_the_hash_could_not_tell_apart(tmp_path, kind, run, data, error):
    conn = open_database(tmp_path / "state.db")
    conn.execute("BEGIN IMMEDIATE")
    with pytest.raises(error):
        Ledger(conn).append(kind, run, data)


def test_a_rolled_back_append_leaves_no_fork(tmp_path):
    conn = open_database(tmp_path / "state.db")
    ledger = Ledger(conn)
    conn.execute("BEGIN IMMEDIATE")
    ledger.append(kinds.RUN_CREATED, "r1", {"n": 1})
    conn.execute("COMMIT")
    conn.execute("BEGIN IMMEDIATE")
    ledger.append(kinds.RUN_STARTED, "r1", {"n": 2})
    conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    again = ledger.append(kinds.RUN_STARTED, "r1", {"n": 3})
    conn.execute("COMMIT")
    assert again.seq == 2
    assert verify_ledger(conn, TRUSTED).ok


def test_a_second_connection_sees_the_head_the_first_wrote(tmp_path):
    path = tmp_path / "state.db"
    one, two = open_database(path), open_database(path)
    a, b = Ledger(one), Ledger(two)
    for ledger, conn in ((a, one), (b, two), (a, one), (b, two)):
        conn.execute("BEGIN IMMEDIATE")
        ledger.append(kinds.RUN_STARTED, "r", {})
        conn.execute("COMMIT")
    assert a.head() == b.head() and a.head()[0] == 4
    assert verify(path).ok


# --- the hash formula -------------------------------------------------------------------


def test_entry_hash_is_the_documented_formula():
    # Recomputed from docs/ledger.md with hashlib alone, and frozen as hex.
    data = '{"pack":"sqlx"}'
    by_hand = hashlib.sha256(
        b"opsdsl.ledger.entry.v1\0"
        + bytes(32)
        + (1).to_bytes(8, "big")
        + b"1716212345.25\0run-1\0run.created\0"
        + data.encode()
    ).hexdigest()
    got = entry_hash(GENESIS, 1, 1716212345.25, "run-1", "run.created", data).hex()
    assert got == by_hand == "3c9e5ac62ab80c83c3fbb2a733e15eb9c7fd7400883fa23ce5dd0eaae2b20e20"
    got = entry_hash(bytes(range(32)), 2, 1716212346.0, None, "step.intent", '{"step":"r\u00e9start"}')
    assert got.hex() == "4654360281a4fa4029ed0a069e3f5b425347068edcaa0449c180ee0d6451cc33"


def test_ts_text_examples():
    assert ts_text(1716212345.25) == "1716212345.25"
    assert ts_text(1716212346.0) == "1716212346"
    assert ts_text(-0.0) == "0"
    assert ts_text(1e-7) == "1e-7"
    assert ts_text(2.0**60) == "1152921504606847000"
    for bad in (math.nan, math.inf, 1, "1.5", None):
        with pytest.raises(ValueError):
            ts_text(bad)


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False) | st.floats(1.5e9, 2e9) | st.integers(-(2**63), 2**63))
def test_ts_text_is_rfc8785(value):
    value = float(value)
    assert ts_text(value) == rfc8785.dumps(value).decode()


# --- checkpoints ------------------------------------------------------------------------


def test_checkpoint_signs_the_head_and_is_stored(tmp_path):
    conn = fill(tmp_path / "state.db", 3)
    ledger = Ledger(conn)
    assert ledger.latest_checkpoint() is None
    checkpoint = ledger.checkpoint(OPS)
    seq, head = ledger.head()
    assert (checkpoint.seq, checkpoint.head, checkpoint.keyid) == (seq, head, keyid(OPS.public_key()))
    payload = json.dumps({"head": head.hex(), "seq": 3}, separators=(",", ":")).encode()
    OPS.public_key().verify(checkpoint.sig, pae(CHECKPOINT_PAYLOAD_TYPE, payload))  # raises if wrong
    assert checkpoint.signed_bytes() == pae("application/vnd.opsdsl.checkpoint+json", payload)
    assert ledger.latest_checkpoint() == checkpoint
    assert ledger.checkpoint(OPS) == checkpoint  # same head, same key: nothing new
    assert not conn.in_transaction
    conn.execute("BEGIN IMMEDIATE")
    ledger.append(kinds.RUN_FINISHED, "r1", {"status": "succeeded"})
    later = ledger.checkpoint(OPS)  # inside the caller's transaction: not committed here
    assert conn.in_transaction
    conn.execute("COMMIT")
    assert later.seq == 4 and ledger.latest_checkpoint() == later
    assert verify_ledger(conn, TRUSTED).to_dict()["checkpoints"] == 2


def test_checkpoint_never_overwrites_the_evidence_of_a_rewrite(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 5, checkpoint_at=(5,))
    conn = raw(path)
    conn.execute("UPDATE ledger SET data = '{}' WHERE seq = 5")
    rehash_from(conn, 5)
    with pytest.raises(LedgerError, match="changed after it was signed"):
        Ledger(conn).checkpoint(OPS)
    assert not conn.in_transaction
    assert verify(path).first_bad == 5


def test_checkpoint_by_another_key_replaces_the_one_for_the_same_head(tmp_path):
    conn = fill(tmp_path / "state.db", 3, checkpoint_at=(3,))
    other = Ledger(conn).checkpoint(MALLORY)
    assert Ledger(conn).latest_checkpoint() == other
    assert conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] == 1


def test_checkpoint_of_an_empty_ledger_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        Ledger(open_database(tmp_path / "state.db")).checkpoint(OPS)


def test_checkpoint_dict_round_trip(tmp_path):
    checkpoint = Ledger(fill(tmp_path / "state.db", 2)).checkpoint(OPS)
    as_dict = checkpoint.to_dict()
    assert as_dict == {
        "seq": 2,
        "head": checkpoint.head.hex(),
        "ts": checkpoint.ts,
        "keyid": checkpoint.keyid,
        "sig": base64.b64encode(checkpoint.sig).decode(),
    }
    assert Checkpoint.from_dict(json.loads(json.dumps(as_dict))) == checkpoint


def _good_checkpoint_dict() -> dict:
    return {"seq": 5, "head": "ab" * 32, "ts": T0, "keyid": "cd" * 32, "sig": encode_base64(bytes(64))}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unexpected field 'extra'"),
        ({"seq": None}, "positive integer"),
        ({"seq": 0}, "positive integer"),
        ({"seq": True}, "positive integer"),
        ({"seq": "5"}, "positive integer"),
        ({"head": "AB" * 32}, "'head'"),
        ({"head": "ab" * 31}, "'head'"),
        ({"ts": "now"}, "'ts'"),
        ({"ts": math.inf}, "'ts'"),
        ({"keyid": "k"}, "'keyid'"),
        ({"sig": "***"}, "'sig'"),
        ({"sig": encode_base64(bytes(63))}, "64 bytes"),
        ({"sig": 5}, "'sig'"),
    ],
)
def test_checkpoint_from_dict_is_strict(change, message):
    value = _good_checkpoint_dict() | change
    with pytest.raises(LedgerError, match=message):
        Checkpoint.from_dict(value)


def test_checkpoint_from_dict_wants_every_field():
    value = _good_checkpoint_dict()
    del value["ts"]
    with pytest.raises(LedgerError, match="missing field 'ts'"):
        Checkpoint.from_dict(value)
    with pytest.raises(LedgerError, match="JSON object"):
        Checkpoint.from_dict([value])


def test_read_checkpoints_from_a_checkpoint_a_record_or_an_envelope(tmp_path):
    checkpoint = Ledger(fill(tmp_path / "state.db", 2)).checkpoint(OPS)
    bare = tmp_path / "checkpoint.json"
    bare.write_text(json.dumps(checkpoint.to_dict()))
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"incident_id": "INC-1", "checkpoint": checkpoint.to_dict()}))
    signed = tmp_path / "record.dsse.json"
    payload = canonical_json({"incident_id": "INC-1", "checkpoint": checkpoint.to_dict()})
    signed.write_text(json.dumps(sign_envelope(payload, [OPS], "application/vnd.opsdsl.incident+json")))
    for path in (bare, record, signed):
        assert read_checkpoints(path) == (checkpoint,)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{not json", "not JSON"),
        ('{"incident_id": "INC-1"}', "no ledger checkpoint"),
        ('{"checkpoint": {"seq": 1}}', "missing field"),
    ],
)
def test_read_checkpoints_refuses_unusable_files(tmp_path, content, message):
    path = tmp_path / "record.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(LedgerError, match=message) as info:
        read_checkpoints(path)
    assert info.value.exit_code == 2


# --- verification: intact ---------------------------------------------------------------


def test_an_intact_ledger_verifies(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 12, checkpoint_at=(5, 10))
    report = verify(path)
    assert (report.ok, report.entries, report.checkpoints, report.first_bad, report.problem) == (
        True,
        12,
        2,
        None,
        None,
    )
    assert report.last_checkpoint == 10
    assert report.render().startswith("ledger intact: 12 entries, hash chain unbroken, 2 checkpoints verified")
    assert "entries 11 to 12 come after the last checkpoint" in report.render()


def test_an_empty_ledger_verifies(tmp_path):
    path = tmp_path / "state.db"
    open_database(path).close()
    report = verify(path)
    assert report.ok and report.entries == 0 and report.notes == ()


def test_without_checkpoints_the_report_says_what_it_cannot_see(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 4)
    report = verify(path, trusted={})
    assert report.ok
    assert "no trusted checkpoint" in report.render()


def test_verify_path_opens_read_only(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 3, checkpoint_at=(3,)).close()
    before = path.read_bytes()
    assert verify(path).ok
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [None, b"garbage" * 1000, b""])
def test_verify_path_refuses_what_it_cannot_read(tmp_path, content):
    path = tmp_path / "state.db"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LedgerError) as info:
        verify(path)
    assert info.value.exit_code == 2
    assert isinstance(info.value, OpsdslError)
    assert pickle.loads(pickle.dumps(info.value)).message == info.value.message


def test_verify_path_refuses_a_database_without_a_ledger(tmp_path):
    path = tmp_path / "other.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)")
    with pytest.raises(LedgerError, match="not an opsdsl state database"):
        verify(path)


# --- verification: tampering ------------------------------------------------------------


@pytest.mark.parametrize(
    "edit",
    [
        'UPDATE ledger SET data = \'{"attempt":1,"step":"s4","with":{"n":40}}\' WHERE seq = 4',
        "UPDATE ledger SET kind = 'step.succeeded' WHERE seq = 4",
        "UPDATE ledger SET ts = ts + 0.5 WHERE seq = 4",
        "UPDATE ledger SET run = 'run-9' WHERE seq = 4",
        "UPDATE ledger SET run = NULL WHERE seq = 4",
        "UPDATE ledger SET run = 'run-1' WHERE seq = 5",  # was NULL
    ],
)
def test_an_edited_entry_is_named(tmp_path, edit):
    path = tmp_path / "state.db"
    fill(path, 8)
    raw(path).execute(edit)
    report = verify(path)
    assert not report.ok and report.entries == 8
    assert report.first_bad == (5 if "seq = 5" in edit else 4)
    assert "does not match its hash" in report.problem
    assert f"first bad entry: seq {report.first_bad}" in report.render()


def test_an_edited_entry_with_its_hash_recomputed_is_named(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 8)
    conn = raw(path)
    conn.execute('UPDATE ledger SET data = \'{"step":"forged"}\' WHERE seq = 3')
    seq, ts, run, kind, data, prev, _ = row(conn, 3)
    conn.execute("UPDATE ledger SET hash = ? WHERE seq = 3", (entry_hash(prev, seq, ts, run, kind, data),))
    report = verify(path)
    assert report.first_bad == 3
    assert "entry 3 was changed and its hash recomputed" in report.problem


def test_a_nul_in_kind_is_refused_even_under_a_matching_hash(tmp_path):
    # Honest entries never hold one (append refuses it), and without NULs in run and kind
    # the separators split the hashed text one way only.
    path = tmp_path / "state.db"
    fill(path, 3)
    conn = raw(path)
    conn.execute("UPDATE ledger SET kind = 'step.intent' || char(0) || 'x' WHERE seq = 3")
    seq, ts, run, kind, data, prev, _ = row(conn, 3)
    conn.execute("UPDATE ledger SET hash = ? WHERE seq = 3", (entry_hash(prev, seq, ts, run, kind, data),))
    report = verify(path)
    assert report.first_bad == 3 and "malformed" in report.problem


def test_a_ts_turned_into_the_same_text_as_a_blob_is_caught(tmp_path):
    # The hashed bytes are the same; the column type is not what was written.
    path = tmp_path / "state.db"
    fill(path, 3)
    conn = raw(path)
    ts = row(conn, 2)[1]
    conn.execute("UPDATE ledger SET ts = ? WHERE seq = 2", (ts_text(ts).encode(),))
    report = verify(path)
    assert report.first_bad == 2 and "its ts is not a number" in report.problem


def test_an_empty_run_in_place_of_null_is_caught(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 6)
    raw(path).execute("UPDATE ledger SET run = '' WHERE seq = 5")  # NULL before; the same hash
    report = verify(path)
    assert report.first_bad == 5 and "its run is not a run id" in report.problem


@pytest.mark.parametrize("value", ["'yesterday'", "NULL", "X'00'"])
def test_a_ts_that_is_not_a_number_is_caught(tmp_path, value):
    path = tmp_path / "state.db"
    fill(path, 3)
    conn = raw(path)
    conn.execute("PRAGMA writable_schema = ON")  # NOT NULL would refuse NULL: an attacker rewrites the schema
    conn.execute("UPDATE sqlite_master SET sql = replace(sql, 'ts REAL NOT NULL', 'ts REAL') WHERE name = 'ledger'")
    conn.close()
    raw(path).execute(f"UPDATE ledger SET ts = {value} WHERE seq = 2")
    report = verify(path)
    assert report.first_bad == 2 and "malformed" in report.problem


def test_a_deleted_entry_is_named(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 8)
    raw(path).execute("DELETE FROM ledger WHERE seq = 6")
    report = verify(path)
    assert (report.first_bad, report.entries) == (6, 7)
    assert report.problem == "entry 6 is missing: the ledger jumps from seq 5 at seq 7"


def test_a_deleted_first_entry_is_named(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 3)
    raw(path).execute("DELETE FROM ledger WHERE seq = 1")
    report = verify(path)
    assert report.first_bad == 1
    assert report.problem == "entry 1 is missing: the ledger starts at seq 2"


def test_a_deleted_entry_with_the_rest_renumbered_is_named(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 8)
    conn = raw(path)
    conn.execute("DELETE FROM ledger WHERE seq = 4")
    conn.execute("UPDATE ledger SET seq = -(seq - 1) WHERE seq > 4")
    conn.execute("UPDATE ledger SET seq = -seq WHERE seq < 0")
    report = verify(path)
    assert report.first_bad == 4 and "does not belong here" in report.problem


def test_reordered_entries_are_named(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 8)
    conn = raw(path)
    third, sixth = row(conn, 3), row(conn, 6)
    for seq, other in ((3, sixth), (6, third)):
        conn.execute(
            "UPDATE ledger SET ts = ?, run = ?, kind = ?, data = ?, prev = ?, hash = ? WHERE seq = ?", (*other[1:], seq)
        )
    report = verify(path)
    assert report.first_bad == 3 and "entry 3 does not belong here" in report.problem


@pytest.mark.parametrize("forged", [False, True])
def test_an_inserted_entry_is_named(tmp_path, forged):
    path = tmp_path / "state.db"
    fill(path, 8)
    conn = raw(path)
    renumber_up(conn, 4)
    prev = row(conn, 3)[6]
    data = '{"step":"restart-everything"}'
    digest = entry_hash(prev, 4, T0 + 3.5, "run-1", "step.succeeded", data) if forged else bytes(32)
    conn.execute("INSERT INTO ledger VALUES (4, ?, 'run-1', 'step.succeeded', ?, ?, ?)", (T0 + 3.5, data, prev, digest))
    report = verify(path)
    assert report.first_bad == 4 and report.entries == 9
    assert ("entry 4 was inserted" if forged else "entry 4 does not match its hash") in report.problem


def test_a_cut_off_tail_is_caught_by_a_stored_checkpoint(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 10, checkpoint_at=(4, 9))
    raw(path).execute("DELETE FROM ledger WHERE seq >= 7")
    report = verify(path)
    assert (report.ok, report.first_bad, report.entries) == (False, 7, 6)
    assert "entries 7 to 9 are missing" in report.problem and "tail was cut off" in report.problem


def test_a_cut_off_tail_past_the_last_checkpoint_goes_unnoticed(tmp_path):
    # The documented limit: only the hash chain protects entries after the last checkpoint.
    path = tmp_path / "state.db"
    fill(path, 10, checkpoint_at=(6,))
    raw(path).execute("DELETE FROM ledger WHERE seq >= 8")
    report = verify(path)
    assert report.ok and report.entries == 7
    assert "entries 7 to 7 come after the last checkpoint" in report.render()


def test_a_cut_off_tail_with_the_checkpoints_deleted_is_caught_by_an_external_checkpoint(tmp_path):
    path = tmp_path / "state.db"
    external = Ledger(fill(path, 10)).checkpoint(OPS)
    conn = raw(path)
    conn.execute("DELETE FROM ledger WHERE seq >= 5")
    conn.execute("DELETE FROM checkpoints")
    assert verify(path).ok  # with nothing to compare against, the shorter chain looks whole
    report = verify(path, external=[external])
    assert report.first_bad == 5 and "entries 5 to 10 are missing" in report.problem


def test_a_whole_chain_rewrite_is_caught_by_a_signed_checkpoint(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 12, checkpoint_at=(3, 10))
    conn = raw(path)
    conn.execute('UPDATE ledger SET data = \'{"step":"s5","with":{"n":500}}\' WHERE seq = 5')
    rehash_from(conn, 5)
    report = verify(path)
    assert report.first_bad == 10
    assert "does not match the checkpoint" in report.problem
    assert "rewritten (hashes recomputed) somewhere in entries 4 to 10" in report.problem


def test_a_whole_chain_rewrite_with_the_checkpoints_emptied_is_caught_by_an_external_checkpoint(tmp_path):
    path = tmp_path / "state.db"
    external = Ledger(fill(path, 6)).checkpoint(OPS)
    conn = raw(path)
    conn.execute("UPDATE ledger SET kind = 'step.skipped' WHERE seq = 2")
    rehash_from(conn, 2)
    conn.execute("DELETE FROM checkpoints")
    assert verify(path).ok
    report = verify(path, external=[external])
    assert report.first_bad == 6 and "entries up to 6" in report.problem


def test_a_whole_chain_rewrite_with_the_checkpoints_re_signed_is_caught(tmp_path):
    path = tmp_path / "state.db"
    external = Ledger(fill(path, 6)).checkpoint(OPS)
    conn = raw(path)
    conn.execute("UPDATE ledger SET ts = ts - 3600 WHERE seq = 1")
    rehash_from(conn, 1)
    conn.execute("DELETE FROM checkpoints")
    Ledger(conn).checkpoint(MALLORY)  # the attacker's own key
    report = verify(path)
    assert report.first_bad is None and "which is not trusted" in report.problem
    report = verify(path, external=[external])
    assert report.first_bad == 6 and "does not match the checkpoint" in report.problem
    assert any("not trusted" in problem for problem in report.problems[1:])


def test_a_checkpoint_with_a_bad_signature_is_caught(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 4, checkpoint_at=(4,))
    conn = raw(path)
    sig = conn.execute("SELECT sig FROM checkpoints").fetchone()[0]
    conn.execute("UPDATE checkpoints SET sig = ?", (bytes([sig[0] ^ 1]) + sig[1:],))
    report = verify(path)
    assert not report.ok and report.first_bad is None
    assert "the checkpoint at seq 4 has a bad signature" in report.problem
    assert "a checkpoint is bad or missing" in report.render()


def test_a_checkpoint_moved_to_another_head_is_caught(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 4, checkpoint_at=(4,))
    raw(path).execute("UPDATE checkpoints SET head = (SELECT hash FROM ledger WHERE seq = 3), seq = 3")
    report = verify(path)
    assert "bad signature" in report.problem


def test_a_checkpoint_by_an_untrusted_key_is_caught(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 4)
    Ledger(sqlite3.connect(path, isolation_level=None)).checkpoint(MALLORY)
    report = verify(path)
    assert not report.ok and f"signed by key {keyid(MALLORY.public_key())}, which is not trusted" in report.problem
    trusting_both = TRUSTED | {keyid(MALLORY.public_key()): MALLORY.public_key()}
    assert verify(path, trusted=trusting_both).ok


def test_an_empty_trust_set_with_checkpoints_is_an_error_not_a_pass(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 4, checkpoint_at=(2,))
    report = verify(path, trusted={})
    assert not report.ok and report.first_bad is None
    assert "no trusted key: an empty trust set verifies nothing" in report.problem
    external = Checkpoint.from_dict(Ledger(sqlite3.connect(path)).latest_checkpoint().to_dict())
    raw(path).execute("DELETE FROM checkpoints")
    assert not verify(path, trusted={}, external=[external]).ok


def test_the_first_problem_is_the_earliest_entry(tmp_path):
    path = tmp_path / "state.db"
    fill(path, 10, checkpoint_at=(8,))
    conn = raw(path)
    conn.execute("DELETE FROM ledger WHERE seq = 9")
    conn.execute("UPDATE ledger SET kind = 'x' WHERE seq = 3")
    conn.execute("UPDATE checkpoints SET sig = zeroblob(64)")
    report = verify(path)
    assert report.first_bad == 3 and len(report.problems) == 2
    assert "also: the checkpoint at seq 8 has a bad signature" in report.render()


# --- property: any single mutation is found, at the right entry --------------------------

JSON_SCALAR = st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20) | st.booleans() | st.floats(0, 1e6)
ENTRY = st.tuples(
    st.sampled_from(kinds.RUN_KINDS),
    st.none() | st.sampled_from(["run-a", "run-b", "r\u00e9-\u2603"]),
    st.dictionaries(st.text(max_size=5), JSON_SCALAR, max_size=4),
    st.floats(1.5e9, 2e9) | st.integers(1_500_000_000, 2_000_000_000).map(float),
)


def mutate(conn: sqlite3.Connection, count: int, data: st.DataObject) -> int:
    """Apply one random mutation to a ledger of `count` entries; return the seq verify must name."""
    kind = data.draw(st.sampled_from(["edit", "delete", "swap", "insert", "truncate"] if count > 1 else ["edit"]))
    k = data.draw(st.integers(1, count))
    if kind == "edit":
        column = data.draw(st.sampled_from(["data", "kind", "ts", "run"]))
        change = {
            "data": "data = data || ' '",
            "kind": "kind = kind || 'x'",
            "ts": "ts = ts + 1",
            "run": "run = CASE WHEN run IS NULL THEN 'run-x' ELSE run || 'x' END",
        }[column]
        conn.execute(f"UPDATE ledger SET {change} WHERE seq = ?", (k,))
        return k
    if kind == "delete":
        conn.execute("DELETE FROM ledger WHERE seq = ?", (k,))
        return k
    if kind == "truncate":
        conn.execute("DELETE FROM ledger WHERE seq >= ?", (k,))
        return k
    if kind == "swap":
        i, j = sorted(data.draw(st.lists(st.integers(1, count), min_size=2, max_size=2, unique=True)))
        first, second = row(conn, i), row(conn, j)
        for seq, other in ((i, second), (j, first)):
            conn.execute(
                "UPDATE ledger SET ts = ?, run = ?, kind = ?, data = ?, prev = ?, hash = ? WHERE seq = ?",
                (*other[1:], seq),
            )
        return i
    forged = data.draw(st.booleans())
    renumber_up(conn, k)
    prev = GENESIS if k == 1 else row(conn, k - 1)[6]
    digest = entry_hash(prev, k, 1.7e9, None, "evidence.added", "{}") if forged else bytes(32)
    conn.execute("INSERT INTO ledger VALUES (?, 1.7e9, NULL, 'evidence.added', '{}', ?, ?)", (k, prev, digest))
    return k


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ENTRY, min_size=1, max_size=25), st.data())
def test_any_single_mutation_is_found_at_the_right_entry(appended, data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.db"
        conn = open_database(path)
        ledger = Ledger(conn)
        conn.execute("BEGIN IMMEDIATE")
        for kind, run, payload, ts in appended:
            ledger.append(kind, run, payload, ts=ts)
        conn.execute("COMMIT")
        ledger.checkpoint(OPS)
        assert verify(path).ok
        expected = mutate(raw(path), len(appended), data)
        report = verify(path)
        assert not report.ok
        assert report.first_bad == expected, report.render()
        conn.close()


# --- two processes, one file ------------------------------------------------------------

WRITER = """
import sys
from opsdsl.audit.ledger import Ledger, open_database

path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = open_database(path)
ledger = Ledger(conn)
for i in range(count):
    conn.execute("BEGIN IMMEDIATE")
    ledger.append("step.intent", name, {"i": i, "writer": name})
    conn.execute("COMMIT")
"""


def test_two_processes_appending_to_one_file_keep_one_chain(tmp_path):
    path = tmp_path / "state.db"
    open_database(path).close()
    count = 150
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)], cwd=ROOT, stderr=subprocess.PIPE)
        for name in ("alpha", "beta")
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
    report = verify(path)
    assert report.ok and report.entries == 2 * count, report.render()
    entries = list(Ledger(sqlite3.connect(path)).entries())
    assert [entry.seq for entry in entries] == list(range(1, 2 * count + 1))
    for name in ("alpha", "beta"):
        assert [entry.data["i"] for entry in entries if entry.run == name] == list(range(count))


def test_entry_is_frozen():
    entry = Entry(1, T0, None, "run.started", {}, GENESIS, GENESIS)
    with pytest.raises(AttributeError):
        entry.seq = 2  # type: ignore[misc]
