"""The state database's two backends: SQLite (the default, a file in the state dir) and PostgreSQL.

The runtime's SQL is written once, in the SQLite dialect, against the DB-API surface of
`sqlite3.Connection` (`execute`, `executemany`, `executescript`, cursors with `fetchone`,
`fetchall`, `lastrowid`, `rowcount`, `description`, and `in_transaction`).
`PgConnection` gives a psycopg 3 connection that same surface, translating each
statement once (then cached):

- `?` and `:name` parameters become `%s` and `%(name)s`; a literal `%` becomes `%%`;
- `INSERT OR REPLACE` / `INSERT OR IGNORE` become `INSERT … ON CONFLICT (primary key)
  DO UPDATE SET …` / `DO NOTHING`, from the table's primary key in the catalog;
- an INSERT into a table with an identity `id` gains `RETURNING id`, for `lastrowid`;
- `BEGIN IMMEDIATE`, which on SQLite makes a transaction the only writer from its first
  statement, becomes `BEGIN` plus a transaction-scoped advisory lock that every writing
  transaction takes: the same one-writer-at-a-time rule, across every process and machine
  that shares the database, so the hash chain's head is read and extended by one writer;
- DDL (`CREATE … IF NOT EXISTS`, `ALTER TABLE … ADD COLUMN`) is skipped: on PostgreSQL
  the schema is the versioned migrations' (`opsdsl db migrate`), never made on the fly;
- `PRAGMA table_info(T)` is answered from the catalog; other PRAGMAs do nothing.

psycopg's errors are raised as `PgError` / `PgIntegrityError`, subclasses of sqlite3's
`OperationalError` / `IntegrityError`, so every `except sqlite3.Error` in the runtime
handles both backends alike. A connection the server dropped (a restart, a failover) is
opened again before the next statement outside a transaction; inside one, the statement
fails and the caller's transaction is lost, as with any database error.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from opsdsl.errors import OpsdslError


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database could not be used just now (a restart, a failover,
    a lock held too long, a serialization failure), not that the event or the code is bad:
    such an event is tried again later, never recorded as failed."""
    if not isinstance(error, sqlite3.OperationalError):  # PgError is one; PgIntegrityError is not
        return False
    state = getattr(error, "sqlstate", None)
    if state:  # connection exception, admin/crash shutdown, insufficient resources, retryable
        return state.startswith(("08", "57P0", "53")) or state in ("40001", "40P01")
    text = str(error).lower()  # SQLite's, and psycopg's client-side ones (no SQLSTATE)
    marks = ("database is locked", "cannot connect", "connection", "server closed", "could not be synced")
    return any(mark in text for mark in marks)  # the last: a server's failed fsync (walsync), until a restart


ENV = "OPSDSL_DATABASE"
# pg_advisory_xact_lock key every writing transaction holds (BEGIN IMMEDIATE): "opsdsl" in ASCII.
WRITER_LOCK = 0x6F7073646D6C


class DatabaseUrlError(OpsdslError):
    """`--database` / $OPSDSL_DATABASE is not a URL opsdsl can use (exit 2)."""

    exit_code = 2


def database_url(explicit: str | None = None) -> str | None:
    """The PostgreSQL URL to use: `explicit` (`--database`), else $OPSDSL_DATABASE; None for SQLite.

    `sqlite` (or an empty value) means the default: SQLite in the state directory.
    """
    url = explicit if explicit is not None else os.environ.get(ENV)
    if not url or url == "sqlite":
        return None
    if not re.match(r"postgres(ql)?://", url):
        shown = url if len(url) < 80 else url[:77] + "…"
        raise DatabaseUrlError(
            f"database {shown!r} is not a postgresql:// URL; use postgresql://USER@HOST:PORT/DB"
            f" (or `sqlite`, the default: state.db in the state directory)"
        )
    return url


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class PgError(sqlite3.OperationalError):
    """An error from PostgreSQL (or the connection to it), as sqlite3 would raise it."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PgIntegrityError(sqlite3.IntegrityError):
    """A constraint PostgreSQL enforced (unique, foreign key, check)."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


# --- translation ----------------------------------------------------------------------------

