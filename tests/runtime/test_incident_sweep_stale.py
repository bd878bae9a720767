"""Review of 912e86f (a reviewer's test): a run that paused (its folder written then, record.json included)
and was then resumed by a process killed -9 between the run's end commit and its folder
keeps the record of its pause. The sweep calls that folder 'present' (a record.json
exists) and never writes it again, so the succeeded run's signed record keeps saying
"paused ... resume it or close the incident by hand" for good (`ledger verify` passes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kernel_api import opsdsl

from opsdsl.runtime import store as S
from opsdsl.runtime.incident_sweep import IncidentSweep

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: held, version: 1.0.0, owner: tests}
playbooks:
  held:
    severity: SEV-4
    steps:
      - id: agree
        action: approval
        with: {message: "Go?"}
        timeout: 1h
      - id: done
        action: assert
        with: {that: "true"}
"""

# `opsdsl resume` killed -9 when it is about to write the incident folder of the run's end.
KILLED_BEFORE_FOLDER = """
import os, signal, sys
import opsdsl.audit.incident as incident

def write_incident(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

incident.write_incident = write_incident
from opsdsl.cli.main import main
main(sys.argv[1:])
"""


def test_a_stale_record_of_a_pause_is_written_again_after_a_kill_at_the_runs_end(tmp_path: Path):
    pack, state = tmp_path / "held.yaml", tmp_path / "state"
    pack.write_text(PACK)
    paused = opsdsl("run", "--pack", pack, "--playbook", "held", "--state-dir", state)
    assert paused.code == 4, paused.stdout + paused.stderr  # paused for the approval, folder written
    store = S.Store(state, create=False)
    try:
        (run,) = store.runs()
    finally:
        store.close()
    assert (Path(run.incident_dir) / "record.json").exists()
    voted = opsdsl("approve", run.id, "agree", "--by", "alice", "--state-dir", state)
    assert voted.code == 0, voted.stdout + voted.stderr

    killed = subprocess.run(
        [sys.executable, "-c", KILLED_BEFORE_FOLDER, "resume", run.id, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ},
    )
    assert killed.returncode == -9, killed.stdout + killed.stderr
    store = S.Store(state, create=False)
    try:
        assert store.run(run.id).status == "succeeded"  # the end committed, the folder not written
    finally:
        store.close()

    report = IncidentSweep(state, state / "incidents").startup()  # what serve / a worker does at start
    verified = opsdsl("ledger", "verify", "--state-dir", state)
    assert verified.code == 0, verified.stdout + verified.stderr  # passes: it does not notice either
    record = json.loads((Path(run.incident_dir) / "record.json").read_text())["record"]
    assert record["status"] == "succeeded", (record["status"], record["follow_ups"], report)
