"""Load on `opsdsl serve`: events per second in, completed two-step runs per minute out.

    python bench/serve_load.py                         # 500 requests/s for 30 s
    python bench/serve_load.py --rate 60 --seconds 60  # a rate the runs keep up with here
    python bench/serve_load.py --keep /tmp/load        # keep the state directory

1. Starts `opsdsl serve` (a subprocess) on a fresh state directory with
   tests/fixtures/serve/load.yaml: every `load` event starts a run of an `assert` and a
   `shell` step, with no cooldown, dedupe key or cap.
2. Sends one event per request at a fixed rate (open loop: requests leave on schedule, over
   up to --connections keep-alive connections) and measures each request's latency on the
   client, from writing the request to reading the whole response.
3. Waits until the server has handled every event and finished every run, then reads the
   state database: runs succeeded, and the span from the first run's creation to the last
   run's end (runs per minute = succeeded ÷ span); and checks that every event id a 202
   returned is in the `events` table.
4. Stops the server with SIGTERM (it must exit 0) and prints a markdown summary.

The client is plain asyncio streams (HTTP/1.1, keep-alive), so it costs the 2-core machine
little next to the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK = REPO / "tests" / "fixtures" / "serve" / "load.yaml"
TOKEN = "bench-token-0123456789abcdef"


@dataclass
class Tally:
    """What the client saw."""

    sent: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, request written → response read (2xx)
    delays: list[float] = field(default_factory=list)  # seconds, request due → response read (2xx)
    ids: list[int] = field(default_factory=list)
    late: float = 0.0  # worst lag of a request behind its schedule
    first: float = 0.0
    last: float = 0.0


def start_server(state: Path, args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    token_file = state.parent / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "opsdsl", "serve", "--pack", str(args.pack), "--state-dir", str(state)]
    command += ["--port", "0", "--token-file", str(token_file), "--max-runs", str(args.max_runs)]
    command += ["--queue-size", str(args.queue_size), "--drain-timeout", "120"]
    log = open(state.parent / "serve.log", "w+", encoding="utf-8")  # noqa: SIM115 (kept for the process' life)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"listening on http://[^:]+:(\d+)", log.read())
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            log.seek(0)
            sys.exit(f"opsdsl serve exited {process.returncode}:\n{log.read()}")
        time.sleep(0.05)
    process.kill()
    sys.exit("opsdsl serve did not start within 60 s")


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("closed")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, payload

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def send_load(port: int, args: argparse.Namespace) -> Tally:
    tally = Tally()
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(args.connections):
        pool.put_nowait(Connection(port))
    loop = asyncio.get_running_loop()
    total = int(args.rate * args.seconds)
    start = loop.time() + 0.2
    tally.first = time.time()

    async def one(seq: int, due: float) -> None:
        connection = await pool.get()
        tally.late = max(tally.late, loop.time() - due)
        body = json.dumps({"name": "load", "labels": {"seq": str(seq)}}).encode()
        began = time.perf_counter()
        try:
            status, payload = await connection.post("/v1/events", body)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            connection.close()
            tally.errors[type(error).__name__] = tally.errors.get(type(error).__name__, 0) + 1
            return
        finally:
            pool.put_nowait(connection)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            tally.latencies.append(time.perf_counter() - began)
            tally.delays.append(loop.time() - due)
            tally.ids.extend(json.loads(payload)["ids"])

    tasks = []
    for seq in range(total):
        due = start + seq / args.rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(seq, due)))
        tally.sent += 1
    await asyncio.gather(*tasks)
    tally.last = time.time()
    while not pool.empty():
        pool.get_nowait().close()
    return tally


def loop_lag(port: int) -> str:
    """The server's `opsdsl_loop_lag_seconds` so far: samples, mean, and the share over 50 / 250 ms."""
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
    except OSError as error:
        return f"n/a ({error})"
    name = "opsdsl_loop_lag_seconds"
    buckets = {b: float(v) for b, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M)}
    total = re.search(rf"^{name}_sum (\S+)$", text, re.M)
    count = re.search(rf"^{name}_count (\S+)$", text, re.M)
    if not (buckets and total and count) or not float(count.group(1)):
        return "n/a (no samples)"
    n = float(count.group(1))
    over = {bound: 100 * (n - buckets.get(bound, n)) / n for bound in ("0.05", "0.25")}
    return (
        f"{n:.0f} samples, mean {float(total.group(1)) / n * 1000:.1f} ms, "
        f"{over['0.05']:.1f} % over 50 ms, {over['0.25']:.1f} % over 250 ms"
    )