_SKIP, _BEGIN_IMMEDIATE, _TABLE_INFO, _SQL = "skip", "begin-immediate", "table-info", "sql"
_DDL = re.compile(r"\s*(CREATE\s+(TABLE|INDEX|UNIQUE\s+INDEX|TRIGGER)\s+IF\s+NOT\s+EXISTS|ALTER\s+TABLE)\b", re.I)
_PRAGMA = re.compile(r"\s*PRAGMA\s+(\w+)\s*(?:\(\s*(\w+)\s*\)|=.*)?\s*;?\s*$", re.I | re.S)
_INSERT_OR = re.compile(r"\s*INSERT\s+OR\s+(REPLACE|IGNORE)\s+INTO\s+(\w+)\s*(\(([^)]*)\))?", re.I)
_INSERT = re.compile(r"\s*INSERT\s+INTO\s+(\w+)\b", re.I)


class _Schema:
    """Tables' columns, primary keys and identity columns, read from the catalog once per process."""

    def __init__(self) -> None:
        self._tables: dict[str, tuple[list[str], list[str], bool]] = {}
        self._lock = threading.Lock()

    def table(self, raw: Any, name: str) -> tuple[list[str], list[str], bool]:
        """(columns in order, primary-key columns, whether `id` is an identity column)."""
        with self._lock:
            found = self._tables.get(name)
        if found is not None:
            return found
        with raw.cursor() as cur:
            cur.execute(
                "SELECT column_name, is_identity FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s ORDER BY ordinal_position",
                (name,),
            )
            rows = cur.fetchall()
            cur.execute(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = to_regclass(%s) AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
                (name,),
            )
            keys = [row[0] for row in cur.fetchall()]
        if not rows:
            raise PgError(f"no such table: {name} (run `opsdsl db migrate`)", "42P01")
        found = ([row[0] for row in rows], keys, any(row[0] == "id" and row[1] == "YES" for row in rows))
        with self._lock:
            self._tables[name] = found
        return found


_SCHEMA = _Schema()


