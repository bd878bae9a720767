"""`opsdsl show RUN` and `opsdsl ledger show`: looking inside runs, in text or JSON.

Thin wrappers over `opsdsl.runtime.inspect`, which the operator API uses too. Text is for
people: long values are cut and control characters escaped (event data is hostile, and a
terminal obeys escape sequences). JSON is for programs: complete, ASCII-only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from opsdsl.cli.common import RUN_HELP, run_reference, state_option
from opsdsl.errors import UsageError

_FORMAT = click.Choice(["text", "json"])


def _json(value: Any) -> str:
    # ensure_ascii: no raw control or bidi character reaches a terminal from JSON either
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True)


@click.command()
@click.argument("run_id", metavar="RUN", callback=run_reference)
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True, help="Output format.")
@state_option
def show(run_id: str, fmt: str, state_dir: Path | None) -> None:
    """Show one run: its steps (status, attempts, times, outputs, errors), approvals,
    decisions, policy decisions and what it waits for.

    RUN is a run id, a unique prefix of one (4 characters or more), or `latest`.
    `--format json` gives everything, its ledger entries included, uncut.
    """
    from opsdsl.runtime.inspect import render_detail, run_detail
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state

    store = Store(resolve_state(state_dir), create=False)
    try:
        detail = run_detail(store, run_id)
    finally:
        store.close()
    click.echo(_json(detail) if fmt == "json" else render_detail(detail))


@click.command("show")
@click.option("--run", "run_id", metavar="RUN", callback=run_reference, help=f"Only this run's entries: {RUN_HELP}.")
@click.option("--kind", metavar="KIND", help="Only entries of this kind (run.created, step.succeeded, …).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="Only the last N entries.")
@click.option("--format", "fmt", type=_FORMAT, default="text", show_default=True, help="Output format.")
@state_option
def ledger_show(run_id: str | None, kind: str | None, limit: int | None, fmt: str, state_dir: Path | None) -> None:
    """Show ledger entries in order: seq, time (UTC), run, kind and data.

    Text cuts long data to one line (`--format json` has it whole, with each entry's
    `prev` and `hash`); `opsdsl ledger verify` checks them.
    """
    from opsdsl.audit.entries import RUN_KINDS
    from opsdsl.runtime.inspect import entry_line, iter_ledger_entries
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state

    store = Store(resolve_state(state_dir), create=False)
    try:
        if kind is not None and kind not in RUN_KINDS and not _kind_recorded(store, kind):
            from opsdsl.runtime.inspect import escape

            shown = escape(kind)[:60]
            raise UsageError(f"--kind {shown}: no such entry kind (kinds: {', '.join(RUN_KINDS)})")
        width = len(str(store.ledger.head()[0]))
        count = 0
        for count, entry in enumerate(iter_ledger_entries(store, run=run_id, kind=kind, limit=limit), 1):
            if fmt == "json":  # a JSON array written one entry at a time: a big ledger is streamed
                click.echo(("[\n" if count == 1 else ",\n") + _indented(entry), nl=False)
            else:
                click.echo(entry_line(entry, width))
    finally:
        store.close()
    if fmt == "json":
        click.echo("\n]" if count else "[]")
    elif not count:
        click.echo("no ledger entries")


def _indented(entry: dict[str, Any]) -> str:
    """One entry as an element of an indented JSON array (as `json.dumps(list, indent=2)` writes it)."""
    return "\n".join("  " + line for line in _json(entry).split("\n"))


def _kind_recorded(store, kind: str) -> bool:
    """A kind this version does not list may still be in the ledger (written by a newer one)."""
    from opsdsl.runtime.inspect import _encodable

    if len(kind) > 100 or not _encodable(kind):
        return False
    return store.conn.execute("SELECT 1 FROM ledger WHERE kind = ? LIMIT 1", (kind,)).fetchone() is not None


COMMANDS = (show,)
