"""`opsdsl fire`, `opsdsl watch` and `opsdsl serve`: events in, runs out.

All three feed the same engine (`opsdsl.runtime.service`): events are persisted in the
state database before they count as accepted, triggers and hooks decide, and the runs
they start are the same durable runs as `opsdsl run` (ledger, evidence, `resume`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from opsdsl.errors import UsageError

_STATE_HELP = "State directory (default: $OPSDSL_HOME, else ./.opsdsl)."
_EXISTING = click.Path(exists=True, dir_okay=False, path_type=Path)


def _pack_options(function):
    options = [
        click.option("--pack", "packs", multiple=True, type=_EXISTING, help="A pack (repeatable); signed with the dev key."),
        click.option("--plan", "plans", multiple=True, type=_EXISTING, help="A signed plan (repeatable); needs a trust file."),
        click.option("--policies", type=_EXISTING, multiple=True, help="Policy packs in scope with --pack (default: those beside it)."),
        click.option("--trust", type=_EXISTING, help="Trust file for --plan (default: STATE_DIR/trust.yaml)."),
        click.option("--env", "environment", default="default", show_default=True, help="Trust environment for --plan."),
        click.option("--secret", "secret_refs", multiple=True, metavar="NAME=env:VAR|file:PATH", help="Where a secret's value is."),
        click.option("--escalation-url", help="POST a JSON notice here when a hook's run fails and the hook has `escalate:`."),
        click.option("--max-runs", type=click.IntRange(min=1), default=64, show_default=True, help="Runs executing at once."),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_HELP),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_service(packs, plans, policies, trust, environment, secret_refs, escalation_url, max_runs, state_dir, **extra):
    from opsdsl.runtime.secrets import Secrets, parse_references
    from opsdsl.runtime.service import Service, load_plans
    from opsdsl.runtime.store import state_dir as resolve_state

    if not packs and not plans:
        raise UsageError("give at least one --pack FILE or --plan SIGNED_PLAN")
    state = resolve_state(state_dir)
    loaded = load_plans(list(packs), list(plans), list(policies) if policies else None, trust, environment, state)
    secrets = Secrets(state, parse_references(secret_refs))
    return Service(state, loaded, secrets=secrets, max_runs=max_runs, escalation_url=escalation_url, **extra)


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
    from opsdsl.runtime.service import events_from_payload

    try:
        text = sys.stdin.read() if event_source == "-" else Path(event_source).read_text(encoding="utf-8")
        events = events_from_payload(json.loads(text))
    except OSError as error:
        raise UsageError(f"{event_source}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{event_source}: not JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except ValueError as error:
        raise UsageError(f"{event_source}: {error}") from None
    service = build_service(**options)

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
    from opsdsl.runtime.service import events_from_payload

    service = build_service(**options)

    async def main() -> list[str]:
        await service.start()
        loop = asyncio.get_running_loop()
        number = 0
        accepted: set[int] = set()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            number += 1
            if not line.strip():
                continue
            try:
                events = events_from_payload(json.loads(line))
            except (json.JSONDecodeError, ValueError) as error:
                click.echo(f"opsdsl watch: stdin line {number}: skipped: {error}", err=True)
                continue
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


COMMANDS = (fire, watch)
