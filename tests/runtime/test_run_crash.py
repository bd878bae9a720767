"""Crash safety of `opsdsl run` and `opsdsl resume`, end to end.

A signed plan of tests/fixtures/runtime/crash.yaml (nine steps, one Kernel API request
each: GETs and PUTs that may be repeated, POSTs and a program that may not) runs in a real
subprocess against tests/kernel_api.py, and is SIGKILLed at many points: when the server
has received k requests (the k-th in flight), when it has answered k, and a few random
milliseconds after that. Then `opsdsl resume` (killed again
in one trial), and `opsdsl decide` for steps left in doubt, exactly as an operator would
decide: "succeeded" if the Kernel API shows the request, else "retry".

What must hold, checked after every kill and at the end: the ledger verifies; no step is
recorded as succeeded unless the server saw its request; the run ends succeeded; a step
that completed before a kill ran exactly once; a non-idempotent step ran exactly once,
whatever happened; an idempotent step ran again only if it was in flight at a kill.

The trials run a few at a time, each with its own server and state directory.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_api import (
    FIXTURES,
    ROOT,
    KernelAPI,
    cli_env,
    ledger_rows,
    opsdsl,
    param_args,
    run_status,
    shell_params,
    state_db,
)

pytestmark = pytest.mark.kills_runs  # SIGKILL at commit boundaries, then resume

STEPS = ("inspect", "open_ticket", "drain", "reconnect", "record", "warm", "annotate", "release", "verify")
NOT_IDEMPOTENT = frozenset({"open_ticket", "reconnect", "record", "annotate"})
SERVER_DELAY = 0.1  # every Kernel API answer takes this long, so that kills land mid-request
WORKERS = 4


@dataclass(frozen=True)
class KillPoint:
    """When to SIGKILL a process: once the server has received `arrived` requests in all (the
    last still in flight), or answered `answered`; then `delay` seconds later. `then` kills
    the resumes that follow."""

    name: str
    arrived: int = 0
    answered: int = 0
    delay: float = 0.0
    then: tuple[KillPoint, ...] = ()


def kill_points() -> list[KillPoint]:
    rng = random.Random(20261127)
    points = [KillPoint(f"arrived-{k}", arrived=k) for k in range(1, len(STEPS) + 1)]
    points += [KillPoint(f"answered-{k}", answered=k) for k in range(1, len(STEPS) + 1)]
    for _ in range(3):
        k, ms = rng.randint(1, len(STEPS) - 1), rng.randint(5, 90)
        points.append(KillPoint(f"answered-{k}+{ms}ms", answered=k, delay=ms / 1000))
    points.append(
        KillPoint(
            "arrived-2, resume killed at arrived-5 and answered-7",
            arrived=2,
            then=(KillPoint("resume-arrived-5", arrived=5), KillPoint("resume-answered-7", answered=7)),
        )
    )
    return points


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The crash pack compiled once, signed with a fresh key, and a trust file for it."""
    folder = tmp_path_factory.mktemp("signed")
    key = folder / "ci.key"
    assert opsdsl("keygen", "--out", key).code == 0
    compiled = opsdsl("compile", FIXTURES / "crash.yaml", "-o", folder / "build", "--key", key)
    assert compiled.code == 0, compiled.stdout + compiled.stderr
    trust = folder / "trust.yaml"
    trust.write_text("apiVersion: opsdsl/v1\nkind: Trust\nkeys:\n  - {name: ci, file: ci.key.pub}\n")
    return folder / "build" / "e2e-crash.plan.dsse.json", trust


