"""`opsdsl run`, `resume`, `approve`, `decide`, `ack`, `runs`, `ledger`, `incident`, `report`.

Thin wrappers over `opsdsl.runtime`, `opsdsl.audit.ledger`, `opsdsl.audit.incident` and
`opsdsl.audit.metrics`. Exit codes of `run` and `resume`: 0 succeeded, 1 failed (after
compensation or a policy denial), 4 paused for an approval or a decision, 5 refused
(a pack with errors, a bad signature, an untrusted plan, a missing param or input),
130 interrupted (resumable).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from opsdsl.cli import incidents as incident_commands
from opsdsl.cli.common import run_reference
from opsdsl.cli.init import init
from opsdsl.cli.paths import input_file, pack_file
from opsdsl.errors import UsageError

_STATE_HELP = "State directory (default: $OPSDSL_HOME, else ./.opsdsl)."
_FILE = click.Path(dir_okay=False, path_type=Path)
_INPUT = input_file(exists=False)
_EXISTING = input_file()


def _state_option(function):
    return click.option(  # eager: a RUN argument is looked up in it (opsdsl.cli.common)
        "--state-dir", type=click.Path(file_okay=False, path_type=Path), is_eager=True, help=_STATE_HELP
    )(function)


def _person(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A `--by` name normalised (one spelling per person) or refused (exit 2): see opsdsl.lang.names."""
    from opsdsl.lang.names import person_name

    return None if value is None else person_name(value, f"--{param.name}")


def _say_local(person) -> None:
    """Say how a `--by` name was recorded: nothing authenticated it (the API's people are)."""
    click.echo(f"recorded as {person.recorded} (a local user of this state directory; not authenticated)", err=True)


