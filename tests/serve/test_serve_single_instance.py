"""One engine per state directory: a second `opsdsl serve` (or `watch`, `fire`) on the same
state directory exits 2 at once, naming the holder; a SIGKILLed holder blocks nothing.

Before the lock, two servers on one state directory both replayed the events a crash
left, and some events started two runs (two Idempotency-Keys for one alert).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import test_serve
from test_serve import wait_until

start = test_serve.start  # the fixture: start(*args) → a running Server, stopped at the end

# Runs of one cheap step (no program to spawn), one per `race` event: no dedupe, no cooldown.
RACE_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: race, version: 1.0.0, owner: sre}
triggers:
  race:
    on: event
    when: event.name == "race"
hooks:
  # opsdsl: ignore[OPS042]: every race event is meant to start a run
  onRace: {trigger: race, run: check}
playbooks:
  check:
    severity: SEV-4
    inputs:
      n: {type: string, from: event.labels.n}
    steps:
      - {id: check, action: assert, with: {that: 'inputs.n != ""', message: no n}}
"""


def opsdsl(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "opsdsl", *args]
    return subprocess.run(command, env=env, input=stdin, capture_output=True, text=True, timeout=60)


@pytest.mark.kills_runs
def test_a_second_server_on_the_state_dir_exits_2_naming_the_first_and_a_kill_9_frees_it(start, tmp_path):
    first = start()
    pid = first.process.pid
    second = opsdsl("serve", "--pack", str(first.pack), "--state-dir", str(first.state), "--port", "0", env=first.env)
    assert second.returncode == 2, second.stderr
    assert f"is in use by `opsdsl serve` (pid {pid})" in second.stderr
    assert "listening" not in second.stderr  # refused before binding a port
    event = tmp_path / "event.json"
    event.write_text(json.dumps(test_serve.job("fired")), encoding="utf-8")
    for command, stdin in ((("fire", str(event)), ""), (("watch",), json.dumps(test_serve.job("watched")) + "\n")):
        refused = opsdsl(
            *command, "--pack", str(first.pack), "--state-dir", str(first.state), env=first.env, stdin=stdin
        )
        assert refused.returncode == 2 and f"(pid {pid})" in refused.stderr, refused.stderr
    assert first.query("SELECT COUNT(*) FROM events")[0][0] == 0  # neither fire nor watch stored anything

    first.process.kill()  # SIGKILL: no clean-up ran; the kernel dropped the lock
    first.process.wait(timeout=10)
    third = start(state=first.state)
    assert third.client.get("/healthz").status_code == 200
    (holder,) = [json.loads((first.state / "engine.lock").read_text())]
    assert holder["pid"] == third.process.pid and holder["command"] == "serve"


@pytest.mark.kills_runs
def test_two_servers_racing_to_replay_300_events_start_one_run_per_event(start, tmp_path):
    pack = tmp_path / "race.yaml"
    pack.write_text(RACE_PACK, encoding="utf-8")
    state = tmp_path / "state"
    first = start(pack=pack, state=state)
    events = [{"name": "race", "labels": {"n": str(n)}} for n in range(300)]
    accepted = first.post("/v1/events", events)
    assert accepted.status_code == 202 and len(accepted.json()["ids"]) == 300
    first.process.kill()  # at once: most events are still `accepted`, to be replayed
    first.process.wait(timeout=10)
    pending = first.query("SELECT COUNT(*) FROM events WHERE status = 'accepted'")[0][0]

    racers = [start(pack=pack, state=state, listen=False) for _ in range(2)]  # spawned together
    wait_until(lambda: [r.process.poll() for r in racers].count(None) <= 1, 60, "one racer to exit")
    (loser,) = [r for r in racers if r.process.poll() is not None]
    (winner,) = [r for r in racers if r.process.poll() is None]
    assert loser.process.returncode == 2, loser.log()
    assert f"(pid {winner.process.pid})" in loser.log()
    winner.listening()
    if pending:
        assert f"replaying {pending} events" in winner.log()
    wait_until(winner.all_events_done, 120, "the replayed events to be handled")
    idle = {"status": "ok", "queue": 0, "runs_live": 0}
    wait_until(lambda: winner.client.get("/healthz").json() == idle, 120, "the winner's runs to finish")
    doubles = winner.query(
        "SELECT event_id, COUNT(*) FROM runs WHERE parent_run IS NULL GROUP BY event_id HAVING COUNT(*) > 1"
    )
    assert doubles == [], f"events that started two runs: {doubles}"
    per_event = winner.query("SELECT COUNT(DISTINCT event_id), COUNT(*) FROM runs WHERE parent_run IS NULL")[0]
    assert per_event == (300, 300)
    assert winner.stop() == 0