class Trial:
    """One state directory, one Kernel API, and the processes that drive one run through kills."""

    def __init__(self, api: KernelAPI, state: Path, plan: Path, trust: Path, database: str | None = None) -> None:
        """`database`: this trial's own PostgreSQL database (trials run side by side, and
        each looks for the one run in its state), else the test's backend."""
        self.api = api
        self.state = state
        self.env = cli_env() if database is None else {**cli_env(), "OPSDSL_DATABASE": database}
        self.plan = plan
        self.trust = trust
        self.marker = f"crash-trial-{uuid.uuid4().hex}"  # on the helper's command line
        self.run_id: str | None = None
        self.in_flight_at_kills: Counter[str] = Counter()
        self.done_at_first_kill: set[str] | None = None
        self.log = state.parent / f"{state.name}.log"

    # processes ---------------------------------------------------------------------

    def spawn(self, *args: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "opsdsl", *args, "--state-dir", str(self.state), "--log-format", "quiet"]
        with open(self.log, "a") as log:
            return subprocess.Popen(command, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def start(self) -> subprocess.Popen:
        params = param_args(**shell_params(self.api), marker=self.marker)
        return self.spawn("run", "--plan", str(self.plan), "--trust", str(self.trust), *params)

    def kill_at(self, process: subprocess.Popen, point: KillPoint) -> bool:
        """SIGKILL `process` at `point`; False if it finished first."""
        started = time.monotonic()
        while process.poll() is None:
            if point.arrived and len(self.api.seen()) >= point.arrived:
                break
            if point.answered and self.api.wait_for(point.answered, timeout=0, answered=True):
                break
            if time.monotonic() - started > 30:
                process.kill()
                raise AssertionError(f"{point.name}: the process neither finished nor reached the point")
            time.sleep(0.002)
        else:
            return False
        time.sleep(point.delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        self.settle()
        return True

    def settle(self) -> None:
        """Wait until no program started by a killed run is left: it may still call the server."""
        deadline = time.monotonic() + 10
        while any(self.marker.encode() in _cmdline(pid) for pid in _pids()):
            assert time.monotonic() < deadline, "a helper program of a killed run does not finish"
            time.sleep(0.02)

    # checks ------------------------------------------------------------------------

    def query(self, sql: str, *args: object) -> list[tuple]:
        """Read the state database directly (no process is driving the run when we look)."""
        database = self.env.get("OPSDSL_DATABASE")
        if not database and not (self.state / "state.db").exists():
            return []
        conn = state_db(self.state, database)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def steps(self) -> dict[str, str]:
        return dict(self.query("SELECT step_id, status FROM steps WHERE run_id = ?", self.run_id))

    def find_run(self) -> str | None:
        try:
            ids = [row[0] for row in self.query("SELECT id FROM runs")]
        except sqlite3.OperationalError:  # the database is being created
            return None
        assert len(ids) <= 1
        return ids[0] if ids else None

    def seen(self, step: str) -> int:
        return self.api.keys()[f"{self.run_id}:{step}"]

    def check_after_kill(self, point: KillPoint) -> None:
        if self.env.get("OPSDSL_DATABASE") or (self.state / "state.db").exists():
            verified = opsdsl("ledger", "verify", "--state-dir", self.state, env=self.env)
            assert verified.code == 0, f"{point.name}: {verified.stdout}{verified.stderr}"
        self.run_id = self.run_id or self.find_run()
        if self.run_id is None:
            assert self.api.seen() == [], f"{point.name}: requests without a run"
            return
        steps = self.steps()
        for step, status in steps.items():
            if status == "succeeded" and step in STEPS:
                assert self.seen(step) >= 1, f"{point.name}: {step} recorded succeeded, the server never saw it"
            if status == "running":
                self.in_flight_at_kills[step] += 1
        if self.done_at_first_kill is None:
            self.done_at_first_kill = {s for s, status in steps.items() if status == "succeeded"}

    def settle_doubts(self) -> None:
        """Decide the steps left in doubt as an operator would: did the Kernel API get it?"""
        for step, status in self.steps().items():
            if status != "in_doubt":
                continue
            assert step in NOT_IDEMPOTENT, f"{step} is idempotent, yet left in doubt"
            outcome = "succeeded" if self.seen(step) else "retry"
            decided = opsdsl(
                "decide", self.run_id, step, "--as", outcome, "--by", "oncall", "--state-dir", self.state, env=self.env
            )
            assert decided.code == 0, decided.stderr

    def finish(self, kills: tuple[KillPoint, ...]) -> None:
        """Resume until the run ends, killing the resumes at `kills` and settling doubts between."""
        pending = list(kills)
        for _ in range(2 * len(STEPS)):
            if self.query("SELECT status FROM runs WHERE id = ?", self.run_id) == [("succeeded",)]:
                return  # it finished before it could be killed
            self.settle_doubts()
            process = self.spawn("resume", self.run_id)
            if pending and self.kill_at(process, pending[0]):
                self.check_after_kill(pending.pop(0))
                continue
            code = process.wait()
            if code == 0:
                return
            assert code == 4, f"resume exited {code}"  # paused: a step is in doubt
        raise AssertionError("the run did not finish")

    def check_end(self) -> None:
        ((status,),) = self.query("SELECT status FROM runs WHERE id = ?", self.run_id)
        assert status == "succeeded"
        verified = opsdsl("ledger", "verify", "--state-dir", self.state, env=self.env)
        assert verified.code == 0, verified.stdout + verified.stderr
        counts = {step: self.seen(step) for step in STEPS}
        for step, count in counts.items():
            if step in NOT_IDEMPOTENT or step in (self.done_at_first_kill or ()):
                assert count == 1, f"{step} reached the server {count} times: {counts}"
            else:
                assert 1 <= count <= 1 + self.in_flight_at_kills[step], (step, counts, self.in_flight_at_kills)
        assert self.api.pool("c1").generation == 1


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def crash_and_recover(point: KillPoint, plan: Path, trust: Path, state: Path, database: str | None) -> str | None:
    """One trial; None if every invariant held, else what broke."""
    with KernelAPI() as api:
        api.slow_everything(SERVER_DELAY)
        trial = Trial(api, state, plan, trust, database)
        try:
            if trial.kill_at(trial.start(), point):
                trial.check_after_kill(point)
            else:  # it finished first (the last answer is close to the end): nothing to recover
                trial.run_id = trial.find_run()
            if trial.run_id is None:
                return None  # killed before the run existed: nothing was done, nothing to resume
            trial.finish(point.then)
            trial.check_end()
        except AssertionError as error:
            return f"{point.name}: {error} (log: {trial.log})"
    return None


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds helper programs through /proc")
def test_sigkill_at_many_points_then_resume_runs_each_effect_once(
    signed: tuple[Path, Path], tmp_path: Path, state_backend: str, request: pytest.FixtureRequest
) -> None:
    plan, trust = signed
    points = kill_points()
    assert len(points) >= 20
    databases: list[str | None] = [None] * len(points)
    if state_backend == "postgresql":  # one database per trial, as one state.db per trial
        from opsdsl.runtime.migrate import migrate

        server = request.getfixturevalue("pg_server")
        for index in range(len(points)):
            server.drop_database(f"crash_{index:02d}")
            databases[index] = server.create_database(f"crash_{index:02d}")
            migrate(databases[index])

    with ThreadPoolExecutor(WORKERS) as pool:
        failures = list(
            pool.map(
                lambda numbered: crash_and_recover(
                    numbered[1], plan, trust, tmp_path / f"state-{numbered[0]:02d}", databases[numbered[0]]
                ),
                enumerate(points),
            )
        )

    assert [f for f in failures if f] == []


def test_sigterm_interrupts_the_run_and_resume_finishes_it(signed: tuple[Path, Path], tmp_path: Path) -> None:
    plan, trust = signed
    with KernelAPI() as api:
        api.slow_everything(SERVER_DELAY)
        api.rule("PUT", "/v1/pool/drain", delay=2.0)  # `drain` (idempotent) is in flight when the signal comes
        trial = Trial(api, tmp_path / "state", plan, trust)
        process = trial.start()
        assert api.wait_for(3, timeout=30)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 130

        trial.run_id = trial.find_run()
        listed = run_status(trial.state, trial.run_id)
        assert listed["status"] == "interrupted"
        (interrupted,) = ledger_rows(trial.state, "run.interrupted")
        assert interrupted["data"]["running"] == ["drain"]
        assert opsdsl("ledger", "verify", "--state-dir", trial.state).code == 0

        api.rule("PUT", "/v1/pool/drain")
        resumed = opsdsl("resume", trial.run_id, "--state-dir", trial.state, "--log-format", "json")
        assert resumed.code == 0, resumed.stdout + resumed.stderr
        assert run_status(trial.state, trial.run_id)["status"] == "succeeded"
        (restarted,) = [r for r in ledger_rows(trial.state, "run.started") if r["data"]["reason"] == "resume"]
        assert restarted["data"]["rerun"] == ["drain"]
        counts = {step: trial.seen(step) for step in STEPS}
        assert counts == {**dict.fromkeys(STEPS, 1), "drain": 2}
        assert opsdsl("ledger", "verify", "--state-dir", trial.state).code == 0


# ---- the state directory's own key, caught half-written ------------------------------------


def test_a_run_killed_right_after_it_was_created_leaves_a_verifiable_ledger(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    plan, trust = signed
    # The live view's first line comes right after the run is committed; a full stdout pipe
    # holds the process there, deterministically, until we kill it.
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)
    with KernelAPI() as api:
        trial = Trial(api, tmp_path / "state", plan, trust)
        process = subprocess.Popen(
            [sys.executable, "-m", "opsdsl", "run", "--plan", plan, "--trust", trust, "--state-dir", trial.state,
             "--log-format", "json", *param_args(**shell_params(api), marker=trial.marker)],
            cwd=ROOT, env=cli_env(), stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while trial.find_run() is None:
                assert process.poll() is None and time.monotonic() < deadline, "the run was never created"
                time.sleep(0.01)
            time.sleep(0.2)
            assert process.poll() is None  # blocked on its first line of output
            process.kill()
            process.wait()
        finally:
            os.close(read_end)
            os.close(write_end)
        assert api.seen() == []
    assert [r["kind"] for r in ledger_rows(trial.state)][:2] == ["run.created", "plan.verified"]

    verified = opsdsl("ledger", "verify", "--state-dir", trial.state)

    assert verified.code == 0, verified.stdout + verified.stderr


def test_a_crash_between_the_dev_key_and_its_public_half_heals_on_the_next_run(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with KernelAPI() as api:
        first = opsdsl("run", "--pack", FIXTURES / "retries.yaml", "--state-dir", state, "--log-format", "quiet",
                       *param_args(kernel_url=api.url))  # fmt: skip
        assert first.code == 0, first.stderr
        (state / "keys" / "dev.pub").unlink()  # as a kill between the two writes leaves it

        second = opsdsl("run", "--pack", FIXTURES / "retries.yaml", "--state-dir", state, "--log-format", "quiet",
                        *param_args(kernel_url=api.url))  # fmt: skip
        assert second.code == 0, second.stderr

    assert (state / "keys" / "dev.pub").exists()
    verified = opsdsl("ledger", "verify", "--state-dir", state)
    assert verified.code == 0, verified.stdout + verified.stderr


def test_a_step_left_in_doubt_is_shown_with_the_command_that_settles_it(
    signed: tuple[Path, Path], tmp_path: Path
) -> None:
    plan, trust = signed
    with KernelAPI() as api:
        api.rule("POST", "/v1/tickets", delay=2.0)
        trial = Trial(api, tmp_path / "state", plan, trust)
        assert trial.kill_at(trial.start(), KillPoint("open_ticket in flight", arrived=2))
        trial.run_id = trial.find_run()

        resumed = opsdsl("resume", trial.run_id, "--state-dir", trial.state, "--log-format", "text")

    assert resumed.code == 4, resumed.stdout + resumed.stderr
    assert trial.steps()["open_ticket"] == "in_doubt"
    assert f"opsdsl decide {trial.run_id} open_ticket" in resumed.stdout
    assert f"opsdsl approve {trial.run_id} open_ticket" not in resumed.stdout
