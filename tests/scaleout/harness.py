"""Real opsdsl processes on one PostgreSQL database for the fault scenarios: `serve
--no-drive` replicas, `worker`s, `runner --pool`s and the CLI, on 127.0.0.1, all started
with the test's Kernel API stand-in (tests/kernel_api.py) as `kernel_url`.

Every process is killed at the end of its test, whatever happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

PACK = Path(__file__).resolve().parent / "scaleout.yaml"
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "scaleout-token-3c9e1f"
LEASE = "2s"
SWEEP = "2s"  # a worker's incident sweep: a folder a killed worker left is written within ~4 s


def wait_until(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def clean_env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_")}
    return {**env, "OPSDSL_DATABASE": url, "OPSDSL_TOKEN": TOKEN, **extra}


class Process:
    """One opsdsl subprocess with its log file."""

    def __init__(self, cluster: Cluster, name: str, *args: str, ready: str | None = None) -> None:
        self.name = name
        self.log_path = cluster.tmp / f"{name}-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "opsdsl", *args]
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=clean_env(cluster.url), stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        if ready is not None:
            wait_until(lambda: re.search(ready, self.log()) or self.process.poll() is not None, 60, f"{name} ready")
            assert self.process.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


class Serve(Process):
    """`opsdsl serve --no-drive` and an httpx client for it."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        args = ["serve", "--no-drive", "--pack", str(PACK), "--state-dir", str(cluster.state)]
        args += ["--host", "127.0.0.1", "--port", "0", "--param", f"kernel_url={cluster.api.url}"]
        super().__init__(cluster, name, *args, ready=r"listening on http://127\.0\.0\.1:\d+")
        self.port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log()).group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: Any, timeout: float = 10, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return httpx.post(self.url + path, content=json.dumps(body).encode(), headers=headers, timeout=timeout)


class Cluster:
    """The processes of one test on one database and state directory."""

    def __init__(self, tmp: Path, url: str, api: Any) -> None:
        self.tmp, self.url, self.api = tmp, url, api
        self.state = tmp / "state"
        self.processes: list[Process] = []

    def serve(self, name: str = "serve") -> Serve:
        server = Serve(self, name)
        self.processes.append(server)
        return server

    def worker(self, name: str, lease: str = LEASE, *extra: str) -> Process:
        args = ["worker", "--pack", str(PACK), "--state-dir", str(self.state), "--id", name, "--lease", lease]
        args += ["--incident-sweep", SWEEP, *extra]  # a later --incident-sweep in `extra` wins
        found = Process(self, name, *args, "--param", f"kernel_url={self.api.url}", ready="driving runs")
        self.processes.append(found)
        return found

    def runner(self, name: str, database: str | None = None, lease: str = LEASE) -> Process:
        args = ["runner", "--pool", "edge", "--state-dir", str(self.state / name), "--id", name, "--lease", lease]
        if database is not None:
            args += ["--database", database]
        found = Process(self, name, *args)
        self.processes.append(found)
        return found

    def post(self, server: Serve, *events: dict[str, Any], key: str | None = None) -> list[int]:
        response = server.post("/v1/events", list(events), key=key)
        assert response.status_code == 202, response.text
        return response.json()["ids"]

    def query(self, sql: str, *args: Any) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql.replace("?", "%s"), args).fetchall()

    def run_of(self, event_id: int, timeout: float = 30) -> str:
        found = wait_until(lambda: self.query("SELECT id FROM runs WHERE event_id = ?", event_id), timeout, "the run")
        return found[0][0]

    def status(self, run_id: str) -> str:
        return self.query("SELECT status FROM runs WHERE id = ?", run_id)[0][0]

    def until_status(self, run_id: str, *wanted: str, timeout: float = 40) -> str:
        return wait_until(lambda: self.status(run_id) in wanted and self.status(run_id), timeout, f"{run_id} {wanted}")

    def owner(self, run_id: str) -> str:
        return self.query("SELECT lease_owner FROM runs WHERE id = ?", run_id)[0][0]

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "opsdsl", *args, "--state-dir", str(self.state)]
        return subprocess.run(
            command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=clean_env(self.url)
        )

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log()[-3000:]}" for p in self.processes)

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.kill()
