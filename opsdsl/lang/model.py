"""Model stage: typed, immutable pydantic models of a schema-valid pack.

Models hold meaning only (durations in milliseconds, defaults filled in), never
positions: the loader's `Document` keeps those, so reformatting a pack or converting it
between forms leaves the model, and its digest, unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from opsdsl.lang.durations import parse_duration

Millis = Annotated[int, BeforeValidator(lambda v: parse_duration(v) if isinstance(v, str) else v)]
ValueType = Literal["string", "number", "integer", "boolean", "list", "map", "duration"]
Severity = Literal["SEV-1", "SEV-2", "SEV-3", "SEV-4"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Metadata(Frozen):
    name: str
    version: str
    owner: str
    description: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class _Defaulted(Frozen):
    """A value with an optional `default:`; `required` says whether one was written, so
    `default: null` and no default differ in the model (and its digest) as they do in
    meaning."""

    default: Any = None
    required: bool = False

    @model_validator(mode="before")
    @classmethod
    def _mark_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and "required" not in data:
            return {**data, "required": "default" not in data}
        return data


class Param(_Defaulted):
    type: ValueType
    description: str | None = None
    secret: bool = False
    enum: tuple[Any, ...] | None = None


class Threshold(Frozen):
    count: int
    within: Millis
    # Count per series: an expression over `event` and `params` (say `event.labels.cluster`);
    # each value gets its own window. Left out of dumps when absent, so the plans and model
    # digests of packs without it do not change.
    per: str | None = Field(default=None, exclude_if=lambda value: value is None)


class Trigger(Frozen):
    on: Literal["alert", "metric", "log", "event"]
    when: str | None = None
    threshold: Threshold | None = None
    for_: Millis | None = Field(default=None, alias="for")
    description: str | None = None


class Hook(Frozen):
    trigger: str
    run: str
    cooldown: Millis | None = None
    dedupe: str | None = None
    max_concurrent: int | None = None
    escalate: str | None = None
    description: str | None = None


class Retry(Frozen):
    attempts: int
    backoff: Literal["fixed", "exponential"] = "exponential"
    initial: Millis = 1000
    max: Millis = 60_000
    jitter: bool = True


class Compensation(Frozen):
    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    timeout: Millis | None = None
    retry: Retry | None = None


class Step(Frozen):
    id: str
    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    name: str | None = None
    description: str | None = None
    needs: tuple[str, ...] | None = None
    when: str | None = None
    timeout: Millis | None = None
    retry: Retry | None = None
    risk: Literal["low", "medium", "high"] = "low"
    compensate: Compensation | None = None
    continue_on_error: bool = False
    idempotent: bool | None = None
    # The runner pool that executes the step's side effect; None: the worker that drives
    # the run. Left out of dumps when absent, so the plans and model digests of packs
    # without it do not change.
    runner: str | None = Field(default=None, exclude_if=lambda value: value is None)


class Input(_Defaulted):
    type: ValueType
    from_: str | None = Field(default=None, alias="from")
    description: str | None = None
    pattern: str | None = None  # RE2, matched against the whole value
    enum: tuple[Any, ...] | None = None
    max_length: int | None = None


class Playbook(Frozen):
    severity: Severity
    description: str | None = None
    inputs: dict[str, Input] = Field(default_factory=dict)
    timeout: Millis | None = None
    steps: tuple[Step, ...]
    finally_: tuple[Step, ...] = Field(default=(), alias="finally")


class Policy(Frozen):
    id: str
    when: str
    effect: Literal["allow", "deny", "require_approval"]
    message: str
    description: str | None = None
    approvals: int = 1
    # Left out of dumps when false, so the plans and model digests of packs without it do not change.
    distinct_from_requester: bool = Field(default=False, exclude_if=lambda value: value is False)


class Pack(Frozen):
    api_version: Literal["opsdsl/v1"] = Field(alias="apiVersion")
    kind: Literal["Pack"]
    metadata: Metadata
    params: dict[str, Param] = Field(default_factory=dict)
    triggers: dict[str, Trigger] = Field(default_factory=dict)
    hooks: dict[str, Hook] = Field(default_factory=dict)
    playbooks: dict[str, Playbook]
    policies: tuple[Policy, ...] = ()


class PolicyPack(Frozen):
    api_version: Literal["opsdsl/v1"] = Field(alias="apiVersion")
    kind: Literal["PolicyPack"]
    metadata: Metadata
    policies: tuple[Policy, ...]


AnyPack = Pack | PolicyPack


def build_model(data: dict) -> AnyPack:
    """The model of a schema-valid document (pydantic re-checks types; it cannot fail on
    schema-valid input, which tests assert)."""
    if data.get("kind") == "PolicyPack":
        return PolicyPack.model_validate(data)
    return Pack.model_validate(data)
