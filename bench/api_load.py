"""The operator API over HTTP: a run's detail with 10,000 runs in the state DB, and approve → next step.

    python bench/api_load.py [--runs 10000] [--samples 500] [--approvals 30] [--keep DIR]

1. Makes a state directory holding `--runs` runs (bench/run_detail.py's `make_state`: one
   real quickstart run copied under new ids by direct SQLite inserts, with their steps and
   ledger entries), adds a person with `opsdsl users add`, and starts `opsdsl serve` on it
   (127.0.0.1, a free port) with a pack whose playbook is an approval and then a step.
2. **Run detail**: `GET /v1/runs/{id}` for random runs over one keep-alive connection,
   interleaved with `GET /healthz` (the baseline: the same HTTP round trip, no work), each
   request's time measured on the client. Issue 14's target: p99 < 50 ms.
3. **Approve → next step**: fires an event (`POST /v1/fire`), waits until its run is paused
   at the approval, then times `POST …/approve` from sending it to the `step.intent` ledger
   entry of the step after the approval (the server's clock; same machine), so the figure
   is the API's write, the driver's wake-up and the scheduler's next step. The approve
   answer's own round trip is shown beside it. Issue 14's target: p50 < 100 ms.

It prints a markdown table of p50/p99 in milliseconds and the targets; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from run_detail import make_state  # noqa: E402  (bench/ is not a package)

TOKEN = "bench-machine-token-0123456789"
PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: api-bench, version: 1.0.0, owner: sre}
triggers:
  change: {on: event, when: event.name == "change"}
hooks:
  # opsdsl: ignore[OPS042]: the bench wants a run per event
  onChange: {trigger: change, run: change}
playbooks:
  change:
    severity: SEV-3
    steps:
      - id: ask
        action: approval
        with: {message: Go?}
        timeout: 1h
      - id: after
        needs: [ask]
        action: assert
        with: {that: "true", message: never}
"""


def start_server(folder: Path, state: Path) -> tuple[subprocess.Popen, str]:
    pack = folder / "api-bench.yaml"
    pack.write_text(PACK, encoding="utf-8")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "opsdsl", "serve", "--pack", str(pack), "--state-dir", str(state)]
    command += ["--port", "0", "--token-file", str(token_file)]
    log = open(folder / "serve.log", "w+", encoding="utf-8")  # noqa: SIM115 (kept for the process' life)
    process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"listening on (http://[^ ]+)", log.read())
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            log.seek(0)
            sys.exit(f"opsdsl serve exited {process.returncode}:\n{log.read()}")
        time.sleep(0.05)
    process.kill()
    sys.exit("opsdsl serve did not start within 120 s")


def add_user(state: Path) -> str:
    command = [sys.executable, "-m", "opsdsl", "users", "add", "bench", "--role", "approver", "--state-dir", str(state)]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO).stdout.split()[0]


def timed(client: httpx.Client, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        sys.exit(f"GET {path}: {response.status_code} {response.text[:300]}")
    return elapsed


def detail_figures(client: httpx.Client, ids: list[str], samples: int) -> tuple[list[float], list[float]]:
    rng = random.Random(14)
    for run_id in rng.sample(ids, 20):  # warm up: connection, indexes made on first use, page cache
        timed(client, f"/v1/runs/{run_id}")
    detail, health = [], []
    for _ in range(samples):
        detail.append(timed(client, f"/v1/runs/{rng.choice(ids)}"))
        health.append(timed(client, "/healthz"))
    return detail, health


def approve_figures(client: httpx.Client, state: Path, count: int) -> tuple[list[float], list[float]]:
    database = f"file:{state / 'state.db'}?mode=ro"
    to_step, answered = [], []
    for index in range(count):
        fired = client.post("/v1/fire", json={"name": "change", "labels": {"n": str(index)}})
        if fired.status_code != 202:
            sys.exit(f"fire: {fired.status_code} {fired.text[:300]}")
        event_id = fired.json()["ids"][0]
        run_id = wait(lambda: _paused_run(database, event_id), f"the run of event {event_id} to pause")
        sent = time.time()
        started = time.perf_counter()
        response = client.post(f"/v1/runs/{run_id}/steps/ask/approve", json={})
        answered.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            sys.exit(f"approve: {response.status_code} {response.text[:300]}")
        intent = wait(lambda: _intent_ts(database, run_id, "after"), f"{run_id}'s next step to start")
        to_step.append((intent - sent) * 1000)
    return to_step, answered


def _paused_run(database: str, event_id: int) -> str | None:
    with sqlite3.connect(database, uri=True, timeout=10) as conn:
        row = conn.execute(
            "SELECT r.id FROM runs r JOIN steps s ON s.run_id = r.id"
            " WHERE r.event_id = ? AND s.step_id = 'ask' AND s.status = 'awaiting_approval'",
            (event_id,),
        ).fetchone()
    return row[0] if row else None


def _intent_ts(database: str, run_id: str, step: str) -> float | None:
    with sqlite3.connect(database, uri=True, timeout=10) as conn:
        for ts, data in conn.execute("SELECT ts, data FROM ledger WHERE run = ? AND kind = 'step.intent'", (run_id,)):
            if json.loads(data).get("step") == step:
                return ts
    return None


def wait(probe, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.005)
    sys.exit(f"timed out waiting for {what}")


def q(values: list[float], percent: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--approvals", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="Work in DIR and keep it.")
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="opsdsl-api-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    process = None
    try:
        started = time.perf_counter()
        ids = make_state(folder, options.runs)
        state = folder / ".opsdsl"
        print(f"state: {options.runs:,} runs in {time.perf_counter() - started:.1f}s ({folder})", file=sys.stderr)
        token = add_user(state)
        process, url = start_server(folder, state)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            detail, health = detail_figures(client, ids, options.samples)
            to_step, answered = approve_figures(client, state, options.approvals)
        rows = [
            (f"GET /v1/runs/{{id}}, {options.runs:,} runs in the DB", detail, "p99 < 50"),
            ("GET /healthz (baseline: the HTTP round trip)", health, ""),
            ("POST approve → next step's step.intent", to_step, "p50 < 100"),
            ("POST approve, its answer (baseline: the API's write)", answered, ""),
        ]
        print("| figure | n | p50 ms | p99 ms | target ms |\n| --- | --- | --- | --- | --- |")
        for name, values, target in rows:
            print(f"| {name} | {len(values)} | {q(values, 50):.2f} | {q(values, 99):.2f} | {target} |")
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        if options.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
