"""The intake writer commits on its thread; queue_stored runs later on the loop. If the
replay (Service._queue_replay_batch, on the loop) reads the committed event in between,
the event is queued twice: evaluated twice (trigger windows count it twice) and
Service.waiting drifts below zero."""

from __future__ import annotations

import asyncio
import json
import textwrap

from opsdsl.runtime import runner
from opsdsl.runtime.service import Service

PACK = textwrap.dedent(
    """\
    apiVersion: opsdsl/v1
    kind: Pack
    metadata: {name: win, version: 1.0.0, owner: sre}
    triggers:
      spike: {on: metric, threshold: {count: 2, within: 1h}}
    hooks:
      onSpike: {trigger: spike, run: p}
    playbooks:
      p:
        severity: SEV-4
        steps:
          - {id: ok, action: assert, with: {that: "true"}}
    """
)


def metric() -> dict:
    return {"kind": "metric", "name": "errors", "value": 1, "labels": {"cluster": "x"}}


def test_an_event_committed_by_the_writer_during_the_replay_is_handled_once(tmp_path):
    (tmp_path / "win.yaml").write_text(PACK)
    state = tmp_path / "state"
    svc = Service(state, [runner.plan_from_pack(tmp_path / "win.yaml", [], state)])
    with svc.store.transaction():  # a backlog left by a previous process: the start replays it
        svc.store.add_events([json.dumps(metric())], "test", 1.0)
    handled: list[int] = []
    real = svc.handle

    async def counting(event_id, received, event):
        handled.append(event_id)
        return await real(event_id, received, event)

    svc.handle = counting

    async def main():
        await svc.start()
        assert svc._replaying
        body = json.dumps(metric())
        # The intake writer's thread: the commit (what IntakeWriter._run does) ...
        with svc.store.transaction():
            stored = svc.persist_events(svc.store, [body], "api")
        # ... meanwhile the loop's worker goes on with the replay, which sees the commit ...
        await asyncio.wait_for(svc.queue.join(), 10)
        assert not svc._replaying
        # ... then the writer's call_soon_threadsafe(settle) reaches the loop.
        svc.queue_stored(stored, [body], "api")
        await asyncio.wait_for(svc.queue.join(), 10)
        await svc.drain()
        return stored.ids

    (new_id,) = asyncio.run(main())
    runs = svc.store.runs()
    svc.close()
    assert (handled.count(new_id), svc.waiting, len(runs)) == (1, 0, 0), handled
    # One real event in the window (the backlog one is decades old; count: 2): nothing may fire.
    assert runs == []
