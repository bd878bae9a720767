"""`opsdsl runner --pool NAME`: a process that executes the steps dispatched to a runner pool."""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import click

from opsdsl.cli.common import state_option
from opsdsl.errors import UsageError

_POOL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")  # as `runner:` in a pack (docs/language.md)


@click.command()
@click.option("--pool", required=True, help="The runner pool to serve (a step's `runner:`).")
@state_option
@click.option("--database", help="postgresql://… (default: $OPSDSL_DATABASE; unset: the state dir's SQLite).")
@click.option("--id", "runner_id", help="This runner's name in claims and logs (default: HOST-PID).")
@click.option("--lease", default="30s", show_default=True, help="How long a claim holds without a heartbeat.")
@click.option("--concurrency", type=click.IntRange(min=1, max=1000), default=4, show_default=True)
@click.option(
    "--secret", "secret_refs", multiple=True, metavar="NAME=env:VAR|file:PATH", help="Where a secret's value is."
)
def runner(
    pool: str,
    state_dir: Path | None,
    database: str | None,
    runner_id: str | None,
    lease: str,
    concurrency: int,
    secret_refs: tuple[str, ...],
) -> None:
    """Execute the side-effect steps queued for pool NAME (steps with `runner: NAME`).

    Claims queued steps, renews each claim's lease every third of it, runs the action with
    the step's Idempotency-Key and writes the result, unless the claim was taken from it.
    Secrets (`${{ secrets.X }}`) are resolved here: --secret, $OPSDSL_SECRET_X or
    STATE_DIR/secrets/X. SIGTERM drains: no new claims, running actions finish.
    """
    from opsdsl.lang.durations import parse_duration
    from opsdsl.runtime.pool_runner import PoolRunner, run_pool
    from opsdsl.runtime.secrets import Secrets, parse_references
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state_dir

    if not _POOL.match(pool):
        raise UsageError(f"--pool {pool!r}: lower-case letters, digits, `_` and `-`, starting with a letter")
    try:
        seconds = parse_duration(lease) / 1000
    except ValueError as error:
        raise UsageError(f"--lease: {error}") from None
    if seconds < 1:
        raise UsageError("--lease: at least 1s")
    name = runner_id or f"{socket.gethostname()}-{os.getpid()}"
    state = resolve_state_dir(state_dir)
    secrets = Secrets(state, parse_references(secret_refs))
    store = Store(state, database=database)
    try:
        worker = PoolRunner(
            store,
            pool,
            name,
            seconds,
            concurrency,
            secrets,
            state / "runner-evidence",
            lambda message: click.echo(message, err=True) or sys.stderr.flush(),
        )
        run_pool(worker)
    finally:
        store.close()


COMMANDS = (runner,)