def _pairs(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise UsageError(f"{flag} {value!r}: write NAME=VALUE")
        out[name] = text
    return out


def _read_event(source: str | None) -> dict[str, Any] | None:
    """The `--event` file (or stdin), read as untrusted input: bounded, UTF-8, recordable JSON."""
    if source is None:
        return None
    from opsdsl.lang.untrusted import read_json

    payload = read_json(source, f"--event {source}")
    if isinstance(payload, dict) and isinstance(payload.get("alerts"), list) and "version" in payload:
        from opsdsl.runtime.service import events_from_payload  # the same unwrapping as `fire` and `serve`

        try:
            alerts = events_from_payload(payload)
        except ValueError as error:
            raise UsageError(f"--event {source}: {error}") from None
        if len(alerts) != 1:
            raise UsageError(
                f"--event {source}: an Alertmanager webhook body with {len(alerts)} alerts; `run` takes one"
                f" event (`opsdsl fire --pack PACK {source}` takes them all)"
            )
        return alerts[0]
    if not isinstance(payload, dict):
        raise UsageError(f"--event {source}: an event is a JSON object, not {type(payload).__name__}")
    return payload


def _view(log_format: str):
    from opsdsl.runtime.view import make_view

    if log_format == "auto":  # a person watching gets the live table; a pipe gets JSON lines on stdout
        log_format = "rich" if sys.stderr.isatty() else "json"
    return make_view(log_format, sys.stderr if log_format == "rich" else sys.stdout)


@click.command()
@click.option("--pack", "pack", type=pack_file(exists=False), help="A pack to compile, sign with the dev key, and run.")
@click.option("--plan", "plan_file", type=_INPUT, help="A signed plan (DSSE envelope) to verify and run.")
@click.option(
    "--policies", type=_EXISTING, multiple=True, help="Policy packs in scope with --pack (default: those beside it)."
)
@click.option("--trust", type=_EXISTING, help="Trust file for --plan (default: STATE_DIR/trust.yaml).")
@click.option(
    "--env",
    "environment",
    metavar="NAME",
    help="Trust environment for --plan (required when the trust file has several).",
)
@click.option("--playbook", help="Playbook to run (default: the hooks matching --event, else the only one).")
@click.option("--event", "event_source", metavar="FILE|-", help="The event (JSON) that starts the run.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="Set a pack param (repeatable; wins over --params-file).",
)
@click.option(
    "--params-file",
    type=_EXISTING,
    help="Params as a YAML or JSON mapping (TOML if it ends in .toml), NAME: VALUE.",
)
@click.option("--input", "inputs", multiple=True, metavar="NAME=VALUE", help="Set a playbook input (repeatable).")
@click.option(
    "--secret", "secret_refs", multiple=True, metavar="NAME=env:VAR|file:PATH", help="Where a secret's value is."
)
@click.option("--dry-run", is_flag=True, help="Show what would run and why, without any side effect.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "rich", "json", "text", "quiet"]),
    default="auto",
    show_default=True,
    help="Live view: rich on a terminal, JSON lines otherwise.",
)
@click.option("--incidents-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: STATE_DIR/incidents.")
@_state_option
@click.pass_context
def run(
    ctx: click.Context,
    pack: Path | None,
    plan_file: Path | None,
    policies: tuple[Path, ...],
    trust: Path | None,
    environment: str,
    playbook: str | None,
    event_source: str | None,
    params: tuple[str, ...],
    params_file: Path | None,
    inputs: tuple[str, ...],
    secret_refs: tuple[str, ...],
    dry_run: bool,
    log_format: str,
    incidents_dir: Path | None,
    state_dir: Path | None,
) -> None:
    """Run a playbook of a pack or a signed plan: policy gate before every step, ledger, evidence.

    Exit 0 succeeded, 1 failed, 4 paused for approval, 5 refused, 130 interrupted.
    """
    from opsdsl.runtime import runner
    from opsdsl.runtime.inputs import refuse_secret_params
    from opsdsl.runtime.secrets import Secrets, parse_references
    from opsdsl.runtime.store import state_dir as resolve_state

    if (pack is None) == (plan_file is None):
        raise UsageError("give exactly one of --pack FILE or --plan SIGNED_PLAN")
    state = resolve_state(state_dir)
    event = _read_event(event_source)
    secrets = Secrets(state, parse_references(secret_refs))
    given_params = {}
    if params_file is not None:
        from opsdsl.serve.config import read_params_file

        given_params = read_params_file(params_file)
    given_params.update(_pairs(params, "--param"))
    given_inputs = _pairs(inputs, "--input")
    scope = list(policies) if policies else None
    if dry_run:
        from opsdsl.runtime.dryrun import dry_run as simulate

        plan = runner.plan_for_dry_run(pack, plan_file, scope, trust, environment, state)
        refuse_secret_params(plan, given_params)
        click.echo(simulate(plan, playbook, event, given_params, given_inputs, secrets))
        ctx.exit(0)

    def settle(payload: dict[str, Any]) -> tuple[dict[str, Any], list]:
        """The params and the playbooks to run: every usage error of the command is raised here."""
        refuse_secret_params(payload, given_params)
        values = runner.resolve_params(payload, given_params, secrets)
        selections = runner.select_playbooks(payload, event, playbook, values)
        for selection in selections:
            runner.resolve_inputs(
                payload["playbooks"][selection.playbook], selection.playbook, event or {}, values, given_inputs
            )
        return values, selections

    # A new state dir (and its dev key) is made only for a run that will start: settle the
    # command on a throwaway compile first, so a usage error leaves no trace.
    fresh = pack is not None and not state.exists()
    if fresh and not settle(runner.plan_for_dry_run(pack, None, scope, None, environment, state))[1]:
        click.echo("no trigger of the pack matches the event; nothing to run", err=True)
        ctx.exit(0)
    if pack is not None:
        verified = runner.plan_from_pack(pack, scope, state)
    else:
        verified = runner.plan_from_file(plan_file, trust, environment, state)
    values, selections = settle(verified.payload)
    if not selections:
        click.echo("no trigger of the pack matches the event; nothing to run", err=True)
        ctx.exit(0)
    view = _view(log_format)
    runtime = runner.Runtime(state, incidents_dir, view=view)
    worst = 0
    try:
        for selection in selections:
            playbook_plan = verified.payload["playbooks"][selection.playbook]
            run_inputs = runner.resolve_inputs(playbook_plan, selection.playbook, event or {}, values, given_inputs)
            row = runtime.create_run(verified, selection, values, run_inputs, event or {}, secrets)
            outcome, code = None, 3
            try:
                outcome = runner.run_until_done(lambda row=row: runtime.drive(row, secrets))
                code = runner.exit_code(outcome)
            finally:
                if outcome is None:  # the drive raised: say what became of the run, if it can be read
                    _end_view(view, row, None, code, *_left_as(runtime, row.id, sys.exc_info()[1]))
                else:
                    _end_view(view, row, outcome, code)
            worst = max(worst, code, key=_severity_of_exit)
            if code == runner.EXIT_INTERRUPTED:
                break  # Ctrl-C stops the whole command, not just this playbook
    finally:
        runtime.close()
    ctx.exit(worst)


def _severity_of_exit(code: int) -> int:
    return {0: 0, 4: 1, 1: 2, 130: 3, 5: 4}.get(code, 2)


def _left_as(runtime, run_id: str, error: BaseException | None) -> tuple[str | None, str | None]:
    """(status, error) of a run whose drive raised `error`: its status as stored (None when
    that cannot be read either), and "the state database failed" for a database error."""
    import contextlib
    import sqlite3

    status = None
    with contextlib.suppress(Exception):
        status = runtime.store.run(run_id).status
    if isinstance(error, sqlite3.OperationalError):
        return status, "the state database failed; the run stays resumable"
    return status, None


def _end_view(view, row, outcome, code: int, status: str | None = None, error: str | None = None) -> None:
    """Close the live view, also when the run crashed (so the terminal is given back).
    `status` and `error` say what became of a run this command did not drive to an outcome."""
    import contextlib

    with contextlib.suppress(OSError):  # stdout is gone (`| head`): the exit code still tells what happened
        view.end(
            outcome.status if outcome else (status or "failed"),
            {
                "run": row.id,
                "incident_folder": row.incident_dir,
                "exit_code": code,
                "pending_approvals": outcome.pending if outcome else [],
                "in_doubt": outcome.in_doubt if outcome else [],
                "error": outcome.error if outcome else (error or "internal error"),
            },
        )


@click.command()
@click.argument("run_id", metavar="RUN", callback=run_reference)
@click.option("--by", callback=_person, help="Who resumes (recorded in the ledger).")
@click.option(
    "--secret", "secret_refs", multiple=True, metavar="NAME=env:VAR|file:PATH", help="Where a secret's value is."
)
@click.option("--param", "params", multiple=True, hidden=True, help="Refused, with what to use instead.")
@click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text", "quiet"]), default="auto")
@_state_option
@click.pass_context
def resume(
    ctx: click.Context,
    run_id: str,
    by: str | None,
    secret_refs: tuple[str, ...],
    params: tuple[str, ...],
    log_format: str,
    state_dir: Path | None,
) -> None:
    """Continue a paused, interrupted or crashed run; completed steps are not repeated.

    Secret params, never stored, are looked up again: --secret NAME=env:VAR|file:PATH,
    $OPSDSL_SECRET_NAME or STATE_DIR/secrets/NAME.
    """
    from opsdsl.runtime import runner
    from opsdsl.runtime.secrets import Secrets, parse_references
    from opsdsl.runtime.store import state_dir as resolve_state

    state = resolve_state(state_dir)
    secrets = Secrets(state, parse_references(secret_refs))
    view = _view(log_format)
    runtime = runner.Runtime(state, view=view, create=False)
    _drive_here(ctx, runtime, view, secrets, run_id, params, by, "resume")


def _drive_here(ctx, runtime, view, secrets, run_id: str, params: tuple[str, ...], by, reason: str) -> None:
    """Drive a run in this process to its end (or pause) with the terminal view; exits with its code."""
    from opsdsl.runtime import runner
    from opsdsl.runtime.inputs import refuse_secret_params

    try:
        row = runtime.resumable(run_id)
        plan = json.loads(runner._payload_of(row.envelope))
        given_params = _pairs(params, "--param")
        refuse_secret_params(plan, given_params)
        for name in given_params:
            raise UsageError(f"--param {name}: a run's params are fixed when it starts; resume cannot change them")
        runtime.refuse_if_served(row)
        if reason == "resume" and runtime.nudge_workers(row):
            click.echo(f"{row.id}: `opsdsl worker` processes drive this run; a worker continues it now")
            ctx.exit(0)
        row.params = runner.restore_params(plan, row.params, {}, secrets)
        runtime.ensure_not_driven(row.id)  # a run another process drives is not ours to show as failed
        try:
            view.begin(runner._run_summary(row), runner._ordered_nodes(plan["playbooks"][row.playbook]))
            for entry in runtime.store.ledger.entries(run=row.id):  # the story so far
                view.entry(entry.to_dict())
        except OSError:  # stdout is gone: the drive stops at once, the run stays resumable
            runtime.view, runtime.view_gone = None, True
        outcome, code, busy = None, 3, None
        try:
            outcome = runner.run_until_done(lambda: runtime.drive(row, secrets, reason, by))
            code = runner.exit_code(outcome)
        except runner.RunBusy as error:  # another process took it after the check: exit 2, the run goes on
            busy, code = error, error.exit_code
            raise
        finally:
            if busy is not None:
                _end_view(view, row, None, code, runtime.store.run(row.id).status, busy.message)
            else:
                _end_view(view, row, outcome, code)
    finally:
        runtime.close()
    ctx.exit(code)


@click.command()
@click.argument("run_id", metavar="RUN", callback=run_reference)
@click.argument("step")
@click.option(
    "--by",
    required=True,
    callback=_person,
    help="Who approves (recorded normalised: `Carol` and `carol ` are one person; approvals count distinct people).",
)
@click.option("--deny", is_flag=True, help="Deny instead: the step fails.")
@click.option("--input", "answers", multiple=True, metavar="NAME=VALUE", help="An answer the approval asks for.")
@click.option("--comment", help="A note kept with the decision.")
@_state_option
def approve(
    run_id: str, step: str, by: str, deny: bool, answers: tuple[str, ...], comment: str | None, state_dir: Path | None
) -> None:
    """Approve (or --deny) STEP of a paused run; then `opsdsl resume RUN` continues it (a
    run `opsdsl serve` owns goes on there by itself)."""
    from opsdsl.runtime import runner
    from opsdsl.runtime.people import local_person
    from opsdsl.runtime.store import state_dir as resolve_state

    runtime = runner.Runtime(resolve_state(state_dir), create=False)
    try:
        person = local_person(runtime.store, by)
        result = runtime.approve(run_id, step, by, deny, _pairs(answers, "--input"), comment, person=person)
        served = runtime.served_by(run_id)
    finally:
        runtime.close()
    by = person.name
    _say_local(person)
    if result["decision"] == "deny":
        then = "`opsdsl serve` now fails" if served else f"`opsdsl resume {run_id}` fails"
        click.echo(f"{step}: denied by {by}; {then} the step and compensates")
    elif result["approved"] >= result["needed"]:
        then = "`opsdsl serve` continues the run now" if served else f"continue with `opsdsl resume {run_id}`"
        click.echo(f"{step}: approved ({result['approved']} of {result['needed']}); {then}")
    else:
        click.echo(f"{step}: approved by {by} ({result['approved']} of {result['needed']} needed)")


@click.command()
@click.argument("run_id", metavar="RUN", callback=run_reference)
@click.argument("step")
@click.option("--as", "outcome", type=click.Choice(["retry", "succeeded", "failed"]), required=True)
@click.option("--by", required=True, callback=_person, help="Who decides (recorded in the ledger).")
@_state_option
def decide(run_id: str, step: str, outcome: str, by: str, state_dir: Path | None) -> None:
    """Settle a step a crash left in doubt (it was not idempotent): retry it, or record what happened."""
    from opsdsl.runtime import runner
    from opsdsl.runtime.people import local_person
    from opsdsl.runtime.store import state_dir as resolve_state

    runtime = runner.Runtime(resolve_state(state_dir), create=False)
    try:
        person = local_person(runtime.store, by)
        runtime.decide(run_id, step, by, outcome, person=person)
        served = runtime.served_by(run_id)
    finally:
        runtime.close()
    by = person.name
    _say_local(person)
    then = "`opsdsl serve` continues the run now" if served else f"continue with `opsdsl resume {run_id}`"
    click.echo(f"{step}: {outcome} (by {by}); {then}")


@click.command()
@click.argument("run_id", metavar="RUN", callback=run_reference)
@click.option("--by", required=True, callback=_person, help="Who acknowledges the incident.")
@_state_option
def ack(run_id: str, by: str, state_dir: Path | None) -> None:
    """Acknowledge a run's incident: the end of MTTA in `opsdsl report`.

    Only the first acknowledgement by a person counts (an approval or a decision is one
    too); acknowledging again records nothing and says who was first.
    """
    from opsdsl.audit.incident import iso_time
    from opsdsl.runtime import runner
    from opsdsl.runtime.people import local_person
    from opsdsl.runtime.store import state_dir as resolve_state

    runtime = runner.Runtime(resolve_state(state_dir), create=False)
    try:
        person = local_person(runtime.store, by)
        first = runtime.acknowledge(run_id, by, person=person)
    finally:
        runtime.close()
    if first["new"]:
        _say_local(person)
        click.echo(f"{run_id}: acknowledged by {person.name} at {iso_time(first['ts'])}")
    else:
        how = {"approval.recorded": " (an approval)", "step.decided": " (a decision)"}.get(first["kind"], "")
        click.echo(f"{run_id}: already acknowledged by {first['by']} at {iso_time(first['ts'])}{how}; nothing recorded")


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--status",
    type=click.Choice(["running", "paused", "interrupted", "succeeded", "failed", "refused", "cancelled"]),
    help="Only runs with this status.",
)
@click.option("--pack", "pack_name", metavar="NAME", help="Only runs of this pack (its name).")
@click.option("--playbook", metavar="NAME", help="Only runs of this playbook.")
@click.option("--severity", type=click.Choice(["SEV-1", "SEV-2", "SEV-3", "SEV-4"]), help="Only runs of this severity.")
@click.option(
    "--since", metavar="WHEN", help="Only runs started since: 2026-11-27, 2026-11-27T08:00:00Z, or 2h, 7d ago."
)
@click.option("--limit", type=click.IntRange(1, 1_000_000), help="At most this many, newest first.")
@_state_option
def runs(
    fmt: str,
    status: str | None,
    pack_name: str | None,
    playbook: str | None,
    severity: str | None,
    since: str | None,
    limit: int | None,
    state_dir: Path | None,
) -> None:
    """List runs, newest first: id, status, severity, pack/playbook, start time (UTC), age and
    the steps a paused run waits for. `--format json` lists them as the API does."""
    from opsdsl.runtime.inspect import list_runs, parse_since, render_runs
    from opsdsl.runtime.store import Store
    from opsdsl.runtime.store import state_dir as resolve_state

    store = Store(resolve_state(state_dir), create=False)
    try:
        items, more = list_runs(
            store,
            status=status,
            pack=pack_name,
            playbook=playbook,
            severity=severity,
            since=None if since is None else parse_since(since),
            limit=limit,
        )
    finally:
        store.close()
    click.echo(json.dumps(items, indent=2, sort_keys=True) if fmt == "json" else render_runs(items, more))