def wait_for_runs(db: Path, expected_events: int, timeout: float) -> None:
    """Until every event is handled and no run is live (or the timeout)."""
    deadline = time.monotonic() + timeout
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        while time.monotonic() < deadline:
            pending = conn.execute("SELECT COUNT(*) FROM events WHERE status = 'accepted'").fetchone()[0]
            live = conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]
            done = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            if not pending and not live and done >= expected_events:
                return
            time.sleep(0.5)
    print(f"warning: runs still going after {timeout:.0f} s", file=sys.stderr)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    """p50 / p99 / max in milliseconds."""
    top = max(values, default=float("nan"))
    return f"{percentile(values, 0.5) * 1000:.1f} / {percentile(values, 0.99) * 1000:.1f} / {top * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500, help="requests per second (default 500)")
    parser.add_argument("--seconds", type=float, default=30, help="how long to send (default 30)")
    parser.add_argument("--connections", type=int, default=256, help="client keep-alive connections (default 256)")
    parser.add_argument("--max-runs", type=int, default=64, help="the server's --max-runs (default 64)")
    parser.add_argument("--queue-size", type=int, default=10_000, help="the server's --queue-size (default 10000)")
    parser.add_argument("--pack", type=Path, default=PACK, help="the pack served (default: the load fixture)")
    parser.add_argument("--wait", type=float, default=900, help="most seconds to wait for the runs (default 900)")
    parser.add_argument("--keep", type=Path, help="use and keep this directory (else a temporary one)")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="opsdsl-serve-load-"))
    if args.keep and (work / "state").exists():
        shutil.rmtree(work / "state")
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    process, port = start_server(state, args)
    loads = [os.getloadavg()[0]]
    lag = "n/a"
    try:
        tally = asyncio.run(send_load(port, args))
        loads.append(os.getloadavg()[0])
        lag = loop_lag(port)
        sending = tally.last - tally.first
        print(f"sent {tally.sent} requests in {sending:.1f} s; waiting for the runs", file=sys.stderr)
        wait_for_runs(state / "state.db", len(tally.ids), args.wait)
    finally:
        process.send_signal(15)
        try:
            # Long enough for the drain: a stopping server writes every incident folder its
            # writer still holds, hundreds when the disk was the bottleneck.
            code = process.wait(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()

    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM events")}
        runs = conn.execute(
            "SELECT COUNT(*), MIN(created_at), MAX(finished_at) FROM runs WHERE status = 'succeeded'"
        ).fetchone()
        other = dict(conn.execute("SELECT status, COUNT(*) FROM runs WHERE status != 'succeeded' GROUP BY status"))
    missing = [i for i in tally.ids if i not in stored]
    succeeded, first, last = runs
    span = (last - first) if succeeded else float("nan")
    accepted = sum(n for s, n in tally.statuses.items() if 200 <= s < 300)
    print(
        "\n".join(
            [
                f"## opsdsl serve under load: {args.rate:g} requests/s for {args.seconds:g} s",
                "",
                "| figure | value |",
                "| --- | --- |",
                f"| requests sent | {tally.sent} (in {sending:.1f} s; worst send lag {tally.late * 1000:.0f} ms) |",
                f"| 2xx | {accepted} ({accepted / sending:.0f} accepted/s) |",
                f"| 429 | {tally.statuses.get(429, 0)} |",
                f"| other statuses | { ({s: n for s, n in tally.statuses.items() if s != 429 and not 200 <= s < 300}) } |",
                f"| client errors | {tally.errors or 0} |",
                f"| intake latency p50 / p99 / max (2xx, client side) | {ms(tally.latencies)} |",
                f"| same, from the request's scheduled time | {ms(tally.delays)} |",
                f"| server's event loop lag while sending (`opsdsl_loop_lag_seconds`) | {lag} |",
                f"| load average (1 min) at the start / end of sending | {loads[0]:.2f} / {loads[-1]:.2f} |",
                f"| runs succeeded | {succeeded} (other: {other or 'none'}) |",
                f"| runs span (first created → last finished) | {span:.1f} s |",
                f"| runs completed per minute | {succeeded / span * 60 if succeeded else 0:.0f} |",
                f"| 2xx event ids in the events table | {len(tally.ids) - len(missing)} of {len(tally.ids)}"
                f"{' (MISSING: ' + str(missing[:10]) + ')' if missing else ''} |",
                f"| server exit code after SIGTERM | {code} |",
                "",
                f"machine: {os.cpu_count()} cores; server: --max-runs {args.max_runs} --queue-size {args.queue_size};"
                f" client: {args.connections} connections; state: {state}",
            ]
        )
    )
    failed = bool(missing or code != 0 or tally.errors)
    if failed:
        lines = (work / "serve.log").read_text(encoding="utf-8").splitlines()
        trouble = [line for line in lines if "refused" not in line]
        print("\nserver log (without refusals), last lines:\n" + "\n".join(trouble[-40:]), file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
