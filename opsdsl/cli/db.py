"""`opsdsl db`: the state database's schema and moving a state to PostgreSQL.

    opsdsl db migrate --database postgresql://…     create or upgrade the schema
    opsdsl db status  --database postgresql://…     the schema version, and what is pending
    opsdsl db copy --from STATE_DIR --to postgresql://…   move a single-node state

The logic lives in opsdsl.runtime.migrate and opsdsl.runtime.dbcopy; docs/scaleout.md.
"""

from __future__ import annotations

from pathlib import Path

import click

DATABASE_HELP = "A postgresql:// URL (default: $OPSDSL_DATABASE)."


def _url(database: str | None) -> str:
    from opsdsl.errors import UsageError
    from opsdsl.runtime.database import database_url

    url = database_url(database)
    if url is None:
        raise UsageError(
            "no PostgreSQL database given: pass --database postgresql://USER@HOST:PORT/DB or set OPSDSL_DATABASE"
            " (SQLite needs no migration: state.db is brought up to date when it is opened)"
        )
    return url


@click.group("db")
def db() -> None:
    """The state database: migrate its schema, show its version, copy a state into PostgreSQL."""


@db.command("migrate")
@click.option("--database", metavar="URL", help=DATABASE_HELP)
def migrate_command(database: str | None) -> None:
    """Create or upgrade the PostgreSQL schema (versioned; a newer database is refused, never downgraded)."""
    from opsdsl.runtime.database import redact_url
    from opsdsl.runtime.migrate import latest, migrate

    url = _url(database)
    before, applied = migrate(url)
    where = redact_url(url)
    if not applied:
        click.echo(f"{where}: schema at version {before}, up to date")
        return
    for migration in applied:
        click.echo(f"applied {migration.version:04d}_{migration.name}")
    click.echo(f"{where}: schema at version {latest()} (was {before})")


@db.command("status")
@click.option("--database", metavar="URL", help=DATABASE_HELP)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_command(database: str | None, fmt: str) -> None:
    """The schema version of the database and the migrations it lacks (exit 1 when behind or ahead)."""
    import json

    from opsdsl.runtime.database import PgConnection, PgError, redact_url
    from opsdsl.runtime.migrate import MigrationError, current_version, migrations

    url = _url(database)
    try:
        conn = PgConnection(url, application="opsdsl db status")
    except PgError as error:
        raise MigrationError(str(error)) from None
    try:
        have = current_version(conn)
    finally:
        conn.close()
    known = migrations()
    pending = [f"{m.version:04d}_{m.name}" for m in known[have:]]
    if fmt == "json":
        click.echo(json.dumps({"database": redact_url(url), "version": have, "latest": len(known), "pending": pending}))
    else:
        click.echo(f"{redact_url(url)}: schema version {have}, this opsdsl's is {len(known)}")
        for name in pending:
            click.echo(f"  pending {name}")
        if have > len(known):
            click.echo("  the database is newer than this opsdsl: upgrade opsdsl")
    if have != len(known):
        raise click.exceptions.Exit(1)


@db.command("copy")
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="The state directory whose state.db to copy.",
)
@click.option("--to", "target", metavar="URL", required=True, help="The PostgreSQL database (migrated or empty).")
def copy_command(source: Path, target: str) -> None:
    """Copy a single-node state (runs, steps, approvals, events, timers, people, the ledger and its
    checkpoints) into an empty PostgreSQL database; the ledger is verified after the copy."""
    from opsdsl.runtime.dbcopy import copy_state

    copied = copy_state(source, _url(target))
    for table, count in copied.counts.items():
        click.echo(f"{table:<22} {count:>8} rows")
    click.echo(
        f"copied {copied.total} rows; the ledger's {copied.entries} entries verify on PostgreSQL"
        f" (head {copied.head[:16]}…). Point every process at it: --database URL or OPSDSL_DATABASE"
    )


@db.command("ledger-mode")
@click.argument("mode", type=click.Choice(["inline", "journal"]))
@click.option("--database", metavar="URL", help=DATABASE_HELP)
def ledger_mode_command(mode: str, database: str | None) -> None:
    """Set how the database's ledger is chained: `inline` (each transaction chains its entries;
    one writer at a time) or `journal` (transactions journal them, a sequencer chains; runs
    commit side by side). Every process sharing the database follows it; change it while no
    opsdsl process uses the database (docs/scaleout.md)."""
    from opsdsl.runtime.database import PgConnection, PgError, redact_url
    from opsdsl.runtime.migrate import MigrationError, check_version
    from opsdsl.runtime.store import set_database_ledger_mode

    url = _url(database)
    try:
        conn = PgConnection(url, application="opsdsl db ledger-mode")
    except PgError as error:
        raise MigrationError(str(error)) from None
    try:
        check_version(conn)
        before = set_database_ledger_mode(conn, mode)
    finally:
        conn.close()
    click.echo(f"{redact_url(url)}: ledger mode {mode}" + ("" if before == mode else f" (was {before})"))


COMMANDS = [db]