@click.group()
def ledger() -> None:
    """The audit ledger: show and verify it."""


@ledger.command("verify")
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    type=_EXISTING,
    help="An incident record.json or checkpoint JSON kept elsewhere (repeatable).",
)
@click.option(
    "--key",
    "keys",
    multiple=True,
    type=_EXISTING,
    help="Public key whose checkpoints count, kept outside the state directory (repeatable).",
)
@click.option("--trust", type=_EXISTING, help="Trust file whose keys' checkpoints count.")
@click.option("--env", "environment", metavar="NAME", help="Environment of --trust (required when it has several).")
@click.option(
    "--no-incidents", is_flag=True, help="Do not also check the checkpoints kept in STATE_DIR's incident records."
)
@_state_option
@click.pass_context
def ledger_verify(
    ctx: click.Context,
    checkpoints: tuple[Path, ...],
    keys: tuple[Path, ...],
    trust: Path | None,
    environment: str | None,
    no_incidents: bool,
    state_dir: Path | None,
) -> None:
    """Prove the ledger intact, or name the first bad entry. Exit 0 intact, 1 not, 2 unreadable.

    Without --key or --trust it trusts the key found in the state directory itself, and says
    so: whoever can write the directory could have re-signed it. An audit passes the keys.
    """
    from opsdsl.runtime.state_audit import verify_state

    report = verify_state(
        state_dir,
        list(checkpoints),
        list(keys),
        include_incidents=not no_incidents,
        trust=trust,
        environment=environment,
    )
    click.echo(report.render())
    ctx.exit(0 if report.ok else 1)