def _parameters(sql: str) -> str:
    """`?` → `%s`, `:name` → `%(name)s`, `%` → `%%`, outside quotes and comments."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # a doubled quote inside the literal
                        end += 2
                        continue
                    break
                end += 1
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            i = end
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_") and (i == 0 or sql[i - 1] != ":"):
            match = re.match(r"[A-Za-z_]\w*", sql[i + 1 :])
            assert match is not None
            out.append(f"%({match.group(0)})s")
            i += 1 + match.end()
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _translate(raw: Any, sql: str) -> tuple[str, Any]:
    stripped = sql.strip().rstrip(";").strip()
    upper = stripped.upper()
    if upper == "BEGIN IMMEDIATE":
        return _BEGIN_IMMEDIATE, None
    if upper in ("BEGIN", "BEGIN DEFERRED", "BEGIN TRANSACTION"):
        return _SQL, ("BEGIN", False)
    if _DDL.match(stripped):
        return _SKIP, None
    pragma = _PRAGMA.match(stripped)
    if pragma:
        if pragma.group(1).lower() == "table_info" and pragma.group(2):
            return _TABLE_INFO, pragma.group(2)
        return _SKIP, None
    text = _parameters(stripped)
    returning = False
    insert_or = _INSERT_OR.match(text)
    if insert_or:
        how, table, listed = insert_or.group(1).upper(), insert_or.group(2), insert_or.group(4)
        columns, keys, _ = _SCHEMA.table(raw, table)
        named = [c.strip() for c in listed.split(",")] if listed else columns
        head = f"INSERT INTO {table} ({', '.join(named)})"
        text = head + text[insert_or.end() :]
        if how == "IGNORE" or not keys:
            text += " ON CONFLICT DO NOTHING"
        else:
            updates = [c for c in named if c not in keys]
            if updates:
                sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in updates)
                text += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}"
            else:
                text += f" ON CONFLICT ({', '.join(keys)}) DO NOTHING"
    else:
        insert = _INSERT.match(text)
        if insert and " RETURNING " not in text.upper():
            _, _, identity = _SCHEMA.table(raw, insert.group(1))
            if identity:
                text += " RETURNING id"
                returning = True
    return _SQL, (text, returning)


_TRANSLATED: dict[str, tuple[str, Any]] = {}


def _statements(script: str) -> Iterator[str]:
    """The statements of a script, split at top-level semicolons (quotes, comments and $$ bodies kept)."""
    start, i, n = 0, 0, len(script)
    while i < n:
        c = script[i]
        if c in "'\"":
            end = script.find(c, i + 1)
            i = n if end < 0 else end + 1
        elif script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
        elif script.startswith("$$", i):
            end = script.find("$$", i + 2)
            i = n if end < 0 else end + 2
        elif c == ";":
            if script[start:i].strip():
                yield script[start:i]
            start = i = i + 1
        else:
            i += 1
    if script[start:].strip():
        yield script[start:]


# --- the connection -----------------------------------------------------------------------------


class PgCursor:
    """What `PgConnection.execute` returns: sqlite3.Cursor's reading surface."""

    def __init__(self, rows: list[tuple] | None, description: Any, rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows or []
        self._at = 0
        self.description = description
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchall(self) -> list[tuple]:
        rows, self._at = self._rows[self._at :], len(self._rows)
        return rows

    def fetchmany(self, size: int = 1) -> list[tuple]:
        rows = self._rows[self._at : self._at + size]
        self._at += len(rows)
        return rows

    def __iter__(self) -> Iterator[tuple]:
        while self._at < len(self._rows):
            self._at += 1
            yield self._rows[self._at - 1]

    def close(self) -> None:
        self._rows = []


class PgConnection:
    """A psycopg 3 connection with sqlite3.Connection's surface (see the module's docstring)."""

    postgres = True

    def __init__(self, url: str, *, durable: bool = True, application: str = "opsdsl") -> None:
        self.url = url
        self._durable = durable
        self._application = application
        self._raw: Any = None
        # A transaction we began (BEGIN …) and have not ended; `_lost`: its connection went
        # away, so until ROLLBACK every statement fails (none may run, reconnected, in
        # autocommit: half a transaction would commit) and COMMIT says it did not commit.
        self._tx = False
        self._lost = False
        self._connect()

    def _connect(self) -> None:
        try:
            import psycopg
        except ImportError:
            raise PgError(
                "the PostgreSQL backend needs psycopg: pip install 'opsdsl[postgres]'"
                " (or leave --database / $OPSDSL_DATABASE unset for SQLite)"
            ) from None

        try:
            raw = psycopg.connect(self.url, autocommit=True, application_name=self._application, connect_timeout=10)
        except psycopg.Error as error:
            raise PgError(f"cannot connect to {redact_url(self.url)}: {_first_line(error)}") from None
        _register_loaders(raw)
        if not self._durable:
            raw.execute("SET synchronous_commit = off")
        self._raw = raw

    @property
    def raw(self) -> Any:
        """The psycopg connection (for code that speaks PostgreSQL itself: leases, LISTEN/NOTIFY)."""
        self._ensure()
        return self._raw

    def _ensure(self) -> None:
        if self._tx and not self._alive():
            self._lost = True  # never a new connection in the middle of a transaction
        if self._lost:
            raise PgError(
                "the connection to PostgreSQL was lost in this transaction: nothing of it is committed", "08006"
            )
        if self._raw is None or self._raw.closed or self._raw.broken:
            if self._raw is not None:
                self._raw.close()
            self._connect()

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        if self._tx:
            return True
        if self._raw is None or self._raw.closed:
            return False
        return self._raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR)

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ()) -> PgCursor:
        upper = sql.lstrip()[:8].upper()
        # COMMIT, END or ROLLBACK of the whole transaction; never ROLLBACK TO a savepoint
        ending = upper.startswith(("COMMIT", "ROLLBACK", "END")) and " TO " not in f" {sql.upper()} "
        if ending and (self._lost or (self._tx and not self._alive())):
            # The server went away mid-transaction: nothing to commit or roll back any more.
            self._tx = self._lost = False
            if upper.startswith("ROLLBACK"):
                return PgCursor(None, None, -1, None)
            raise PgError("the connection to PostgreSQL was lost; the transaction did not commit", "08006")
        if ending and upper.startswith("ROLLBACK"):
            return self._rollback()
        if upper.startswith("BEGIN") and self._lost:
            # A new transaction after a lost one nobody rolled back: the lost one is over
            # (the server aborted it with its connection); this one starts on a new connection.
            self._tx = self._lost = False
        self._ensure()
        kind, plan = self._plan(sql)
        if kind == _SKIP:
            return PgCursor(None, None, -1, None)
        if kind == _BEGIN_IMMEDIATE:
            self._begin("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            return PgCursor(None, None, -1, None)
        if kind == _TABLE_INFO:
            columns, keys, _ = _SCHEMA.table(self._raw, plan)
            rows = [(i, name, "", 0, None, int(name in keys)) for i, name in enumerate(columns)]
            return PgCursor(rows, None, -1, None)
        text, returning = plan
        if text == "BEGIN":
            self._begin()
            return PgCursor(None, None, -1, None)
        if not ending:
            return self._run(text, _values(parameters), returning)
        try:
            return self._run(text, _values(parameters), returning)
        finally:  # a COMMIT that fails ends the transaction too (PostgreSQL rolls it back)
            self._tx = self._lost = False

    def _begin(self, lock: str | None = None, keys: tuple[int, ...] = ()) -> None:
        """BEGIN, then take `lock`. A BEGIN whose lock fails (the server went away while it
        waited, a statement timeout) ends its transaction here: the caller's `with` never
        started, so nobody else will roll it back, and a transaction left lost would fail
        every later statement of this connection."""
        self._run("BEGIN", ())
        self._tx = True
        if lock is None:
            return
        try:
            self._run(lock, keys)
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> PgCursor:
        """ROLLBACK, which always ends the transaction here: if it fails, the connection is
        closed, and the server aborts whatever it still had open with it."""
        if not self._alive():
            self._tx = self._lost = False
            return PgCursor(None, None, -1, None)
        try:
            return self._run("ROLLBACK", ())
        except BaseException:
            if self._raw is not None:
                self._raw.close()
            raise
        finally:
            self._tx = self._lost = False

    def begin_run(self, run: str) -> None:
        """BEGIN a transaction that writes one run's rows only: it takes the writer lock
        SHARED (so it waits for, and is waited for by, every one-writer-at-a-time
        transaction) and the run's own lock EXCLUSIVE (so two transactions of one run take
        turns). Locks are always taken in that order: no deadlock between these two kinds."""
        if self._lost:  # as a BEGIN through execute(): a lost transaction nobody rolled back is over
            self._tx = self._lost = False
        self._ensure()
        self._begin("SELECT pg_advisory_xact_lock_shared(%s), pg_advisory_xact_lock(%s)", (WRITER_LOCK, _run_lock(run)))

    def executemany(self, sql: str, seq_of_parameters: Any) -> PgCursor:
        self._ensure()
        kind, plan = self._plan(sql)
        if kind != _SQL:
            raise PgError(f"executemany cannot run {sql.split()[0]} statements")
        text, returning = plan
        if returning:
            text = text[: -len(" RETURNING id")]
        rows = [_values(p) for p in seq_of_parameters]
        if not rows:
            return PgCursor(None, None, 0, None)
        import psycopg

        try:
            with self._raw.cursor() as cur:
                cur.executemany(text, rows)
                return PgCursor(None, None, cur.rowcount, None)
        except psycopg.Error as error:
            self._note_loss()
            raise _error(error) from None

    def executescript(self, script: str) -> PgCursor:
        for statement in _statements(script):
            self.execute(statement)
        return PgCursor(None, None, -1, None)

    def commit(self) -> None:
        """sqlite3's: commit an open transaction (statements outside one commit on their own)."""
        if self.in_transaction:
            self.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.execute("ROLLBACK")

    def close(self) -> None:
        if self._raw is not None and not self._raw.closed:
            self._raw.close()

    def _plan(self, sql: str) -> tuple[str, Any]:
        found = _TRANSLATED.get(sql)
        if found is None:
            try:
                found = _TRANSLATED[sql] = _translate(self._raw, sql)
            except PgError:
                raise
            except Exception as error:  # psycopg's, while reading the catalog
                raise _error(error) from None
        return found

    def _alive(self) -> bool:
        return self._raw is not None and not self._raw.closed and not self._raw.broken

    def _run(self, text: str, values: Any, returning: bool = False) -> PgCursor:
        import psycopg

        try:
            with self._raw.cursor() as cur:
                cur.execute(text, values)
                rows = cur.fetchall() if cur.description is not None else None
                description = [(c.name, None, None, None, None, None, None) for c in cur.description or ()]
                lastrowid = rows[0][0] if returning and rows else None
                return PgCursor(None if returning else rows, description or None, cur.rowcount, lastrowid)
        except psycopg.Error as error:
            self._note_loss()
            raise _error(error) from None

    def _note_loss(self) -> None:
        """After a failed statement: a transaction whose connection is gone is lost."""
        if self._tx and not self._alive():
            self._lost = True


def _run_lock(run: str) -> int:
    """A run's advisory lock key: 63 bits of its id's SHA-256 (never WRITER_LOCK's value,
    whose top bits are zero)."""
    import hashlib

    key = int.from_bytes(hashlib.sha256(b"opsdsl.run\0" + run.encode("utf-8")).digest()[:8], "big") >> 1
    return key | (1 << 62)


def _values(parameters: Any) -> Any:
    """Parameters as PostgreSQL takes them: booleans as 0/1, as SQLite stores them; a NUL in a
    string (hostile text: a run reference typed as "\\x00abc", a process's stderr in an
    error), which PostgreSQL's text cannot hold, as U+FFFD. Ledger data never has one (it
    is canonical JSON, where NUL is escaped), so no hashed byte changes."""
    if isinstance(parameters, dict):
        return {k: _value(v) for k, v in parameters.items()}
    return [_value(v) for v in parameters]


def _value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and "\0" in value:
        return value.replace("\0", "\ufffd")
    return value


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _error(error: BaseException) -> sqlite3.Error:
    import psycopg

    sqlstate = getattr(error, "sqlstate", None)
    message = _first_line(error)
    if isinstance(error, psycopg.errors.UndefinedTable):
        message = f"no such table: {message}"
    if isinstance(error, psycopg.IntegrityError):
        return PgIntegrityError(message, sqlstate)
    return PgError(message, sqlstate)


def _register_loaders(raw: Any) -> None:
    """numeric (what SUM and AVG of BIGINT give) as int or float, never Decimal, as SQLite does."""
    from psycopg.adapt import Loader

    class NumericLoader(Loader):
        def load(self, data: Any) -> int | float:
            text = bytes(data).decode("ascii")
            if "." in text or "e" in text or "E" in text or text in ("NaN", "Infinity", "-Infinity"):
                return float(text)
            return int(text)

    raw.adapters.register_loader("numeric", NumericLoader)


def is_postgres(conn: Any) -> bool:
    return getattr(conn, "postgres", False) is True


def folder_lock_key(run_id: str) -> int:
    """The advisory lock key of a run's incident folder: 63 bits of SHA-256 over its own
    domain, so it is never a run's transaction lock (_run_lock) nor WRITER_LOCK."""
    import hashlib

    digest = hashlib.sha256(b"opsdsl.incident\0" + run_id.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> 1) | (1 << 62)


@contextlib.contextmanager
def folder_lock(store: Any, run_id: str | None) -> Iterator[None]:
    """Write `run_id`'s incident folder alone, across processes and machines: on PostgreSQL
    a transaction-scoped advisory lock (in a transaction of its own that writes nothing,
    or in the caller's); nothing on SQLite, where one process drives the runs."""
    if not getattr(store, "postgres", False) or not run_id:
        yield
        return
    conn = store.conn
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        conn.execute("SELECT pg_advisory_xact_lock(?)", (folder_lock_key(run_id),))
        yield
    finally:
        if own:  # nothing was written in it: ending it lets the lock go
            conn.execute("ROLLBACK")
