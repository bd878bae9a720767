"""Incident folders a crash left unwritten, found and written again by `serve` and `worker`.

A run's end (its last ledger entries and a checkpoint) is committed before its incident
folder is written: inline by a worker or the CLI, on the IncidentWriter thread by `serve`.
A process killed in between leaves a finished run without record.json, which `opsdsl
ledger verify` reports. The sweep finds such runs and writes their folders as `opsdsl
incident pdf` writes one (reviews.rewrite_incident, without rendering a PDF): from the
run's ledger entries, with the settings its report.rca step recorded there, signed with
this process's key, anchored at the first checkpoint that covers the run's end (the one
the run's own end signed, so the ledger excerpt stays the run's size). docs/incidents.md.

1. Which runs: succeeded, failed or cancelled, by `finished_at` (indexed). A start-up
   pass looks at those ended in the last STARTUP_WINDOW; a periodic pass (workers) at
   those ended since the previous pass's upper end minus MARGIN, up to `grace` seconds
   ago. A run whose lease is still held (its owner is writing the folder) or whose lock
   is busy is looked at again at the next pass.
2. Where: only the folder the ledger names under this process's incidents root
   (ROOT/YEAR/INCIDENT_ID, the id checked by write_incident), and only when the run row's
   incident_dir is that folder; a year directory that is a symlink is refused, as
   write_incident refuses a folder that is one. A run whose incident_dir is not under the
   root (`opsdsl run --incidents-dir`, `..`) is not looked at: `opsdsl incident pdf`.
3. Never touched: a folder holding a record.json written after the run ended or saying
   it ended (anything by that name but a regular file, too); an older one that tells of a
   pause or an interruption is the run's earlier stop's, and the folder is written again.
4. One writer at a time: the run's lock file (as `incident review` and `incident pdf` take
   it) and, on PostgreSQL, the folder's advisory lock (folder_lock), which every writer of
   an incident folder takes; record.json is looked for again once both are held.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl.runtime import store as S
from opsdsl.runtime.database import folder_lock, folder_lock_key  # noqa: F401  (folder_lock_key: tests)

log = logging.getLogger("opsdsl.serve")

FINISHED = (S.SUCCEEDED, S.FAILED, S.CANCELLED)  # the statuses whose end writes the folder
STARTUP_WINDOW = 7 * 86400.0  # a start-up pass looks at the runs ended in the last 7 days
EVERY = 60.0  # a worker's periodic pass, and how long ago a run must have ended for it (grace)
MARGIN = 60.0  # periodic windows overlap by this much: clocks that disagree, commits that lag
_RECORD = "record.json"
MAX_RECORD_READ = 64 << 20  # a record.json read to tell whether it is the run's end's


@dataclass
class SweepReport:
    """What one pass did: the window of run ends it covered, runs looked at, folders
    written, runs left for the next pass (busy), runs refused (a sweep never writes them),
    runs of another incidents root."""

    low: float
    high: float
    looked: int = 0
    written: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    elsewhere: int = 0  # runs whose incident_dir is not under this process's root: not its to write


class IncidentSweep:
    """The passes of one process over one state directory. Each pass opens a Runtime of its
    own (its own connection; the state directory's key, i.e. this process's signer) and
    closes it, so a pass may run on any thread."""

    def __init__(self, state: Path, incidents_root: Path, *, grace: float = EVERY) -> None:
        self.state = state
        self.root = Path(incidents_root)
        self.grace = grace
        self.high: float | None = None  # upper end of the last pass's window
        self.done: dict[str, float] = {}  # run -> finished_at: present, written or refused (in the overlap)
        self.again: set[str] = set()  # runs that were busy: looked at again by the next pass

    def startup(self) -> SweepReport:
        """The runs ended in the last STARTUP_WINDOW, however recently (no grace: the
        process that ended them may be the one that died)."""
        return self._pass(lambda now: (now - STARTUP_WINDOW, now))

    def periodic(self) -> SweepReport:
        """The runs ended since the last pass (less MARGIN), up to `grace` seconds ago."""
        if self.high is None:
            return self.startup()
        high = self.high
        return self._pass(lambda now: (high - MARGIN, max(high, now - self.grace)))

    def _pass(self, window: Any) -> SweepReport:
        from opsdsl.runtime.runner import Runtime

        runtime = Runtime(self.state, incidents_dir=self.root, create=False)
        try:
            store = runtime.store
            now = store.now()
            low, high = window(now)
            report = SweepReport(low, high)
            marks = ", ".join("?" for _ in FINISHED)
            # On finished_at alone, the status checked here: with `status IN` beside it SQLite
            # takes the status index, and walks every finished run ever (80 ms at 500,000).
            found = store.conn.execute(
                "SELECT id, incident_dir, finished_at, lease_until, status FROM runs"
                " WHERE finished_at >= ? AND finished_at <= ?",
                (low, high),
            ).fetchall()
            rows = [row[:4] for row in found if row[4] in FINISHED]
            seen = {row[0] for row in rows}
            for run_id in sorted(self.again - seen):
                rows += store.conn.execute(
                    f"SELECT id, incident_dir, finished_at, lease_until FROM runs WHERE id = ? AND status IN ({marks})",
                    (run_id, *FINISHED),
                ).fetchall()
            self.again = set()
            for run_id, incident_dir, finished_at, lease_until in rows:
                if run_id in self.done:
                    continue
                report.looked += 1
                if lease_until is not None and lease_until > now:  # its owner holds it: it writes the folder
                    self.again.add(run_id)
                    report.busy.append(run_id)
                    continue
                outcome = (
                    self._one(runtime, run_id, str(incident_dir), finished_at)
                    if self._ours(str(incident_dir))
                    else "elsewhere"
                )
                if outcome == "busy":
                    self.again.add(run_id)
                    report.busy.append(run_id)
                elif outcome == "written":
                    report.written.append(run_id)
                elif outcome == "refused":
                    report.refused.append(run_id)
                elif outcome == "elsewhere":
                    report.elsewhere += 1
                if outcome != "busy" and finished_at is not None:
                    self.done[run_id] = float(finished_at)
            self.done = {run_id: at for run_id, at in self.done.items() if at >= high - MARGIN}
            self.high = max(high, self.high or high)
        finally:
            runtime.close()
        if report.written or report.refused:
            log.warning(
                "incident folders: %d written again from the ledger, %d refused (runs ended between %s and %s)",
                len(report.written),
                len(report.refused),
                _when(low),
                _when(high),
            )
        return report

    def _one(self, runtime: Any, run_id: str, incident_dir: str, finished_at: float | None = None) -> str:
        """'present', 'written', 'busy' (try again later) or 'refused' (a sweep never writes it)."""
        from opsdsl.audit.incident import IncidentError, incident_folder
        from opsdsl.runtime.database import database_unavailable
        from opsdsl.runtime.reviews import write_from_ledger
        from opsdsl.runtime.runner import RunBusy

        if _written(os.path.join(incident_dir, _RECORD), finished_at):  # the common case: one stat, nothing read
            return "present"
        store = runtime.store
        try:
            with runtime._lock(run_id):
                store.ledger.settle(run_id)
                entries = [entry.to_dict() for entry in store.ledger.entries(run=run_id)]
                if not entries:
                    log.error("incident folder of run %s not written: the ledger holds none of its entries", run_id)
                    return "refused"
                folder = incident_folder(self.root, entries)
                problem = self._outside(folder, incident_dir)
                if problem is not None:
                    log.error("incident folder of run %s not written by the sweep: %s", run_id, problem)
                    return "refused"
                with folder_lock(store, run_id):
                    if _written(str(folder / _RECORD), finished_at):  # its owner (or another sweep) wrote it meanwhile
                        return "present"
                    checkpoint = store.ledger.first_checkpoint_from(int(entries[-1]["seq"]))
                    run = dataclasses.replace(store.run(run_id), incident_dir=str(folder))
                    write_from_ledger(runtime, run, checkpoint.to_dict() if checkpoint else None)
            log.info("incident folder of run %s written again from the ledger: %s", run_id, folder)
            return "written"
        except RunBusy:
            return "busy"
        except IncidentError as error:
            log.error("incident folder of run %s not written: %s", run_id, error.message)
            return "refused"
        except Exception as error:
            if database_unavailable(error):
                log.warning("incident folder of run %s waits for the database (%s)", run_id, error)
                return "busy"
            log.error("incident folder of run %s not written: %s: %s", run_id, type(error).__name__, error)
            return "refused"

    def _ours(self, incident_dir: str) -> bool:
        """Whether the row's folder is under this process's incidents root (as written, `..`
        resolved): a run of another root (`opsdsl run --incidents-dir`) is not looked at."""
        return os.path.abspath(incident_dir).startswith(os.path.join(os.path.abspath(self.root), ""))

    def _outside(self, folder: Path, incident_dir: str) -> str | None:
        """Why the sweep may not write `folder` (the ledger's, under this process's root) for a
        run whose row says `incident_dir`; None when it may."""
        if os.path.abspath(incident_dir) != os.path.abspath(folder):
            return f"its incident_dir {incident_dir} is not {folder}, the folder the ledger names under {self.root}"
        year = folder.parent
        if os.path.realpath(year) != os.path.join(os.path.realpath(self.root), year.name):
            return f"{year} is a symlink or leads out of {self.root}"
        if folder.is_symlink():
            return f"{folder} is a symlink; an incident folder must be a real directory"
        return None


def _written(record: str, finished_at: float | None) -> bool:
    """Whether `record` tells of the run's end: it exists (a link counts: never touched), and
    it was written after the run ended, or says the run ended. A record of the run's pause
    or interruption is left when the process that ended the run died before its folder:
    the sweep writes it again. Only a record older than the run's end is read (the file's
    time and finished_at are this machine's clock)."""
    try:
        info = os.lstat(record)
    except FileNotFoundError:
        return False
    except OSError:  # cannot tell (permissions, a bad path): never touched
        return True
    if finished_at is None or not stat.S_ISREG(info.st_mode) or info.st_mtime >= float(finished_at):
        return True
    try:
        with open(record, "rb") as file:
            status = json.loads(file.read(MAX_RECORD_READ))["record"]["status"]
    except (OSError, ValueError, KeyError, TypeError):  # unreadable or torn: a new one is written
        return False
    return status in FINISHED


def _when(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