@click.group()
def incident() -> None:
    """Incident folders: review, export and verify; the RCA as PDF; follow-ups in a tracker."""


@incident.command("review")
@click.argument("incident_id")
@click.option("--by", callback=_person, help="Who reviewed (required unless the file names `by`).")
@click.option("--root-cause", help="What caused the incident.")
@click.option("--impact", help="What it did to users and systems.")
@click.option("--follow-up", "follow_ups", multiple=True, help="An action to take (repeatable).")
@click.option("--file", "review_file", type=_EXISTING, help="A YAML file: {by, root_cause, impact, follow_ups: [...]}.")
@_state_option
def incident_review(
    incident_id: str,
    by: str | None,
    root_cause: str | None,
    impact: str | None,
    follow_ups: tuple[str, ...],
    review_file: Path | None,
    state_dir: Path | None,
) -> None:
    """Record a person's review of a finished incident; the record, rca.md and manifest are signed again.

    Counts for RCA completion in `opsdsl report`. Reviewing again amends the review.
    """
    from opsdsl.runtime import runner
    from opsdsl.runtime.reviews import Review, record_review
    from opsdsl.runtime.store import state_dir as resolve_state

    fields: dict[str, Any] = {"by": by, "root_cause": root_cause, "impact": impact, "follow_ups": list(follow_ups)}
    if review_file is not None:
        given = {name for name, value in fields.items() if value}
        if given:
            raise UsageError(f"--file {review_file}: give the review in the file or in options, not both")
        fields = _review_file(review_file)
    for name in ("by", "root_cause", "impact"):
        if not fields.get(name):
            raise UsageError(f"a review needs --{name.replace('_', '-')}")
    review = Review.from_text(fields["by"], fields["root_cause"], fields["impact"], fields.get("follow_ups"))
    runtime = runner.Runtime(resolve_state(state_dir), create=False)
    try:
        folder = record_review(runtime, incident_id, review)
    finally:
        runtime.close()
    plural = "s" if len(review.follow_ups) != 1 else ""
    click.echo(
        f"{folder.name}: reviewed by {review.by}, {len(review.follow_ups)} follow-up{plural}; {folder} signed again"
    )


