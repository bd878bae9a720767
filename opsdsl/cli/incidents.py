"""`opsdsl incident pdf` and `opsdsl incident follow-ups`: the RCA as PDF, follow-ups in a tracker.

Registered into the `incident` group of opsdsl.cli.run. Thin wrappers over
opsdsl.runtime.incidents; WeasyPrint and httpx are imported only when a command needs them.
"""

from __future__ import annotations

from pathlib import Path

import click

from opsdsl.errors import UsageError

_STATE_HELP = "State directory (default: $OPSDSL_HOME, else ./.opsdsl)."


def _state_option(function):
    return click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help=_STATE_HELP)(function)


def _runtime(state_dir: Path | None):
    from opsdsl.runtime import runner
    from opsdsl.runtime.store import state_dir as resolve_state

    return runner.Runtime(resolve_state(state_dir), create=False)


@click.command("pdf")
@click.argument("incident_id")
@_state_option
def incident_pdf(incident_id: str, state_dir: Path | None) -> None:
    """Render the RCA report as rca.pdf beside rca.md; the manifest is signed again.

    Takes about a second (WeasyPrint), so runs do not do it themselves; `incident export`
    and `incident review` do. The same record gives the same bytes.
    """
    from opsdsl.runtime.incidents import render_incident_pdf

    runtime = _runtime(state_dir)
    try:
        path = render_incident_pdf(runtime, incident_id)
    finally:
        runtime.close()
    click.echo(f"{path}: {path.stat().st_size} bytes; manifest signed again")


@click.command("follow-ups")
@click.argument("incident_id")
@click.option("--to", "kind", type=click.Choice(["github", "gitlab", "jira"]), required=True, help="The tracker.")
@click.option("--repo", metavar="OWNER/REPO", help="GitHub repository.")
@click.option("--project", metavar="ID|PATH|KEY", help="GitLab project id or path; Jira project key.")
@click.option("--url", metavar="URL", help="API base URL (GitHub Enterprise, self-managed GitLab; required for Jira).")
@click.option(
    "--token-secret",
    metavar="NAME",
    help="Secret holding the token (default: github_token, gitlab_token or jira_token).",
)
@click.option(
    "--secret", "secret_refs", multiple=True, metavar="NAME=env:VAR|file:PATH", help="Where a secret's value is."
)
@click.option("--label", "labels", multiple=True, help="Label for each issue (repeatable; default: opsdsl, incident).")
@click.option("--jira-issue-type", default="Task", show_default=True, help="Jira issue type name.")
@click.option(
    "--jira-api", type=click.Choice(["2", "3"]), default="2", show_default=True, help="Jira REST API version."
)
@click.option("--jira-user", metavar="EMAIL", help="Jira Cloud: basic auth with this user and the token.")
@click.option("--by", help="Who opens them (recorded in the ledger).")
@click.option("--dry-run", is_flag=True, help="List what would be opened; send nothing.")
@_state_option
def incident_follow_ups(
    incident_id: str,
    kind: str,
    repo: str | None,
    project: str | None,
    url: str | None,
    token_secret: str | None,
    secret_refs: tuple[str, ...],
    labels: tuple[str, ...],
    jira_issue_type: str,
    jira_api: str,
    jira_user: str | None,
    by: str | None,
    dry_run: bool,
    state_dir: Path | None,
) -> None:
    """Open one tracker issue per open follow-up of a finished incident; each link is signed into the folder.

    Running it again opens nothing new. The token comes from the secret sources:
    --secret NAME=env:VAR|file:PATH, $OPSDSL_SECRET_NAME or STATE_DIR/secrets/NAME.
    """
    from opsdsl.lang.names import person_name
    from opsdsl.runtime.incidents import MAX_OPENED, open_follow_ups, tracker_from_options
    from opsdsl.runtime.secrets import SecretError, Secrets, parse_references
    from opsdsl.runtime.store import state_dir as resolve_state

    tracker = tracker_from_options(
        kind,
        repo=repo,
        project=project,
        url=url,
        token_secret=token_secret,
        labels=labels,
        jira_issue_type=jira_issue_type,
        jira_api=int(jira_api),
        jira_user=jira_user,
    )
    who = person_name(by, "--by") if by is not None else None
    secrets = Secrets(resolve_state(state_dir), parse_references(secret_refs))

    def token() -> str:
        try:
            value = secrets.require(tracker.secret)
        except SecretError as error:  # how the command was called, not a failure of the tracker
            raise UsageError(error.message) from None
        if not value.strip():
            raise UsageError(f"secret `{tracker.secret}` is empty")
        return value.strip()

    runtime = _runtime(state_dir)
    try:
        results = open_follow_ups(runtime, incident_id, tracker, token, by=who, dry_run=dry_run)
    finally:
        runtime.close()
    new = [item for item in results if item.new]
    for item in results:
        if dry_run and item.url is None:
            click.echo(f"would open: {item.summary}")
        elif item.url is None:
            click.echo(f"not opened yet (at most {MAX_OPENED} per run; run the command again): {item.summary}")
        elif item.new:
            click.echo(f"opened {item.url}: {item.summary}")
        else:
            click.echo(f"already open {item.url}: {item.summary}")
    if not results:
        click.echo(f"{incident_id}: no follow-ups")
    elif not dry_run:
        linked = sum(1 for item in results if not item.new and item.url is not None)
        click.echo(f"{incident_id}: {len(new)} issue(s) opened in {kind}, {linked} already linked")


def pdf_before_export(state_dir: Path | None, folder: Path) -> str | None:
    """Render rca.pdf into an incident folder about to be exported, if it has none; a note if it cannot."""
    from opsdsl.runtime.incidents import ensure_pdf
    from opsdsl.runtime.store import state_dir as resolve_state

    return ensure_pdf(resolve_state(state_dir), folder)


COMMANDS = (incident_pdf, incident_follow_ups)
