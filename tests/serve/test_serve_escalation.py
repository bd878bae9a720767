"""Escalation levels and response clocks under `opsdsl serve` (seed runbook §3 and §8).

A real server with a configuration file (two notifiers on a loopback webhook receiver,
three levels, L1 paged at once for SEV-1), the clock moved by the test (libfaketime, as in
test_serve_owns_runs.py), `opsdsl ack` from the CLI, and `opsdsl report` reading the result.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kernel_api import KernelAPI
from test_serve import Server, wait_until
from test_serve_owns_runs import PACK, Clock, cli, entries, fire, kill, needs_faketime, status, stays

pytestmark = needs_faketime


class Receiver(BaseHTTPRequestHandler):
    """Keeps the JSON bodies posted to it, by path (/oncall, /leads, /legal)."""

    bodies: ClassVar[list[tuple[str, dict]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        type(self).bodies.append((self.path, json.loads(self.rfile.read(length))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


CONFIG = """\
[[notifiers]]
kind = "webhook"
name = "oncall"
url = "{url}/oncall"

[[notifiers]]
kind = "webhook"
name = "leads"
url = "{url}/leads"

[escalation]
[[escalation.levels]]
name = "L1"
who = "On-call SRE"
notifiers = ["oncall"]
page_at_start = ["SEV-1", "SEV-2"]

[[escalation.levels]]
name = "L2"
who = "Engineering leads"
notifiers = ["leads"]

[[escalation.levels]]
name = "L3"
who = "Executives / legal"
"""


@pytest.fixture
def serve(tmp_path: Path, receiver: str) -> Iterator[Callable[..., Server]]:
    api = KernelAPI().__enter__()
    config = tmp_path / "opsdsl-serve.toml"
    config.write_text(CONFIG.format(url=receiver), encoding="utf-8")
    servers: list[Server] = []

    def starter(clock: Clock, state: Path | None = None) -> Server:
        args = ("--config", str(config), "--param", f"kernel_url={api.url}")
        server = Server(tmp_path, *args, pack=PACK, state=state, env=clock.env())
        servers.append(server)
        return server.start()

    yield starter
    for server in servers:
        server.close()
    api.__exit__(None, None, None)


def escalations(server: Server, run: str) -> list[tuple[str, str]]:
    return [(e["level"], e["reason"]) for e in entries(server, run, "incident.escalated")]


def received(path: str) -> list[dict[str, Any]]:
    """What one receiver got about escalations (the approval's own announcements left out)."""
    return [body for where, body in Receiver.bodies if where == path and '"opsdsl.escalation"' in json.dumps(body)]


def test_an_unacknowledged_sev1_escalates_level_by_level_on_time(serve, tmp_path):
    clock = Clock(tmp_path)
    server = serve(clock)
    run = fire(server, "outage")
    wait_until(lambda: escalations(server, run), what="the auto-page")
    assert escalations(server, run) == [("L1", "auto-page for SEV-1")]
    wait_until(lambda: received("/oncall"), what="the page to reach on-call")
    (page,) = received("/oncall")
    assert "Escalated to L1" in page["message"] and run in json.dumps(page)

    clock.set(4 * 60)  # inside SEV-1's 5 minutes: nothing more
    stays(server, run, "paused")
    assert len(escalations(server, run)) == 1
    clock.set(5 * 60 + 2)
    wait_until(lambda: len(escalations(server, run)) == 2, what="L2")
    level, reason = escalations(server, run)[1]
    assert level == "L2" and reason.startswith("not acknowledged within 5m00s")
    wait_until(lambda: received("/leads"), what="the leads to be told")
    clock.set(10 * 60 + 4)
    wait_until(lambda: len(escalations(server, run)) == 3, what="L3")
    assert escalations(server, run)[2][0] == "L3"
    clock.set(20 * 60)
    stays(server, run, "paused")
    assert len(escalations(server, run)) == 3  # the last level: the clock stops
    first, second, third = entries(server, run, "incident.escalated")
    # never early; late only by how far the test moved the clock past the mark, plus real seconds
    assert 300 <= second["ts"] - first["ts"] < 312 and 300 <= third["ts"] - second["ts"] < 312


def test_an_acknowledgement_stops_the_escalation_and_closes_it_where_it_was_sent(serve, tmp_path):
    clock = Clock(tmp_path)
    server = serve(clock)
    run = fire(server, "outage")
    wait_until(lambda: received("/oncall"), what="the page")
    acked = cli(server, "ack", run, "--by", "alice")
    assert acked.returncode == 0, acked.stderr
    wait_until(lambda: len(received("/oncall")) == 2, what="the acknowledgement to reach on-call")
    assert "Acknowledged by local:alice" in received("/oncall")[1]["message"]
    clock.set(30 * 60)
    stays(server, run, "paused")
    assert [level for level, _ in escalations(server, run)] == ["L1"]
    assert received("/leads") == []
    report = cli(server, "report")
    assert report.returncode == 0, report.stderr
    assert "SEV-1 < 5m00s: 1 of 1 acknowledged in time, 0 late, 0 never" in report.stdout


def test_an_escalation_due_while_the_server_was_down_fires_at_start(serve, tmp_path):
    clock = Clock(tmp_path)
    server = serve(clock)
    run = fire(server, "outage")
    wait_until(lambda: escalations(server, run), what="the auto-page")
    kill(server)
    clock.set(6 * 60)
    again = serve(clock, state=server.state)
    wait_until(lambda: len(escalations(again, run)) == 2, what="L2 at start")
    assert status(again, run) == "paused"
    report = cli(again, "report", "--format", "json")
    assert report.returncode == 0, report.stderr
    sev1 = json.loads(report.stdout)["severities"]["SEV-1"]
    assert sev1["response"] == {
        "target_seconds": 300.0,
        "acknowledged_in_time": 0,
        "acknowledged_late": 0,
        "never_acknowledged": 1,
    }