def _review_file(path: Path) -> dict[str, Any]:
    """A review.yaml: a mapping of by, root_cause, impact and follow_ups (a list), nothing else."""
    import yaml

    from opsdsl.lang.untrusted import read_text

    try:
        data = yaml.safe_load(read_text(path, f"--file {path}"))
    except yaml.YAMLError as exc:
        raise UsageError(f"--file {path}: not valid YAML ({exc})") from None
    known = {"by", "root_cause", "impact", "follow_ups"}
    if not isinstance(data, dict) or set(data) - known:
        extra = sorted(map(str, set(data) - known)) if isinstance(data, dict) else []
        detail = f"; unknown: {', '.join(extra)}" if extra else ""
        raise UsageError(f"--file {path}: a review is a mapping of {', '.join(sorted(known))}{detail}")
    return data


@incident.command("export")
@click.argument("incident")
@click.option("-o", "--out", required=True, type=_FILE, help="The archive to write (.tar.gz).")
@click.option("--incidents-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: STATE_DIR/incidents.")
@_state_option
def incident_export(incident: str, out: Path, incidents_dir: Path | None, state_dir: Path | None) -> None:
    """Write an incident (its id, or its folder) to a .tar.gz: record, RCA, evidence, manifest."""
    from opsdsl.audit.incident import export_incident
    from opsdsl.runtime.state_audit import find_incident

    folder = Path(incident) if Path(incident).is_dir() else find_incident(state_dir, incidents_dir, incident)
    note = incident_commands.pdf_before_export(state_dir, folder)  # rca.pdf is rendered on demand
    if note:
        click.echo(note, err=True)
    export_incident(folder, out)
    click.echo(f"{out}: incident {folder.name}")


