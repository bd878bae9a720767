"""The audit ledger: an append-only, hash-chained log in the state database, with signed checkpoints.

Every fact a run produces (the kinds in `opsdsl.audit.entries`) is appended here as one
row. Each row's hash covers the previous row's hash, so changing, removing, reordering or
inserting a row breaks the chain at that row. A bare chain cannot see its own tail cut off,
nor a rewrite that recomputes every hash after the change; signed checkpoints `(seq, head)`,
stored beside the log and copied into each incident record, catch both. `verify_ledger`
proves a ledger intact or names the first bad entry. docs/ledger.md gives the exact bytes
hashed and signed, so a third party can check a ledger without opsdsl.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsdsl.build.signing import decode_base64, encode_base64, keyid, pae
from opsdsl.canonical import canonical_json
from opsdsl.errors import OpsdslError

ENTRY_DOMAIN = b"opsdsl.ledger.entry.v1\0"
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.opsdsl.checkpoint+json"
GENESIS = bytes(32)
BUSY_TIMEOUT_MS = 10_000

_CHECKPOINT_FIELDS = frozenset({"seq", "head", "ts", "keyid", "sig"})
_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_HEX = frozenset("0123456789abcdef")

_DDL = (
    """CREATE TABLE IF NOT EXISTS ledger (
        seq INTEGER PRIMARY KEY,  -- 1, 2, 3, ... without gaps
        ts REAL NOT NULL,         -- seconds since the epoch
        run TEXT,                 -- run id, NULL for entries about no run
        kind TEXT NOT NULL,       -- opsdsl.runtime.entries
        data TEXT NOT NULL,       -- canonical JSON (RFC 8785) of an object
        prev BLOB NOT NULL,       -- hash of entry seq-1 (32 zero bytes for seq 1)
        hash BLOB NOT NULL        -- entry_hash(prev, seq, ts, run, kind, data)
    )""",
    "CREATE INDEX IF NOT EXISTS ledger_run ON ledger(run)",
    # Guard rails against our own bugs, not against attackers (who can drop them): that is
    # what the hash chain and checkpoints are for.
    """CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON ledger
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END""",
    """CREATE TABLE IF NOT EXISTS checkpoints (
        seq INTEGER PRIMARY KEY,  -- the ledger entry the checkpoint vouches for
        head BLOB NOT NULL,       -- that entry's hash
        ts REAL NOT NULL,         -- when it was signed (informational, not signed)
        keyid TEXT NOT NULL,      -- opsdsl.build.signing.keyid of the signer
        sig BLOB NOT NULL         -- Ed25519 over PAE(CHECKPOINT_PAYLOAD_TYPE, canonical {seq, head})
    )""",
)


class LedgerError(OpsdslError):
    """The ledger cannot be read or used: a missing or corrupt database, an unreadable checkpoint file.

    Tampering is not an error: `verify_ledger` reports it (exit 1); this is exit 2.
    """

    exit_code = 2


# --- the database -----------------------------------------------------------------------


def create_tables(conn: sqlite3.Connection) -> None:
    """Create the ledger and checkpoints tables if they are missing (idempotent)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _DDL:
            conn.execute(statement)
    except BaseException:
        if own:
            conn.execute("ROLLBACK")
        raise
    if own:
        conn.execute("COMMIT")


SQLITE_MINIMUM = (3, 35)  # RETURNING


