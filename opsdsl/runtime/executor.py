"""The seam between the scheduler and the actions.

The scheduler hands an `ActionRequest` (plain data) to an `Executor` and awaits the
outputs. `InProcessExecutor` runs the action in this process; a remote executor (runner
pools on a queue, one per region) would ship the same request and await the same result,
without the scheduler changing.
"""

from __future__ import annotations

from typing import Any, Protocol

from opsdsl.runtime.actions.base import ActionContext, ActionRequest


class Executor(Protocol):
    async def execute(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        """The action's outputs; raises ActionFailed, or CancelledError when cancelled."""
        ...

    def knows(self, action: str) -> bool:
        """Whether this executor can run `action` (built in or an installed plugin)."""
        ...


class InProcessExecutor:
    """Runs actions as coroutines of this event loop."""

    def __init__(self) -> None:
        self._actions: dict[str, Any] = {}

    def knows(self, action: str) -> bool:
        from opsdsl.runtime.actions import EXECUTOR_ACTIONS, plugin_actions

        return action in EXECUTOR_ACTIONS or action in plugin_actions()

    async def execute(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        action = self._actions.get(request.action)
        if action is None:
            from opsdsl.runtime.actions import load_action

            action = self._actions[request.action] = load_action(request.action)
        return await action.run(request, context)
