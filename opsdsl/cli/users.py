"""`opsdsl users add|list|revoke`: the people who may use a state directory's API.

Thin wrappers over `opsdsl.runtime.people.People`. `add` prints the new token alone on
stdout (so `TOKEN=$(opsdsl users add …)` works) and says on stderr that it is shown once.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

_STATE_HELP = "State directory (default: $OPSDSL_HOME, else ./.opsdsl)."


def _state_option(function):
    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_HELP)(function)


@click.group()
def users() -> None:
    """The people of this state directory: API tokens, roles and groups."""


@users.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["viewer", "responder", "approver", "admin"]),
    required=True,
    help="viewer reads; responder also fires, acks, resumes, cancels; approver also approves and decides; admin all.",
)
@click.option("--group", "groups", multiple=True, metavar="G", help="A group (repeatable), for `approvers: [group:G]`.")
@_state_option
def add(name: str, role: str, groups: tuple[str, ...], state_dir: Path | None) -> None:
    """Add NAME with a new API token, printed once (only its hash is kept)."""
    from opsdsl.runtime.people import People, user_name
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state

    name = user_name(name)
    store = Store(resolve_state(state_dir))
    try:
        token = People(store).add(name, role, groups)
        person = People(store).get(name)
    finally:
        store.close()
    assert person is not None
    shown = f"; groups: {', '.join(person.groups)}" if person.groups else ""
    click.echo(f"added {person.name} ({person.role}{shown})", err=True)
    click.echo(token)
    click.echo(
        "This token is shown once: only its SHA-256 is stored. Hand it to them privately; they send it as"
        " `Authorization: Bearer TOKEN`. Lost: `opsdsl users revoke NAME`, then add them again.",
        err=True,
    )


@users.command("list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_state_option
def list_users(fmt: str, state_dir: Path | None) -> None:
    """List the users, revoked ones too (never a token)."""
    from opsdsl.audit.incident import iso_time
    from opsdsl.runtime.people import People
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state

    store = Store(resolve_state(state_dir), create=False)
    try:
        rows = People(store).list()
    finally:
        store.close()
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no users; add one with `opsdsl users add NAME --role ROLE`")
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        status = "active" if row["active"] else f"revoked {iso_time(row['revoked_at'])}"
        groups = ",".join(row["groups"]) or "-"
        click.echo(
            f"{row['name']:<{width}}  {row['role']:<9}  {groups:<16}  added {iso_time(row['created_at'])}  {status}"
        )


@users.command("revoke")
@click.argument("name")
@_state_option
def revoke(name: str, state_dir: Path | None) -> None:
    """Revoke NAME's token at once (the row stays, for the record)."""
    from opsdsl.runtime.people import People, user_name
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state

    name = user_name(name)
    store = Store(resolve_state(state_dir), create=False)
    try:
        newly = People(store).revoke(name)
    finally:
        store.close()
    click.echo(f"revoked {name}'s token" if newly else f"{name} was revoked already; nothing changed")


COMMANDS = (users,)
