"""While `serve` drains (SIGTERM/SIGHUP), its driver keeps starting runs, which the
end of the drain then interrupts — a step approved during the drain is cut off mid-flight."""

import signal
import time

from kernel_api import KernelAPI
from test_serve import Server, wait_until
from test_serve_owns_runs import cli, fire, until_status

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: drain, version: 1.0.0, owner: sre}
params:
  kernel_url: {type: string, default: "http://127.0.0.1:9"}
triggers:
  slow: {on: event, when: event.name == "slow"}
  gated: {on: event, when: event.name == "gated"}
hooks:
  # opsdsl: ignore[OPS042]: test
  onSlow: {trigger: slow, run: slow}
  # opsdsl: ignore[OPS042]: test
  onGated: {trigger: gated, run: gated}
playbooks:
  slow:
    severity: SEV-4
    steps:
      - id: slow
        action: http.request
        idempotent: true
        with: {method: POST, url: "${{ params.kernel_url }}/v1/echo?sleep=6"}
        timeout: 20s
  gated:
    severity: SEV-4
    steps:
      - id: agree
        action: approval
        with: {message: go?}
      - id: freeze
        action: http.request
        with: {method: POST, url: "${{ params.kernel_url }}/v1/writes/freeze?sleep=5"}
        timeout: 20s
"""


def test_an_approval_during_the_drain_does_not_start_a_step_the_drain_then_cuts_off(tmp_path):
    pack = tmp_path / "drain.yaml"
    pack.write_text(PACK)
    with KernelAPI() as api:
        server = Server(tmp_path, "--param", f"kernel_url={api.url}", "--drain-timeout", "4", pack=pack).start()
        try:
            gated = fire(server, "gated")
            until_status(server, gated, "paused")
            fire(server, "slow")
            wait_until(lambda: api.seen("POST"), what="the slow call")
            server.process.send_signal(signal.SIGHUP)  # the drain waits for the slow run
            time.sleep(0.5)
            assert cli(server, "approve", gated, "agree", "--by", "alice").returncode == 0
            server.process.wait(timeout=30)
            rows = server.query("SELECT kind, data FROM ledger WHERE run = ? ORDER BY seq", gated)
            kinds = [k for k, _ in rows]
            print("\n", kinds, "\n", server.log()[-1500:])
            print("posts:", [r.path for r in api.seen("POST")])
            assert "run.interrupted" not in kinds, "the drain started the approved step, then cut it off"
        finally:
            server.close()
