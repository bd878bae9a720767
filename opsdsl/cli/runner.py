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
@click.option(
    "--server",
    metavar="URL",
    help="Reach the database only through `opsdsl serve` at URL (https://; http:// only to loopback).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --server: the runner token (default: $OPSDSL_RUNNER_TOKEN).",
)
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
    server: str | None,
    token_file: Path | None,
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

    With --server URL the runner never touches the database: it makes the same calls to
    `opsdsl serve` over HTTPS, outbound only, with a token of `opsdsl runner-token`.
    """
    from opsdsl.lang.durations import parse_duration
    from opsdsl.runtime.pool_runner import HttpQueue, PoolRunner, run_pool
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
    if server is not None:
        if database is not None:
            raise UsageError("--server and --database: a runner reaches the database one way")
        _check_server(server)
        queue = HttpQueue(server, _token(token_file))
        store = None
    else:
        store = queue = Store(state, database=database)
    try:
        worker = PoolRunner(
            queue,
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
        if store is not None:
            store.close()


def _check_server(url: str) -> None:
    """An https:// URL; http:// only to this machine (tests, a TLS proxy beside it): the
    token and the claims' inputs must not cross a network in clear."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise UsageError(f"--server {url!r}: not a URL") from None
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return
        raise UsageError(f"--server {url!r}: http:// only to this machine (127.0.0.1, ::1, localhost); use https://")
    raise UsageError(f"--server {url!r}: an https:// URL")


def _token(path: Path | None) -> str:
    if path is None:
        token = os.environ.get("OPSDSL_RUNNER_TOKEN", "").strip()
        if not token:
            raise UsageError("--server needs a runner token: --token-file FILE or $OPSDSL_RUNNER_TOKEN")
        return token
    from opsdsl.lang.untrusted import read_limited

    data, problem = read_limited(path, 4096)
    if data is None:
        raise UsageError(f"--token-file {path}: {problem}")
    token = data.decode("utf-8", "replace").strip()
    if not token:
        raise UsageError(f"--token-file {path}: empty")
    return token


@click.command("runner-token")
@click.option("--pool", help="The pool the new token may claim from.")
@click.option("--label", required=True, help="Who holds the token (a runner host, a region).")
@click.option("--revoke", is_flag=True, help="Revoke the token with this label instead.")
@state_option
@click.option("--database", help="postgresql://… (default: $OPSDSL_DATABASE).")
def runner_token(pool: str | None, label: str, revoke: bool, state_dir: Path | None, database: str | None) -> None:
    """Make (or revoke) a token for `opsdsl runner --server`: good for one pool, printed once
    on stdout; only its SHA-256 is kept."""
    from opsdsl.runtime import dispatch
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state_dir

    store = Store(resolve_state_dir(state_dir), database=database)
    try:
        if revoke:
            if not dispatch.revoke_runner_token(store, label):
                raise UsageError(f"no live runner token labelled {label!r}")
            click.echo(f"revoked runner token {label}", err=True)
            return
        if pool is None or not _POOL.match(pool):
            raise UsageError("--pool NAME: lower-case letters, digits, `_` and `-`, starting with a letter")
        try:
            token = dispatch.add_runner_token(store, pool, label)
        except ValueError as error:
            raise UsageError(str(error)) from None
        click.echo(token)
    finally:
        store.close()


COMMANDS = (runner, runner_token)
