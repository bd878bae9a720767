"""A server's incident writer while the state database is down (review of 1de1d31).

Each folder used to retry on its own for ~56 s of back-off, one after the other: with the
database down when a server stops (its drain interrupts every live run, each queues a folder),
the stop waited about a minute per queued folder and wrote none of them."""

from __future__ import annotations

import sqlite3

from opsdsl.runtime import incident_writer as iw
from opsdsl.runtime.store import Store


def _writer(tmp_path, monkeypatch, outcomes: list[str]) -> tuple[iw.IncidentWriter, list[float], list[str]]:
    Store(tmp_path, create=True).close()
    slept: list[float] = []
    written: list[str] = []
    monkeypatch.setattr(iw.time, "sleep", slept.append)  # count the back-off, do not wait it

    def write(root, entries, **kwargs):
        if outcomes and outcomes.pop(0) == "down":
            raise sqlite3.OperationalError("server closed the connection unexpectedly")
        written.append(root.name)

    monkeypatch.setattr("opsdsl.audit.incident.write_incident", write)
    return iw.IncidentWriter(tmp_path), slept, written


def test_a_database_outage_costs_one_back_off_not_one_per_queued_folder(tmp_path, monkeypatch):
    writer, slept, written = _writer(tmp_path, monkeypatch, ["down"] * 1000)
    for index in range(10):  # e.g. ten runs interrupted by a server's drain
        writer.submit(tmp_path / f"incident-{index}", [])
    writer.join()
    writer.close()
    assert sum(slept) <= iw.OUTAGE_BUDGET, f"join() would wait {sum(slept):.0f} s for 10 folders it never writes"
    assert written == []


def test_a_short_outage_is_waited_out_and_a_later_one_has_its_own_budget(tmp_path, monkeypatch):
    # two failures, then the database is back; later a long outage again
    writer, slept, written = _writer(tmp_path, monkeypatch, ["down", "down", "up"] + ["down"] * 1000)
    writer.submit(tmp_path / "incident-a", [])
    writer.join()
    assert written == ["incident-a"]  # waited out, not dropped
    assert slept == list(iw.RETRIES[:2])
    writer.submit(tmp_path / "incident-b", [])
    writer.join()
    writer.close()
    assert written == ["incident-a"]
    assert sum(slept[2:]) <= iw.OUTAGE_BUDGET
    assert sum(slept[2:]) >= iw.OUTAGE_BUDGET / 2  # the second outage got a budget of its own
