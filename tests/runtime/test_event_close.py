"""An event's `done` mark commits with the run it starts (or the suppression it records):
one write transaction per event, and no moment at which a run exists for an event still
`accepted`."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
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


# Review of ead1c3e's area (older than it): the suppression of an event's non-last hook by
# its inputs was committed in a transaction of its own, so an event tried again (the last
# hook's run transaction failed for a moment, or a kill -9 between the two) recorded it twice.
TWO_HOOKS_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: two, version: 1.0.0, owner: sre}
triggers:
  errors:
    on: metric
    when: event.name == "errors" && event.value > 10
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  aByRegion: {trigger: errors, run: by-region}
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  bByCluster: {trigger: errors, run: by-cluster}
playbooks:
  by-region:
    severity: SEV-3
    inputs:
      region: {type: string, from: event.labels.region}
    steps:
      - {id: a, action: assert, with: {that: 'true'}}
  by-cluster:
    severity: SEV-3
    inputs:
      cluster: {type: string, from: event.labels.cluster}
    steps:
      - {id: a, action: assert, with: {that: 'true'}}
"""


def test_a_replayed_event_records_its_inputs_suppression_once(tmp_path: Path):
    pack = tmp_path / "two.yaml"
    pack.write_text(TWO_HOOKS_PACK)
    state = tmp_path / "state"
    svc = Service(state, [runner.plan_from_pack(pack, [], state)])
    create_run, failed = svc.runtime.create_run, []

    def flaky_create_run(*args, **kwargs):
        if not failed:  # the database is busy for a moment (or: kill -9 here, then a restart)
            failed.append(1)
            raise sqlite3.OperationalError("database is locked")
        return create_run(*args, **kwargs)

    svc.runtime.create_run = flaky_create_run

    async def main() -> None:
        await svc.start()
        svc.accept([metric("eu1")], "test")  # no `region` label: aByRegion is suppressed, bByCluster runs
        for _ in range(50):  # until the event is handled (it is tried again after 0.25 s)
            await asyncio.sleep(0.1)
            if not svc.store.pending_events():
                break
        await svc.drain()

    asyncio.run(main())
    runs = svc.store.runs()
    suppressed = ledger(svc, "hook.suppressed")
    svc.close()
    assert failed and [r.hook for r in runs] == ["bByCluster"]
    assert [s["hook"] for s in suppressed] == ["aByRegion"], suppressed
