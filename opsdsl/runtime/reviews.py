"""A person's review of an incident: root cause, impact, follow-ups; into the ledger, then the folder.

The review is a ledger entry (`incident.reviewed`) like every other fact of the run, so
the incident record (rebuilt from the run's entries and signed again), rca.md and
`opsdsl report`'s RCA completion all read it from one place. A new signed checkpoint
covers it, and the incident folder is rewritten: record.json, rca.md, manifest.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.audit import entries as E
from opsdsl.errors import UsageError
from opsdsl.lang.names import person_name, plain_text
from opsdsl.runtime import store as S

MAX_FOLLOW_UPS = 100


@dataclass(frozen=True)
class Review:
    """What a person concluded about an incident; `by` already normalised."""

    by: str
    root_cause: str
    impact: str
    follow_ups: tuple[str, ...] = ()

    @classmethod
    def from_text(cls, by: str, root_cause: Any, impact: Any, follow_ups: Any = ()) -> Review:
        """A review from what a person typed (or a review file held); UsageError (exit 2) if unusable."""
        if follow_ups is None:
            follow_ups = ()
        if not isinstance(follow_ups, list | tuple) or len(follow_ups) > MAX_FOLLOW_UPS:
            raise UsageError(f"follow-ups: a list of at most {MAX_FOLLOW_UPS} lines of text")
        return cls(
            by=person_name(by, "--by"),
            root_cause=plain_text(root_cause, "--root-cause"),
            impact=plain_text(impact, "--impact"),
            follow_ups=tuple(plain_text(item, "--follow-up", one_line=True) for item in follow_ups),
        )

    def to_data(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "root_cause": self.root_cause,
            "impact": self.impact,
            "follow_ups": list(self.follow_ups),
        }


def find_run(store: S.Store, incident: str) -> S.RunRow:
    """The run of an incident id (or a run id); UsageError if there is none."""
    row = store.conn.execute(
        "SELECT id FROM runs WHERE incident_id = ? OR id = ? ORDER BY created_at DESC LIMIT 1", (incident, incident)
    ).fetchone()
    if row is None:
        raise UsageError(f"no incident or run {incident!r} in this state directory")
    return store.run(row[0])


def record_review(runtime: Any, incident: str, review: Review) -> Path:
    """Append the review (and a checkpoint over it), then rewrite and re-sign the incident folder.

    Only a finished run can be reviewed: an RCA of an incident still being handled would
    be rewritten by the events that follow. Returns the incident folder.
    """
    store: S.Store = runtime.store
    run = find_run(store, incident)
    if run.status not in S.FINAL_RUN_STATUSES:
        raise UsageError(
            f"incident {run.incident_id} (run {run.id}) is {run.status}; review it once the run has finished"
        )
    with runtime._lock(run.id):
        with store.transaction():
            store.ledger.append(E.INCIDENT_REVIEWED, run.id, review.to_data(), ts=runtime.clock())
            checkpoint = store.ledger.checkpoint(runtime.signer)
        if store.ledger.journaled:  # the review is chained after the commit: sign a head that covers it
            checkpoint = store.ledger.checkpoint(runtime.signer)
        return rewrite_incident(runtime, run, checkpoint.to_dict())


def rewrite_incident(runtime: Any, run: S.RunRow, checkpoint: dict | None, *, pdf: bool | None = None) -> Path:
    """Write the run's incident folder again from its ledger entries (as the run itself does).

    `pdf` as write_incident takes it: True renders rca.pdf, None keeps an existing one current.
    On PostgreSQL the folder's lock is held meanwhile (database.folder_lock): a sweep
    in another process never writes the same folder at the same time.
    """
    from opsdsl.runtime.database import folder_lock

    runtime.store.ledger.settle(run.id)  # journal mode: the record needs every entry chained
    with folder_lock(runtime.store, run.id):
        return write_from_ledger(runtime, run, checkpoint, pdf=pdf)


def write_from_ledger(runtime: Any, run: S.RunRow, checkpoint: dict | None, *, pdf: bool | None = None) -> Path:
    """rewrite_incident's write, for a caller that settled the ledger and holds the folder's lock."""
    from opsdsl.audit.incident import write_incident

    entries = [entry.to_dict() for entry in runtime.store.ledger.entries(run=run.id)]
    folder = Path(run.incident_dir)
    # Which key signs, as the run's own writes say it (a state directory that names its keys).
    named = {"signing": runtime.signing} if hasattr(type(runtime), "signing") else {}
    return write_incident(
        folder.parents[1],
        entries,
        checkpoint=checkpoint,
        signer=runtime.signer,
        rca=_rca_settings(entries),
        pdf=pdf,
        plan_envelope=run.envelope,
        ledger=runtime.store.ledger,
        **named,
    )


def _rca_settings(entries: list[dict]) -> dict | None:
    """What the run's report.rca step set (title, summary, include), as the ledger recorded it."""
    rca_steps = {
        e["data"]["step"] for e in entries if e["kind"] == E.STEP_INTENT and e["data"].get("action") == "report.rca"
    }
    settings = None
    for entry in entries:
        if entry["kind"] == E.STEP_SUCCEEDED and entry["data"].get("step") in rca_steps:
            outputs = entry["data"].get("outputs") or {}
            settings = {k: v for k, v in outputs.items() if k != "path" and v is not None}
    return settings
