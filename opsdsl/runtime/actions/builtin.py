"""What the built-in executor actions share: a failure never carries a secret out."""

from __future__ import annotations

from typing import Any

from opsdsl.runtime.actions import redact_failure
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest


class BuiltinAction:
    """Subclasses write `_run`; `run` redacts the message and outputs of any ActionFailed,
    since both may quote an input or an answer that holds a secret."""

    name: str

    async def run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        try:
            return await self._run(request, context)
        except ActionFailed as failure:
            raise redact_failure(failure, context.redact) from failure

    async def _run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        raise NotImplementedError
