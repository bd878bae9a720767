"""Run one case: the real runtime, a fresh state directory, mocked actions, virtual time.

1. The pack was compiled and signed once per test file (`compile_pack`); each case gets a
   state directory of its own (the dev key copied in, no fsync, no incident folders), so
   cooldowns, dedupe and trigger windows never leak from one case into the next.
2. A `playbook:` case creates and drives one run, as `opsdsl run --playbook` does. An
   event case feeds its events, at their offsets, through `Service.handle` (triggers,
   cooldown, dedupe, caps), which starts and drives the runs, as `opsdsl fire` does.
3. While a run is paused on a step the case has answers for, one answer per waiting step
   is given (`Runtime.approve`) and the run is resumed (`Runtime.drive`), until it ends or
   no answer applies.
4. The facts are read back from the ledger (`facts.run_facts`).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl.errors import OpsdslError
from opsdsl.lang.names import person_name
from opsdsl.runtime import runner
from opsdsl.runtime import store as S
from opsdsl.runtime.people import Person

from .checks import as_text
from .clock import Stalled, VirtualClock, run_virtual
from .expect import Observed
from .facts import RunFacts, run_facts
from .mocks import CaseProblem, MockExecutor, RehearsalSecrets
from .model import Answer, Case, TestFile, split_key

SOURCE = "rehearsal"
TRIGGER_FIRED, HOOK_SUPPRESSED = "trigger.fired", "hook.suppressed"  # as opsdsl.runtime.service


@dataclass
class CompiledPack:
    """A pack compiled and signed once, shared by every case of a test file."""

    plan: runner.VerifiedPlan
    template: Path  # an empty state directory (database and the dev key) each case copies
    sources: dict[str, Any] = field(default_factory=dict)  # from the build manifest: {pack, policy_packs}


@dataclass
class CaseRun:
    """What running a case produced."""

    observed: Observed | None = None
    problems: list[CaseProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the case could not run to the end (a refusal, a stall, a crash)
    virtual_seconds: float = 0.0


def compile_pack(test: TestFile, state: Path) -> CompiledPack:
    """Compile and sign the pack with the policy packs in scope (an OpsdslError carrying
    the pack's diagnostics when it has errors).

    Also prepares the state directory every case starts from: copying it takes ~0.3 ms,
    where creating a database afresh takes ~19 ms on disk (its schema is written with
    fsync). A database shared by the cases would be faster still (~2 ms a case less) but
    would let one case's runs, cooldowns and trigger windows leak into the next.
    """
    policies = list(test.policies) if test.policies is not None else None
    plan = runner.plan_from_pack(test.pack, policies, state)
    template = state / "template"
    shutil.copytree(state / "keys", template / "keys")
    S.Store(template, durable=False).close()
    return CompiledPack(plan, template, _sources(state / "plans" / test.pack.stem, plan.payload["pack"]["name"]))


def _sources(build: Path, name: str) -> dict[str, Any]:
    """The pack's and its policy packs' files and digests, as the compiler recorded them
    (coverage files keep them, so a later reader can tell when they changed)."""
    manifest = json.loads((build / "manifest.json").read_text("utf-8"))
    entry = manifest["packs"][name]
    return {
        "pack": {"path": entry["source"], "digest": entry["sourceDigest"]},
        "policy_packs": [{"path": p["source"], "digest": p["sourceDigest"]} for p in manifest.get("policyPacks", ())],
    }


def run_case(test: TestFile, case: Case, pack: CompiledPack, state: Path, strict: bool) -> CaseRun:
    """Rehearse `case` in the (new) state directory `state`."""
    shutil.copytree(pack.template, state, dirs_exist_ok=True)
    clock = VirtualClock.at(case.clock)
    secrets = RehearsalSecrets(case.secrets)
    executor = MockExecutor(case.mocks, strict, case.path)
    executor.mocked_actions = _mocked_actions(pack.plan.payload, case)
    runtime = runner.Runtime(
        state, executor=executor, clock=clock.now, durable=False, write_incidents=False, jitter=lambda: 0.5
    )
    executor.playbook_of = _PlaybookOf(runtime.store).__getitem__
    result = CaseRun()
    rehearsal = _Rehearsal(test, case, pack, runtime, executor, secrets, clock, result)
    try:
        result.observed = run_virtual(rehearsal.run(), clock)
    except Stalled as error:
        result.error = f"the rehearsal stalled: {error} (a mocked step that never answers, without a timeout?)"
    except OpsdslError as error:
        result.error = error.message
    except Exception as error:  # a bug: report it on this case and go on with the others
        if os.environ.get("OPSDSL_DEBUG"):
            raise
        result.error = f"internal error: {type(error).__name__}: {error} (OPSDSL_DEBUG=1 shows the traceback)"
    finally:
        runtime.close()
    result.problems += executor.problems
    result.virtual_seconds = clock.elapsed
    _mock_notes(case, executor, strict, result)
    return result


class _PlaybookOf(dict):
    """run id → playbook, looked up in the state database the first time (sub-runs too)."""

    def __init__(self, store: S.Store) -> None:
        super().__init__()
        self.store = store

    def __missing__(self, run_id: str) -> str:
        try:
            self[run_id] = self.store.run(run_id).playbook
        except OpsdslError:
            return ""
        return self[run_id]


def _mocked_actions(plan: dict[str, Any], case: Case) -> set[str]:
    actions = set()
    for key in case.mocks:
        playbook, step = split_key(key)
        for name, book in plan["playbooks"].items():
            if playbook in (None, name):
                actions.update(n["action"] for n in book["nodes"] if n["id"] == step)
    return actions


def _mock_notes(case: Case, executor: MockExecutor, strict: bool, result: CaseRun) -> None:
    used = {call.key for call in executor.calls}
    for key, mock in case.mocks.items():
        if key not in used:
            if strict:
                result.problems.append(
                    CaseProblem(mock.path, f"the mock for `{key}` was never used: the step did not run")
                )
            else:
                result.notes.append(f"mock `{key}` was not used (the step did not run)")
    if executor.unmocked and not strict:
        result.notes.append(f"ran without a mock (neutral outputs): {', '.join(executor.unmocked)}")


class _Rehearsal:
    """The coroutine side of one case, run on the virtual-time loop."""

    def __init__(
        self,
        test: TestFile,
        case: Case,
        pack: CompiledPack,
        runtime: runner.Runtime,
        executor: MockExecutor,
        secrets: RehearsalSecrets,
        clock: VirtualClock,
        result: CaseRun,
    ) -> None:
        self.test, self.case, self.pack = test, case, pack
        self.runtime, self.executor = runtime, executor
        self.secrets, self.clock, self.result = secrets, clock, result
        self.payload = pack.plan.payload
        self.param_texts = {k: as_text(v) for k, v in case.params.items()}
        self.top_runs: list[str] = []
        self.triggers: list[str] = []

    async def run(self) -> Observed:
        params = runner.resolve_params(self.payload, self.param_texts, self.secrets)
        if self.case.by_event:
            await self.send_events(params)
        else:
            await self.start_playbook(params)
        await self.answer_approvals()
        return self.observe()

    async def start_playbook(self, params: dict[str, Any]) -> None:
        name, event = self.case.playbook, self.case.event or {}
        book = self.payload["playbooks"][name]
        inputs = runner.resolve_inputs(book, name, event, params, {k: as_text(v) for k, v in self.case.inputs.items()})
        row = self.runtime.create_run(self.pack.plan, runner.Selection(name), params, inputs, event, self.secrets)
        self.top_runs.append(row.id)
        self.executor.main_runs.add(row.id)
        await self.runtime.drive(row, self.secrets)

    async def send_events(self, params: dict[str, Any]) -> None:
        service = self.service(params)
        tasks: set[asyncio.Task] = set()
        at = 0.0
        for item in self.case.stream():
            at = item.at if item.at is not None else at
            await asyncio.sleep(max(0.0, at - self.clock.elapsed))
            (event_id,) = service.accept([item.event], SOURCE)
            started = await service.handle(event_id, self.clock.now(), dict(item.event))
            self.top_runs += started
            self.executor.main_runs.update(started)
            tasks.update(service.runs)
        await asyncio.gather(*tasks)

    def service(self, params: dict[str, Any]) -> Any:
        """A `Service` over this case's runtime (mock executor, virtual clock), so that events
        go through the real triggers and hooks."""
        from opsdsl.runtime.service import Service

        service = Service(
            self.runtime.state,
            [self.pack.plan],
            params=[params],
            secrets=self.secrets,
            clock=self.clock.now,
            runtime=self.runtime,
        )
        observe = service.engine.observe

        def observe_and_record(event: Any, now: float) -> Any:
            evaluation = observe(event, now)
            self.triggers += [firing.trigger for firing in evaluation.firings]
            return evaluation

        service.engine.observe = observe_and_record
        return service

    # people ------------------------------------------------------------------------------

    async def answer_approvals(self) -> None:
        queues = {key: deque(answers) for key, answers in self.case.approvals.items()}
        store = self.runtime.store
        while True:
            resume: dict[str, str | None] = {}
            for top in self.top_runs:
                if store.run(top).status != S.PAUSED:
                    continue
                for run in (store.run(top), *self._descendants(top)):
                    for step, row in sorted(store.steps(run.id).items()):
                        if row.status != S.AWAITING_APPROVAL:
                            continue
                        key = step if run.id == top else f"{run.playbook}/{step}"
                        queue = queues.get(key)
                        if queue:
                            answer = queue.popleft()
                            await self.give(run.id, step, answer)
                            resume[top] = answer.by or resume.get(top)
            if not resume:
                break
            for top, by in resume.items():
                row = store.run(top)
                row.params = runner.restore_params(self.payload, row.params, self.param_texts, self.secrets)
                await self.runtime.drive(row, self.secrets, "resume", by)
        for key, queue in queues.items():
            for answer in queue:
                self.result.problems.append(
                    CaseProblem(answer.path, f"this answer was never given: `{key}` was not waiting for people then")
                )

    async def give(self, run_id: str, step: str, answer: Answer) -> None:
        if answer.after:
            await asyncio.sleep(answer.after)
        if answer.by is None:
            return
        try:
            texts = {k: as_text(v) for k, v in answer.answers.items()}
            person = None
            if answer.groups:  # a person with groups, as `opsdsl users` would know them
                person = Person(person_name(answer.by), "admin", answer.groups, "rehearsal")
            self.runtime.approve(run_id, step, answer.by, answer.deny, texts, answer.comment, person=person)
        except OpsdslError as error:
            self.result.problems.append(CaseProblem(answer.path, f"the answer was refused: {error.message}"))

    def _descendants(self, run_id: str) -> list[S.RunRow]:
        out = []
        for child in self.runtime.store.children(run_id):
            out += [child, *self._descendants(child.id)]
        return out

    # facts -------------------------------------------------------------------------------

    def observe(self) -> Observed:
        ledger = self.runtime.store.ledger
        hooks, suppressed = [], []
        if self.case.by_event:  # entries about no run, or a run being created: the service's
            for entry in ledger.entries():
                if entry.kind in (TRIGGER_FIRED, HOOK_SUPPRESSED):
                    (hooks if entry.kind == TRIGGER_FIRED else suppressed).append(entry.data["hook"])
        runs = [self._facts(run_id) for run_id in self.top_runs]
        subruns = [self._facts(child.id) for run_id in self.top_runs for child in self._descendants(run_id)]
        return Observed(self.triggers, hooks, suppressed, runs, subruns)

    def _facts(self, run_id: str) -> RunFacts:
        entries = [e.to_dict() for e in self.runtime.store.ledger.entries(run=run_id)]
        return run_facts(entries, self.payload["playbooks"][entries[0]["data"]["playbook"]])


def fresh_state(root: Path, index: int) -> Path:
    """A new state directory under the test file's scratch folder."""
    path = root / f"case-{index}"
    path.mkdir(parents=True)
    return path
