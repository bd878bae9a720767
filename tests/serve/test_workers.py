"""`opsdsl serve --no-drive` and `opsdsl worker` processes on one PostgreSQL (issue 16 item 2).

Real processes throughout, on 127.0.0.1: the intake (tests/serve/test_serve.py's harness),
workers on the same state directory and database, the CLI, and the Kernel API stand-in
(tests/kernel_api.py) that counts side effects per Idempotency-Key. A worker is killed
with SIGKILL in the middle of a step; the other takes the run over once the lease (2 s
here) has lapsed, by the database's clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernel_api import KernelAPI
from test_serve import Server, wait_until

PACK = Path(__file__).resolve().parents[1] / "fixtures" / "serve" / "workers" / "workers.yaml"
LEASE = "2s"


class Worker:
    """One `opsdsl worker` process."""

    def __init__(self, tmp: Path, state: Path, name: str, url: str, api: KernelAPI) -> None:
        self.name = name
        self.log_path = tmp / f"worker-{name}-{time.monotonic_ns()}.log"
        self.command = [
            sys.executable, "-m", "opsdsl", "worker", "--pack", str(PACK), "--state-dir", str(state),
            "--database", url, "--id", name, "--lease", LEASE, "--param", f"kernel_url={api.url}",
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self) -> Worker:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_")}
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=log)
        wait_until(lambda: "driving runs" in self.log() or self._exited(), 60, f"worker {self.name} to start")
        assert not self._exited(), self.log()
        return self

    def _exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


class Cluster:
    """`serve --no-drive` and workers on one database and state directory."""

    def __init__(self, tmp: Path, url: str, api: KernelAPI) -> None:
        self.tmp, self.url, self.api = tmp, url, api
        self.state = tmp / "state"
        self.server: Server | None = None
        self.workers: dict[str, Worker] = {}

    def serve(self) -> Server:
        env = {"OPSDSL_DATABASE": self.url}
        self.server = Server(self.tmp, "--no-drive", "--param", f"kernel_url={self.api.url}", pack=PACK, env=env)
        return self.server.start()

    def worker(self, name: str) -> Worker:
        self.workers[name] = Worker(self.tmp, self.state, name, self.url, self.api).start()
        return self.workers[name]

    def post(self, *events: dict[str, Any]) -> list[int]:
        assert self.server is not None
        response = self.server.post("/v1/events", list(events))
        assert response.status_code == 202, response.text
        return response.json()["ids"]

    def query(self, sql: str, *args: Any) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql.replace("?", "%s"), args).fetchall()

    def run_of(self, event_id: int) -> str:
        found = wait_until(lambda: self.query("SELECT id FROM runs WHERE event_id = ?", event_id), 30, "the run")
        return found[0][0]

    def status(self, run_id: str) -> str:
        return self.query("SELECT status FROM runs WHERE id = ?", run_id)[0][0]

    def until_status(self, run_id: str, *wanted: str, timeout: float = 40) -> str:
        return wait_until(lambda: self.status(run_id) in wanted and self.status(run_id), timeout, f"{run_id} {wanted}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_")}
        env["OPSDSL_DATABASE"] = self.url
        command = [sys.executable, "-m", "opsdsl", *args, "--state-dir", str(self.state)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    def close(self) -> None:
        for worker in self.workers.values():
            if worker.process is not None and worker.process.poll() is None:
                worker.stop()
        if self.server is not None:
            self.server.close()


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, pg_url: str, api: KernelAPI) -> Iterator[Cluster]:
    found = Cluster(tmp_path, pg_url, api)
    yield found
    found.close()


def check_invariants(cluster: Cluster, event_ids: list[int]) -> None:
    """Every 202'd event reached a run or a recorded outcome; no run is left `running`
    without a lease; the ledger verifies."""
    marks = ", ".join("?" for _ in event_ids)
    assert cluster.query(f"SELECT COUNT(*) FROM events WHERE id IN ({marks}) AND status = 'done'", *event_ids) == [
        (len(event_ids),)
    ]
    assert cluster.query("SELECT id FROM runs WHERE status = 'running' AND lease_until IS NULL") == []

    def folders_written() -> bool:  # a worker writes a run's incident folder on its own thread after the end
        ended = cluster.query("SELECT incident_dir FROM runs WHERE status IN ('succeeded', 'failed')")
        return all((Path(folder) / "record.json").is_file() for (folder,) in ended)

    wait_until(folders_written, 30, "the incident folders of the runs that ended")
    verify = cluster.cli("ledger", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_two_workers_drive_every_run_the_intake_accepted(cluster: Cluster):
    cluster.serve()
    first, second = cluster.worker("w1"), cluster.worker("w2")
    ids = cluster.post(*({"name": "quick", "n": n} for n in range(12)))
    runs = [cluster.run_of(event_id) for event_id in ids]
    for run_id in runs:
        cluster.until_status(run_id, "succeeded")
    owners = {row[0] for row in cluster.query("SELECT lease_owner FROM runs")}
    assert owners <= {"w1", "w2"}
    held = "SELECT COUNT(*) FROM runs WHERE lease_until IS NOT NULL"
    wait_until(lambda: cluster.query(held) == [(0,)], 10, "every lease released")  # released right after the end
    keys = cluster.api.keys()
    assert len([k for k in keys if k.endswith(":tell")]) == 12 and all(keys[k] == 1 for k in keys)
    check_invariants(cluster, ids)
    assert first.stop() == 0 and second.stop() == 0


def owner_while_in_flight(cluster: Cluster, run_id: str, path: str) -> str:
    """The worker holding the run once its step's request reached the API."""
    wait_until(lambda: cluster.api.seen("POST", path), 30, f"POST {path}")
    return cluster.query("SELECT lease_owner FROM runs WHERE id = ?", run_id)[0][0]


