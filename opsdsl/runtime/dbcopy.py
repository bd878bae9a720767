"""`opsdsl db copy`: move a single-node state (state.db) into PostgreSQL.

Every table both schemas have is copied row for row (the columns both have), in one
PostgreSQL transaction: a copy that fails leaves the target as it was. The target is
migrated first and must hold no runs and no ledger: a copy never merges two states. The
ledger's rows are copied as they are (seq, ts, prev and hash), so the chain is the same
chain; it is verified on PostgreSQL, with the state directory's own checkpoints and key,
before the transaction commits, and its head must equal the source's.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from opsdsl.errors import OpsdslError
from opsdsl.runtime.database import PgConnection, PgError, redact_url
from opsdsl.runtime.store import DB_NAME, no_state_message

# Tables in dependency order (steps reference runs).
ORDER = ("runs", "steps", "ledger", "checkpoints")


class CopyError(OpsdslError):
    exit_code = 2


@dataclass
class Copied:
    counts: dict[str, int] = field(default_factory=dict)
    entries: int = 0
    head: str = ""

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def copy_state(source: Path, url: str) -> Copied:
    from opsdsl.runtime.migrate import MigrationError, migrate

    database = source / DB_NAME
    if not database.is_file():
        raise CopyError(no_state_message(source))
    try:
        migrate(url)
    except MigrationError as error:
        raise CopyError(f"cannot prepare {redact_url(url)}: {error.message}") from None
    lite = sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True, timeout=30)
    try:
        pg = PgConnection(url, application="opsdsl db copy")
    except PgError as error:
        lite.close()
        raise CopyError(str(error)) from None
    try:
        return _copy(lite, pg, source, url)
    finally:
        lite.close()
        pg.close()


def _copy(lite: sqlite3.Connection, pg: PgConnection, source: Path, url: str) -> Copied:
    raw = pg.raw
    lite_tables = {r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    pg_tables = {r[0] for r in raw.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    tables = [t for t in ORDER if t in lite_tables] + sorted(
        (lite_tables & pg_tables) - set(ORDER) - {"schema_migrations", "sqlite_sequence"}
    )
    copied = Copied()
    lite.execute("BEGIN")  # one consistent snapshot of the source (a server may still be writing it)
    try:
        with raw.transaction():
            for table in ("runs", "ledger"):
                (rows,) = raw.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                if rows:
                    raise CopyError(
                        f"{redact_url(url)} already holds {rows} rows in `{table}`: copy only into a new,"
                        " empty database (a copy never merges two states)"
                    )
            for table in tables:
                copied.counts[table] = _copy_table(lite, raw, table)
            for table in tables:
                _advance_sequences(raw, table)
            copied.entries, copied.head = _verify(lite, pg, source)
    finally:
        lite.execute("ROLLBACK")
    return copied


def _advance_sequences(raw, table: str) -> None:
    """Identity and serial columns continue after the copied rows (`events.id`, `dispatch.id`, …)."""
    columns = raw.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s AND (is_identity = 'YES' OR column_default LIKE 'nextval(%%')",
        (table,),
    ).fetchall()
    for (column,) in columns:
        raw.execute(
            f"SELECT setval(pg_get_serial_sequence(%s, %s), GREATEST(COALESCE(MAX({column}), 0), 1),"
            f" MAX({column}) IS NOT NULL) FROM {table}",
            (table, column),
        )


def _copy_table(lite: sqlite3.Connection, raw, table: str) -> int:
    import psycopg

    theirs = [r[1] for r in lite.execute(f"PRAGMA table_info({table})")]
    ours = {
        r[0]: r[1]
        for r in raw.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
    }
    columns = [c for c in theirs if c in ours]
    count = 0
    listed = ", ".join(columns)
    try:
        with raw.cursor().copy(f"COPY {table} ({listed}) FROM STDIN") as copy:
            for row in lite.execute(f"SELECT {listed} FROM {table}"):
                copy.write_row([_value(v, ours[c], table, c) for v, c in zip(row, columns, strict=True)])
                count += 1
    except psycopg.Error as error:
        raise CopyError(f"copying `{table}` failed: {str(error).strip().splitlines()[0]}") from None
    return count


def _value(value, pg_type: str, table: str, column: str):
    if isinstance(value, str) and "\0" in value:
        raise CopyError(
            f"`{table}.{column}` holds a NUL character, which PostgreSQL text cannot store; this state"
            " cannot be copied as it is"
        )
    if pg_type == "bytea" and isinstance(value, str):
        return value.encode("utf-8")
    return value


def _verify(lite: sqlite3.Connection, pg: PgConnection, source: Path) -> tuple[int, str]:
    """Chain and checkpoints verify on PostgreSQL, and its head is the source's."""
    from opsdsl.audit.ledger import verify_ledger
    from opsdsl.build.signing import keyid
    from opsdsl.runtime.state_config import state_public_key

    trusted = {}
    found = state_public_key(source)
    if found is not None:
        trusted[keyid(found[0])] = found[0]
    report = verify_ledger(pg, trusted, ())
    if not report.ok:
        raise CopyError(f"the copied ledger does not verify: {report.problem}; nothing was copied")
    source_head = lite.execute("SELECT hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    target_head = pg.execute("SELECT hash FROM ledger ORDER BY seq DESC LIMIT 1").fetchone()
    if (source_head and bytes(source_head[0])) != (target_head and bytes(target_head[0])):
        raise CopyError("the copied ledger's head differs from the source's; nothing was copied")
    return report.entries, bytes(target_head[0]).hex() if target_head else ""
