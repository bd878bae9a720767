"""`opsdsl serve` under hostile load: big bodies, slow clients, error floods, a big backlog at start.

Every test runs the real server (tests/serve/test_serve.py's `Server`) on 127.0.0.1 and
attacks it with real sockets. Bounds are generous (seconds, hundreds of MiB): they fail
on the unbounded server, which took minutes and gigabytes, without being flaky.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import test_serve
from test_serve import TOKEN, Server, job, wait_until

start = test_serve.start  # the fixture: start(*args) → a running Server, killed at the end

MIB = 1024 * 1024


def peak_rss(server: Server) -> int:
    """The server process's peak resident memory (VmHWM), in bytes."""
    assert server.process is not None
    status = Path(f"/proc/{server.process.pid}/status").read_text(encoding="ascii")
    return int(re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE).group(1)) * 1024


def bulky(size: int, item: object = None) -> bytes:
    """A JSON event of about `size` bytes made of small objects, several times its size once parsed."""
    item = {"a": 1} if item is None else item
    count = (size - 40) // (len(json.dumps(item, separators=(",", ":"))) + 1)
    return json.dumps({"name": "bulk", "pad": [item] * count}, separators=(",", ":")).encode()


@contextmanager
def healthz_probe(server: Server, source: str = "127.0.0.2") -> Iterator[list[float]]:
    """GET /healthz every 50 ms from another peer address while the block runs; the latencies."""
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:
        transport = httpx.HTTPTransport(local_address=source)
        with httpx.Client(base_url=server.url, timeout=30, transport=transport) as client:
            while not stop.is_set():
                began = time.monotonic()
                response = client.get("/healthz")
                latencies.append(time.monotonic() - began)
                assert response.status_code in (200, 503)
                stop.wait(0.05)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        yield latencies
    finally:
        stop.set()
        thread.join(timeout=60)


def test_big_bodies_keep_healthz_fast_memory_bounded_and_sigterm_honoured(start):
    server = start("--drain-timeout", "2")
    before = peak_rss(server)
    body = bulky(MIB - 100, {"a": "x" * 50})  # about 5 MB of Python objects each

    def send(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            return client.post("/v1/events", content=body, headers=headers).status_code

    with healthz_probe(server) as latencies, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(100)))
    assert set(statuses) <= {202, 429} and 202 in statuses, statuses
    assert latencies and max(latencies) < 2.0, f"/healthz took up to {max(latencies):.2f} s"
    grown = peak_rss(server) - before
    assert grown < 250 * MIB, f"peak RSS grew by {grown // MIB} MiB"
    began = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    stopped = time.monotonic() - began
    print(f"peak RSS +{grown // MIB} MiB, /healthz max {max(latencies):.3f} s, SIGTERM to exit {stopped:.1f} s")
    assert stopped < 20


def test_the_backlog_is_bounded_in_bytes(start):
    server = start("--max-backlog-bytes", str(3 * MIB), "--body-timeout", "2")
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {1_000_000}\r\n\r\n["
    )
    # three bodies on their way hold 3,000,000 of the 3 MiB: a fourth has no room
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(3)]
    for connection in held:
        connection.sendall(head.encode())
    time.sleep(0.5)
    try:
        busy = server.post("/v1/events", content=bulky(MIB - 100), headers={"Content-Type": "application/json"})
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
        alertmanager = server.post("/v1/alertmanager", content=bulky(MIB), headers={"Content-Type": "application/json"})
        assert alertmanager.status_code == 503  # Alertmanager retries a 5xx
        assert server.post("/v1/events", job("small")).status_code == 202  # small enough to fit
        assert re.search(r"^opsdsl_backlog_bytes 3\d{6}$", server.metrics(), re.MULTILINE)
        # the held bodies never arrive: 408 at the body deadline frees their bytes
        for connection in held:
            connection.settimeout(10)
            assert connection.recv(4096).startswith(b"HTTP/1.1 408 ")
    finally:
        for connection in held:
            connection.close()
    accepted = server.post("/v1/events", content=bulky(MIB - 100), headers={"Content-Type": "application/json"})
    assert accepted.status_code == 202
    too_big = server.post("/v1/events", content=bulky(4 * MIB), headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413


def slow_header_socket(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
    return connection


def closed(connection: socket.socket) -> bool:
    """Whether the server has closed (or answered and closed) this connection."""
    connection.settimeout(0)
    try:
        while True:
            data = connection.recv(4096)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_clients_are_cut_off_at_a_deadline_and_capped_per_peer(start):
    server = start("--header-timeout", "1", "--body-timeout", "1", "--max-connections-per-peer", "20")
    connections = [slow_header_socket(server.port) for _ in range(150)]
    try:
        refused = wait_until(lambda: sum(map(closed, connections)) >= 130 or None, 5, "the cap to refuse")
        assert refused
        with healthz_probe(server) as latencies:
            # every connection trickles a header line every 0.2 s: a per-byte timeout never fires
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline and not all(map(closed, connections)):
                for connection in connections:
                    with suppress(OSError):
                        connection.sendall(b"X-Slow: 1\r\n")
                time.sleep(0.2)
        assert all(map(closed, connections)), f"{sum(not closed(c) for c in connections)} still open"
        assert latencies and max(latencies) < 2.0
    finally:
        for connection in connections:
            connection.close()
    # a body trickled byte by byte is cut off at the body deadline with 408
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        connection.sendall(head.encode())
        began, answer = time.monotonic(), b""
        connection.settimeout(0.2)
        while not answer and time.monotonic() - began < 10:
            try:
                connection.sendall(b" ")
                answer = connection.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - began < 4
    assert server.client.get("/healthz").status_code == 200
    metrics = server.metrics()
    assert re.search(r'opsdsl_connections_refused_total\{reason="per-peer"\} (\d+)', metrics)
    assert re.search(r'opsdsl_connections_refused_total\{reason="header-timeout"\} (\d+)', metrics)


def test_a_flood_of_errors_logs_a_bounded_number_of_lines(start):
    server = start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        statuses = [client.post("/v1/events", json=job("x")).status_code for _ in range(300)]
    assert statuses == [401] * 300
    assert server.stop() == 0
    log = server.log()
    shown = len(re.findall(r"^opsdsl serve: refused POST /v1/events from 127.0.0.1: 401", log, re.MULTILINE))
    assert 1 <= shown <= 25, shown
    suppressed = sum(int(n) for n in re.findall(r"(\d+) more suppressed", log))
    assert shown + suppressed == 300, log[-2000:]


def test_a_restart_replays_a_big_backlog_in_batches(start, tmp_path):
    first = start()
    baseline = peak_rss(first)
    assert first.stop() == 0
    body = bulky(64 * 1024).decode()
    with sqlite3.connect(first.state / "state.db") as conn:
        conn.executemany(
            "INSERT INTO events (received_at, source, body) VALUES (?, 'http', ?)", [(time.time(), body)] * 400
        )
    again = start(state=first.state)
    assert "replaying 400 events" in again.log()
    with healthz_probe(again) as latencies:
        wait_until(again.all_events_done, 120, "the replayed events to be handled")
    assert latencies and max(latencies) < 2.0
    grown = peak_rss(again) - baseline
    print(f"replay: peak RSS +{grown // MIB} MiB over a fresh server, /healthz max {max(latencies):.3f} s")
    assert grown < 200 * MIB, f"peak RSS {grown // MIB} MiB over a fresh server's"
    fresh = again.post("/v1/events", job("after"))
    assert fresh.status_code == 202 and fresh.json()["ids"][0] > 400
