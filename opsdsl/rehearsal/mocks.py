"""The world a rehearsal meets: mocked actions and secrets, nothing real.

`MockExecutor` stands where `InProcessExecutor` stands (the runtime's executor seam): the
scheduler still renders `with:`, asks the policy gate, writes the intent, enforces the
timeout and retries; only the action's effect is replaced. It never starts a process or
opens a connection. To stay faithful it does what the real actions do around the effect:
it checks the rendered `with:` against the action's schema, and it judges mocked outputs
by the action's own success rule (a shell `exit_code` outside `expect_exit`, an HTTP
`status` outside `expect_status` fail the attempt just as they would for real).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.secrets import SecretError, Secrets

from .model import Attempt, Mock, Path_

_RETRYABLE_CLIENT_ERRORS = (408, 425, 429)  # as http.request: other 4xx are final


def neutral_outputs(action: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """What a successful action returns when nothing interesting happened; mocked outputs
    are laid over it, so `steps.X.outputs.status` exists without being written out."""
    if action == "shell":
        return {"exit_code": 0, "stdout": "", "stderr": "", "truncated": False}
    if action == "http.request":
        return {"status": 200, "json": None, "headers": {}, "body": "", "truncated": False}
    if action == "notify":
        return {"status": 200}
    if action == "evidence.collect":
        return {"name": inputs.get("name"), "files": []}
    return {}


@dataclass
class CaseProblem:
    """A mock or an answer that did not fit the run: it fails the case at `path`."""

    path: Path_
    message: str


@dataclass
class Call:
    run_id: str
    key: str  # the mock key the request was looked up under
    step: str
    action: str
    attempt: int
    inputs: dict[str, Any]


@dataclass
class MockExecutor:
    """Answers each attempt from the case's mocks (see the module doc)."""

    mocks: Mapping[str, Mock]
    strict: bool
    case_path: Path_
    main_runs: set[str] = field(default_factory=set)  # runs the case started itself
    playbook_of: Callable[[str], str] = lambda run_id: ""  # run id → its playbook (sub-runs too)
    calls: list[Call] = field(default_factory=list)
    problems: list[CaseProblem] = field(default_factory=list)
    unmocked: list[str] = field(default_factory=list)
    mocked_actions: set[str] = field(default_factory=set)  # actions of the mocked steps

    def knows(self, action: str) -> bool:
        """As the real executor, plus plugin actions a mock stands in for (so rehearsals of
        packs that use plugins run in CI without the plugins installed)."""
        from opsdsl.runtime.actions import EXECUTOR_ACTIONS, plugin_actions

        return action in EXECUTOR_ACTIONS or action in self.mocked_actions or action in plugin_actions()

    def mock_for(self, run_id: str, step: str) -> tuple[str, Mock | None]:
        """The mock of a step: `PLAYBOOK/STEP` always, a bare `STEP` in the case's own runs."""
        playbook = self.playbook_of(run_id)
        qualified = f"{playbook}/{step}"
        if qualified in self.mocks:
            return qualified, self.mocks[qualified]
        if run_id in self.main_runs or not self.main_runs:
            return step, self.mocks.get(step)
        return qualified, None

    async def execute(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        key, mock = self.mock_for(request.run_id, request.step_id)
        self.calls.append(Call(request.run_id, key, request.step_id, request.action, request.attempt, request.inputs))
        _check_inputs(request, context)
        await asyncio.sleep(0)  # one turn of the loop: steps started together overlap in the ledger
        if mock is None:
            if key not in self.unmocked:
                self.unmocked.append(key)
            if self.strict:
                self.problems.append(CaseProblem((*self.case_path, "mocks"), f"step `{key}` ran without a mock"))
                raise ActionFailed(f"no mock for step `{key}` (strict mocks)", retryable=False)
            return neutral_outputs(request.action, request.inputs)
        attempt = mock.attempt(request.attempt)
        if attempt is None:
            path = (*mock.path, "sequence")
            message = f"step `{key}` made attempt {request.attempt}, but its mock's sequence has {len(mock.attempts)}"
            self.problems.append(CaseProblem(path, message))
            raise ActionFailed(f"no mock for attempt {request.attempt} of `{key}`", retryable=False)
        return await _answer(attempt, request)


async def _answer(attempt: Attempt, request: ActionRequest) -> dict[str, Any]:
    if attempt.timeout:
        await asyncio.Event().wait()  # never answers: the scheduler's timeout cancels it
    if attempt.duration:
        await asyncio.sleep(attempt.duration)
    if attempt.error is not None:
        raise ActionFailed(attempt.error, outputs=dict(attempt.outputs or {}), retryable=attempt.retryable)
    outputs = {**neutral_outputs(request.action, request.inputs), **(attempt.outputs or {})}
    _judge(request, outputs)
    return outputs


def _check_inputs(request: ActionRequest, context: ActionContext) -> None:
    """The real action refuses a rendered `with:` its schema does not allow; so do we."""
    from opsdsl.runtime.actions import EXECUTOR_ACTIONS, builtin_schema, check_inputs

    if request.action in EXECUTOR_ACTIONS:
        check_inputs(request.action, builtin_schema(request.action), request.inputs, context.redact)


def _judge(request: ActionRequest, outputs: dict[str, Any]) -> None:
    """The action's own success rule, applied to mocked outputs."""
    inputs = request.inputs
    if request.action == "shell":
        code = outputs.get("exit_code")
        expected = inputs.get("expect_exit") or [0]
        if isinstance(code, int) and code not in expected:
            program = (inputs.get("argv") or ["the command"])[0]
            wanted = " or ".join(str(c) for c in expected)
            raise ActionFailed(f"{program} exited with {code} (expected {wanted})", outputs=outputs)
    elif request.action in ("http.request", "notify"):
        status = outputs.get("status")
        expected = inputs.get("expect_status") if request.action == "http.request" else None
        if isinstance(status, int) and not (status in expected if expected else 200 <= status < 300):
            wanted = " or ".join(map(str, expected)) if expected else "2xx"
            if request.action == "http.request":
                what = f"{inputs.get('method', 'GET')} {inputs.get('url')}"
            else:
                what = f"{inputs.get('kind', 'webhook')} notification"
            final = 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS
            raise ActionFailed(f"{what} returned {status} (expected {wanted})", outputs=outputs, retryable=not final)


class RehearsalSecrets(Secrets):
    """Secrets from the case's `secrets:` only: never the environment or a state directory."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(Path("/nonexistent"))
        self._given = dict(values)

    def _resolve(self, name: str) -> str | None:
        return self._given.get(name)

    def require(self, name: str) -> str:
        try:
            return self[name]
        except KeyError:
            raise SecretError(f"secret `{name}` has no value: give it under the case's `secrets:`") from None