@pytest.mark.kills_runs
def test_a_killed_worker_s_idempotent_step_is_run_again_with_its_key_by_the_other(cluster: Cluster):
    cluster.serve()
    cluster.worker("w1"), cluster.worker("w2")
    (event,) = cluster.post({"name": "reconnect"})
    run_id = cluster.run_of(event)
    dead = owner_while_in_flight(cluster, run_id, "/v1/pool/reconnect")
    (epoch,) = cluster.query("SELECT lease_epoch FROM runs WHERE id = ?", run_id)[0]
    cluster.workers[dead].kill()
    cluster.until_status(run_id, "succeeded", timeout=60)
    alive = ({"w1", "w2"} - {dead}).pop()
    assert cluster.query("SELECT lease_owner, lease_epoch > ? FROM runs WHERE id = ?", epoch, run_id) == [(alive, True)]
    sent = cluster.api.seen("POST", "/v1/pool/reconnect")
    assert len(sent) == 2 and len({r.key for r in sent}) == 1  # the same key, applied once
    assert cluster.api.pool("eu1").generation == 1  # the reconnect was applied once
    reasons = [
        json.loads(data)["reason"]
        for (data,) in cluster.query("SELECT data FROM ledger WHERE run = ? AND kind = 'run.started'", run_id)
    ]
    assert reasons == ["start", "recover"]
    check_invariants(cluster, [event])


@pytest.mark.kills_runs
def test_a_killed_worker_s_non_idempotent_step_goes_in_doubt_and_is_not_sent_again(cluster: Cluster):
    cluster.serve()
    cluster.worker("w1"), cluster.worker("w2")
    (event,) = cluster.post({"name": "freeze"})
    run_id = cluster.run_of(event)
    dead = owner_while_in_flight(cluster, run_id, "/v1/writes/freeze")
    cluster.workers[dead].kill()
    cluster.until_status(run_id, "paused", timeout=60)
    assert cluster.query("SELECT status FROM steps WHERE run_id = ? AND step_id = 'freeze'", run_id) == [("in_doubt",)]
    unleased = "SELECT lease_until FROM runs WHERE id = ?"
    wait_until(lambda: cluster.query(unleased, run_id) == [(None,)], 10, "the lease released")  # paused: none
    time.sleep(1)
    assert len(cluster.api.seen("POST", "/v1/writes/freeze")) == 1
    decided = cluster.cli("decide", run_id, "freeze", "--as", "succeeded", "--by", "alice")
    assert decided.returncode == 0, decided.stderr
    cluster.until_status(run_id, "succeeded")
    assert len(cluster.api.seen("POST", "/v1/writes/freeze")) == 1
    check_invariants(cluster, [event])


def test_an_approval_given_while_every_process_is_down_is_honoured_after_restart(cluster: Cluster):
    server = cluster.serve()
    worker = cluster.worker("w1")
    (event,) = cluster.post({"name": "outage"})
    run_id = cluster.run_of(event)
    cluster.until_status(run_id, "paused")
    assert worker.stop() == 0
    assert server.stop() == 0
    approved = cluster.cli("approve", run_id, "failover", "--by", "alice")
    assert approved.returncode == 0, approved.stderr
    assert cluster.status(run_id) == "paused"
    cluster.worker("w2")
    cluster.until_status(run_id, "succeeded")
    assert [r.path for r in cluster.api.seen("POST")] == ["/v1/echo"]
    check_invariants(cluster, [event])
