"""The compliance report of a state directory: its ledger, its verification, its signer.

`opsdsl report --compliance-pdf FILE` calls `write_state_compliance`; a server whose
incident reaches the last escalation level calls `write_last_level_report` on a worker
thread (runtime/service.py), which writes STATE/reports/compliance-<UTC time>.pdf for the
30 days up to the escalation. The report itself (figures, PDF, signature) is
opsdsl.audit.compliance's; this module only reads the state directory for it.

Everything comes from the data: the period's end when none is given is the midnight (UTC)
after the ledger's last entry, never the clock, so the same ledger gives the same bytes.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from opsdsl.errors import OpsdslError, UsageError
from opsdsl.runtime.store import has_state, no_state_message, read_only, state_dir

REPORTS_DIR = "reports"  # STATE/reports/: what a server writes by itself
WINDOW = 30 * 86400.0  # the period of a report a server writes: 30 days up to the escalation
DAY = 86400.0


def parse_when(text: str, flag: str) -> float:
    """`2026-12-01` (midnight UTC) or `2026-12-01T10:00:00Z` (a UTC time) as epoch seconds."""
    value = text.strip()
    try:
        if len(value) == 10:
            moment = date.fromisoformat(value)
            return datetime(moment.year, moment.month, moment.day, tzinfo=UTC).timestamp()
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: write a date (YYYY-MM-DD) or a UTC time (YYYY-MM-DDTHH:MM:SSZ)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def period(entries: Sequence[dict], since: float | None, until: float | None) -> tuple[float, float]:
    """The period asked for, its ends filled from the data: `until` the midnight after the last
    entry (today's when there is none: an empty ledger has no date), `since` 30 days before."""
    if until is None:
        last = max((float(entry["ts"]) for entry in entries), default=None)
        if last is None and since is not None:
            until = since + WINDOW
        else:
            import time

            moment = last if last is not None else time.time()
            until = math.floor(moment / DAY) * DAY + DAY
    if since is None:
        since = until - WINDOW
    if until <= since:
        raise UsageError("--until must come after --since")
    return since, until


def state_compliance(
    state: Path | None,
    *,
    since: float | None = None,
    until: float | None = None,
    signer: Any = None,
    levels: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
):
    """The ComplianceReport of a state directory for a period (see `period`)."""
    from opsdsl.audit.compliance import compute_compliance
    from opsdsl.audit.compliance.figures import DEFAULT_LEVEL_NAMES

    root = state_dir(state)
    if not has_state(root):
        raise UsageError(no_state_message(root))
    since, until = period(_last_entry(root), since, until)
    window = period_entries(root, since, until)
    basis = _basis(root, window, signer)
    return compute_compliance(
        window,
        since=since,
        until=until,
        basis=basis,
        levels=tuple(levels or DEFAULT_LEVEL_NAMES),
        extra=extra,
    )


def period_entries(root: Path, since: float, until: float) -> list[dict[str, Any]]:
    """The entries of the runs created in [since, until), written before `until`, in ledger order.

    A run detected in the period was created in it too (detection is never after creation),
    and so were its child runs; the rest of the ledger is not loaded.
    """
    with read_only(root) as conn:
        rows = conn.execute(
            "SELECT seq, ts, run, kind, data FROM ledger WHERE ts < :until AND run IN"
            " (SELECT run FROM ledger WHERE kind = 'run.created' AND ts >= :since AND ts < :until) ORDER BY seq",
            {"since": since, "until": until},
        )
        return [{"seq": r[0], "ts": r[1], "run": r[2], "kind": r[3], "data": json.loads(r[4])} for r in rows]


def _last_entry(root: Path) -> list[dict[str, Any]]:
    """The ledger's last entry's time, as `period` takes it (an empty list for an empty ledger)."""
    with read_only(root) as conn:
        (last,) = conn.execute("SELECT MAX(ts) FROM ledger").fetchone()
    return [] if last is None else [{"ts": last}]


def _basis(root: Path, window: list[dict], signer: Any):
    """The ledger's verification (chain and checkpoints, as `opsdsl ledger verify` checks them)
    with the key that signs the report and the state directory's own, and its last checkpoint."""
    from opsdsl.audit.compliance import ledger_basis
    from opsdsl.audit.ledger import read_checkpoints
    from opsdsl.build.signing import keyid
    from opsdsl.runtime.state_audit import incident_records, verify_state_ledger
    from opsdsl.runtime.state_config import state_public_key

    trusted: dict[str, Any] = {}
    if signer is not None:
        trusted[keyid(signer.public_key())] = signer.public_key()
    try:
        own = state_public_key(root)
    except OpsdslError:
        own = None
    if own is not None:
        trusted[keyid(own[0])] = own[0]
    checkpoint = _last_checkpoint(root)
    try:
        external = []
        for record in incident_records(root / "incidents"):
            try:
                external += read_checkpoints(record)
            except OpsdslError:
                continue  # `opsdsl ledger verify` reports a record it cannot read; the report rests on the chain
        result = verify_state_ledger(root, trusted, external)
    except OpsdslError as error:
        return ledger_basis(window, verified=None, verdict=f"not verified: {error}", checkpoint=checkpoint)
    verdict = result.render().splitlines()[0]
    warnings = [
        "checked with the key that signs this report and the state directory's own; "
        "an auditor checks again with a key from outside (opsdsl ledger verify --key PUB)"
    ]
    if checkpoint and window and int(checkpoint["seq"]) < int(window[-1]["seq"]):
        warnings.append(
            f"entries after seq {checkpoint['seq']} are not covered by a signed checkpoint yet "
            "(the hash chain links them; a checkpoint signs the head)"
        )
    return ledger_basis(
        window,
        verified=result.ok,
        verdict=verdict,
        checkpoint=checkpoint,
        problems=result.problems,
        warnings=[*result.notes, *warnings],
    )


def _last_checkpoint(root: Path) -> dict[str, Any] | None:
    try:
        with read_only(root) as conn:
            row = conn.execute("SELECT seq, head, ts, keyid FROM checkpoints ORDER BY seq DESC LIMIT 1").fetchone()
    except sqlite3.DatabaseError:
        return None
    if row is None:
        return None
    head = row[1].hex() if isinstance(row[1], bytes) else str(row[1])
    return {"seq": row[0], "head": "sha256:" + head, "ts": row[2], "keyid": row[3]}


def write_state_compliance(
    state: Path | None,
    out: Path,
    *,
    since: float | None = None,
    until: float | None = None,
    levels: Sequence[str] | None = None,
    extra: dict[str, Any] | None = None,
    chosen: Any = None,
):
    """Write the compliance report of `state` to `out` and its signature to OUT.sig.json, signed
    by the state directory's signer (`chosen`: a state_config.Signer already loaded); Written."""
    from opsdsl.audit.compliance import write_compliance
    from opsdsl.runtime.state_config import signer as state_signer

    root = state_dir(state)
    if not has_state(root):
        raise UsageError(no_state_message(root))
    signing = chosen or state_signer(root)
    report = state_compliance(root, since=since, until=until, signer=signing.key, levels=levels, extra=extra)
    return write_compliance(Path(out), report, signing.key, signing.describe())


def report_name(ts: float) -> str:
    """`compliance-20261207T100412Z.pdf`: the file a server writes for an escalation at `ts`."""
    return f"compliance-{datetime.fromtimestamp(ts, UTC):%Y%m%dT%H%M%SZ}.pdf"


def write_last_level_report(
    state: Path, escalated_at: float, *, incident: str, level: str, levels: Sequence[str] | None, chosen: Any = None
):
    """The report a server writes when an incident reaches the last escalation level: the 30 days
    up to the escalation, into STATE/reports/ (a name already taken, by another incident in
    the same second, gets -2, -3...). Runs on a worker thread: it reads the database through
    its own read-only connections and appends nothing (the caller records the entry)."""
    from opsdsl.files import make_private_dirs

    folder = state / REPORTS_DIR
    make_private_dirs(folder)
    name = report_name(escalated_at)
    out, number = folder / name, 1
    while out.exists():
        number += 1
        out = folder / name.replace(".pdf", f"-{number}.pdf")
    until = math.floor(escalated_at) + 1.0  # the escalation itself is inside the period
    reason = f"Written by opsdsl serve when incident {incident} escalated to {level}, the last level."
    return write_state_compliance(
        state,
        out,
        since=until - WINDOW,
        until=until,
        levels=levels,
        extra={"reason": reason, "incident": incident, "level": level},
        chosen=chosen,
    )


class LastLevelReports:
    """A server's compliance reports, written off the event loop: one thread per report, one
    report at a time (a render is about two seconds of CPU; two at once would only share it).

    `schedule` is called on the event loop with the incident.escalated entry that reached the
    last level (Escalator.fire names the file in it, `compliance_report`); the thread renders
    and signs the report, then records `compliance.report_written` through a connection of its
    own. Intake never waits for it. A report that cannot be written (WeasyPrint missing) is
    logged; the escalation itself is in the ledger already.
    """

    def __init__(self, state: Path, levels: Sequence[str], clock: Any = None) -> None:
        import threading
        import time

        self.state = state
        self.levels = tuple(levels)
        self.clock = clock or time.time
        self.lock = threading.Lock()
        self.threads: list[Any] = []

    def schedule(self, entry: Any) -> Any:
        import threading

        data = dict(entry.data)
        thread = threading.Thread(
            target=self._write,
            args=(entry.run, data, float(entry.ts), entry.seq),
            name="opsdsl-compliance-report",
            daemon=True,  # a report still rendering at exit is lost, never the server's shutdown
        )
        self.threads = [*(t for t in self.threads if t.is_alive()), thread]
        thread.start()
        return thread

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all for the reports being written (a server's drain)."""
        import time

        deadline = time.monotonic() + timeout
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _write(self, run: str, data: dict[str, Any], escalated_at: float, seq: int) -> None:
        import logging
        import time

        from opsdsl.audit import entries as E
        from opsdsl.audit.compliance.figures import iso
        from opsdsl.runtime.store import Store

        log = logging.getLogger("opsdsl.serve")
        with self.lock:
            started = time.monotonic()
            try:
                if not seq:  # journal mode: the escalation is chained a batch later (and the report reads the ledger)
                    seq = _chained_seq(self.state, run, data)
                written = write_last_level_report(
                    self.state,
                    escalated_at,
                    incident=str(data.get("incident_id") or run),
                    level=str(data.get("level")),
                    levels=self.levels,
                )
                body = json.loads(written.signature.read_text("utf-8"))["signed"]
                store = Store(self.state)
                try:
                    with store.transaction():
                        store.ledger.append(
                            E.COMPLIANCE_REPORT_WRITTEN,
                            run,
                            {
                                "path": written.pdf.relative_to(self.state).as_posix(),
                                "signature": written.signature.relative_to(self.state).as_posix(),
                                "sha256": written.sha256,
                                "size": written.size,
                                "since": body.get("since"),
                                "until": body.get("until"),
                                "incident_id": data.get("incident_id"),
                                "level": data.get("level"),
                                "escalation_seq": seq,
                            },
                            ts=self.clock(),
                        )
                finally:
                    store.close()
            except Exception as error:  # the escalation is recorded; a missing report is said, not fatal
                log.error(
                    "compliance report for incident %s: %s: %s", data.get("incident_id"), type(error).__name__, error
                )
                return
            log.info(
                "compliance report %s written in %.1fs (%s)",
                written.pdf,
                time.monotonic() - started,
                iso(escalated_at),
            )


def _chained_seq(state: Path, run: str, data: dict[str, Any]) -> int:
    """The seq of the escalation entry `data` of `run` once the sequencer has chained it (journal mode)."""
    from opsdsl.audit import entries as E
    from opsdsl.runtime.store import Store

    store = Store(state)
    try:
        store.ledger.settle(run)
        found = [e.seq for e in store.ledger.entries(run=run) if e.kind == E.INCIDENT_ESCALATED and e.data == data]
        return found[-1] if found else 0
    finally:
        store.close()