def open_database(path: str | PathLike) -> sqlite3.Connection:
    """Open (creating if needed) the state database as the runtime uses it, with the ledger's tables.

    WAL lets readers (live views, `ledger verify`) run beside the writer; synchronous=FULL
    makes each COMMIT durable before it returns, which a write-ahead step.intent relies on.
    Transactions are explicit (`isolation_level=None`): the caller says BEGIN IMMEDIATE.
    """
    if sqlite3.sqlite_version_info < SQLITE_MINIMUM:  # UPDATE … RETURNING (leases, runner claims)
        raise LedgerError(
            f"the state database needs SQLite {'.'.join(map(str, SQLITE_MINIMUM))} or newer; this Python's"
            f" sqlite3 module has {sqlite3.sqlite_version} (use a Python built against a newer SQLite)"
        )
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open the state database {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        create_tables(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"cannot use the state database {path}: {exc}") from exc
    return conn


# --- hashing ----------------------------------------------------------------------------


def ts_text(ts: float) -> str:
    """`ts` written as RFC 8785 writes a number (ECMAScript's Number::toString): 1716212345.25, 1716212345.

    The common cases are computed here (they agree with `rfc8785` exactly, which a property
    test checks); the rest goes through `rfc8785`.
    """
    if type(ts) is not float or not math.isfinite(ts):
        raise ValueError(f"a timestamp must be a finite float, not {ts!r}")
    if ts.is_integer():
        if -(2**53) < ts < 2**53:
            return str(int(ts))
    elif 1e-4 <= abs(ts) < 1e16:
        return repr(ts)
    return canonical_json(ts).decode("ascii")


def entry_hash(prev: bytes, seq: int, ts: float, run: str | None, kind: str, data: str) -> bytes:
    """SHA-256 of one entry, chained to `prev`; `data` is the entry's canonical JSON text.

    sha256("opsdsl.ledger.entry.v1" NUL || prev (32 bytes) || seq (8 bytes, big-endian)
           || ts_text(ts) || NUL || run (or nothing) || NUL || kind || NUL || data), text in UTF-8.
    """
    text = f"{ts_text(ts)}\0{run or ''}\0{kind}\0{data}"
    return hashlib.sha256(ENTRY_DOMAIN + prev + seq.to_bytes(8, "big") + text.encode("utf-8")).digest()


def _check_label(what: str, value: object, *, optional: bool) -> None:
    # The NUL separators are unambiguous only because run and kind can hold no NUL, and a
    # NULL run and an empty one would hash alike; `verify_ledger` rejects both as well.
    if value is None and optional:
        return
    if type(value) is not str or not value or "\0" in value:
        raise ValueError(f"{what} must be a non-empty string without NUL characters, not {value!r}")


# --- entries and checkpoints ------------------------------------------------------------


_INSERT = "INSERT INTO ledger (seq, ts, run, kind, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row: `data` is the entry's JSON object, `prev` and `hash` its links in the chain."""

    seq: int
    ts: float
    run: str | None
    kind: str
    data: dict[str, Any]
    prev: bytes
    hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "run": self.run,
            "kind": self.kind,
            "data": self.data,
            "prev": self.prev.hex(),
            "hash": self.hash.hex(),
        }


class RawEntry(NamedTuple):
    """One ledger row as stored (`Ledger.rows`): `data` is its canonical JSON text, unparsed."""

    seq: int
    ts: float
    run: str | None
    kind: str
    data: str
    prev: bytes
    hash: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "the ledger's entry `seq` has hash `head`": what catches truncation and rewrites."""

    seq: int
    head: bytes
    ts: float
    keyid: str
    sig: bytes

    @staticmethod
    def payload_for(seq: int, head: bytes) -> bytes:
        """The canonical JSON that is signed: `{"head":"<hex>","seq":N}`."""
        return canonical_json({"seq": seq, "head": head.hex()})

    def signed_bytes(self) -> bytes:
        """PAE of the payload type and payload: the bytes the signature covers."""
        return pae(CHECKPOINT_PAYLOAD_TYPE, self.payload_for(self.seq, self.head))

    def signature_problem(self, trusted: Mapping[str, Ed25519PublicKey]) -> str | None:
        """None when a trusted key made this signature, else what is wrong with it."""
        key = trusted.get(self.keyid)
        if key is None:
            return f"the checkpoint at seq {self.seq} is signed by key {self.keyid}, which is not trusted"
        try:
            key.verify(self.sig, self.signed_bytes())
        except InvalidSignature:
            return (
                f"the checkpoint at seq {self.seq} has a bad signature for key {_short(self.keyid)}: "
                "it was altered or forged"
            )
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "head": self.head.hex(),
            "ts": self.ts,
            "keyid": self.keyid,
            "sig": encode_base64(self.sig),
        }

    @classmethod
    def from_dict(cls, value: object) -> Checkpoint:
        """Read `to_dict`'s form back, refusing anything else (extra fields, wrong types, bad hex)."""
        if type(value) is not dict:
            raise LedgerError(f"a checkpoint must be a JSON object, not {type(value).__name__}")
        if value.keys() != _CHECKPOINT_FIELDS:
            missing = sorted(_CHECKPOINT_FIELDS - value.keys())
            extra = sorted(value.keys() - _CHECKPOINT_FIELDS)
            raise LedgerError(
                f"checkpoint: missing field {missing[0]!r}" if missing else f"checkpoint: unexpected field {extra[0]!r}"
            )
        seq, head, ts, kid, sig = (value[name] for name in ("seq", "head", "ts", "keyid", "sig"))
        if type(seq) is not int or seq < 1:
            raise LedgerError(f"checkpoint: 'seq' must be a positive integer, not {seq!r}")
        if not _is_hex(head, 64):
            raise LedgerError("checkpoint: 'head' must be 64 lowercase hex digits")
        if type(ts) not in (int, float) or not -1e300 < ts < 1e300:  # NaN and infinities fail too
            raise LedgerError("checkpoint: 'ts' must be a finite number (seconds since the epoch)")
        if not _is_hex(kid, 64):
            raise LedgerError("checkpoint: 'keyid' must be 64 lowercase hex digits")
        if type(sig) is not str:
            raise LedgerError("checkpoint: 'sig' must be a base64 string")
        try:
            raw_sig = decode_base64(sig)
        except ValueError as exc:
            raise LedgerError(f"checkpoint: 'sig': {exc}") from None
        if len(raw_sig) != 64:
            raise LedgerError(f"checkpoint: 'sig' must be 64 bytes (Ed25519), not {len(raw_sig)}")
        return cls(seq, bytes.fromhex(head), float(ts), kid, raw_sig)