@incident.command("verify")
@click.argument("archive", type=_EXISTING)
@click.option(
    "--key", "keys", multiple=True, type=_EXISTING, help="Trusted public key (default: the state directory's key)."
)
@click.option("--trust", type=_EXISTING, help="Trust file whose keys are trusted.")
@click.option("--env", "environment", metavar="NAME", help="Environment of --trust (required when it has several).")
@_state_option
@click.pass_context
def incident_verify(
    ctx: click.Context,
    archive: Path,
    keys: tuple[Path, ...],
    trust: Path | None,
    environment: str | None,
    state_dir: Path | None,
) -> None:
    """Check an exported incident: signatures, digests, no extra or missing files, no path tricks."""
    from opsdsl.audit.incident import verify_archive
    from opsdsl.runtime.state_audit import trusted_keys

    report = verify_archive(archive, trusted_keys(state_dir, list(keys), trust, environment))
    report.raise_for_problems()  # exit 1, every problem listed
    click.echo(
        f"{archive}: incident {report.incident_id} verified: {len(report.files)} files, "
        f"signed by {', '.join(report.signers)}"
    )
    review = getattr(report, "review", None)
    if review:
        click.echo(f"reviewed by {review.get('by')} at {review.get('ts')} (revision {review.get('revision')})")
    else:
        click.echo("not reviewed yet: no person has recorded a root cause (opsdsl incident review)")
    for line in report.provenance:
        click.echo(f"  {line}")
    for line in getattr(report, "pack", ()):  # the evidence pack: ledger excerpt, plan, follow-ups, PDF
        click.echo(f"  {line}")


