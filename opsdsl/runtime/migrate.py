"""Versioned schema migrations of the PostgreSQL state database (`opsdsl db migrate`).

Migrations are the files `opsdsl/runtime/migrations/postgresql/NNNN_name.sql`, applied in
order, each in its own transaction, and recorded in `schema_migrations`. A released file
is never edited; a change is a new file. Several processes may run `opsdsl db migrate` at
once: an advisory lock makes them take turns, and the second finds nothing left to do.
A database migrated by a newer opsdsl (a version this one does not know) is refused, never
"downgraded": its tables may mean things this version would get wrong.

SQLite needs no command: a state.db is created and brought up to date when opened, and
records its version in `PRAGMA user_version`, which an older opsdsl refuses the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from opsdsl.errors import OpsdslError
from opsdsl.runtime.database import PgConnection, PgError, redact_url

FOLDER = Path(__file__).resolve().parent / "migrations" / "postgresql"
# pg_advisory_lock key held while migrating: "opsmig" in ASCII.
MIGRATION_LOCK = 0x6F70736D6967
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

# The SQLite schema's version (PRAGMA user_version); raise it when store.py's DDL changes
# in a way an older opsdsl must not read.
SQLITE_VERSION = 1


class MigrationError(OpsdslError):
    """The schema cannot be brought to this opsdsl's version (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


def migrations() -> list[Migration]:
    """Every migration this opsdsl ships, by version (1, 2, 3, … without gaps)."""
    found = []
    for path in sorted(FOLDER.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise MigrationError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {migration.path.name})")
    return found


def latest() -> int:
    return len(migrations())


def current_version(conn: PgConnection) -> int:
    """The database's schema version: 0 when it was never migrated."""
    row = conn.raw.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    (version,) = conn.raw.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def check_version(conn: PgConnection) -> None:
    """Refuse a database this opsdsl cannot use as it is: not migrated, behind, or ahead."""
    have, want = current_version(conn), latest()
    where = redact_url(conn.url)
    if have == want:
        return
    if have == 0:
        raise MigrationError(f"{where} has no opsdsl schema yet: run `opsdsl db migrate --database URL` once")
    if have < want:
        raise MigrationError(
            f"{where} is at schema version {have}; this opsdsl needs {want}:"
            " run `opsdsl db migrate --database URL` (stop older opsdsl processes first)"
        )
    raise MigrationError(
        f"{where} is at schema version {have}, newer than this opsdsl knows ({want}):"
        " upgrade opsdsl; a database is never downgraded"
    )


def migrate(url: str) -> tuple[int, list[Migration]]:
    """Apply the missing migrations; (version before, migrations applied now)."""
    conn = PgConnection(url, application="opsdsl db migrate")
    raw = conn.raw
    try:
        raw.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        raw.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version BIGINT PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
        )
        before = current_version(conn)
        known = migrations()
        if before > len(known):
            raise MigrationError(
                f"{redact_url(url)} is at schema version {before}, newer than this opsdsl knows ({len(known)}):"
                " refusing to downgrade; upgrade opsdsl instead"
            )
        applied = []
        for migration in known[before:]:
            try:
                with raw.transaction():
                    raw.execute(migration.sql())
                    raw.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            except Exception as error:
                raise MigrationError(
                    f"migration {migration.path.name} failed: {str(error).strip().splitlines()[0]}"
                ) from None
            applied.append(migration)
        return before, applied
    except PgError as error:
        raise MigrationError(str(error)) from None
    finally:
        conn.close()
