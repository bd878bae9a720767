"""A real Prometheus Alertmanager delivers an alert to `opsdsl serve`, and the right hook runs.

Alertmanager (Debian's `prometheus-alertmanager`; `.ci/run` installs it) is configured with
tests/fixtures/serve/alertmanager.yml, the snippet docs/serve.md shows: one webhook receiver
pointing at /v1/alertmanager with the bearer token in `http_config.authorization`.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx
import pytest
from test_serve import FIXTURES, TOKEN, Server, wait_until

ALERTMANAGER = shutil.which("prometheus-alertmanager")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alertmanager_config(folder: Path, opsdsl_port: int) -> Path:
    """The docs' snippet, pointed at this test's server and token."""
    text = (FIXTURES / "alertmanager.yml").read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:8095", f"127.0.0.1:{opsdsl_port}").replace("CHANGE-ME", TOKEN)
    path = folder / "alertmanager.yml"
    path.write_text(text, encoding="utf-8")
    return path


def tail(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


def start_alertmanager(folder: Path, opsdsl_port: int, log: IO[str]) -> tuple[subprocess.Popen, httpx.Client]:
    """Alertmanager on a free port, clustering off, ready to take alerts."""
    assert ALERTMANAGER is not None
    port = free_port()
    command = [
        ALERTMANAGER,
        f"--config.file={alertmanager_config(folder, opsdsl_port)}",
        f"--storage.path={folder / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=debug",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready() -> bool:
        assert process.poll() is None, "alertmanager exited"
        try:
            return client.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 30, "Alertmanager to be ready")
    return process, client


def check_delivery(server: Server, alertmanager: httpx.Client) -> None:
    alert = {
        "labels": {"alertname": "ServeDiskPressure", "instance": "db-7", "severity": "warning"},
        "annotations": {"summary": "disk almost full on db-7"},
        "startsAt": datetime.now(UTC).isoformat(),
    }
    assert alertmanager.post("/api/v2/alerts", json=[alert]).status_code == 200

    def delivered() -> list[dict]:
        return [json.loads(r[0]) for r in server.query("SELECT body FROM events WHERE source = 'alertmanager'")]

    (event,) = wait_until(delivered, 60, "the webhook to reach opsdsl serve")
    assert event["kind"] == "alert" and event["status"] == "firing" and event["receiver"] == "opsdsl"
    assert event["labels"]["instance"] == "db-7" and event["fingerprint"]
    (fired,) = wait_until(lambda: server.ledger("trigger.fired"), 30, "the trigger to fire")
    assert fired["hook"] == "onDiskPressure" and fired["trigger"] == "disk_pressure"
    (run,) = wait_until(lambda: [r for r in server.runs() if r["status"] != "running"], 60, "the run to finish")
    assert run["id"] == fired["run"] and run["playbook"] == "triage" and run["status"] == "succeeded"
    assert "refused" not in server.log()


@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager is not on PATH (apt-get install it)")
def test_an_alert_sent_through_alertmanager_runs_its_hook_to_completion(tmp_path):
    server = Server(tmp_path)
    alertmanager: subprocess.Popen | None = None
    with open(tmp_path / "alertmanager.log", "w+", encoding="utf-8") as log:
        try:
            server.start()
            alertmanager, client = start_alertmanager(tmp_path, server.port, log)
            try:
                check_delivery(server, client)
            finally:
                client.close()
        except AssertionError as error:
            context = f"--- alertmanager ---\n{tail(log)}\n--- opsdsl serve ---\n{server.log()}"
            raise AssertionError(f"{error}\n{context}") from None
        finally:
            if alertmanager is not None:
                alertmanager.terminate()
                try:
                    alertmanager.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    alertmanager.kill()
                    alertmanager.wait()
            server.close()
