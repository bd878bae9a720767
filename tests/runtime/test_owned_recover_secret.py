"""a run left interrupted/running whose secret is missing at the server's start is
never tried again (the retry timer exists only for runs the look finds)."""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))
from kernel_api import KernelAPI
from owned_harness import ManualClock as Clock

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: secretive, version: 1.0.0, owner: sre}
params:
  token: {type: string, secret: true}
triggers:
  go: {on: event, when: event.name == "go"}
hooks:
  # opsdsl: ignore[OPS042]: every event is meant to start a run
  onGo: {trigger: go, run: guarded}
playbooks:
  guarded:
    severity: SEV-3
    steps:
      - id: slow
        action: http.request
        idempotent: true
        with: {method: POST, url: "http://127.0.0.1:PORT/v1/echo?sleep=3"}
        timeout: 10s
      - id: done
        action: assert
        with: {that: "size(params.token) > 0"}
"""


def test_a_recovered_run_whose_secret_is_missing_is_retried(tmp_path, monkeypatch):
    clock = Clock()
    pack = tmp_path / "secretive.yaml"
    api = KernelAPI().__enter__()
    pack.write_text(PACK.replace("http://127.0.0.1:PORT", api.url))
    state = tmp_path / "state"

    def served():
        plan = runner.plan_from_pack(pack, [], state)
        return Service(state, [plan], params=[{}], clock=clock, runtime=runner.Runtime(state, clock=clock))

    async def first():  # a server with the secret; it stops while the run sleeps its 1 s wait
        monkeypatch.setenv("OPSDSL_SECRET_TOKEN", "s3cret")
        svc = served()
        svc.params = [{"token": "s3cret"}]
        try:
            await svc.start("serve", own_runs=True)
            svc.accept([{"name": "go"}], "test")
            await svc.queue.join()
            await asyncio.sleep(0.5)
            await svc.drain(timeout=0)
            (run,) = svc.store.runs()
            assert run.status == "interrupted"
            return run.id
        finally:
            svc.close()

    async def second(run_id):  # restarted without the secret, which comes back later
        monkeypatch.delenv("OPSDSL_SECRET_TOKEN")
        svc = served()
        try:
            await svc.start("serve", own_runs=True)
            await asyncio.sleep(0.3)
            timers = svc.store.conn.execute("SELECT kind FROM timers WHERE run_id = ?", (run_id,)).fetchall()
            print("\ntimers of the run after start:", timers, "status:", svc.store.run(run_id).status)
            monkeypatch.setenv("OPSDSL_SECRET_TOKEN", "s3cret")
            clock.now += 3600
            svc.driver.look()
            for _ in range(300):  # driven now: let it finish
                status = svc.store.run(run_id).status
                if status in ("succeeded", "failed"):
                    break
                await asyncio.sleep(0.05)
            print("an hour later, the secret back:", status)
            await svc.drain(timeout=2)
            assert status == "succeeded", f"still {status}: never tried again"
        finally:
            svc.close()

    run_id = asyncio.run(first())
    asyncio.run(second(run_id))
