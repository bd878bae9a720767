"""`opsdsl fire`, `opsdsl watch` and `opsdsl serve`: events in, runs out.

All three feed the same engine (`opsdsl.runtime.service`): events are persisted in the
state database before they count as accepted, triggers and hooks decide, and the runs
they start are the same durable runs as `opsdsl run` (ledger, evidence, `resume`).

Each of them claims the state directory's engine lock before it replays or handles an
event (`Service.claim`): a second one on the same state directory exits 2 at once, naming
the holder, rather than replaying the same events and starting runs twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from opsdsl.cli.paths import input_file, pack_file
from opsdsl.errors import UsageError

_STATE_HELP = "State directory (default: $OPSDSL_HOME, else ./.opsdsl)."
_EXISTING = input_file()


def _pack_options(function):
    options = [
        click.option(
            "--pack", "packs", multiple=True, type=pack_file(), help="A pack (repeatable); signed with the dev key."
        ),
        click.option(
            "--plan", "plans", multiple=True, type=_EXISTING, help="A signed plan (repeatable); needs a trust file."
        ),
        click.option(
            "--policies",
            type=_EXISTING,
            multiple=True,
            help="Policy packs in scope with --pack (default: those beside it).",
        ),
        click.option("--trust", type=_EXISTING, help="Trust file for --plan (default: STATE_DIR/trust.yaml)."),
        click.option(
            "--env",
            "environment",
            metavar="NAME",
            help="Trust environment for --plan (required when the trust file has several).",
        ),
        click.option(
            "--secret",
            "secret_refs",
            multiple=True,
            metavar="NAME=env:VAR|file:PATH",
            help="Where a secret's value is.",
        ),
        click.option(
            "--escalation-url", help="POST a JSON notice here when a hook's run fails and the hook has `escalate:`."
        ),
        click.option(
            "--max-runs", type=click.IntRange(min=1), default=64, show_default=True, help="Runs executing at once."
        ),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_HELP),
        click.option(
            "--param",
            "params",
            multiple=True,
            metavar="NAME=VALUE",
            help="Set a param of every pack that declares it (repeatable; wins over --params-file).",
        ),
        click.option(
            "--params-file",
            type=_EXISTING,
            help="Params as a YAML or JSON mapping (TOML if it ends in .toml), NAME: VALUE.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_service(
    packs,
    plans,
    policies,
    trust,
    environment,
    secret_refs,
    escalation_url,
    max_runs,
    state_dir,
    params=(),
    params_file=None,
    config=None,
    **extra,
):
    """The engine over the packs and plans, with their params (the config file's, then
    --params-file, then --param) and secrets (the file's [secrets], then --secret); with a
    config file naming a signing key, its runs sign with that key."""
    from opsdsl.cli.run import _pairs  # `run`'s own NAME=VALUE reading
    from opsdsl.runtime.secrets import Secrets, parse_references
    from opsdsl.runtime.service import Service, load_plans
    from opsdsl.runtime.store import state_dir as resolve_state
    from opsdsl.serve.config import pack_params, read_params_file

    if not packs and not plans:
        where = f" (or [packs] paths or plans in {config.origin})" if config is not None else ""
        raise UsageError(f"give at least one --pack FILE or --plan SIGNED_PLAN{where}")
    state = resolve_state(state_dir)
    given = read_params_file(params_file) if params_file else {}
    given.update(_pairs(params, "--param"))
    if config is not None and config.signing_key is not None:
        from opsdsl.runtime.state_config import use_signer
        from opsdsl.serve.config import load_signing_key

        use_signer(state, load_signing_key(config, state))
    loaded = load_plans(list(packs), list(plans), list(policies) if policies else None, trust, environment, state)
    references = dict(config.secrets) if config is not None else {}
    references.update(parse_references(secret_refs))
    secrets = Secrets(state, references)
    values = pack_params(loaded, given, secrets, config, environment)
    return Service(
        state,
        loaded,
        params=values,
        secrets=secrets,
        max_runs=max_runs,
        escalation_url=escalation_url,
        escalation=config.escalation if config is not None else None,
        **extra,
    )


def _events_in(text: str | bytes, what: str) -> list[dict[str, Any]]:
    """The events in one payload (a file, or a line of `watch`), read as untrusted input:
    UTF-8, JSON nested at most 64 deep, numbers and strings the ledger can record."""
    from opsdsl.lang.untrusted import decode, parse_json
    from opsdsl.runtime.service import events_from_payload

    if isinstance(text, bytes):
        text = decode(text, what)
    try:
        return events_from_payload(parse_json(text, what))
    except ValueError as error:  # the payload's shape
        raise UsageError(f"{what}: {error}") from None


def _stdin_lines():
    """Lines of stdin as bytes, each at most MAX_INPUT_BYTES (a longer one is cut into pieces,
    each refused as JSON); the caller decodes them."""
    from opsdsl.lang.untrusted import MAX_INPUT_BYTES

    stream = getattr(sys.stdin, "buffer", None)
    while True:
        line = stream.readline(MAX_INPUT_BYTES) if stream is not None else sys.stdin.readline(MAX_INPUT_BYTES)
        if not line:
            return
        yield line


def use_database(url: str | None) -> None:
    """`--database URL`: the state database of this process and of what it starts (it is
    checked when the store opens)."""
    if url is not None:
        import os

        os.environ["OPSDSL_DATABASE"] = url


def _claim(service, command: str) -> None:
    """The engine lock, or exit 2 naming its holder (the service is closed first)."""
    try:
        service.claim(command)
    except Exception:
        service.close()
        raise


def _outcomes(service, run_ids: list[str]) -> list[dict[str, Any]]:
    rows = []
    for run_id in run_ids:
        run = service.store.run(run_id)
        rows.append({"run": run.id, "playbook": run.playbook, "hook": run.hook, "status": run.status})
    return rows


def _exit_for(statuses: list[str]) -> int:
    if any(s == "failed" for s in statuses):
        return 1
    if any(s in ("paused", "interrupted") for s in statuses):
        return 4
    return 0


@click.command()
@click.argument("event_source", metavar="EVENT.json|-")
@_pack_options
@click.pass_context
def fire(ctx: click.Context, event_source: str, **options) -> None:
    """Send one event (a JSON object, a list of them, or an Alertmanager webhook body) through
    the packs' triggers and hooks, and run what they start. Prints the runs as JSON.

    Exit 0 when every run succeeded (or none started), 1 when one failed, 4 when one paused.
    """
    from opsdsl.lang.untrusted import read_text

    events = _events_in(read_text(event_source, event_source), event_source)
    service = build_service(**options)
    if len(events) > service.queue_size:
        service.close()
        raise UsageError(f"{event_source}: {len(events)} events at once; the queue holds {service.queue_size}")
    _claim(service, "fire")

    async def main() -> list[str]:
        await service.start()
        ids = service.accept(events, "fire")
        await service.queue.join()
        started = [r.id for r in reversed(service.store.runs()) if r.event_id in ids and not r.parent_run]
        await service.drain()
        return started

    try:
        from opsdsl.runtime.runner import run_until_done

        started = run_until_done(main)
        rows = _outcomes(service, started)
    finally:
        service.close()
    click.echo(json.dumps({"events": len(events), "runs": rows}, indent=2, sort_keys=True))
    ctx.exit(_exit_for([r["status"] for r in rows]))


@click.command()
@_pack_options
@click.pass_context
def watch(ctx: click.Context, **options) -> None:
    """Read events as JSON lines on stdin until it closes; each line goes through the triggers
    and hooks as it arrives. Bad lines are reported on stderr and skipped. Runs are listed
    as JSON lines on stdout as they finish."""
    service = build_service(**options)
    _claim(service, "watch")

    async def main() -> list[str]:
        await service.start()
        import asyncio

        loop = asyncio.get_running_loop()
        number = 0
        accepted: set[int] = set()
        lines = _stdin_lines()
        while True:
            line = await loop.run_in_executor(None, next, lines, None)
            if line is None:
                break
            number += 1
            if not line.strip():
                continue
            where = f"stdin line {number}"
            try:
                events = _events_in(line, where)
            except UsageError as error:
                click.echo(f"opsdsl watch: {where}: skipped: {error.message.removeprefix(where + ': ')}", err=True)
                continue
            if len(events) > service.queue_size:
                click.echo(
                    f"opsdsl watch: {where}: skipped: {len(events)} events at once; "
                    f"the queue holds {service.queue_size}",
                    err=True,
                )
                continue
            while service.queue_full(len(events)):  # wait for room rather than drop the line
                await asyncio.sleep(0.05)
            accepted.update(service.accept(events, "watch"))
        await service.queue.join()
        await service.drain()
        return [r.id for r in reversed(service.store.runs()) if r.event_id in accepted and not r.parent_run]

    try:
        from opsdsl.runtime.runner import run_until_done

        started = run_until_done(main)
        rows = _outcomes(service, started)
    finally:
        service.close()
    for row in rows:
        click.echo(json.dumps(row, sort_keys=True))
    ctx.exit(_exit_for([r["status"] for r in rows]))


@click.command()
@click.option(
    "--config",
    "config_file",
    type=_EXISTING,
    help="The service's configuration file (TOML; docs/serve.md). Flags given override it.",
)
@_pack_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8095, show_default=True, help="0 picks a free port.")
@click.option("--token-file", type=_EXISTING, help="File holding the bearer token (default: $OPSDSL_TOKEN).")
@click.option("--hmac-secret-file", type=_EXISTING, help="File holding the secret of X-Opsdsl-Signature.")
@click.option("--insecure-no-auth", is_flag=True, help="Serve without any authentication (trusted networks only).")
@click.option("--metrics-no-auth", is_flag=True, help="Serve /metrics without authentication.")
@click.option(
    "--accept-legacy-signatures",
    is_flag=True,
    help="Also accept v1 HMAC signatures (sha256=: over timestamp and body only, not method and path).",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    metavar="BYTES",
    help="Largest request body.",
)
@click.option(
    "--queue-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Events waiting (queued, or as runs waiting for a run slot) before requests get 429.",
)
@click.option(
    "--max-backlog-bytes",
    type=click.IntRange(min=1),
    default=64 << 20,
    show_default=True,
    metavar="BYTES",
    help="Bytes of bodies being parsed and events waiting before requests get 429.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="A connection's request headers must be complete this long after it opens (or after its last request).",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="A request's whole body must arrive within this long (else 408).",
)
@click.option(
    "--max-connections-per-peer",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Connections one address may hold before it has authenticated; more are refused (503).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM, how long queued events and runs may take to finish.",
)
@click.option(
    "--trusted-user-header",
    metavar="HEADER",
    help="Believe this header (e.g. X-Forwarded-Email) as the person's name, from --trusted-proxy peers only.",
)
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDR",
    help="A peer address (or network) whose --trusted-user-header is believed (repeatable).",
)
@click.option("--public-url", metavar="URL", help="Where people reach this service (links in announcements).")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or as JSON lines.",
)
@click.option(
    "--no-drive",
    is_flag=True,
    help="Intake, operator API and console only: `opsdsl worker` processes evaluate the events and drive runs.",
)
@click.option("--database", metavar="URL", help="A postgresql:// URL (default: $OPSDSL_DATABASE, else SQLite).")
@click.pass_context
def serve(ctx: click.Context, config_file: Path | None, **flags) -> None:
    """Receive events over HTTP: Alertmanager webhooks on POST /v1/alertmanager, JSON events on
    POST /v1/events; GET /healthz and /metrics. A 202 means the events are in the state database.

    Authenticate with a bearer token ($OPSDSL_TOKEN or --token-file) or an HMAC signature
    (--hmac-secret-file). One server per state directory: a second exits 2, naming the
    first's pid. SIGTERM or Ctrl-C drains and exits 0; see docs/serve.md.
    """
    import os

    from opsdsl.serve import intake as server
    from opsdsl.serve.config import addresses_problem, load_config, merged_settings

    no_drive = flags.pop("no_drive")
    database = flags.pop("database")
    config = load_config(config_file) if config_file is not None else None
    use_database(database or (config.database if config is not None else None))
    given = [name for name in flags if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    merged = merged_settings(config, flags, given)
    token, secret = server.read_credentials(
        merged.pop("token_file"), merged.pop("hmac_secret_file"), dict(os.environ), merged["insecure_no_auth"]
    )
    if merged["accept_legacy_signatures"] and secret is None:
        raise UsageError("--accept-legacy-signatures needs --hmac-secret-file")
    if merged["trusted_proxies"] and not merged["trusted_user_header"]:
        raise UsageError("--trusted-proxy needs --trusted-user-header")
    if "trusted_proxies" in given and (wrong := addresses_problem(list(merged["trusted_proxies"]))):
        raise UsageError(f"--trusted-proxy: {wrong}")
    settings = server.ServeOptions(
        token=token,
        hmac_secret=secret,
        notifiers=config.notifiers if config is not None else (),
        follow_ups=config.follow_ups if config is not None else None,
        **{name: merged.pop(name) for name in _SERVE_SETTINGS},
        max_runs=merged["max_runs"],
        trusted_proxies=tuple(merged.pop("trusted_proxies")),
        drive=not no_drive,
    )
    server.configure_logging(settings.log_format)
    service = build_service(**merged, config=config, queue_size=settings.queue_size)
    if not no_drive:  # `--no-drive` replays and drives nothing: any number may share a database
        _claim(service, "serve")  # before listening: a second server exits 2 at once
    try:
        import asyncio

        code = asyncio.run(server.serve(service, settings))
    finally:
        service.close()
    ctx.exit(code)


# serve's flags that go to ServeOptions as they are (the others build the Service)
_SERVE_SETTINGS = (
    "host",
    "port",
    "max_body",
    "queue_size",
    "max_backlog_bytes",
    "header_timeout",
    "body_timeout",
    "max_connections_per_peer",
    "drain_timeout",
    "metrics_no_auth",
    "insecure_no_auth",
    "accept_legacy_signatures",
    "trusted_user_header",
    "public_url",
    "log_format",
)

COMMANDS = (fire, watch, serve)
