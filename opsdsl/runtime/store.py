"""Durable run state in the state database (one SQLite file, WAL, synchronous=FULL).

Tables beside the ledger's: `runs`, `steps` (one row per plan node of a run) and
`approvals`. The ledger is the audit trail; these tables are the scheduler's working
state, so that `opsdsl resume` can continue a run after a crash. Both are written in the
same transactions, so they never disagree.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.errors import OpsdslError

DB_NAME = "state.db"

# Run statuses. A run is live while running, paused or interrupted.
RUNNING, PAUSED, INTERRUPTED = "running", "paused", "interrupted"
SUCCEEDED, FAILED, REFUSED, CANCELLED = "succeeded", "failed", "refused", "cancelled"
FINAL_RUN_STATUSES = (SUCCEEDED, FAILED, REFUSED, CANCELLED)
_FINAL_MARKS = ", ".join("?" for _ in FINAL_RUN_STATUSES)

# Step statuses. "Finished" for `needs` means succeeded, skipped, or failed with continue_on_error.
PENDING, STARTED = "pending", "running"
AWAITING_APPROVAL, IN_DOUBT, SKIPPED = "awaiting_approval", "in_doubt", "skipped"
# A `wait` step, or a step between two attempts, until `wake_at`: durable, so that a
# restarted process neither runs it early nor takes a finished attempt for one in flight.
WAITING = "waiting"
FINAL_STEP_STATUSES = (SUCCEEDED, FAILED, SKIPPED)

_DDL = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    pack TEXT NOT NULL,
    playbook TEXT NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL DEFAULT 'steps',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    envelope BLOB NOT NULL,
    plan_digest TEXT NOT NULL,
    trust TEXT NOT NULL,
    params TEXT NOT NULL,
    inputs TEXT NOT NULL,
    event TEXT NOT NULL,
    hook TEXT,
    trig TEXT,
    escalate TEXT,
    parent_run TEXT,
    parent_step TEXT,
    incident_dir TEXT NOT NULL,
    error TEXT,
    owner_pid INTEGER,
    dedupe_key TEXT,
    event_id INTEGER,
    requested_by TEXT,
    owner TEXT,
    cancel_requested TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status);
CREATE INDEX IF NOT EXISTS runs_hook ON runs(hook, dedupe_key, created_at);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at, id);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run);
CREATE INDEX IF NOT EXISTS runs_finished ON runs(finished_at);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs(id),
    step_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    started_at REAL,
    finished_at REAL,
    completed INTEGER,
    wake_at REAL,
    approvals_needed INTEGER NOT NULL DEFAULT 0,
    approval_reason TEXT,
    approvers TEXT,
    PRIMARY KEY (run_id, step_id)
);
CREATE TABLE IF NOT EXISTS approvals (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    by TEXT NOT NULL,
    decision TEXT NOT NULL,
    answers TEXT NOT NULL,
    comment TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (run_id, step_id, by)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'accepted',
    note TEXT
);
CREATE INDEX IF NOT EXISTS events_status ON events(status, id);
CREATE TABLE IF NOT EXISTS plan_versions (
    pack TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    digest TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trigger_state (
    pack TEXT NOT NULL,
    trig TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (pack, trig)
);
CREATE TABLE IF NOT EXISTS spent_signatures (
    signature TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spent_signatures_expiry ON spent_signatures(expires_at);
CREATE TABLE IF NOT EXISTS timers (
    run_id TEXT NOT NULL,
    step_id TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    due_at REAL NOT NULL,
    PRIMARY KEY (run_id, step_id, kind)
);
CREATE INDEX IF NOT EXISTS timers_due ON timers(due_at);
"""


class EventKeyReused(OpsdslError):
    """An Idempotency-Key already stored with another body (exit 2; HTTP 422)."""

    exit_code = 2

    def __init__(self, key: str) -> None:
        shown = key if len(key) <= 40 else key[:37] + "…"
        super().__init__(f"Idempotency-Key {shown!r} was already used for other events")


class StateError(OpsdslError):
    """The state directory or database cannot be used (exit 2), or a run is not found."""

    exit_code = 2


