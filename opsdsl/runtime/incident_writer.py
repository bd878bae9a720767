"""A server's incident folders, written on a thread of their own, never on the event loop.

`opsdsl serve` ends runs all the time; writing a run's incident folder (several files, each
fsync'd) on the event loop held up every other run and the HTTP intake (~10% of the loop's
time under load). A run's end still commits its ledger entries and checkpoint on the loop,
in the same order as before; only the folder, which is derived from them, is written here,
in the order the runs ended (one thread: a folder rewritten by a later end of the same run
is written after the earlier one). The thread reads the ledger excerpt of the evidence
pack through its own connection to the state database.

A crash can leave a folder unwritten (or stale) whose run's end is committed, as it could
before between the commit and the write, only for longer. The next start writes it: `serve`
queues a sweep (runtime/incident_sweep.py) here first, so it is ordered with this
process's own folders, and it writes, from the ledger, the folder of every run ended in
the last week whose record.json is missing (`opsdsl incident pdf ID` does the same for one
run). On PostgreSQL each folder is written under its advisory lock (`folder_lock`), which
a worker's sweep takes too: never two writers of one folder at once.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("opsdsl.serve")
# Back-offs (s) before writing a folder again while the database is unavailable, then give up.
RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0, None)
# One outage costs at most this much waiting in all, however many folders are queued behind it:
# a stopping server waits for the queue, and its process manager will not wait a minute a folder.
OUTAGE_BUDGET = 60.0


class IncidentWriter:
    """One thread that writes incident folders (`write_incident`) in the order they were submitted."""

    def __init__(self, state: Path, durable: Callable[[], None] | None = None) -> None:
        self.state = state
        self.durable = durable  # until the runs' commits are on disk (a server's WalSyncer.sync)
        self._jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="opsdsl-incident-writer", daemon=True)
        self._thread.start()

    def submit(self, root: Path, entries: list[dict], **arguments: Any) -> None:
        """Write this run's folder under `root` (the arguments of `write_incident`, without `ledger`)."""
        self._jobs.put({"root": root, "entries": entries, **arguments})

    def sweep(self, incidents_root: Path) -> concurrent.futures.Future[Any]:
        """Queue a start-up pass over `incidents_root` (IncidentSweep.startup); its report."""
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put({"sweep": incidents_root, "done": done})
        return done

    def written(self) -> concurrent.futures.Future[None]:
        """Done once every folder submitted before this call is written (later ones may still wait)."""
        marker: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._jobs.put({"marker": marker})
        return marker

    def join(self) -> None:
        """Until every folder submitted so far is written (or failed, logged)."""
        self._jobs.join()

    def close(self) -> None:
        """Write what was submitted, then stop the thread."""
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        from opsdsl.audit.incident import write_incident
        from opsdsl.runtime.database import folder_lock

        store = None
        # When the current outage began (None: no outage), and the back-off slept in it; the
        # sleeps are counted too, so that a clock that does not move in tests still ends it.
        outage: float | None = None
        waited = 0.0
        try:
            while True:
                job = self._jobs.get()
                try:
                    if job is None:
                        return
                    if "marker" in job:
                        job["marker"].set_result(None)
                        continue
                    if "sweep" in job:
                        self._sweep(job["sweep"], job["done"])
                        continue
                    if store is None:
                        from opsdsl.runtime.store import Store

                        store = Store(self.state, create=False)  # reads the ledger only
                    root, entries = job.pop("root"), job.pop("entries")
                    if self.durable is not None:  # a folder never tells of a run end a power cut could undo
                        self.durable()
                    for delay in RETRIES:  # a database that is down for a moment: write it once it is back
                        try:
                            with folder_lock(store, entries[0].get("run") if entries else None):
                                write_incident(root, entries, ledger=store.ledger, **job)
                            outage = None  # the database is back: a later outage has its own budget
                            break
                        except Exception as error:
                            from opsdsl.runtime.database import database_unavailable

                            if not database_unavailable(error):
                                raise
                            now = time.monotonic()
                            if outage is None:
                                outage, waited = now, 0.0
                            left = OUTAGE_BUDGET - max(now - outage, waited)
                            if delay is None or left <= 0:  # this outage's budget is spent: give up
                                raise
                            delay = min(delay, left)
                            log.warning("incident folder waits for the database (%s); again in %gs", error, delay)
                            time.sleep(delay)
                            waited += delay
                except Exception as error:  # one folder that cannot be written must not stop the others
                    log.error("incident folder not written: %s: %s", type(error).__name__, error)
                finally:
                    self._jobs.task_done()
        finally:
            if store is not None:
                store.close()

    def _sweep(self, incidents_root: Path, done: concurrent.futures.Future[Any]) -> None:
        from opsdsl.runtime.incident_sweep import IncidentSweep

        try:
            done.set_result(IncidentSweep(self.state, incidents_root).startup())
        except Exception as error:  # e.g. the database down at start: the folders wait for the next start
            log.error("incident folders: the start-up sweep failed: %s: %s", type(error).__name__, error)
            done.set_exception(error)
