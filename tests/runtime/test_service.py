"""Events → triggers → hooks → runs: cooldown, dedupe, concurrency caps, escalation, replay."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from kernel_api import state_db

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service, events_from_payload

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: svc, version: 1.0.0, owner: sre}
triggers:
  errors:
    on: metric
    when: event.name == "errors" && event.value > 10
hooks:
  onErrors:
    trigger: errors
    run: fix
    dedupe: event.labels.cluster
    max_concurrent: 2
    escalate: sqlx-oncall
    %s
playbooks:
  fix:
    severity: SEV-2
    inputs:
      cluster: {type: string, from: event.labels.cluster}
    steps:
      - {id: check, action: assert, with: {that: 'inputs.cluster != "broken"', message: cannot fix}}
      - {id: hold, action: approval, when: 'inputs.cluster == "hold"', with: {message: wait}, timeout: 1h}
"""


def service(tmp_path: Path, extra: str = "", **kw) -> Service:
    pack = tmp_path / "svc.yaml"
    pack.write_text(PACK % extra)
    state = tmp_path / "state"
    return Service(state, [runner.plan_from_pack(pack, [], state)], **kw)


def metric(cluster: str, value: float = 20) -> dict:
    return {"kind": "metric", "name": "errors", "value": value, "labels": {"cluster": cluster}}


def feed(svc: Service, events: list[dict]) -> list[int]:
    async def main():
        await svc.start()
        ids = svc.accept(events, "test")
        await svc.drain()
        return ids

    return asyncio.run(main())


def ledger(svc: Service, kind: str) -> list[dict]:
    return [e.data for e in svc.store.ledger.entries() if e.kind == kind]


def test_a_matching_event_starts_a_durable_run(tmp_path):
    svc = service(tmp_path)
    feed(svc, [metric("eu1"), metric("eu1", value=1)])
    runs = svc.store.runs()
    assert [(r.hook, r.dedupe_key, r.status, r.inputs) for r in runs] == [
        ("onErrors", "eu1", "succeeded", {"cluster": "eu1"})
    ]
    fired = ledger(svc, "trigger.fired")
    assert fired[0]["hook"] == "onErrors" and fired[0]["run"] == runs[0].id
    assert svc.metrics.value("opsdsl_runs_finished_total", status="succeeded") == 1


def test_one_live_run_per_dedupe_key(tmp_path):
    svc = service(tmp_path)
    feed(svc, [metric("hold"), metric("hold"), metric("eu2")])
    by_key = {r.dedupe_key: r.status for r in svc.store.runs()}
    assert by_key == {"hold": "paused", "eu2": "succeeded"}
    reasons = [d["reason"] for d in ledger(svc, "hook.suppressed")]
    assert len(reasons) == 1 and reasons[0].startswith("dedupe:")


def test_max_concurrent_counts_live_runs(tmp_path):
    pack = tmp_path / "svc.yaml"
    pack.write_text((PACK % "").replace("    dedupe: event.labels.cluster\n", ""))
    state = tmp_path / "state"
    svc = Service(state, [runner.plan_from_pack(pack, [], state)])
    feed(svc, [metric("hold"), metric("hold"), metric("hold")])
    assert [r.status for r in svc.store.runs()] == ["paused", "paused"]  # paused runs are live
    assert [d["reason"] for d in ledger(svc, "hook.suppressed")] == ["max_concurrent: 2 runs live"]


def test_cooldown_suppresses_runs_per_key(tmp_path):
    svc = service(tmp_path, "cooldown: 10m")
    feed(svc, [metric("a"), metric("a"), metric("b")])
    assert sorted(r.dedupe_key for r in svc.store.runs()) == ["a", "b"]
    assert [d["reason"].split(":")[0] for d in ledger(svc, "hook.suppressed")] == ["cooldown"]
    assert svc.metrics.value("opsdsl_hooks_suppressed_total", hook="onErrors", reason="cooldown") == 1


def test_failed_runs_are_escalated_to_the_url(tmp_path):
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        svc = service(tmp_path, escalation_url=f"http://127.0.0.1:{server.server_port}/page")
        feed(svc, [metric("broken")])
    finally:
        server.shutdown()
    assert received and received[0]["escalate"] == "sqlx-oncall" and received[0]["playbook"] == "fix"
    escalated = ledger(svc, "run.escalated")
    assert escalated[0]["delivered"] is True and escalated[0]["to"] == "sqlx-oncall"


