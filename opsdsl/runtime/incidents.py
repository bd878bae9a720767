"""What people do with an incident after its run: render the RCA as PDF, open its follow-ups in a tracker.

Both rewrite the incident folder the way `opsdsl incident review` does (reviews.py): under
the run's lock, from the run's ledger entries, signed by the runtime's key. Follow-ups
become ledger entries first (`incident.follow_up_opened`, one per issue opened, then a
signed checkpoint over them), so the links survive the folder and `follow-ups.json`, the
signed amendment that lists them, can always be written again. docs/incidents.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from opsdsl.audit import entries as E
from opsdsl.errors import OpsdslError, UsageError
from opsdsl.runtime import store as S
from opsdsl.runtime.reviews import find_run, rewrite_incident

DEFAULT_BASE_URLS = {"github": "https://api.github.com", "gitlab": "https://gitlab.com"}
DEFAULT_TOKEN_SECRETS = {"github": "github_token", "gitlab": "gitlab_token", "jira": "jira_token"}
MAX_RESPONSE = 1024 * 1024  # a tracker's answer to one POST; more is refused, not read
MAX_OPENED = 100  # issues one invocation opens; a record with more is finished by running it again
TIMEOUT = 20.0
_GITHUB_REPO = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_JIRA_PROJECT = re.compile(r"[A-Z][A-Z0-9_]{0,49}")


class TrackerError(OpsdslError):
    """A tracker refused or failed a request; the issues opened before it are recorded."""

    exit_code = 1


# --- the PDF -----------------------------------------------------------------------------------


def render_incident_pdf(runtime: Any, incident: str) -> Path:
    """Render rca.pdf into the incident's folder and sign the manifest again; returns the PDF's path.

    The record keeps the checkpoint it already holds, so record.json does not change: the
    PDF is added beside it, not a new version of the incident.
    """
    run = find_run(runtime.store, incident)
    with runtime._lock(run.id):
        folder = rewrite_incident(runtime, run, _kept_checkpoint(runtime, run), pdf=True)
    return folder / "rca.pdf"


def _kept_checkpoint(runtime: Any, run: S.RunRow) -> dict | None:
    """The checkpoint the folder's record holds, else the ledger's latest."""
    try:
        document = json.loads((Path(run.incident_dir) / "record.json").read_text("utf-8"))
        checkpoint = document["record"]["ledger"]["checkpoint"]
        if isinstance(checkpoint, dict):
            return checkpoint
    except (OSError, ValueError, KeyError, TypeError):
        pass
    latest = runtime.store.ledger.latest_checkpoint()
    return latest.to_dict() if latest else None


# --- follow-ups --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tracker:
    """Where follow-ups go: the tracker, its project, its API's base URL and the secret holding the token.

    `target` is `owner/repo` for GitHub, the project id or `group/project` path for
    GitLab, the project key for Jira. `base_url` defaults to the public service for GitHub
    and GitLab (GitHub Enterprise: https://HOST/api/v3); Jira has none.
    """

    kind: str
    target: str
    base_url: str | None = None
    token_secret: str | None = None
    labels: tuple[str, ...] = ("opsdsl", "incident")
    jira_issue_type: str = "Task"
    jira_api: int = 2
    jira_user: str | None = None  # Jira Cloud: e-mail + API token (basic); Data Center: a bearer token
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DEFAULT_TOKEN_SECRETS:
            raise UsageError(f"--to {self.kind!r}: one of github, gitlab, jira")
        if self.kind == "github" and not _GITHUB_REPO.fullmatch(self.target):
            raise UsageError(f"--repo {self.target!r}: GitHub needs OWNER/REPO")
        if self.kind == "gitlab" and (not self.target or any(ord(c) < 32 for c in self.target)):
            raise UsageError("--project: GitLab needs the project's id or its group/project path")
        if self.kind == "jira" and not _JIRA_PROJECT.fullmatch(self.target):
            raise UsageError(f"--project {self.target!r}: a Jira project key (upper-case letters, digits, _)")
        if self.kind == "jira" and self.base_url is None:
            raise UsageError("--url: Jira has no default address; give your site's, e.g. https://example.atlassian.net")
        if self.jira_api not in (2, 3):
            raise UsageError("--jira-api: 2 or 3")
        url = urlsplit(self.url)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise UsageError(f"--url {self.url!r}: an http(s) address without query or fragment")

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.kind]).rstrip("/")

    @property
    def secret(self) -> str:
        return self.token_secret or DEFAULT_TOKEN_SECRETS[self.kind]

    def endpoint(self) -> str:
        """Where one issue is POSTed, as each tracker documents it."""
        if self.kind == "github":
            owner, repo = self.target.split("/")
            return f"{self.url}/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/issues"
        if self.kind == "gitlab":
            base = self.url if self.url.endswith("/api/v4") else f"{self.url}/api/v4"
            return f"{base}/projects/{quote(self.target, safe='')}/issues"
        return f"{self.url}/rest/api/{self.jira_api}/issue"

    def headers(self, token: str) -> dict[str, str]:
        if self.kind == "github":
            return {
                "Accept": "application/vnd.github+json",
                "Authorization": f"Bearer {token}",
                "X-GitHub-Api-Version": "2022-11-28",
            }
        if self.kind == "gitlab":
            return {"PRIVATE-TOKEN": token}
        if self.jira_user:
            import base64

            basic = base64.b64encode(f"{self.jira_user}:{token}".encode()).decode("ascii")
            return {"Authorization": f"Basic {basic}", "Accept": "application/json"}
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    def payload(self, record: Mapping, item: Mapping) -> dict:
        from opsdsl.audit.incident.followups import github_payload, gitlab_payload, jira_payload

        if self.kind == "github":
            return github_payload(record, item, self.labels)
        if self.kind == "gitlab":
            return gitlab_payload(record, item, self.labels)
        return jira_payload(record, item, self.labels, self.target, self.jira_issue_type, self.jira_api)

    def link_of(self, answer: Mapping) -> tuple[str, str]:
        """(url, id) of the issue a tracker says it created; TrackerError if it does not say."""
        if self.kind == "github":
            url, ident = answer.get("html_url"), answer.get("number")
        elif self.kind == "gitlab":
            url, ident = answer.get("web_url"), answer.get("iid")
        else:
            key = answer.get("key")
            ident = key
            url = (
                f"{self.url}/browse/{key}"
                if isinstance(key, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*-\d+", key)
                else None
            )
        if not _web_url(url) or ident is None or isinstance(ident, bool | dict | list):
            raise TrackerError(f"{self.kind}: the answer names no issue (expected its URL and number or key)")
        return str(url), str(ident)


def _web_url(url: object) -> bool:
    """An http(s) link of sane length: what may be written into rca.md and the PDF as a link."""
    if not isinstance(url, str) or len(url) > 2000 or any(ord(c) < 33 for c in url):
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class Opened:
    key: str
    summary: str
    url: str | None  # None when only planned (dry run)
    new: bool


def open_follow_ups(
    runtime: Any,
    incident: str,
    tracker: Tracker,
    token: Callable[[], str],
    *,
    by: str | None = None,
    dry_run: bool = False,
    post: Callable[[str, dict, dict], Mapping] | None = None,
    limit: int = MAX_OPENED,
) -> list[Opened]:
    """Open one issue per follow-up of the incident not yet linked to one; record each link.

    Idempotent: a follow-up already linked (by an earlier run of this, to any tracker) is
    skipped, so running it twice opens nothing new. Each link is appended to the ledger as
    soon as its issue exists; then a checkpoint is signed and the folder rewritten with
    follow-ups.json (also when a later request failed: what was opened stays recorded).
    `token` is called only when there is something to open. `post` replaces the HTTP call.
    At most `limit` issues are opened per call (a failing playbook can list thousands of
    follow-ups); the rest come back unopened (url None) for the next call.
    """
    from opsdsl.audit.incident import build_record
    from opsdsl.audit.incident.followups import follow_up_links
    from opsdsl.audit.incident.followups import open_follow_ups as pending_of

    store: S.Store = runtime.store
    run = find_run(store, incident)
    if run.status not in S.FINAL_RUN_STATUSES:
        raise UsageError(f"incident {run.incident_id} (run {run.id}) is {run.status}; its follow-ups are not final yet")
    with runtime._lock(run.id):
        store.ledger.settle(run.id)  # journal mode: the record is built from chained entries
        entries = [entry.to_dict() for entry in store.ledger.entries(run=run.id)]
        record = build_record(entries, checkpoint=None, evidence_dir=Path(run.incident_dir) / "evidence")
        links = follow_up_links(entries)
        done = [Opened(key, str(link.get("summary")), link.get("url"), False) for key, link in links.items()]
        pending = pending_of(record, links)
        later = [Opened(item["key"], item["summary"], None, False) for item in pending[limit:]]
        pending = pending[:limit]
        if dry_run or not pending:
            return done + [Opened(item["key"], item["summary"], None, False) for item in pending] + later
        secret = token()
        send = post or _poster(secret)
        opened: list[Opened] = []
        failure: TrackerError | None = None
        for item in pending:
            try:
                answer = send(tracker.endpoint(), tracker.headers(secret), tracker.payload(record, item))
                url, ident = tracker.link_of(answer)
            except TrackerError as error:
                failure = error
                break
            data = {
                "key": item["key"],
                "kind": item["kind"],
                "step": item["step"],
                "summary": item["summary"],
                "tracker": tracker.kind,
                "url": url,
                "id": ident,
                "by": by,
            }
            with store.transaction():
                store.ledger.append(E.INCIDENT_FOLLOW_UP_OPENED, run.id, data, ts=runtime.clock())
            opened.append(Opened(item["key"], item["summary"], url, True))
        if opened:
            if store.ledger.journaled:  # sign once the sequencer has chained the follow-ups (it waits)
                checkpoint = store.ledger.checkpoint(runtime.signer)
            else:
                with store.transaction():
                    checkpoint = store.ledger.checkpoint(runtime.signer)
            rewrite_incident(runtime, run, checkpoint.to_dict())
        if failure is not None:
            count = f"{len(opened)} opened and recorded before it; " if opened else ""
            raise TrackerError(f"{failure.message} ({count}run the command again to open the rest)")
    return done + opened + later


def _poster(token: str) -> Callable[[str, dict, dict], Mapping]:
    """POST JSON with httpx: no redirects, a timeout, an answer of at most MAX_RESPONSE bytes."""
    import httpx

    def post(url: str, headers: dict, payload: dict) -> Mapping:
        what = urlsplit(url).path
        try:
            with (
                httpx.Client(timeout=TIMEOUT, follow_redirects=False, trust_env=False) as client,
                client.stream("POST", url, headers=headers, json=payload) as response,
            ):
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE:
                        raise TrackerError(f"POST {what}: answer larger than {MAX_RESPONSE} bytes, refused")
        except httpx.HTTPError as exc:
            raise TrackerError(f"POST {what}: {type(exc).__name__}: {_clean(str(exc), token)}") from None
        if response.status_code not in (200, 201):
            detail = _clean(bytes(body[:300]).decode("utf-8", "replace"), token)
            raise TrackerError(f"POST {what}: HTTP {response.status_code}: {detail}")
        try:
            answer = json.loads(bytes(body))
        except ValueError:
            raise TrackerError(f"POST {what}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise TrackerError(f"POST {what}: the answer is not a JSON object")
        return answer

    return post


def _clean(text: str, token: str) -> str:
    """One line, the token masked: what may be shown of a tracker's error."""
    if token:
        text = text.replace(token, "***")
    return " ".join(text.split())[:300]


def tracker_from_options(
    kind: str,
    *,
    repo: str | None,
    project: str | None,
    url: str | None,
    token_secret: str | None,
    labels: Sequence[str],
    jira_issue_type: str,
    jira_api: int,
    jira_user: str | None,
) -> Tracker:
    """The Tracker the command line describes; UsageError (exit 2) for what does not fit the tracker."""
    if kind == "github":
        if project:
            raise UsageError("--project is for gitlab and jira; GitHub takes --repo OWNER/REPO")
        target = repo
    else:
        if repo:
            raise UsageError(f"--repo is for github; {kind} takes --project")
        target = project
    if not target:
        raise UsageError("--repo OWNER/REPO is required" if kind == "github" else "--project is required")
    return Tracker(
        kind,
        target,
        base_url=url,
        token_secret=token_secret,
        labels=tuple(labels) or ("opsdsl", "incident"),
        jira_issue_type=jira_issue_type,
        jira_api=jira_api,
        jira_user=jira_user,
    )


def ensure_pdf(state: Path, folder: Path) -> str | None:
    """Render rca.pdf into `folder` before an export, if it is missing; a note when it cannot be.

    Only a folder of a run of this state directory is rewritten (signed with its key);
    anything else is exported as it is, and the note says why it has no PDF.
    """
    from opsdsl.audit.incident.pdf import PdfUnavailable
    from opsdsl.runtime import runner

    if (folder / "rca.pdf").is_file():
        return None
    if not S.has_state(state):
        return "exported without rca.pdf: no state directory to sign it with (render it there: opsdsl incident pdf)"
    runtime = runner.Runtime(state, create=False)
    try:
        run = find_run(runtime.store, folder.name)
        if Path(run.incident_dir).resolve() != folder.resolve():
            return f"exported without rca.pdf: {folder} is not the folder this state directory keeps for the incident"
        render_incident_pdf(runtime, run.id)
    except PdfUnavailable as exc:
        return f"exported without rca.pdf: {exc.message}"
    except UsageError:
        return f"exported without rca.pdf: {folder.name} is not an incident of {state}"
    finally:
        runtime.close()
    return None


# --- follow-ups opened by the server --------------------------------------------------------------

FOLLOW_UP_KEYS = ("to", "repo", "project", "url", "token_secret", "labels", "jira_issue_type", "jira_api", "jira_user")
FOLLOW_UP_POLL = 5.0  # seconds between two reads of the ledger for incidents with follow-ups
_FOLLOW_UP_DDL = (
    "CREATE TABLE IF NOT EXISTS follow_up_cursor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)"
)


def tracker_from_table(table: Mapping[str, Any]) -> Tracker:
    """The `[follow_ups]` table of the service configuration (docs/serve.md) as a Tracker;
    UsageError naming the key for anything wrong."""
    unknown = sorted(set(table) - set(FOLLOW_UP_KEYS))
    if unknown:
        raise UsageError(f"follow_ups.{unknown[0]}: unknown key (expected {', '.join(FOLLOW_UP_KEYS)})")
    kind = table.get("to")
    if kind not in DEFAULT_TOKEN_SECRETS:
        raise UsageError("follow_ups.to: one of github, gitlab, jira")
    labels = table.get("labels", ["opsdsl", "incident"])
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise UsageError("follow_ups.labels: a list of labels")
    for key in ("repo", "project", "url", "token_secret", "jira_issue_type", "jira_user"):
        if key in table and not isinstance(table[key], str):
            raise UsageError(f"follow_ups.{key}: text")
    api = table.get("jira_api", 2)
    if isinstance(api, bool) or api not in (2, 3):
        raise UsageError("follow_ups.jira_api: 2 or 3")
    try:
        return tracker_from_options(
            kind,
            repo=table.get("repo"),
            project=table.get("project"),
            url=table.get("url"),
            token_secret=table.get("token_secret"),
            labels=labels,
            jira_issue_type=table.get("jira_issue_type", "Task"),
            jira_api=api,
            jira_user=table.get("jira_user"),
        )
    except UsageError as error:  # the command-line words, as the file's keys
        message = error.message.replace("--repo", "repo").replace("--project", "project").replace("--url", "url")
        raise UsageError(f"follow_ups: {message.replace('--to', 'to').replace('--jira-api', 'jira_api')}") from None


class FollowUpOpener:
    """`opsdsl serve` with `[follow_ups]`: when an incident's run finishes, or a person reviews
    it, its open follow-ups become issues in the tracker (open_follow_ups: idempotent, one
    ledger entry per issue, a signed amendment). It reads the ledger from a durable cursor
    (table `follow_up_cursor`) and does the tracker's HTTP on a thread, with a connection
    of its own, so the event loop never waits on a tracker. A failure is logged and tried
    again at the incident's next finishing or review entry, or with the CLI."""

    KINDS = (E.RUN_FINISHED, E.INCIDENT_REVIEWED)

    def __init__(self, state: Path, store: S.Store, tracker: Tracker, secrets: Any, runtime: Any = None) -> None:
        self.state = state
        self.store = store
        self.tracker = tracker
        self.secrets = secrets
        # The server's Runtime: its incident_writer (if any) writes run-end folders on a
        # thread; an incident's follow-ups rewrite its folder only after that write, never
        # under it (a late run-end write would drop the follow-ups' links).
        self.runtime = runtime

    def pending(self) -> list[str]:
        """The incidents (run ids) whose entries arrived since the cursor; moves the cursor."""
        self.store.conn.execute(_FOLLOW_UP_DDL)
        marks = ", ".join("?" for _ in self.KINDS)
        with self.store.transaction() as conn:
            row = conn.execute("SELECT seq FROM follow_up_cursor WHERE id = 1").fetchone()
            head = self.store.ledger.head()[0]
            if row is None:  # first use: from now on (the CLI opens older incidents' follow-ups)
                conn.execute("INSERT INTO follow_up_cursor (id, seq) VALUES (1, ?)", (head,))
                return []
            rows = conn.execute(
                f"SELECT r.id FROM ledger l JOIN runs r ON r.id = l.run WHERE l.seq > ? AND l.seq <= ?"
                f" AND l.kind IN ({marks}) AND r.parent_run IS NULL ORDER BY l.seq",
                (row[0], head, *self.KINDS),
            ).fetchall()
            conn.execute("UPDATE follow_up_cursor SET seq = ? WHERE id = 1", (head,))
        return list(dict.fromkeys(run_id for (run_id,) in rows))

    def open(self, run_id: str) -> list[Opened]:
        """Open one incident's follow-ups (on the caller's thread, with a runtime of its own)."""
        from opsdsl.runtime.runner import Runtime

        def token() -> str:
            value = (self.secrets.require(self.tracker.secret) or "").strip()
            if not value:
                raise TrackerError(f"secret `{self.tracker.secret}` is empty")
            return value

        runtime = Runtime(self.state, create=False)
        try:
            run = runtime.store.run(run_id)
            return open_follow_ups(runtime, run.incident_id, self.tracker, token, by="opsdsl serve")
        finally:
            runtime.close()

    async def run(self, stop: Any) -> None:
        """Until `stop` (an asyncio.Event) is set: read, then open on a thread; never raises."""
        import asyncio
        import contextlib
        import logging

        log = logging.getLogger("opsdsl.serve")
        while not stop.is_set():
            try:
                for run_id in self.pending():
                    writer = getattr(self.runtime, "incident_writer", None)
                    if writer is not None:  # the run's end folder first (queued before its entry was read)
                        await asyncio.wrap_future(writer.written())
                    opened = await asyncio.to_thread(self.open, run_id)
                    new = [item for item in opened if item.new]
                    if new:
                        log.info("follow-ups: %d issue(s) opened for run %s in %s", len(new), run_id, self.tracker.kind)
            except Exception as error:  # a tracker down, a secret missing: the incident waits for the next entry
                log.error("follow-ups: %s", getattr(error, "message", None) or f"{type(error).__name__}: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FOLLOW_UP_POLL)
