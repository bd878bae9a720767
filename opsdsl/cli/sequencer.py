"""`opsdsl sequencer`: chain the PostgreSQL ledger's journal (ledger mode `journal`).

`serve` and `worker` run a sequencer thread of their own when the ledger journals; this
command runs one alone (for a deployment that keeps it apart, the bench, the fault
tests). Any number may run: one leads (a PostgreSQL advisory lock), the others stand by
and take over within a quarter second of the leader's session ending.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

_STATE_HELP = "State directory whose key signs the checkpoints (default: $OPSDSL_HOME, else ./.opsdsl)."


@click.command("sequencer")
@click.option("--database", metavar="URL", help="postgresql:// URL of the state database (default: $OPSDSL_DATABASE).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_HELP)
@click.option(
    "--batch", type=click.IntRange(1, 100_000), default=2000, show_default=True, help="Entries per batch at most."
)
@click.option(
    "--interval", type=click.FloatRange(1, 10_000), default=20, show_default=True, help="Milliseconds between batches."
)
@click.option("--once", is_flag=True, help="Chain what is journaled now (waiting to lead), then exit.")
def sequencer(database: str | None, state_dir: Path | None, batch: int, interval: float, once: bool) -> None:
    """Chain journaled ledger entries into the hash-chained ledger and sign checkpoints.

    Leader-elected: a second `opsdsl sequencer` stands by. Stops on SIGTERM or Ctrl-C
    (a batch is one transaction: stopping, or being killed, mid-batch loses nothing).
    """
    from opsdsl.runtime.database import PgConnection, PgError, database_url, redact_url
    from opsdsl.runtime.migrate import check_version
    from opsdsl.runtime.sequencer import Sequencer, SequencerError
    from opsdsl.runtime.state_config import signer
    from opsdsl.runtime.store import state_dir as resolve_state

    url = database_url(database)
    if url is None:
        raise click.UsageError("the sequencer needs a PostgreSQL database: pass --database URL or set $OPSDSL_DATABASE")
    try:
        conn = PgConnection(url, application="opsdsl sequencer (check)")
    except PgError as error:
        raise SequencerError(str(error)) from None
    try:
        check_version(conn)
    finally:
        conn.close()
    key = signer(resolve_state(state_dir)).key
    worker = Sequencer(url, key, batch_rows=batch)
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    where = redact_url(url)
    if once:
        _drain(worker, stop, where)
        return
    click.echo(f"sequencer: standing by for the lead on {where}", err=True)
    announced = threading.Thread(target=_announce, args=(worker, stop, where), daemon=True)
    announced.start()
    worker.run(stop, interval=interval / 1000)
    click.echo("sequencer: stopped", err=True)


def _announce(worker, stop: threading.Event, where: str) -> None:
    while not stop.wait(0.05):
        if worker.leading:
            click.echo(f"sequencer: leading on {where}", err=True)
            sys.stderr.flush()
            return


def _drain(worker, stop: threading.Event, where: str) -> None:
    import psycopg

    try:
        while not worker.lead():
            if stop.wait(0.25):
                return
        total = 0
        while not stop.is_set():
            batch = worker.chain_batch()
            total += batch.count
            if batch.count == 0:
                break
        click.echo(f"sequencer: chained {total} entries on {where}", err=True)
    except psycopg.Error as error:
        raise click.ClickException(f"sequencer: {str(error).strip().splitlines()[0]}") from None
    finally:
        worker.close()


COMMANDS = (sequencer,)
