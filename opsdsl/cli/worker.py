"""`opsdsl worker`: drive runs under leases, beside `opsdsl serve --no-drive` (docs/scaleout.md).

The logic is opsdsl.runtime.worker's; this file reads the flags, builds the same engine
`serve` builds (packs, params, secrets, config) and runs it until SIGTERM or SIGINT.
"""

from __future__ import annotations

from pathlib import Path

import click

from opsdsl.cli.events import _EXISTING, _pack_options, build_service, use_database
from opsdsl.errors import UsageError

STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


def _lease_seconds(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from opsdsl.lang.durations import parse_duration

    try:
        seconds = parse_duration(value) / 1000
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if seconds < 1:
        raise click.BadParameter(f"{value}: a lease lasts 1s or more")
    return seconds


def _sweep_seconds(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    from opsdsl.lang.durations import parse_duration

    if value == "off":
        return None
    try:
        return parse_duration(value) / 1000
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


@click.command()
@click.option(
    "--config",
    "config_file",
    type=_EXISTING,
    help="The service's configuration file (TOML; docs/serve.md): packs, params, secrets, state.",
)
@_pack_options
@click.option("--database", metavar="URL", help="A postgresql:// URL (default: $OPSDSL_DATABASE, else SQLite).")
@click.option("--id", "name", metavar="NAME", help="This worker's name in the leases it holds (default: HOST:PID).")
@click.option(
    "--lease",
    "ttl",
    default="30s",
    show_default=True,
    callback=_lease_seconds,
    metavar="DURATION",
    help="How long a run's lease lasts unless renewed; a dead worker's runs are taken over after it.",
)
@click.option(
    "--incident-sweep",
    "incident_sweep",
    default="60s",
    show_default=True,
    callback=_sweep_seconds,
    metavar="DURATION",
    help="How often to write the incident folders of runs that ended that long ago or more but have none"
    " (their worker died between the run's end and the folder); 0s: only at start-up; off: never"
    " (each machine keeps its own folders at the same path).",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="On SIGTERM, how long the runs being driven may take to finish before they are interrupted.",
)
@click.pass_context
def worker(
    ctx: click.Context, config_file: Path | None, database: str | None, name: str | None, ttl: float, **flags
) -> None:
    """Drive runs: claim each with a lease (measured by the database's clock) and an epoch
    every write checks, evaluate the events `opsdsl serve --no-drive` accepted, and run
    timers, approvals and decisions as `serve` does. Any number may run on one database.
    SIGTERM or Ctrl-C drains (finishes or releases what it holds) and exits 0."""
    import asyncio
    import signal

    from opsdsl.serve.config import load_config, merged_settings

    drain_timeout = flags.pop("drain_timeout")
    incident_sweep = flags.pop("incident_sweep")
    if name is not None and not name.strip():
        raise UsageError("--id: give a non-empty name")
    config = load_config(config_file) if config_file is not None else None
    use_database(database or (config.database if config is not None else None))
    given = [key for key in flags if ctx.get_parameter_source(key) is click.core.ParameterSource.COMMANDLINE]
    merged = merged_settings(config, flags, given)
    service = build_service(**merged, config=config)

    async def main() -> None:
        from opsdsl.runtime.worker import Worker

        _configure_logging()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(getattr(signal, sig), stop.set)
        driver = Worker(service, name, ttl=ttl, max_runs=merged["max_runs"], incident_sweep=incident_sweep)
        await driver.run(stop, drain_timeout)

    try:
        asyncio.run(main())
    finally:
        service.close()


def _configure_logging() -> None:
    """One line per message on stderr, `opsdsl worker: …` (the worker's and the engine's)."""
    import logging
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("opsdsl worker: %(message)s"))
    for name in ("opsdsl.worker", "opsdsl.serve"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


COMMANDS = (worker,)