@click.group(invoke_without_command=True)
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option(
    "--since", help="Only runs detected on or after this date (YYYY-MM-DD; with --compliance-pdf also a UTC time)."
)
@click.option(
    "--until", help="Only runs detected before this date (YYYY-MM-DD; with --compliance-pdf also a UTC time)."
)
@click.option(
    "--compliance-pdf",
    type=_FILE,
    metavar="FILE",
    help="Write the signed compliance report of the period as a PDF (and FILE.sig.json) instead.",
)
@_state_option
@click.pass_context
def report(
    ctx: click.Context,
    fmt: str,
    since: str | None,
    until: str | None,
    compliance_pdf: Path | None,
    state_dir: Path | None,
) -> None:
    """MTTA, MTTR and auto-mitigation success per severity, against the seed's targets;
    or, with --compliance-pdf, the signed compliance report of a period (docs/incidents.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from opsdsl.runtime.state_audit import compute_state_report
    from opsdsl.runtime.store import StateError, has_state, no_state_message
    from opsdsl.runtime.store import state_dir as resolve_state

    if not has_state(resolve_state(state_dir)):  # like `runs`: a mistyped dir is not "no runs"
        raise StateError(no_state_message(resolve_state(state_dir)))
    if compliance_pdf is not None:
        _compliance_pdf(compliance_pdf, fmt, since, until, state_dir)
        return
    result = compute_state_report(state_dir, since, until)
    click.echo(json.dumps(result.to_dict(), indent=2, sort_keys=True) if fmt == "json" else result.to_text())


def _compliance_pdf(out: Path, fmt: str, since: str | None, until: str | None, state_dir: Path | None) -> None:
    from opsdsl.runtime.compliance import parse_when, write_state_compliance

    start = parse_when(since, "--since") if since else None
    end = parse_when(until, "--until") if until else None
    written = write_state_compliance(state_dir, out, since=start, until=end)
    body = json.loads(written.signature.read_text("utf-8"))["signed"]
    if fmt == "json":
        shown = {"pdf": str(written.pdf), "signature": str(written.signature), "sha256": written.sha256}
        click.echo(json.dumps(shown | {k: body[k] for k in ("since", "until", "incidents")}, indent=2))
        return
    click.echo(
        f"{written.pdf}: compliance report {body['since']} – {body['until']}, {body['incidents']} incident(s), "
        f"{written.size} bytes, {written.sha256}"
    )
    signing = body["signing"]
    click.echo(f"{written.signature}: signed by {str(signing.get('keyid'))[:16]} (the {signing.get('key')} key)")


@report.command("verify-compliance")
@click.argument("pdf", metavar="FILE", type=_EXISTING)
@click.option("--signature", type=_EXISTING, help="The detached signature (default: FILE.sig.json).")
@click.option(
    "--key", "keys", multiple=True, type=_EXISTING, help="Trusted public key (default: the state directory's key)."
)
@click.option("--trust", type=_EXISTING, help="Trust file whose keys are trusted.")
@click.option("--env", "environment", metavar="NAME", help="Environment of --trust (required when it has several).")
@_state_option
@click.pass_context
def verify_compliance_command(
    ctx: click.Context,
    pdf: Path,
    signature: Path | None,
    keys: tuple[Path, ...],
    trust: Path | None,
    environment: str | None,
    state_dir: Path | None,
) -> None:
    """Check a compliance report PDF against its detached signature: exit 0 intact and signed by a
    trusted key, 1 not, 2 unreadable."""
    from opsdsl.audit.compliance import verify_compliance
    from opsdsl.runtime.state_audit import SELF_TRUST_WARNING, trusted_keys

    if state_dir is None and ctx.parent is not None:  # `opsdsl report --state-dir DIR verify-compliance FILE`
        state_dir = ctx.parent.params.get("state_dir")
    trusted = trusted_keys(state_dir, list(keys), trust, environment)
    result = verify_compliance(pdf, trusted, signature)
    result.raise_for_problems()  # exit 1, every problem listed
    click.echo(result.render())
    if not keys and not trust:
        click.echo("WARNING: " + SELF_TRUST_WARNING.format(source="the state directory"), err=True)


def _add_ledger_show() -> None:
    from opsdsl.cli.inspect import ledger_show

    ledger.add_command(ledger_show)


_add_ledger_show()


@click.command()
@click.argument("run_id", metavar="RUN", callback=run_reference)
@click.option("--by", required=True, callback=_person, help="Who cancels the run (recorded in the ledger).")
@click.option("--reason", help="Why (kept in the ledger).")
@click.option(
    "--secret", "secret_refs", multiple=True, metavar="NAME=env:VAR|file:PATH", help="Where a secret's value is."
)
@click.option("--log-format", type=click.Choice(["auto", "rich", "json", "text", "quiet"]), default="auto")
@_state_option
@click.pass_context
def cancel(
    ctx: click.Context,
    run_id: str,
    by: str,
    reason: str | None,
    secret_refs: tuple[str, ...],
    log_format: str,
    state_dir: Path | None,
) -> None:
    """Stop a live run: no new step starts, what was done is compensated as for a failure,
    and the run ends `cancelled`. A step already running finishes (or hits its timeout) first.

    The request is recorded at once. A run `opsdsl serve` owns is stopped there; any other
    run is driven to its end here, as `opsdsl resume` would (exit 1 when it ends cancelled).
    """
    from opsdsl.runtime import runner
    from opsdsl.runtime.people import local_person
    from opsdsl.runtime.secrets import Secrets, parse_references
    from opsdsl.runtime.store import state_dir as resolve_state

    state = resolve_state(state_dir)
    view = _view(log_format)
    runtime = runner.Runtime(state, view=view, create=False)
    try:
        person = local_person(runtime.store, by)
        row = runtime.cancel(run_id, person.recorded, person.via, reason)
        _say_local(person)
        try:
            runtime.refuse_if_served(row, "cancel")
        except UsageError:
            click.echo(f"{row.id}: cancellation recorded; `opsdsl serve` stops the run and compensates it now")
            ctx.exit(0)
        if row.lease_epoch > 0:  # workers drive it (the cancellation left them a nudge)
            click.echo(f"{row.id}: cancellation recorded; an `opsdsl worker` stops the run and compensates it now")
            ctx.exit(0)
        if row.status == "running":  # another process drives it: it stops at its next step
            try:
                runtime.ensure_not_driven(row.id)
            except runner.RunBusy:
                click.echo(f"{row.id}: cancellation recorded; the process driving the run stops it at its next step")
                ctx.exit(0)
        secrets = Secrets(state, parse_references(secret_refs))
        _drive_here(ctx, runtime, view, secrets, row.id, (), person.recorded, "cancel")
    finally:
        runtime.close()


for _command in incident_commands.COMMANDS:  # incident pdf, incident follow-ups
    incident.add_command(_command)

COMMANDS = (init, run, resume, approve, decide, ack, cancel, runs, ledger, incident, report)
