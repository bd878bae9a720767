"""An event's `done` mark commits with the run it starts (or the suppression it records):
one write transaction per event, and no moment at which a run exists for an event still
`accepted`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from test_service import PACK, feed, ledger, metric

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service


def counted(svc: Service) -> dict[str, list[int]]:
    """The number of the write transaction in which each run was inserted and each event
    marked done (transactions counted from 1 in the order they began)."""
    store = svc.store
    seen: dict[str, list[int]] = {"runs": [], "done": [], "suppressed": []}
    current = [0]
    transaction, insert_run, finish_event = store.transaction, store.insert_run, store.finish_event
    append = store.ledger.append

    @contextlib.contextmanager
    def numbered(*args: Any, **kwargs: Any):
        with transaction(*args, **kwargs) as conn:
            current[0] += 1
            yield conn

    def inserting(run: Any) -> None:
        seen["runs"].append(current[0])
        insert_run(run)

    def finishing(event_id: int, note: str) -> None:
        seen["done"].append(current[0])
        finish_event(event_id, note)

    def appending(kind: str, *args: Any, **kwargs: Any) -> Any:
        if kind == "hook.suppressed":
            seen["suppressed"].append(current[0])
        return append(kind, *args, **kwargs)

    store.transaction, store.insert_run, store.finish_event = numbered, inserting, finishing
    store.ledger.append = appending
    return seen


def service(tmp_path: Path, pack_text: str) -> Service:
    pack = tmp_path / "svc.yaml"
    pack.write_text(pack_text)
    state = tmp_path / "state"
    return Service(state, [runner.plan_from_pack(pack, [], state)])


def test_an_event_is_marked_done_in_the_transaction_that_starts_its_run(tmp_path):
    svc = service(tmp_path, PACK % "")
    seen = counted(svc)
    feed(svc, [metric("eu1"), metric("eu2")])
    assert len(seen["runs"]) == 2
    assert seen["done"] == seen["runs"]  # each event's mark went with its run, no commit of its own
    assert statuses(svc) == ["done", "done"]
    assert len(ledger(svc, "trigger.fired")) == 2


def test_a_suppressed_run_and_its_event_mark_commit_together(tmp_path):
    # The playbook's input is required and the event lacks the label: the hook fires, no run starts.
    svc = service(tmp_path, (PACK % "").replace("from: event.labels.cluster}", "from: event.labels.region}"))
    seen = counted(svc)
    feed(svc, [metric("eu1")])
    assert seen["runs"] == [] and len(seen["suppressed"]) == 1
    assert seen["done"] == seen["suppressed"]
    assert ledger(svc, "hook.suppressed")[0]["reason"].startswith("inputs:")


def test_an_event_that_starts_nothing_still_gets_its_mark(tmp_path):
    svc = service(tmp_path, PACK % "")
    seen = counted(svc)
    feed(svc, [metric("eu1", value=1)])  # below the threshold: no firing
    assert seen["runs"] == [] and len(seen["done"]) == 1
    assert svc.store.pending_events() == []


def statuses(svc: Service) -> list[str]:
    return [row[0] for row in svc.store.conn.execute("SELECT status FROM events ORDER BY id")]
