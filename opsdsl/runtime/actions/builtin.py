"""What the built-in executor actions share: nothing they return or raise carries a secret."""

from __future__ import annotations

from typing import Any

from opsdsl.runtime.actions import redact_failure, redact_outputs
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest


class BuiltinAction:
    """Subclasses write `_run`; `run` redacts its outputs, and the message and outputs of
    any ActionFailed, since all of them may quote an input or an answer that holds a secret.

    The redacted failure is raised on its own, not chained to the original: a traceback
    printed later (a debug log) would otherwise show the unredacted message too.
    """

    name: str

    async def run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        try:
            outputs = await self._run(request, context)
        except ActionFailed as failure:
            redacted = redact_failure(failure, context.redact)
        else:
            return redact_outputs(outputs, context.redact)
        raise redacted

    async def _run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        raise NotImplementedError
