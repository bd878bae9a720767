"""The interface every action implements, built-in or plugin.

An action is an object with a `name` and an async `run(request, context)` that returns the
step's outputs (a JSON-serialisable dict) or raises `ActionFailed`. Requests and results
are plain data so that a future remote executor can ship them to a runner pool unchanged.

Timeouts and retries are the scheduler's job, not the action's: `run` is cancelled
(asyncio.CancelledError) when the attempt's time is up or the run is stopped, and must
leave nothing running behind it (kill its subprocess, close its connection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class ActionRequest:
    """One attempt of one step, as the executor hands it to an action."""

    run_id: str
    step_id: str  # a node id of the plan; a compensation is "STEP.compensate"
    action: str
    inputs: dict[str, Any]  # the rendered `with:` (secrets already substituted)
    attempt: int  # 1-based
    idempotency_key: str  # "RUN_ID:STEP_ID", the same for every attempt
    timeout: float | None  # seconds for this attempt (the scheduler enforces it)
    severity: str = "SEV-4"  # the playbook's severity (notify's default severity)
    playbook: str = ""
    pack: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ActionContext:
    """What the runtime lends an action: where evidence goes, and how to hide secrets.

    `redact` replaces every known secret value in a string with `***`; actions that write
    files (evidence) must pass the bytes through `redact_bytes` first.

    `state_dir` is the runtime's state directory, which no action may read from (its keys,
    database and secrets); None: `evidence.collect` infers it from `evidence_dir`.
    `evidence_roots` are the folders the operator lets `evidence.collect` copy files from;
    None: the `OPSDSL_EVIDENCE_ROOTS` environment variable says (unset: no folder). Both
    come from whoever runs the runtime, never from a pack.
    """

    evidence_dir: Path
    redact: Callable[[str], str] = lambda text: text
    redact_bytes: Callable[[bytes], bytes] = lambda data: data
    log: Callable[[str], None] = lambda message: None
    extra: dict[str, Any] = field(default_factory=dict)
    state_dir: Path | None = None
    evidence_roots: tuple[Path, ...] | None = None


class ActionFailed(Exception):
    """The action ran and did not succeed (bad status, exit code, refused input).

    `outputs` are kept with the failure (e.g. the exit code and stderr of a command), and
    `retryable=False` tells the scheduler not to try again (a 4xx other than 408/425/429,
    an input the action refuses).
    """

    def __init__(self, message: str, outputs: dict[str, Any] | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.outputs = outputs or {}
        self.retryable = retryable

    def __reduce__(self):
        return (type(self), (self.message, self.outputs, self.retryable))


class Action(Protocol):
    name: str

    async def run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]: ...