def state_dir(option: str | os.PathLike | None) -> Path:
    """`--state-dir`, else $OPSDSL_HOME, else ./.opsdsl."""
    return Path(option or os.environ.get("OPSDSL_HOME") or ".opsdsl")


def prepare_state_dir(root: Path, warn: Callable[[str], None] | None = None) -> None:
    """Create `root` 0700, or make sure an existing one is nobody else's to write.

    Whoever can write the state directory can plant `trust.yaml` or a key, so a folder
    that group or others may write is tightened to 0700 (with a warning) when it is ours,
    and refused when it is not (we could not fix it, and should not trust it).
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.stat()
    mode = stat.S_IMODE(info.st_mode)
    if not mode & 0o022:
        return
    if info.st_uid != os.geteuid():
        raise StateError(
            f"state directory {root} is mode {mode:04o} (writable by others) and owned by another user"
            f" (uid {info.st_uid}): anyone could plant a trust file or key there; have its owner run"
            f" `chmod 700 {root}`, or use another --state-dir"
        )
    os.chmod(root, 0o700)
    (warn or _warn)(f"warning: state directory {root} was mode {mode:04o} (writable by others); made it 0700")


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


def has_state(root: Path) -> bool:
    """Whether there is opsdsl state to read for `root`, so that a mistyped --state-dir is an
    error, not "no runs": `root`/state.db; with $OPSDSL_DATABASE set, the folder itself (its
    keys, trust file and incidents; the database holds the rest, and whether it is reachable
    is found when it is opened)."""
    from opsdsl.runtime.database import database_url

    if database_url() is not None:
        return root.is_dir()
    return (root / DB_NAME).is_file()


def no_state_message(root: Path) -> str:
    from opsdsl.runtime.database import database_url

    if database_url() is not None:
        return f"no opsdsl state directory {root} (its keys and incidents); pass --state-dir DIR or set OPSDSL_HOME"
    return f"no opsdsl state in {root} (no {DB_NAME}); pass --state-dir DIR or set OPSDSL_HOME"


@contextmanager
def read_only(root: Path) -> Iterator[Any]:
    """A connection that only reads the state of `root`: its state.db opened read-only
    (`mode=ro`: a reader never creates, migrates or locks it for writing), or the PostgreSQL
    database $OPSDSL_DATABASE names. sqlite3.Error when it cannot be read."""
    from opsdsl.runtime.database import PgConnection, database_url

    url = database_url()
    if url is not None:
        conn: Any = PgConnection(url, application="opsdsl (reader)")
    else:
        conn = sqlite3.connect((root / DB_NAME).resolve().as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


@dataclass
class RunRow:
    id: str
    incident_id: str
    pack: str
    playbook: str
    severity: str
    status: str
    phase: str
    created_at: float
    updated_at: float
    finished_at: float | None
    envelope: bytes
    plan_digest: str
    trust: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    event: dict[str, Any]
    hook: str | None
    trig: str | None
    escalate: str | None
    parent_run: str | None
    parent_step: str | None
    incident_dir: str
    error: str | None
    owner_pid: int | None
    dedupe_key: str | None = None
    event_id: int | None = None
    requested_by: str | None = None  # who started the run: a person's recorded name, or None (an event)
    owner: str | None = None  # "serve" while a server owns the run (drives it, fires its timers)
    cancel_requested: str | None = None  # who asked to cancel the run (recorded name); it ends `cancelled`
    # A worker's lease on the run (opsdsl.runtime.lease): who, the fencing epoch, until when
    # (the database's clock; NULL: nobody holds it, e.g. a paused run).
    lease_owner: str | None = None
    lease_epoch: int = 0
    lease_until: float | None = None


@dataclass
class StepRow:
    step_id: str
    status: str
    attempts: int = 0
    outputs: dict[str, Any] | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    completed: int | None = None
    wake_at: float | None = None
    approvals_needed: int = 0
    approval_reason: str | None = None
    approvers: list[str] | None = None


_JSON_RUN_FIELDS = ("params", "inputs", "event")


class Store:
    """The state database of one state directory."""

    def __init__(
        self,
        root: Path,
        durable: bool = True,
        create: bool = True,
        database: str | None = None,
        ledger_mode: str | None = None,
    ) -> None:
        """`durable=False` (rehearsals in `opsdsl test`) skips fsync: fast, and fine for a
        throwaway state directory, never for a real one. `create=False` (commands that only
        read or steer existing runs) refuses a state directory that does not exist yet, so a
        mistyped `--state-dir` is an error rather than a new empty state.

        `database`: a postgresql:// URL (else $OPSDSL_DATABASE; unset or `sqlite` is
        state.db in `root`). On PostgreSQL the state directory still holds the keys, trust
        file and incident folders; the runs, approvals and ledger are in the database,
        whose schema `opsdsl db migrate` made (see opsdsl.runtime.database).

        `ledger_mode` (else $OPSDSL_LEDGER_MODE): `inline` (the default) chains each entry in
        its transaction; `journal` (PostgreSQL only; SQLite always chains inline) journals
        them for the sequencer to chain (opsdsl.runtime.sequencer)."""
        from opsdsl.audit.ledger import Ledger
        from opsdsl.runtime.database import database_url

        self.root = root
        url = database_url(database)
        self.postgres = url is not None
        if url is not None:
            self.conn = self._open_postgres(root, url, durable, create)
        else:
            self.conn = self._open_sqlite(root, durable, create)
        self.ledger = Ledger(self.conn)
        if self.postgres and _database_ledger_mode(self.conn, ledger_mode) == "journal":
            from opsdsl.runtime.sequencer import JournalLedger

            self.ledger = JournalLedger(self.conn)
        elif ledger_mode is not None or os.environ.get("OPSDSL_LEDGER_MODE"):
            _ledger_mode(ledger_mode)  # an unknown mode is refused on SQLite too
        # Set by a worker while it drives a run under a lease (opsdsl.runtime.lease): every
        # transaction then checks that the lease is still ours before it writes.
        self.fence: Any = None
        # (run, cancel_requested) as the last transaction's fence check read it, else None.
        self.fenced_cancel: tuple[str, str | None] | None = None
        # A server's WalSyncer (runtime/walsync.py): relaxed transactions leave their fsync to it.
        self.syncer: Any = None

    @staticmethod
    def _open_sqlite(root: Path, durable: bool, create: bool) -> Any:
        from opsdsl.audit.ledger import LedgerError, open_database
        from opsdsl.runtime.migrate import SQLITE_VERSION

        database = root / DB_NAME
        if not create and not database.is_file():
            raise StateError(f"no opsdsl state in {root} (no {DB_NAME}); pass --state-dir DIR or set OPSDSL_HOME")
        try:
            new = not database.exists()
            prepare_state_dir(root)
            conn = open_database(database)
            if not durable:
                conn.execute("PRAGMA synchronous=OFF")
            if new:
                os.chmod(database, 0o600)  # runs, params and events are nobody else's business
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SQLITE_VERSION:
                conn.close()
                raise StateError(
                    f"{database} was written by a newer opsdsl (schema version {version}, this one knows"
                    f" {SQLITE_VERSION}): upgrade opsdsl; a state database is never downgraded"
                )
            conn.executescript(_DDL)
            _add_missing_columns(conn)
            for statement in _LATER_INDEXES:  # on columns an older state.db gains just above
                conn.execute(statement)
            if version < SQLITE_VERSION:
                conn.execute(f"PRAGMA user_version = {SQLITE_VERSION}")
        except (OSError, sqlite3.DatabaseError, LedgerError) as error:
            raise StateError(f"cannot open the state database in {root}: {error}") from None
        return conn

    @staticmethod
    def _open_postgres(root: Path, url: str, durable: bool, create: bool) -> Any:
        from opsdsl.runtime.database import PgConnection, PgError
        from opsdsl.runtime.migrate import check_version

        if create:
            prepare_state_dir(root)
        elif not root.is_dir():
            raise StateError(no_state_message(root))
        try:
            conn = PgConnection(url, durable=durable)
        except PgError as error:
            raise StateError(str(error)) from None
        try:
            check_version(conn)
        except Exception:
            conn.close()
            raise
        return conn

    def now_sql(self) -> str:
        """`now()` as an SQL expression, to use the database's clock inside a statement."""
        if self.postgres:
            return "extract(epoch FROM clock_timestamp())::float8"
        return "((julianday('now') - 2440587.5) * 86400.0)"

    def now(self) -> float:
        """The database's clock (seconds since the epoch): what leases are measured by, so
        that processes on machines whose clocks disagree still agree on who holds what."""
        if self.postgres:
            (now,) = self.conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
            return float(now)
        import time

        return time.time()

    def close(self) -> None:
        self.conn.close()

    def _run_scope(self) -> str | None:
        """The run this transaction may lock alone: only on PostgreSQL, only when the ledger
        journals (inline chaining reads the one head, so every writer must take turns), and
        only under a run's lease (what the transaction touches is that run's)."""
        if not self.postgres or self.fence is None or not getattr(self.ledger, "journaled", False):
            return None
        scope = getattr(self.fence, "run", None)
        return scope() if scope is not None else None

    @contextmanager
    def transaction(self, relaxed: bool = False) -> Iterator[Any]:
        """BEGIN IMMEDIATE … COMMIT: other processes (approve, serve) wait, nobody interleaves.

        `relaxed` (a server's run transactions, on SQLite with a `syncer`): COMMIT without an
        fsync, which the syncer's thread makes for several commits at once; before anything
        outside depends on the transaction, the caller awaits `durable()` (runtime/walsync.py).
        Elsewhere (PostgreSQL, the CLI) it is an ordinary, synced transaction.

        Under a worker's lease (`self.fence`), the lease is checked (and extended) first: a
        worker presumed dead whose lease another took writes nothing (LeaseLost).

        On PostgreSQL with the journal ledger, a transaction a worker makes under a run's
        lease locks only that run (its root: a sub-run is driven through its caller), beside
        every other run's: see `PgConnection.begin_run`. Every other transaction (intake,
        approvals, people, timers set from outside) is still the only writer."""
        run = self._run_scope()
        self.fenced_cancel = None
        syncer = self.syncer if relaxed else None
        if syncer is not None:
            syncer.check()  # after a failed fsync nothing relaxed commits: its caller could not be told it is durable
            self.conn.execute("PRAGMA synchronous=NORMAL")  # only between transactions
        try:
            if run is None:
                self.conn.execute("BEGIN IMMEDIATE")
            else:
                self.conn.begin_run(run)
            try:
                if self.fence is not None:
                    self.fence.check(self)
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")
        finally:
            if syncer is not None:  # never left relaxed, even after a COMMIT that failed
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                self.conn.execute("PRAGMA synchronous=FULL")
        if syncer is not None:
            syncer.note_commit()

    async def durable(self) -> None:
        """Until every transaction this store committed so far is on disk: at once, unless
        relaxed commits wait for the syncer's next fsync."""
        if self.syncer is not None:
            await self.syncer.durable()

    # runs ---------------------------------------------------------------------------------

    def insert_run(self, run: RunRow) -> None:
        values = dict(run.__dict__)
        for name in _JSON_RUN_FIELDS:
            values[name] = json.dumps(values[name], sort_keys=True)
        columns = ", ".join(values)
        marks = ", ".join(f":{name}" for name in values)
        self.conn.execute(f"INSERT INTO runs ({columns}) VALUES ({marks})", values)

    def update_run(self, run_id: str, **fields: Any) -> None:
        assignments = ", ".join(f"{name} = :{name}" for name in fields)
        self.conn.execute(f"UPDATE runs SET {assignments} WHERE id = :_id", {**fields, "_id": run_id})

    def run(self, run_id: str) -> RunRow:
        row = self.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StateError(f"no run `{run_id}` in {self.root} (see `opsdsl runs`)")
        return _run_row(self.conn, row)

    def runs(self, status: str | None = None, limit: int | None = None) -> list[RunRow]:
        query = "SELECT * FROM runs"
        args: list[Any] = []
        if status:
            query += " WHERE status = ?"
            args.append(status)
        query += " ORDER BY created_at DESC, id DESC"
        if limit:
            query += f" LIMIT {int(limit)}"
        return [_run_row(self.conn, row) for row in self.conn.execute(query, args)]

    def live_runs(self, hook: str, dedupe_key: str | None = None) -> int:
        """Runs a hook started that are not finished (running, paused or interrupted)."""
        query = f"SELECT COUNT(*) FROM runs WHERE hook = ? AND status NOT IN ({_FINAL_MARKS})"
        args: list[Any] = [hook, *FINAL_RUN_STATUSES]
        if dedupe_key is not None:
            query += " AND dedupe_key = ?"
            args.append(dedupe_key)
        return self.conn.execute(query, args).fetchone()[0]

    def last_run_started(self, hook: str, dedupe_key: str | None = None) -> float | None:
        query = "SELECT MAX(created_at) FROM runs WHERE hook = ?"
        args: list[Any] = [hook]
        if dedupe_key is not None:
            query += " AND dedupe_key = ?"
            args.append(dedupe_key)
        return self.conn.execute(query, args).fetchone()[0]

    # events -------------------------------------------------------------------------------

    def add_events(self, bodies: list[str], source: str, received_at: float) -> list[int]:
        """Persist accepted events (the caller commits); their ids, in order."""
        return [event_id for event_id, _ in self.add_keyed_events(bodies, source, received_at, [None] * len(bodies))]

    def add_keyed_events(
        self, bodies: Sequence[str], source: str, received_at: float, keys: Sequence[str | None]
    ) -> list[tuple[int, bool]]:
        """Persist accepted events (the caller commits): (id, whether it is new), in order.

        An event whose key (the request's Idempotency-Key, with its source and place) is
        already stored is not stored again: its id is the first one's and it is not new (a
        client's retry after a lost answer, perhaps to another replica). The same key with
        another body is EventKeyReused."""
        out = []
        for body, key in zip(bodies, keys, strict=True):
            if key is not None:
                found = self.conn.execute("SELECT id, body FROM events WHERE idem_key = ?", (key,)).fetchone()
                if found is not None:
                    if found[1] != body:
                        raise EventKeyReused(key.split("\0")[1])
                    out.append((found[0], False))
                    continue
            cursor = self.conn.execute(
                "INSERT INTO events (received_at, source, body, idem_key) VALUES (?, ?, ?, ?)",
                (received_at, source, body, key),
            )
            out.append((cursor.lastrowid, True))
        return out

    def pending_events(self) -> list[tuple[int, float, str]]:
        rows = self.conn.execute("SELECT id, received_at, body FROM events WHERE status = 'accepted' ORDER BY id")
        return list(rows)

    def finish_event(self, event_id: int, note: str) -> None:
        self.conn.execute("UPDATE events SET status = 'done', note = ? WHERE id = ?", (note, event_id))

    def trigger_states(self) -> dict[tuple[str, str], str]:
        return {(r[0], r[1]): r[2] for r in self.conn.execute("SELECT pack, trig, state FROM trigger_state")}

    def save_trigger_state(self, pack: str, trigger: str, state: str) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO trigger_state (pack, trig, state) VALUES (?, ?, ?)", (pack, trigger, state)
        )

    def newest_plan_version(self, pack: str) -> tuple[str, str] | None:
        """(version, digest) of the newest signed plan of `pack` that ran here, if any."""
        row = self.conn.execute("SELECT version, digest FROM plan_versions WHERE pack = ?", (pack,)).fetchone()
        return None if row is None else (row[0], row[1])

    def record_plan_version(self, pack: str, version: str, digest: str, at: float) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO plan_versions (pack, version, digest, at) VALUES (?, ?, ?, ?)",
            (pack, version, digest, at),
        )

    def children(self, run_id: str) -> list[RunRow]:
        rows = self.conn.execute("SELECT * FROM runs WHERE parent_run = ? ORDER BY created_at", (run_id,))
        return [_run_row(self.conn, row) for row in rows]

    # steps --------------------------------------------------------------------------------

    def insert_steps(self, run_id: str, step_ids: list[str]) -> None:
        self.conn.executemany(
            "INSERT INTO steps (run_id, step_id, status) VALUES (?, ?, ?)",
            [(run_id, step_id, PENDING) for step_id in step_ids],
        )

    def save_step(self, run_id: str, step: StepRow) -> None:
        self.conn.execute(_SAVE_STEP, _step_values(run_id, step))

    def save_steps(self, run_id: str, steps: Sequence[StepRow]) -> None:
        """Several step rows in one statement (a group commit's: one round trip on PostgreSQL)."""
        if len(steps) == 1:
            self.save_step(run_id, steps[0])
        elif steps:
            self.conn.executemany(_SAVE_STEP, [_step_values(run_id, step) for step in steps])

    def steps(self, run_id: str) -> dict[str, StepRow]:
        rows = self.conn.execute(
            "SELECT step_id, status, attempts, outputs, error, started_at, finished_at, completed, wake_at,"
            " approvals_needed, approval_reason, approvers FROM steps WHERE run_id = ?",
            (run_id,),
        )
        out = {}
        for row in rows:
            out[row[0]] = StepRow(
                row[0],
                row[1],
                row[2],
                json.loads(row[3]),
                row[4],
                row[5],
                row[6],
                row[7],
                row[8],
                row[9],
                row[10],
                json.loads(row[11]) if row[11] is not None else None,
            )
        return out

    # timers ---------------------------------------------------------------------------------

    def set_timer(self, run_id: str, step_id: str, kind: str, due_at: float) -> None:
        """A moment a server must look at the run again (inside the caller's transaction)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO timers (run_id, step_id, kind, due_at) VALUES (?, ?, ?, ?)",
            (run_id, step_id, kind, due_at),
        )

    def due_timers(self, now: float) -> list[tuple[str, str, str, float]]:
        """(run, step, kind, due) of the timers due by `now`, earliest first."""
        return self.conn.execute(
            "SELECT run_id, step_id, kind, due_at FROM timers WHERE due_at <= ? ORDER BY due_at", (now,)
        ).fetchall()

    def next_timer(self) -> float | None:
        (due,) = self.conn.execute("SELECT MIN(due_at) FROM timers").fetchone()
        return due

    def drop_timers(self, run_ids: list[str], now: float) -> None:
        """Forget the timers of these runs (and of their sub-runs) that are due: driving the
        run acts on them."""
        family = [member for run_id in run_ids for member in self.family(run_id)]
        self.conn.executemany("DELETE FROM timers WHERE run_id = ? AND due_at <= ?", [(r, now) for r in family])

    def family(self, run_id: str) -> list[str]:
        """The run and its sub-runs (`playbook.call`), at every depth."""
        found, queue = [], [run_id]
        while queue:
            member = queue.pop()
            found.append(member)
            queue += [row[0] for row in self.conn.execute("SELECT id FROM runs WHERE parent_run = ?", (member,))]
        return found

    def root_run(self, run_id: str) -> str:
        """The top-level run a sub-run belongs to (a sub-run is driven through its caller)."""
        while True:
            row = self.conn.execute("SELECT parent_run FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None or row[0] is None:
                return run_id
            run_id = row[0]

    def pending_approvals(self, run_id: str) -> list[str]:
        rows = self.conn.execute(
            "SELECT step_id FROM steps WHERE run_id = ? AND status IN (?, ?) ORDER BY step_id",
            (run_id, AWAITING_APPROVAL, IN_DOUBT),
        )
        return [row[0] for row in rows]

    # approvals ----------------------------------------------------------------------------

    def add_approval(
        self, run_id: str, step_id: str, by: str, decision: str, answers: dict, comment: str | None, at: float
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO approvals (run_id, step_id, by, decision, answers, comment, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (run_id, step_id, by, decision, json.dumps(answers, sort_keys=True), comment, at),
        )

    def approvals(self, run_id: str, step_id: str) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT by, decision, answers, comment, at FROM approvals WHERE run_id = ? AND step_id = ? ORDER BY at",
            (run_id, step_id),
        )
        return [{"by": r[0], "decision": r[1], "answers": json.loads(r[2]), "comment": r[3], "at": r[4]} for r in rows]


# Columns added after the first release of a table: (table, column, declaration).
_LATER_COLUMNS = (
    ("runs", "dedupe_key", "TEXT"),
    ("runs", "event_id", "INTEGER"),
    ("runs", "requested_by", "TEXT"),
    ("runs", "owner", "TEXT"),
    ("runs", "cancel_requested", "TEXT"),
    ("runs", "lease_owner", "TEXT"),  # opsdsl.runtime.lease (PostgreSQL: migration 0002_leases)
    ("runs", "lease_epoch", "INTEGER NOT NULL DEFAULT 0"),
    ("runs", "lease_until", "REAL"),
    ("events", "idem_key", "TEXT"),  # the Idempotency-Key of the request that brought it (PostgreSQL: 0007)
)


# Indexes on later columns (PostgreSQL: their migrations).
_LATER_INDEXES = (
    "CREATE INDEX IF NOT EXISTS runs_event ON runs(event_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events(idem_key)",
)


def _ledger_mode(explicit: str | None) -> str:
    from opsdsl.runtime.sequencer import SequencerError, ledger_mode

    try:
        return ledger_mode(explicit)
    except SequencerError as error:
        raise StateError(error.message) from None


def _database_ledger_mode(conn: Any, explicit: str | None) -> str:
    """The PostgreSQL database's ledger mode (its `settings` row), recorded by the first
    process that opens it; a process asking for the other one is refused: every process
    sharing a database must chain its ledger the same way."""
    from opsdsl.runtime.sequencer import MODE_ENV

    asked = _ledger_mode(explicit) if explicit is not None or os.environ.get(MODE_ENV) else None
    row = conn.execute("SELECT value FROM settings WHERE name = 'ledger_mode'").fetchone()
    if row is None:
        conn.execute("INSERT OR IGNORE INTO settings (name, value) VALUES ('ledger_mode', ?)", (asked or "inline",))
        row = conn.execute("SELECT value FROM settings WHERE name = 'ledger_mode'").fetchone()
    mode = row[0]
    if asked is not None and asked != mode:
        raise StateError(
            f"this database's ledger mode is {mode}, and this process asks for {asked} (${MODE_ENV}): every process"
            f" sharing a database chains its ledger the same way; unset ${MODE_ENV}, or change the database's mode"
            f" with `opsdsl db ledger-mode {asked}` while no opsdsl process uses it"
        )
    return mode


def set_database_ledger_mode(conn: Any, mode: str) -> str:
    """`opsdsl db ledger-mode MODE`: record the mode; the previous one. Going back to inline
    needs an empty journal (its entries would otherwise be chained after newer ones)."""
    mode = _ledger_mode(mode)
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT value FROM settings WHERE name = 'ledger_mode'").fetchone()
        before = row[0] if row else "inline"
        if mode == "inline" and before == "journal":
            (waiting,) = conn.execute("SELECT COUNT(*) FROM journal").fetchone()
            if waiting:
                raise StateError(
                    f"{waiting} journaled entries wait for the sequencer: let it chain them (`opsdsl sequencer"
                    " --once`) before going back to inline"
                )
        conn.execute("INSERT OR REPLACE INTO settings (name, value) VALUES ('ledger_mode', ?)", (mode,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return before


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring an older state database up to date (CREATE TABLE IF NOT EXISTS adds no columns)."""
    for table, column, declaration in _LATER_COLUMNS:
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
            except sqlite3.OperationalError as error:  # another process added it just now
                if "duplicate column" not in str(error):
                    raise


def _run_row(conn: sqlite3.Connection, row: tuple) -> RunRow:
    names = [d[0] for d in conn.execute("SELECT * FROM runs LIMIT 0").description]
    values = dict(zip(names, row, strict=True))
    for name in _JSON_RUN_FIELDS:
        values[name] = json.loads(values[name])
    return RunRow(**values)


_SAVE_STEP = (
    "UPDATE steps SET status = ?, attempts = ?, outputs = ?, error = ?, started_at = ?, finished_at = ?,"
    " completed = ?, wake_at = ?, approvals_needed = ?, approval_reason = ?, approvers = ?"
    " WHERE run_id = ? AND step_id = ?"
)


def _step_values(run_id: str, step: StepRow) -> tuple:
    return (
        step.status,
        step.attempts,
        json.dumps(step.outputs or {}, sort_keys=True),
        step.error,
        step.started_at,
        step.finished_at,
        step.completed,
        step.wake_at,
        step.approvals_needed,
        step.approval_reason,
        json.dumps(step.approvers) if step.approvers is not None else None,
        run_id,
        step.step_id,
    )
