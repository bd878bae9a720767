"""One ledger on PostgreSQL without one writer at a time: a journal and a leader-elected sequencer.

In ledger mode `journal` (opt-in: `$OPSDSL_LEDGER_MODE=journal` or
`Store(ledger_mode="journal")`, PostgreSQL only) a state transaction does not read and
extend the chain's head. `JournalLedger.append` inserts the entry, unchained, into the
`journal` table (migration 0004), numbered within its run; one sequencer, the holder of
a session advisory lock, chains journaled entries into `ledger` in batches with the
same entry format and hashes as inline chaining (so `opsdsl ledger verify` is
unchanged), deletes them from the journal and signs a checkpoint of the new head, all in
one transaction: a sequencer killed mid-batch leaves nothing of the batch or all of it.

Order. A bigserial id is not commit order (ids are drawn before commit, in any order),
and neither is the transaction id. Two rules make the chain's order right:

1. per run: a transaction that journals for a run adds to the run's row in
   `journal_runs` and holds that row's lock until it ends, so the next transaction
   journaling for the run waits and numbers its entries after this one's. The sequencer
   chains a run's entries in that number order only, holding an entry back while the one
   numbered before it is not chained yet: per-run order is the run's commit order.
2. globally: only entries of transactions older than every transaction still running
   (`xid < pg_snapshot_xmin(pg_current_snapshot())`) are taken, in (xid, id) order, so a
   transaction that commits late can never have to go before entries already chained.

Readers that need their own entries chained (an incident record's `entries_digest` and
its checkpoint, a review, follow-ups) call `settle(run)` after their commit: it waits
(bounded) until the sequencer has passed the run's journaled entries. `entries(run)`
returns a run's chained entries followed by its still journaled ones (seq 0, no hash),
which is what the runtime's decisions read (approvals, acknowledgements, escalation).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opsdsl.audit.ledger import (
    CHECKPOINT_PAYLOAD_TYPE,
    GENESIS,
    Checkpoint,
    Entry,
    Ledger,
    _check_label,
    entry_hash,
)
from opsdsl.build.signing import keyid, pae
from opsdsl.canonical import canonical_json
from opsdsl.errors import OpsdslError

INLINE, JOURNAL = "inline", "journal"
LEDGER_MODES = (INLINE, JOURNAL)
MODE_ENV = "OPSDSL_LEDGER_MODE"
# pg_try_advisory_lock key of the sequencer's leader session: "opsseq" in ASCII.
SEQUENCER_LOCK = 0x6F7073736571
BATCH_ROWS = 2000
INTERVAL = 0.02  # seconds between batches when the journal is drained
STANDBY_POLL = 0.25  # seconds between a standby's attempts to take the lead
SETTLE_TIMEOUT = 15.0  # seconds a reader waits for its entries to be chained
NO_LEADER_GRACE = 2.0  # seconds without any leader before a reader gives up
NO_SEQUENCER = "no sequencer is running: start `opsdsl serve`, `opsdsl worker` or `opsdsl sequencer`"

log = logging.getLogger(__name__)


class SequencerError(OpsdslError):
    """Journaled entries were not chained in time (no sequencer runs, or it is stuck): exit 2."""

    exit_code = 2


def ledger_mode(explicit: str | None = None) -> str:
    """`explicit`, else $OPSDSL_LEDGER_MODE, else inline; an unknown value is refused."""
    mode = explicit if explicit is not None else (os.environ.get(MODE_ENV) or INLINE)
    if mode not in LEDGER_MODES:
        raise SequencerError(f"ledger mode {mode!r} is not one of {', '.join(LEDGER_MODES)} (${MODE_ENV})")
    return mode


# --- writing: the journal ----------------------------------------------------------------


class JournalLedger(Ledger):
    """The ledger in journal mode, over a `PgConnection`: appends journal, the sequencer chains."""

    journaled = True

    def _append(
        self, kind: str, run: str | None, data: Mapping[str, Any], ts: float | None, head: tuple[int, bytes] | None
    ) -> Entry:
        return self.append_many([(kind, run, data)], ts)[0]

    def append_many(
        self, items: Sequence[tuple[str, str | None, Mapping[str, Any]]], ts: float | None = None
    ) -> list[Entry]:
        """Journal the entries, in order, inside the caller's transaction; returned unchained (seq 0)."""
        conn = self._conn
        if not conn.in_transaction:
            raise RuntimeError("Ledger.append must run inside the caller's transaction (BEGIN IMMEDIATE ... COMMIT)")
        rows: list[tuple[str | None, str, str, dict]] = []
        for kind, run, data in items:
            _check_label("kind", kind, optional=False)
            _check_label("run", run, optional=True)
            if not isinstance(data, Mapping):
                raise TypeError(f"ledger data must be a JSON object, not {type(data).__name__}")
            data = dict(data)
            rows.append((run, kind, canonical_json(data).decode("utf-8"), data))
        ts = time.time() if ts is None else float(ts)
        counts: dict[str, int] = {}
        for run, *_ in rows:
            if run is not None:
                counts[run] = counts.get(run, 0) + 1
        # Rule 1 (the module's docstring): number the run's entries under its row lock.
        # Runs in a fixed order, so two transactions journaling for the same two runs
        # cannot deadlock on these rows.
        last: dict[str, int] = {}
        for run in sorted(counts):
            (last[run],) = conn.execute(
                "INSERT INTO journal_runs (run, journaled) VALUES (?, ?) ON CONFLICT (run)"
                " DO UPDATE SET journaled = journal_runs.journaled + excluded.journaled RETURNING journaled",
                (run, counts[run]),
            ).fetchone()
        next_order = {run: last[run] - counts[run] + 1 for run in counts}
        values: list[Any] = []
        for run, kind, text, _ in rows:
            order = None
            if run is not None:
                order, next_order[run] = next_order[run], next_order[run] + 1
            values += [run, order, ts, kind, text]
        marks = ", ".join("(?, ?, ?, ?, ?)" for _ in rows)
        conn.execute(f"INSERT INTO journal (run, run_order, ts, kind, data) VALUES {marks} RETURNING id", values)
        return [Entry(0, ts, run, kind, data, b"", b"") for run, kind, _, data in rows]

    def checkpoint(self, signer: Any) -> Checkpoint:
        """Outside a transaction: wait until everything journaled so far is chained, then sign
        the head. Inside one: the entries of this transaction cannot be chained before it
        commits, and the batch that chains them is signed by the sequencer anyway, so this
        returns the latest stored checkpoint (call again after the commit for one covering them)."""
        if self._conn.in_transaction:
            return self.latest_checkpoint()  # type: ignore[return-value]  (None before the first batch)
        self.settle()
        return super().checkpoint(signer)

    # --- reading ---------------------------------------------------------------------------

    def entries(self, run: str | None = None, after: int = 0) -> Iterator[Entry]:
        """Chained entries with seq > `after`; for one run, its journaled ones follow (seq 0).

        One statement reads both tables, so one snapshot: an entry is either still
        journaled or chained, never both or neither."""
        import json

        if run is None:
            yield from super().entries(None, after)
            return
        rows = self._conn.execute(
            "SELECT seq, ts, run, kind, data, prev, hash, 0 AS pending, seq AS position FROM ledger"
            " WHERE run = ? AND seq > ?"
            " UNION ALL SELECT 0, ts, run, kind, data, NULL, NULL, 1, run_order FROM journal WHERE run = ?"
            " ORDER BY 8, 9",
            (run, after, run),
        )
        for seq, ts, run_id, kind, data, prev, digest, _, _ in rows:
            yield Entry(seq, ts, run_id, kind, json.loads(data), prev or b"", digest or b"")

    def pending(self, run: str | None = None) -> int:
        """How many committed entries (of `run`, or all) wait in the journal."""
        if run is None:
            return self._conn.execute("SELECT count(*) FROM journal").fetchone()[0]
        return self._conn.execute("SELECT count(*) FROM journal WHERE run = ?", (run,)).fetchone()[0]

    # A process that can sign checkpoints (a Runtime sets this to its signer's loader) chains
    # its own entries when no sequencer runs: `opsdsl run`, `approve`, `resume` on PostgreSQL
    # need no other process. It takes the leader lock like any sequencer, for as long as that.
    signer: Any = None

    def _chain_myself(self, check: str, args: tuple, deadline: float) -> None:
        sequencer = Sequencer(self._conn.url, self.signer(), application="opsdsl (chaining its own entries)")
        try:
            if not sequencer.lead():
                return  # a sequencer started meanwhile: wait for it
            while self._conn.execute(check, args).fetchone() is not None and time.monotonic() < deadline:
                if sequencer.chain_batch().count == 0:
                    time.sleep(0.005)  # an older transaction still runs (rule 2): wait for it
        finally:
            sequencer.close()

    def settle(self, run: str | None = None, timeout: float | None = None) -> None:
        """Wait until every entry (of `run`, or all) committed before this call is chained.

        Outside a transaction only (the caller's own entries must be committed). Raises
        SequencerError after `timeout` seconds, naming the cause when no sequencer runs."""
        conn = self._conn
        if conn.in_transaction:
            raise RuntimeError("settle() waits for committed entries: call it after the transaction")
        where, args = ("WHERE run = ?", (run,)) if run is not None else ("", ())
        (last,) = conn.execute(f"SELECT max(id) FROM journal {where}", args).fetchone()
        if last is None:
            return
        start = time.monotonic()
        deadline = start + (SETTLE_TIMEOUT if timeout is None else timeout)
        pause, leader_seen, next_look = 0.002, start, start + 0.5
        check = f"SELECT 1 FROM journal {where} {'AND' if where else 'WHERE'} id <= ? LIMIT 1"
        while conn.execute(check, (*args, last)).fetchone() is not None:
            now = time.monotonic()
            if now >= next_look:  # nobody leads for longer than a standby needs to take over: say so now
                next_look = now + 0.5
                if sequencer_running(conn):
                    leader_seen = now
                elif self.signer is not None:
                    self._chain_myself(check, (*args, last), deadline)
                    leader_seen = time.monotonic()
                    continue
                elif now - leader_seen > NO_LEADER_GRACE:
                    raise SequencerError(NO_SEQUENCER)
            if now > deadline:
                raise SequencerError(
                    f"the sequencer has not chained journaled entries up to #{last} in {now - start:.0f} s;"
                    " is it stuck? (see `opsdsl sequencer`)"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def sequencer_running(conn: Any) -> bool:
    """Whether some session holds the sequencer's lock in this database."""
    row = conn.execute(
        "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = ? AND objid = ?"
        " AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (SEQUENCER_LOCK >> 32, SEQUENCER_LOCK & 0xFFFFFFFF),
    ).fetchone()
    return row is not None


# --- chaining: the sequencer -------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """What one batch chained: entries `first`..`last` (none when `count` is 0), `held` back."""

    count: int
    first: int
    last: int
    held: int


class Sequencer:
    """Chains the journal into the ledger while it holds the leader lock (a dedicated session).

    `lead()` tries once for the lock; `chain_batch()` chains one batch (leader only);
    `run(stop)` is a standby until it leads, then chains until `stop` is set or its
    session is lost (its lock goes with it: a standby elsewhere takes over)."""

    def __init__(self, url: str, signer: Any, *, batch_rows: int = BATCH_ROWS, application: str = "opsdsl sequencer"):
        self.url = url
        self.signer = signer
        self.keyid = keyid(signer.public_key())
        self.batch_rows = batch_rows
        self.application = application
        self._raw: Any = None
        self.leading = False

    def connect(self) -> None:
        import psycopg

        if self._raw is not None and not self._raw.closed:
            self._raw.close()
        self._raw = psycopg.connect(self.url, autocommit=True, application_name=self.application, connect_timeout=10)
        self.leading = False

    def close(self) -> None:
        if self._raw is not None and not self._raw.closed:
            self._raw.close()
        self._raw, self.leading = None, False

    def lead(self) -> bool:
        """Take the leader lock if nobody holds it (never waits)."""
        if self._raw is None or self._raw.closed or self._raw.broken:
            self.connect()
        if not self.leading:
            (self.leading,) = self._raw.execute("SELECT pg_try_advisory_lock(%s)", (SEQUENCER_LOCK,)).fetchone()
        return self.leading

    def chain_batch(self) -> Batch:
        """One transaction: take ready journal rows, chain them, delete them, sign the new head."""
        if not self.leading:
            raise RuntimeError("chain_batch() needs the leader lock (lead() first)")
        raw = self._raw
        with raw.transaction():
            # Rule 2: only transactions older than every one still running, in (xid, id) order.
            rows = raw.execute(
                "SELECT id, run, run_order, ts, kind, data FROM journal"
                " WHERE xid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY xid, id LIMIT %s",
                (self.batch_rows,),
            ).fetchall()
            if not rows:
                return Batch(0, 0, 0, 0)
            runs = sorted({row[1] for row in rows if row[1] is not None})
            chained = dict(
                raw.execute("SELECT run, chained FROM journal_chained WHERE run = ANY(%s)", (runs,)).fetchall()
            )
            ordered, held = _in_run_order(rows, chained)
            if not ordered:
                return Batch(0, 0, 0, held)
            head = raw.execute("SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (0, GENESIS) if head is None else (head[0], bytes(head[1]))
            first = seq + 1
            chain = []
            for _, run, _, ts, kind, data in ordered:
                seq += 1
                digest = entry_hash(prev, seq, ts, run, kind, data)
                chain.append((seq, ts, run, kind, data, prev, digest))
                prev = digest
            with raw.cursor() as cur:
                with cur.copy("COPY ledger (seq, ts, run, kind, data, prev, hash) FROM STDIN") as copy:
                    copy.set_types(["int8", "float8", "text", "text", "text", "bytea", "bytea"])
                    for item in chain:
                        copy.write_row(item)
                cur.execute("DELETE FROM journal WHERE id = ANY(%s)", ([row[0] for row in ordered],))
                moved = {run: count for run, count in chained.items() if run in runs}
                if moved:
                    cur.executemany(
                        "INSERT INTO journal_chained (run, chained) VALUES (%s, %s)"
                        " ON CONFLICT (run) DO UPDATE SET chained = excluded.chained",
                        sorted(moved.items()),
                    )
                sig = self.signer.sign(pae(CHECKPOINT_PAYLOAD_TYPE, Checkpoint.payload_for(seq, prev)))
                cur.execute(
                    "INSERT INTO checkpoints (seq, head, ts, keyid, sig) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (seq) DO UPDATE SET head = excluded.head, ts = excluded.ts,"
                    " keyid = excluded.keyid, sig = excluded.sig",
                    (seq, prev, time.time(), self.keyid, sig),
                )
            return Batch(len(chain), first, seq, held)

    def run(self, stop: threading.Event, *, interval: float = INTERVAL, standby_poll: float = STANDBY_POLL) -> None:
        """Standby until leader, then chain batches until `stop`; survives a lost database connection."""
        import psycopg

        try:
            while not stop.is_set():
                try:
                    if not self.lead():
                        stop.wait(standby_poll)
                        continue
                    batch = self.chain_batch()
                    if batch.count < self.batch_rows:
                        stop.wait(interval)
                except psycopg.Error as error:  # the server restarted or the session was cut: lead again
                    log.warning("sequencer: %s; reconnecting", _first_line(error))
                    self.close()
                    stop.wait(standby_poll)
        finally:
            self.close()  # whatever stops it, its session (and the leader lock) goes: a standby takes over


def _in_run_order(rows: list[tuple], chained: dict[str, int]) -> tuple[list[tuple], int]:
    """The rows to chain now, in order, and how many are held back (rule 1).

    Rows come in (xid, id) order. A run's row goes when it is the next the run numbered
    (`chained[run] + 1`); otherwise it waits for its predecessor, which may come later in
    this batch (then it follows it) or in a later one. `chained` is updated."""
    ordered: list[tuple] = []
    waiting: dict[str, dict[int, tuple]] = {}
    for row in rows:
        run, order = row[1], row[2]
        if run is None:
            ordered.append(row)
            continue
        done = chained.get(run, 0)
        if order <= done:
            raise SequencerError(f"journal row {row[0]} of run {run} is numbered {order}, already chained: refusing")
        if order != done + 1:
            waiting.setdefault(run, {})[order] = row
            continue
        ordered.append(row)
        done = order
        held = waiting.get(run, {})
        while done + 1 in held:
            done += 1
            ordered.append(held.pop(done))
        chained[run] = done
    return ordered, sum(len(held) for held in waiting.values())


class BackgroundSequencer:
    """A sequencer on a daemon thread of a `serve` or `worker` process: every such process
    runs one; one leads, the others stand by."""

    def __init__(self, url: str, signer: Any, *, application: str = "opsdsl sequencer (in process)") -> None:
        self.sequencer = Sequencer(url, signer, application=application)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opsdsl-sequencer", daemon=True)
        self.last_error: str | None = None

    def _run(self) -> None:
        """Never takes the process down, and never stops for good: after an error (a bug, a
        bad journal row, the signer) its session is closed — the leader lock with it, so a
        standby elsewhere can lead — and it stands by again after a pause."""
        pause = 1.0
        while not self._stop.is_set():
            try:
                self.sequencer.run(self._stop)
            except Exception as error:
                self.last_error = f"{type(error).__name__}: {_first_line(error)}"
                log.exception("sequencer stopped: %s; standing by again in %.0f s", self.last_error, pause)
                self._stop.wait(pause)
                pause = min(pause * 2, 60.0)

    def start(self) -> BackgroundSequencer:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def leading(self) -> bool:
        return self.sequencer.leading


def start_if_journal(store: Any, signer: Any) -> BackgroundSequencer | None:
    """For `serve` and `worker`: a background sequencer when `store` journals its ledger, else None."""
    if not getattr(store.ledger, "journaled", False):
        return None
    return BackgroundSequencer(store.conn.url, signer).start()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
