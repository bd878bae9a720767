"""Helpers for the journal + sequencer tests: writers that journal outside the global
writer lock, and a check of the chain."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.audit.ledger import GENESIS, Checkpoint, entry_hash
from opsdsl.build.signing import keyid


class Writer:
    """One connection journaling in plain BEGIN … COMMIT transactions: no global writer lock,
    as transactions would be once that lock is gone (the interleavings we must order)."""

    def __init__(self, url: str) -> None:
        from opsdsl.runtime.database import PgConnection
        from opsdsl.runtime.sequencer import JournalLedger

        self.conn = PgConnection(url, application="test writer")
        self.ledger = JournalLedger(self.conn)

    def begin(self) -> int:
        """BEGIN and take a transaction id now (as a first write would): returns it."""
        self.conn.execute("BEGIN")
        (xid,) = self.conn.execute("SELECT pg_current_xact_id()::text").fetchone()
        return int(xid)

    def journal(self, run: str | None, **data) -> None:
        self.ledger.append("step.intent", run, data, ts=1796644523.25)

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


def chained(url: str, run: str | None = None) -> list[dict]:
    """The ledger's entries' data, in seq order (of one run, or all)."""
    import psycopg

    with psycopg.connect(url) as conn:
        if run is None:
            rows = conn.execute("SELECT data FROM ledger ORDER BY seq").fetchall()
        else:
            rows = conn.execute("SELECT data FROM ledger WHERE run = %s ORDER BY seq", (run,)).fetchall()
    import json

    return [json.loads(row[0]) for row in rows]


def check_chain(url: str, key: Ed25519PrivateKey | None = None) -> int:
    """Every entry in its place, linked and matching its hash; every checkpoint signed and
    matching its entry. Returns the number of entries."""
    import psycopg

    with psycopg.connect(url) as conn:
        prev, expected = GENESIS, 1
        hashes = {}
        for seq, ts, run, kind, data, stored_prev, stored in conn.execute(
            "SELECT seq, ts, run, kind, data, prev, hash FROM ledger ORDER BY seq"
        ):
            assert seq == expected, f"entry {expected} missing"
            assert bytes(stored_prev) == prev, f"entry {seq} does not link"
            digest = entry_hash(prev, seq, ts, run, kind, data)
            assert digest == bytes(stored), f"entry {seq} does not match its hash"
            hashes[seq] = digest
            prev, expected = digest, expected + 1
        for seq, head, ts, kid, sig in conn.execute("SELECT seq, head, ts, keyid, sig FROM checkpoints"):
            assert hashes[seq] == bytes(head), f"checkpoint {seq} does not match"
            if key is not None:
                checkpoint = Checkpoint(seq, bytes(head), ts, kid, bytes(sig))
                assert checkpoint.signature_problem({keyid(key.public_key()): key.public_key()}) is None
    return expected - 1


def journal_left(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM journal").fetchone()[0]
