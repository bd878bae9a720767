"""A worker killed -9 after it ended a run, before the run's incident folder was written
(CI on 9769039: `ledger verify` then found the record gone): the other workers write it
from the ledger (runtime/incident_sweep.py), at their start or in a periodic pass.

The kill cannot be aimed between the end commit and the folder inside a real process, so
the test kills the worker once the run ended and removes the folder it wrote: the state
the kill leaves.
"""

from __future__ import annotations

import shutil

import pytest
from harness import Cluster, wait_until
from invariants import ledger_verifies

pytestmark = pytest.mark.kills_runs


def ended_by_a_killed_worker(cluster: Cluster, *workers: str) -> str:
    """The incident folder of a `quick` run whose worker was killed after its end,
    its folder gone; the workers named are started first."""
    server = cluster.serve()
    started = {name: cluster.worker(name) for name in workers}
    (event,) = cluster.post(server, {"name": "quick", "n": 1})
    run_id = cluster.run_of(event)
    cluster.until_status(run_id, "succeeded")
    ((folder,),) = cluster.query("SELECT incident_dir FROM runs WHERE id = ?", run_id)
    wait_until(lambda: (cluster.tmp / folder / "manifest.json").is_file(), 20, "the owner's folder")
    started[cluster.owner(run_id)].kill()
    shutil.rmtree(folder)
    assert "record.json is gone" in (ledger_verifies(cluster.url, cluster.state) or "")
    return folder


def test_a_worker_started_after_the_kill_writes_the_folder(cluster: Cluster):
    folder = ended_by_a_killed_worker(cluster, "w1")
    second = cluster.worker("w2", "2s", "--incident-sweep", "1h")  # its start-up pass, nothing periodic in time
    wait_until(lambda: (cluster.tmp / folder / "record.json").is_file(), 20, "the folder written again")
    assert ledger_verifies(cluster.url, cluster.state) is None
    assert "written again from the ledger" in second.log(), cluster.logs()


def test_a_living_workers_periodic_pass_writes_the_folder_a_dead_worker_left(cluster: Cluster):
    folder = ended_by_a_killed_worker(cluster, "w1", "w2")
    wait_until(lambda: (cluster.tmp / folder / "record.json").is_file(), 20, "the folder written again")
    assert ledger_verifies(cluster.url, cluster.state) is None, cluster.logs()
