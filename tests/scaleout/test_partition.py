"""A runner partitioned from PostgreSQL past its lease (a loopback proxy that stops
forwarding, every connection left open), then healed.

`serve --no-drive`, a worker and two `opsdsl runner --pool edge`: `r1` reaches the
database only through the proxy, `r2` directly (started once r1 is cut off). r1 claims the
`remote` run's idempotent reconnect and sends it (the stand-in answers slowly); then the
proxy stops forwarding. What must happen: the worker sends the row back to the queue once
r1's lease lapsed; r2 claims it (epoch 2) and sends it again with the same key (applied
once); r1 stops its action; when the proxy forwards again, r1 writes nothing: its late
heartbeat or result is refused and the row keeps r2's result.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from harness import Cluster, wait_until
from invariants import check
from proxy import PartitionProxy

pytestmark = pytest.mark.kills_runs  # r1 may be left mid-claim


@pytest.fixture
def proxy(pg_url: str) -> Iterator[PartitionProxy]:
    parts = urlsplit(pg_url)
    found = PartitionProxy(parts.hostname, parts.port)
    try:
        yield found
    finally:
        found.close()


def dispatch_rows(cluster: Cluster) -> list[tuple]:
    return cluster.query("SELECT id, state, claimant, claim_epoch, attempt FROM dispatch ORDER BY id")


def partitioned(cluster: Cluster, proxy: PartitionProxy, *, cancelled_within: float | None = None) -> None:
    """The scenario of the module's doc; with `cancelled_within`, also that r1 cancelled its
    action within that many seconds of the partition, while still cut off."""
    server = cluster.serve()
    cluster.worker("w1")
    cut_off = cluster.runner("r1", database=proxy.url(cluster.url))
    (event,) = cluster.post(server, {"name": "remote", "cluster": "eu1", "sleep": 5})
    run_id = cluster.run_of(event)
    wait_until(lambda: cluster.api.seen("POST", "/v1/pool/reconnect"), 30, "r1 to send the reconnect")
    proxy.partition()
    partitioned_at = time.monotonic()
    cluster.runner("r2")
    try:
        cluster.until_status(run_id, "succeeded", "failed", "paused", timeout=40)
        assert cluster.status(run_id) == "succeeded", cluster.logs()
        (row,) = dispatch_rows(cluster)
        assert row[1:] == ("done", "r2", 2, 1), row
        sent = cluster.api.seen("POST", "/v1/pool/reconnect")
        assert len(sent) == 2 and {r.key for r in sent} == {f"{run_id}:reconnect"}
        assert cluster.api.pool("eu1").generation == 1
        if cancelled_within is not None:
            left = max(0.5, cancelled_within - (time.monotonic() - partitioned_at))
            wait_until(lambda: "cancelling the action" in cut_off.log(), left, "r1 to cancel while partitioned")
    finally:
        proxy.heal()
    wait_until(lambda: "no result written" in cut_off.log() or "refused" in cut_off.log(), 20, "r1's late word")
    assert dispatch_rows(cluster) == [row]  # its late word changed nothing
    assert cut_off.alive()  # it goes on serving the pool
    check(cluster.url, [cluster.state], cluster.api, [event])


def test_a_partitioned_runner_stops_its_action_is_replaced_and_its_late_word_refused(
    cluster: Cluster, proxy: PartitionProxy
):
    # r1 must stop its action while still cut off: within the 2 s lease (renewed every
    # third of it) and a margin. This needs the runner's database calls off its event loop
    # (pool_runner.DatabaseQueue on a thread of its own): before, a heartbeat stuck on the
    # silent network blocked the loop until the network healed.
    partitioned(cluster, proxy, cancelled_within=2 * 2 + 2)