def _is_hex(value: object, length: int) -> bool:
    return type(value) is str and len(value) == length and _HEX.issuperset(value)


def _short(kid: str) -> str:
    return kid[:16]


# --- appending --------------------------------------------------------------------------


class Ledger:
    """The ledger over an open state database connection (see `open_database`).

    Writes happen inside the caller's transaction, never committed here: a step.intent
    and the runtime's own state change commit together or not at all.
    """

    journaled = False  # entries are chained as they are appended (see opsdsl.runtime.sequencer for the other way)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def settle(self, run: str | None = None, timeout: float | None = None) -> None:
        """Wait until the entries committed so far (of `run`, or all) are chained: they already are here."""

    def pending(self, run: str | None = None) -> int:
        """How many committed entries wait to be chained: none here."""
        return 0

    def append(self, kind: str, run: str | None, data: Mapping[str, Any], ts: float | None = None) -> Entry:
        """Append one entry and return it; call inside BEGIN IMMEDIATE ... COMMIT.

        The head is read inside the same transaction rather than remembered, so two
        processes sharing the file, or a caller's ROLLBACK, can never fork the chain.
        """
        return self._append(kind, run, data, ts, None)

    def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]], ts: float | None = None
    ) -> list[Entry]:
        """Append several entries in order, reading the head once; inside the caller's transaction."""
        if len(items) < 2:
            return [self._append(kind, run, data, ts, None) for kind, run, data in items]
        # All rows are chained first, then inserted in one executemany: on PostgreSQL one round
        # trip (a pipeline) instead of one per entry. A failed insert fails the caller's
        # transaction, which then rolls back every row of it, as before.
        entries: list[Entry] = []
        rows: list[tuple[Any, ...]] = []
        head = None
        for kind, run, data in items:
            entry, row = self._entry(kind, run, data, ts, head)
            head = (entry.seq, entry.hash)
            entries.append(entry)
            rows.append(row)
        self._conn.executemany(_INSERT, rows)
        return entries

    def _append(
        self, kind: str, run: str | None, data: Mapping[str, Any], ts: float | None, head: tuple[int, bytes] | None
    ) -> Entry:
        entry, row = self._entry(kind, run, data, ts, head)
        self._conn.execute(_INSERT, row)
        return entry

    def _entry(
        self, kind: str, run: str | None, data: Mapping[str, Any], ts: float | None, head: tuple[int, bytes] | None
    ) -> tuple[Entry, tuple[Any, ...]]:
        """The next entry after `head` (or the stored head), chained, and its row, not yet inserted."""
        if not self._conn.in_transaction:
            raise RuntimeError("Ledger.append must run inside the caller's transaction (BEGIN IMMEDIATE ... COMMIT)")
        _check_label("kind", kind, optional=False)
        _check_label("run", run, optional=True)
        if not isinstance(data, Mapping):
            raise TypeError(f"ledger data must be a JSON object, not {type(data).__name__}")
        data = dict(data)
        ts = time.time() if ts is None else float(ts)
        text = canonical_json(data).decode("utf-8")
        seq, prev = self._read_head() if head is None else head  # `head`: what this transaction just appended
        seq += 1
        digest = entry_hash(prev, seq, ts, run, kind, text)
        return Entry(seq, ts, run, kind, data, prev, digest), (seq, ts, run, kind, text, prev, digest)

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last entry; (0, 32 zero bytes) for an empty ledger."""
        return self._read_head()

    def _read_head(self) -> tuple[int, bytes]:
        row = self._conn.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
        return (0, GENESIS) if row is None else (row[0], row[1])

    def entries(self, run: str | None = None, after: int = 0) -> Iterator[Entry]:
        """Entries with seq > `after` in order, all of them or one run's; streamed, not loaded at once."""
        columns = "SELECT seq, ts, run, kind, data, prev, hash FROM ledger"
        if run is None:
            rows = self._conn.execute(f"{columns} WHERE seq > ? ORDER BY seq", (after,))
        else:
            rows = self._conn.execute(f"{columns} WHERE run = ? AND seq > ? ORDER BY seq", (run, after))
        for seq, ts, run_id, kind, data, prev, digest in rows:
            yield Entry(seq, ts, run_id, kind, json.loads(data), prev, digest)

    def rows(self, after: int = 0, until: int | None = None, run: str | None = None) -> Iterator[RawEntry]:
        """Chained rows with `after` < seq ≤ `until`, in order, as stored: `data` is the canonical
        JSON text that was hashed, not parsed (what an excerpt or a digest copies byte for byte)."""
        query = "SELECT seq, ts, run, kind, data, prev, hash FROM ledger WHERE seq > ?"
        args: list[Any] = [after]
        if until is not None:
            query += " AND seq <= ?"
            args.append(until)
        if run is not None:
            query += " AND run = ?"
            args.append(run)
        yield from map(RawEntry._make, self._conn.execute(query + " ORDER BY seq", tuple(args)))

    def checkpoint(self, signer: Ed25519PrivateKey) -> Checkpoint:
        """Sign the current head and store the checkpoint; returns it (to copy into an incident record).

        Runs in the caller's transaction if there is one, else in its own. Signing the same
        head again with the same key returns the stored checkpoint unchanged; another key's
        signature replaces it (one checkpoint per seq). A stored checkpoint for this seq with
        another head is evidence of tampering and is never overwritten: LedgerError.
        """
        conn = self._conn
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN IMMEDIATE")
        try:
            seq, head = self._read_head()
            if seq == 0:
                raise ValueError("nothing to checkpoint: the ledger is empty")
            kid = keyid(signer.public_key())
            stored = self._checkpoint_at(seq)
            if stored is not None and stored.head != head:
                # Overwriting it would destroy the evidence that entry `seq` changed after it was signed.
                raise LedgerError(
                    f"the stored checkpoint at seq {seq} vouches for another head than the ledger has: "
                    "the ledger was changed after it was signed (run `opsdsl ledger verify`)"
                )
            if stored is not None and stored.keyid == kid:
                checkpoint = stored
            else:
                sig = signer.sign(pae(CHECKPOINT_PAYLOAD_TYPE, Checkpoint.payload_for(seq, head)))
                checkpoint = Checkpoint(seq, head, time.time(), kid, sig)
                conn.execute(
                    "INSERT INTO checkpoints (seq, head, ts, keyid, sig) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(seq) DO UPDATE SET head = excluded.head, ts = excluded.ts,"
                    " keyid = excluded.keyid, sig = excluded.sig",
                    (checkpoint.seq, checkpoint.head, checkpoint.ts, checkpoint.keyid, checkpoint.sig),
                )
        except BaseException:
            if own:
                conn.execute("ROLLBACK")
            raise
        if own:
            conn.execute("COMMIT")
        return checkpoint

    def latest_checkpoint(self) -> Checkpoint | None:
        """The stored checkpoint with the highest seq, if any."""
        row = self._conn.execute(
            "SELECT seq, head, ts, keyid, sig FROM checkpoints ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else Checkpoint(*row)

    def first_checkpoint_from(self, seq: int) -> Checkpoint | None:
        """The stored checkpoint with the lowest seq at or after `seq` (the first that covers
        entry `seq`), if any."""
        row = self._conn.execute(
            "SELECT seq, head, ts, keyid, sig FROM checkpoints WHERE seq >= ? ORDER BY seq LIMIT 1", (seq,)
        ).fetchone()
        return None if row is None else Checkpoint(*row)

    def _checkpoint_at(self, seq: int) -> Checkpoint | None:
        row = self._conn.execute("SELECT seq, head, ts, keyid, sig FROM checkpoints WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else Checkpoint(*row)


# --- verifying --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """What `verify_ledger` found: intact, or the first bad entry and why.

    `first_bad` is None when the ledger is not intact for a reason no entry can be blamed
    for (a bad checkpoint signature, no trusted key); `problems` lists everything found,
    `problem` first; `notes` say what the verdict cannot vouch for.
    """

    ok: bool
    entries: int
    checkpoints: int
    first_bad: int | None = None
    problem: str | None = None
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    last_checkpoint: int | None = None
    warnings: tuple[str, ...] = ()  # what the verdict rests on that the checked directory itself supplied

    def render(self) -> str:
        checkpoints = f"{self.checkpoints} checkpoint{'' if self.checkpoints == 1 else 's'}"
        if self.ok:
            lines = [f"ledger intact: {self.entries} entries, hash chain unbroken, {checkpoints} verified"]
            if self.last_checkpoint is not None:
                lines[0] += f" (the last at seq {self.last_checkpoint})"
        else:
            where = (
                f"first bad entry: seq {self.first_bad}"
                if self.first_bad is not None
                else "a checkpoint is bad or missing"
            )
            lines = [f"ledger NOT intact ({self.entries} entries, {checkpoints}): {where}", f"  {self.problem}"]
            lines += [f"  also: {other}" for other in self.problems[1:]]
        lines += [f"note: {note}" for note in self.notes]
        lines += [f"WARNING: {warning}" for warning in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "first_bad": self.first_bad,
            "problem": self.problem,
            "problems": list(self.problems),
            "notes": list(self.notes),
            "last_checkpoint": self.last_checkpoint,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class _Finding:
    seq: int | None  # the first bad entry, None when no entry is to blame
    problem: str


def verify_ledger(
    conn: sqlite3.Connection,
    trusted: Mapping[str, Ed25519PublicKey],
    external: Sequence[Checkpoint] = (),
) -> LedgerReport:
    """Check the hash chain and every checkpoint (stored and `external`) against `trusted` keys.

    Tampering is reported, not raised; an unreadable database raises LedgerError.
    """
    try:
        return _verify(conn, trusted, external)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read the ledger: {exc}") from exc


def _verify(
    conn: sqlite3.Connection, trusted: Mapping[str, Ed25519PublicKey], external: Sequence[Checkpoint]
) -> LedgerReport:
    findings: list[_Finding] = []
    notes: list[str] = []

    # 1. Gather the checkpoints: those stored beside the log and those kept elsewhere
    #    (incident records), which survive an attacker emptying or rewriting the table.
    #    A stored row of the wrong shape is itself a finding.
    checkpoints: dict[tuple, Checkpoint] = {}
    for row in conn.execute("SELECT seq, head, ts, keyid, sig FROM checkpoints ORDER BY seq"):
        seq, head, ts, kid, sig = row
        if type(head) is not bytes or type(kid) is not str or type(sig) is not bytes or type(ts) is not float:
            findings.append(_Finding(None, f"the stored checkpoint at seq {seq} is malformed"))
            continue
        checkpoint = Checkpoint(seq, head, ts, kid, sig)
        checkpoints[(seq, head, kid, sig)] = checkpoint
    for checkpoint in external:
        checkpoints.setdefault((checkpoint.seq, checkpoint.head, checkpoint.keyid, checkpoint.sig), checkpoint)

    # 2. An empty trust set verifies nothing: with checkpoints present it is a failure,
    #    never a quiet pass.
    vouched: dict[int, list[Checkpoint]] = {}
    if checkpoints and not trusted:
        findings.append(
            _Finding(None, f"{len(checkpoints)} checkpoint(s) but no trusted key: an empty trust set verifies nothing")
        )
    else:
        # 3. Each checkpoint's signature, by a trusted key, over PAE(type, {seq, head}).
        #    Only checkpoints that pass vouch for anything in 4 and 5.
        for checkpoint in checkpoints.values():
            problem = checkpoint.signature_problem(trusted)
            if problem is None:
                vouched.setdefault(checkpoint.seq, []).append(checkpoint)
            else:
                findings.append(_Finding(None, problem))

    # 4. The chain, streamed in seq order: each entry is where it should be (seq one more
    #    than the last), links to the entry before it (prev), and matches its own hash;
    #    a vouched-for entry also matches its checkpoint's head. Stop at the first break.
    chain = _walk_chain(conn, vouched)
    if chain.finding is not None:
        findings.insert(0, chain.finding)
    else:
        # 5. Truncation: a checkpoint for a seq beyond the last entry.
        beyond = [seq for seq in vouched if seq > chain.last]
        if beyond:
            seq = max(beyond)
            signer = _short(vouched[seq][0].keyid)
            findings.insert(
                0,
                _Finding(
                    chain.last + 1,
                    f"entries {chain.last + 1} to {seq} are missing: a checkpoint signed by {signer} vouches for "
                    f"seq {seq}, but the ledger ends at seq {chain.last} (its tail was cut off)",
                ),
            )

    # 6. Every run is checkpointed in the transaction that finishes it, so a run.finished
    #    beyond the last trusted checkpoint means checkpoints were deleted (or signed by a
    #    key not trusted here): the entries after the last one could have been rewritten.
    matched = [seq for seq in vouched if seq <= chain.last]
    last_checkpoint = max(matched) if matched and chain.finding is None else None
    if chain.finding is None:
        finished = _last_finished_run(conn, chain.last)
        if finished is not None and finished[0] > (last_checkpoint or 0):
            seq, run = finished
            last = f"the last trusted one is at seq {last_checkpoint}" if last_checkpoint else "there is none"
            findings.append(
                _Finding(
                    None,
                    f"run {run} finished at seq {seq}, but no trusted checkpoint covers it ({last}): every run is "
                    "checkpointed as it finishes, so checkpoints were deleted or signed by an untrusted key",
                )
            )

    # 7. The verdict, and what it cannot vouch for.
    if chain.last and not vouched:
        notes.append("no trusted checkpoint: a cut-off tail or a rewrite that recomputed every hash would go unnoticed")
    elif last_checkpoint is not None and last_checkpoint < chain.last:
        notes.append(
            f"entries {last_checkpoint + 1} to {chain.last} come after the last checkpoint: only the hash chain "
            "protects them (their removal, or a rewrite of them, would go unnoticed)"
        )
    entries = chain.last if chain.finding is None else conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
    return LedgerReport(
        ok=not findings,
        entries=entries,
        checkpoints=len(checkpoints),
        first_bad=findings[0].seq if findings else None,
        problem=findings[0].problem if findings else None,
        problems=tuple(finding.problem for finding in findings),
        notes=tuple(notes),
        last_checkpoint=last_checkpoint,
    )


def _last_finished_run(conn: sqlite3.Connection, last: int) -> tuple[int, str] | None:
    """(seq, run) of the last run.finished entry at or before seq `last`, if any."""
    row = conn.execute(
        "SELECT seq, run FROM ledger WHERE kind = 'run.finished' AND seq <= ? ORDER BY seq DESC LIMIT 1", (last,)
    ).fetchone()
    if row is None:
        return None
    run = row[1].decode("utf-8", "replace") if isinstance(row[1], bytes) else row[1]
    return row[0], str(run)


@dataclass(frozen=True, slots=True)
class _Chain:
    last: int  # seq of the last good entry (0: none), which is also how many there are
    finding: _Finding | None


def _walk_chain(conn: sqlite3.Connection, vouched: Mapping[int, list[Checkpoint]]) -> _Chain:
    """Step 4 of `verify_ledger`: one pass over the rows, sha256 per row, no JSON parsing.

    Text columns are read as bytes (the UTF-8 that was hashed), which saves decoding and
    re-encoding every row and turns text that is not UTF-8 into a hash mismatch, not a crash.
    """
    if not hasattr(conn, "text_factory"):  # PostgreSQL (a PgConnection): text arrives as str
        rows = conn.execute("SELECT seq, ts, run, kind, data, prev, hash FROM ledger ORDER BY seq")
        return _walk_rows(
            (
                (seq, ts, _utf8(run), _utf8(kind), _utf8(data), prev, digest)
                for seq, ts, run, kind, data, prev, digest in rows
            ),
            vouched,
        )
    saved = conn.text_factory
    conn.text_factory = bytes
    try:
        return _walk_rows(conn.execute("SELECT seq, ts, run, kind, data, prev, hash FROM ledger ORDER BY seq"), vouched)
    finally:
        conn.text_factory = saved


def _utf8(value: object) -> object:
    return value.encode("utf-8") if type(value) is str else value


def _walk_rows(rows: Iterable[tuple], vouched: Mapping[int, list[Checkpoint]]) -> _Chain:
    sha256, join, domain = hashlib.sha256, b"".join, ENTRY_DOMAIN
    expected = 1  # the seq the next row must have
    last = GENESIS  # hash of the previous row
    before_last = GENESIS  # hash of the row before that (to recognise an insertion)
    last_matched = 0  # the last checkpoint that matched (bounds a rewrite)
    for seq, ts, run, kind, data, prev, stored in rows:
        # 4a. In its place: seq numbers have no gaps (a gap is a deleted entry).
        if seq != expected:
            where = "the ledger starts" if expected == 1 else f"the ledger jumps from seq {expected - 1}"
            return _Chain(expected - 1, _Finding(expected, f"entry {expected} is missing: {where} at seq {seq}"))
        # 4b. Well-formed: the column types the hash was computed over; no NUL in run or kind
        #     and no empty run, which would let bytes move between fields under the same hash.
        if type(ts) is float and 1e-4 <= ts < 1e16 and not ts.is_integer():
            t = repr(ts).encode()  # ts_text's common case, inline
        else:
            try:
                t = ts_text(ts).encode()
            except ValueError:
                return _Chain(seq - 1, _Finding(seq, _malformed(seq, "its ts is not a number")))
        if type(kind) is not bytes or type(data) is not bytes or type(prev) is not bytes or b"\0" in kind:
            return _Chain(seq - 1, _Finding(seq, _malformed(seq, "a column holds the wrong type")))
        if run is None:
            run = b""
        elif type(run) is not bytes or not run or b"\0" in run:
            return _Chain(seq - 1, _Finding(seq, _malformed(seq, "its run is not a run id")))
        # 4c. Its own hash, over the prev it records and the stored bytes of data.
        digest = sha256(join((domain, prev, seq.to_bytes(8, "big"), t, b"\0", run, b"\0", kind, b"\0", data))).digest()
        # 4d. The link: prev is the hash of the entry before it.
        if prev != last or digest != stored:
            found = _diagnose(seq, prev == last, digest == stored, prev == before_last)
            return _Chain(seq - 1, _Finding(*found))
        # 4e. A checkpoint for this seq: its head must be this entry's hash. A mismatch with
        #     an unbroken chain means every hash up to here was recomputed: a rewrite.
        if seq in vouched:
            for checkpoint in vouched[seq]:
                if checkpoint.head != stored:
                    since = f"entries {last_matched + 1} to {seq}" if last_matched else f"the entries up to {seq}"
                    problem = (
                        f"entry {seq} does not match the checkpoint signed by {_short(checkpoint.keyid)} for "
                        f"seq {seq}: the chain was rewritten (hashes recomputed) somewhere in {since}"
                    )
                    return _Chain(seq - 1, _Finding(seq, problem))
            last_matched = seq
        before_last, last = last, stored
        expected += 1
    return _Chain(expected - 1, None)


def _diagnose(seq: int, linked: bool, self_consistent: bool, skips_one: bool) -> tuple[int, str]:
    """Name the first bad entry when entry `seq` breaks the chain, from which of its checks failed."""
    if linked:  # it follows its predecessor but its contents changed
        return seq, f"entry {seq} does not match its hash: its ts, run, kind or data were changed after it was written"
    if skips_one and seq > 1:  # it links past its predecessor: that one was slipped in
        return (
            seq - 1,
            f"entry {seq - 1} was inserted: entry {seq} records the hash of entry {seq - 2} as its predecessor",
        )
    if self_consistent and seq > 1:  # intact itself, so its predecessor changed, hash and all
        return seq - 1, (
            f"entry {seq - 1} was changed and its hash recomputed: entry {seq} records a different hash for it"
        )
    return seq, (
        f"entry {seq} does not belong here: it neither follows entry {seq - 1} nor matches its own hash "
        "(moved, replaced or changed)"
    )


def _malformed(seq: int, why: str) -> str:
    return f"entry {seq} is malformed ({why}): it was changed after it was written"


def verify_path(
    db_path: str | PathLike,
    trusted: Mapping[str, Ed25519PublicKey],
    external: Sequence[Checkpoint] = (),
) -> LedgerReport:
    """`verify_ledger` on a state database file, opened read-only; LedgerError (exit 2) when it cannot be read."""
    path = Path(db_path)
    if not path.is_file():
        raise LedgerError(f"no state database at {path}" if not path.exists() else f"{path} is not a file")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {path}: {exc}") from exc
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"ledger", "checkpoints"} <= tables:
            raise LedgerError(f"{path} is not an opsdsl state database (it has no ledger)")
        return verify_ledger(conn, trusted, external)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"cannot read {path}: {exc}") from exc
    finally:
        conn.close()


# --- checkpoints kept elsewhere ---------------------------------------------------------


def read_checkpoints(path: str | PathLike) -> tuple[Checkpoint, ...]:
    """The checkpoints in a file: a checkpoint JSON, or an incident record with a "checkpoint" field.

    A record wrapped in a DSSE envelope is opened (the checkpoint carries its own
    signature, checked by `verify_ledger`); a "checkpoints" array is read too.
    """
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise LedgerError(f"cannot read checkpoint file {path}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise LedgerError(f"{path} is not JSON: {exc}") from exc
    try:
        found = _checkpoints_in(document, unwrap=True)
    except LedgerError as exc:
        raise LedgerError(f"{path}: {exc.message}") from None
    if not found:
        raise LedgerError(f'{path} holds no ledger checkpoint (expected a checkpoint or a record with "checkpoint")')
    return found


def _checkpoints_in(document: object, *, unwrap: bool) -> tuple[Checkpoint, ...]:
    if type(document) is list:
        return tuple(cp for item in document for cp in _checkpoints_in(item, unwrap=False))
    if type(document) is not dict:
        return ()
    if document.keys() == _CHECKPOINT_FIELDS:
        return (Checkpoint.from_dict(document),)
    if unwrap and document.keys() == _ENVELOPE_FIELDS and type(document["payload"]) is str:
        try:
            inner = json.loads(decode_base64(document["payload"]))
        except (ValueError, RecursionError) as exc:
            raise LedgerError(f"the envelope's payload is not JSON: {exc}") from None
        return _checkpoints_in(inner, unwrap=False)
    found: tuple[Checkpoint, ...] = ()
    if "checkpoint" in document and document["checkpoint"] is not None:
        found += (Checkpoint.from_dict(document["checkpoint"]),)
    if type(document.get("checkpoints")) is list:
        found += tuple(Checkpoint.from_dict(item) for item in document["checkpoints"])
    # A signed incident record (record.json): {"record": {..., "ledger": {"checkpoint": ...}}}.
    record = document.get("record")
    if unwrap and type(record) is dict and type(record.get("ledger")) is dict:
        found += _checkpoints_in(record["ledger"], unwrap=False)
    return found