def test_accepted_events_survive_a_crash_and_are_replayed(tmp_path):
    svc = service(tmp_path)
    with svc.store.transaction():  # accepted, never handled: the process died here
        svc.store.add_events([json.dumps(metric("eu9"))], "test", 1.0)
    svc.close()
    again = service(tmp_path)
    feed(again, [])
    assert [r.dedupe_key for r in again.store.runs()] == ["eu9"]
    db = state_db(tmp_path / "state")
    assert db.execute("SELECT status FROM events").fetchall() == [("done",)]


def test_alertmanager_payloads_become_one_event_per_alert():
    payload = {
        "version": "4",
        "receiver": "opsdsl",
        "status": "firing",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "A"}, "fingerprint": "1"},
            {"status": "resolved", "labels": {"alertname": "B"}, "fingerprint": "2"},
        ],
    }
    events = events_from_payload(payload)
    assert [(e["kind"], e["labels"]["alertname"], e["status"], e["receiver"]) for e in events] == [
        ("alert", "A", "firing", "opsdsl"),
        ("alert", "B", "resolved", "opsdsl"),
    ]
    assert events_from_payload([{"a": 1}, {"b": 2}]) == [{"a": 1}, {"b": 2}]


def test_trigger_windows_survive_a_restart(tmp_path):
    pack = textwrap.dedent(
        """\
        apiVersion: opsdsl/v1
        kind: Pack
        metadata: {name: win, version: 1.0.0, owner: sre}
        triggers:
          spike: {on: metric, threshold: {count: 3, within: 1h}}
        hooks:
          onSpike: {trigger: spike, run: p, cooldown: 1s}
        playbooks:
          p:
            severity: SEV-4
            steps:
              - {id: ok, action: assert, with: {that: "true"}}
        """
    )
    (tmp_path / "win.yaml").write_text(pack)
    state = tmp_path / "state"

    def fresh() -> Service:
        return Service(state, [runner.plan_from_pack(tmp_path / "win.yaml", [], state)])

    first = fresh()
    feed(first, [metric("x"), metric("x")])
    first.close()
    second = fresh()
    feed(second, [metric("x")])
    assert len(second.store.runs()) == 1  # the third event completed the window kept in the database


def test_a_replayed_event_never_starts_a_second_run(tmp_path):
    svc = service(tmp_path)
    feed(svc, [metric("eu5")])
    svc.close()
    db = state_db(tmp_path / "state")
    db.execute("UPDATE events SET status = 'accepted'")  # as if the process died before marking it
    db.commit()
    db.close()
    again = service(tmp_path)
    feed(again, [])
    assert [r.dedupe_key for r in again.store.runs()] == ["eu5"]
    assert len(ledger(again, "trigger.fired")) == 1


def test_an_event_the_ledger_cannot_hold_is_refused_at_intake(tmp_path):
    import pytest

    svc = service(tmp_path)
    with pytest.raises(ValueError, match="cannot be recorded"):
        svc.accept([{"kind": "metric", "name": "errors", "value": 2**60}], "test")
    assert svc.store.pending_events() == []


def test_one_engine_per_state_dir_and_the_lock_names_its_holder(tmp_path):
    import os

    import pytest

    from opsdsl.runtime.service import StateBusy

    first = service(tmp_path)
    first.claim("serve")
    second = service(tmp_path)
    with pytest.raises(StateBusy, match=rf"in use by `opsdsl serve` \(pid {os.getpid()}\)") as refused:
        second.claim("watch")
    assert refused.value.exit_code == 2
    with pytest.raises(StateBusy):  # start() claims too: nobody replays behind the holder's back
        asyncio.run(second.start())
    first.close()  # released: the next one may take it
    second.claim("watch")
    assert json.loads((tmp_path / "state" / "engine.lock").read_text())["command"] == "watch"
    second.close()


def test_spent_signatures_are_stored_with_their_events_and_pruned_once_expired(tmp_path):
    svc = service(tmp_path)
    svc.clock = lambda: 1000.0
    svc.accept_serialized(['{"name":"a"}'], "http", [("v2=aa", 1301.0)])
    assert svc.signature_spent("v2=aa", 1000.0) and svc.signature_spent("v2=aa", 1301.0)
    assert not svc.signature_spent("v2=aa", 1302.0)  # expired: its timestamp is refused anyway
    assert not svc.signature_spent("v2=bb", 1000.0)
    svc.clock = lambda: 2000.0  # a minute later: the next signed accept prunes the expired rows
    svc.accept_serialized(['{"name":"b"}'], "http", [("v2=bb", 2301.0)])
    rows = svc.store.conn.execute("SELECT signature FROM spent_signatures").fetchall()
    assert rows == [("v2=bb",)]
    svc.close()
    again = service(tmp_path)  # a restart remembers
    assert again.signature_spent("v2=bb", 2000.0)
    again.close()
