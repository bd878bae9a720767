"""The checked model: the lint path's twin of `opsdsl.lang.model`, as plain frozen records.

The checks read a pack by attribute (`step.with_`, `playbook.finally_`, `pack.kind`), so
they run on either model. Lint builds this one: importing pydantic and building its model
classes costs more than linting a small pack, and a schema-valid document needs none of
pydantic's checking. The classes are plain slotted records, not `@dataclass`es: making
thirteen dataclasses costs more start-up time than the rest of this module's work. The pydantic model stays the model of the Python API, the compiler
and the plans. Both hold the same values (durations in milliseconds, defaults filled in,
lists as tuples where the pydantic model says tuple); tests compare them on every pack
and fixture, so neither can drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from opsdsl.lang.durations import parse_duration


class _Record:
    """A frozen record: one slot per annotated field, every field given to `__init__`
    (the `of` constructors fill in the defaults), equal when of one type with equal fields."""

    __slots__ = ()

    def __init__(self, **fields: Any) -> None:
        for name in self.__slots__:
            object.__setattr__(self, name, fields.pop(name))
        if fields:
            raise TypeError(f"{type(self).__name__} has no field {next(iter(fields))!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, n) for n in self.__slots__)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__slots__)})"

    def __reduce__(self) -> tuple:
        # pickle and copy rebuild through __init__ (the default would setattr each slot);
        # lint's worker processes exchange policy packs' policies.
        return (_rebuild, (type(self), {n: getattr(self, n) for n in self.__slots__}))

    # Fields dumped under another name (pydantic's aliases), and fields left out of a dump
    # when they hold the given value (pydantic's `exclude_if`): see `dump`.
    _aliases: Mapping[str, str] = MappingProxyType({})
    _omit_when: Mapping[str, Any] = MappingProxyType({})

    def dump(self, deep: bool = True) -> dict[str, Any]:
        """The record as JSON data: what `opsdsl.lang.model`'s `model_dump(mode="json",
        by_alias=True)` gives for the same pack (tuples as lists, a non-finite float as
        None), so model digests and plans come out byte-identical from either model.

        Not `deep`: the pack's own values (`with:`, defaults, enums) are passed through as
        they are, not copied: the same JSON text whenever they hold no non-finite float
        (which the compiler checks, and then dumps deep)."""
        out = {}
        convert = _json if deep else _shallow
        fields = type(self).__dict__.get("_dumped_fields") or type(self)._dump_plan()
        for name, key, omitted in fields:
            value = getattr(self, name)
            if value is omitted:
                continue
            kind = type(value)
            # Plain scalars (most fields) come out as they are either way, without a call.
            out[key] = value if kind is str or kind is int or kind is bool or value is None else convert(value)
        return out

    @classmethod
    def _dump_plan(cls) -> tuple[tuple[str, str, Any], ...]:
        """Per field, in slot order: its name, its key in a dump, and the value that leaves it
        out (`_omit_when`; a fresh object, which no field holds, when none does). Worked out
        once per class."""
        fields = tuple(
            (name, cls._aliases.get(name, name), cls._omit_when[name] if name in cls._omit_when else object())
            for name in cls.__slots__
        )
        cls._dumped_fields = fields
        return fields


def _shallow(value: Any) -> Any:
    """`_json`, except for the pack's own data (dicts and lists of plain values, which
    hold no record), passed through as they are."""
    kind = type(value)
    if kind is tuple:
        return [_shallow(v) for v in value]
    if kind is dict:
        if value and isinstance(next(iter(value.values())), _Record):  # params, playbooks, ...
            return {k: v.dump(False) for k, v in value.items()}
        return value
    if isinstance(value, _Record):
        return value.dump(False)
    return value


def _json(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {k: _json(v) for k, v in value.items()}
    if kind is tuple or kind is list:
        return [_json(v) for v in value]
    if kind is float:
        return value if value - value == 0 else None  # inf and nan: null, as pydantic's JSON mode
    if isinstance(value, _Record):
        return value.dump()
    return value


def _rebuild(cls: type[_Record], fields: dict[str, Any]) -> _Record:
    return cls(**fields)


def _int(value: Any) -> Any:
    """pydantic's lax `int`: an integral float becomes an int."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _millis(value: Any) -> Any:
    return _int(parse_duration(value) if isinstance(value, str) else value)


def _opt(value: Any, convert: Any) -> Any:
    return None if value is None else convert(value)


def _tuple(value: Any) -> Any:
    return None if value is None else tuple(value)


def _required(data: dict) -> bool:
    """`required` as `opsdsl.lang.model._Defaulted` marks it: whether no `default:` was written."""
    return data.get("required", "default" not in data)


class Metadata(_Record):
    name: str
    version: str
    owner: str
    description: str | None
    labels: dict[str, str]
    __slots__ = tuple(__annotations__)

    @classmethod
    def of(cls, d: dict) -> Metadata:
        return cls(
            name=d["name"],
            version=d["version"],
            owner=d["owner"],
            description=d.get("description"),
            labels=dict(d.get("labels") or {}),
        )


class Param(_Record):
    type: str
    default: Any
    required: bool
    description: str | None
    secret: bool
    enum: tuple[Any, ...] | None
    __slots__ = tuple(__annotations__)

    @classmethod
    def of(cls, d: dict) -> Param:
        return cls(
            type=d["type"],
            default=d.get("default"),
            required=_required(d),
            description=d.get("description"),
            secret=d.get("secret", False),
            enum=_tuple(d.get("enum")),
        )


class Threshold(_Record):
    count: int
    within: int
    per: str | None
    __slots__ = tuple(__annotations__)
    _omit_when = MappingProxyType({"per": None})

    @classmethod
    def of(cls, d: dict) -> Threshold:
        return cls(count=_int(d["count"]), within=_millis(d["within"]), per=d.get("per"))


class Trigger(_Record):
    on: str
    when: str | None
    threshold: Threshold | None
    for_: int | None
    description: str | None
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"for_": "for"})

    @classmethod
    def of(cls, d: dict) -> Trigger:
        return cls(
            on=d["on"],
            when=d.get("when"),
            threshold=_opt(d.get("threshold"), Threshold.of),
            for_=_opt(d.get("for"), _millis),
            description=d.get("description"),
        )


class Hook(_Record):
    trigger: str
    run: str
    cooldown: int | None
    dedupe: str | None
    max_concurrent: int | None
    escalate: str | None
    description: str | None
    __slots__ = tuple(__annotations__)

    @classmethod
    def of(cls, d: dict) -> Hook:
        return cls(
            trigger=d["trigger"],
            run=d["run"],
            cooldown=_opt(d.get("cooldown"), _millis),
            dedupe=d.get("dedupe"),
            max_concurrent=_opt(d.get("max_concurrent"), _int),
            escalate=d.get("escalate"),
            description=d.get("description"),
        )


class Retry(_Record):
    attempts: int
    backoff: str
    initial: int
    max: int
    jitter: bool
    __slots__ = tuple(__annotations__)

    @classmethod
    def of(cls, d: dict) -> Retry:
        return cls(
            attempts=_int(d["attempts"]),
            backoff=d.get("backoff", "exponential"),
            initial=_millis(d.get("initial", 1000)),
            max=_millis(d.get("max", 60_000)),
            jitter=d.get("jitter", True),
        )


class Compensation(_Record):
    action: str
    with_: dict[str, Any]
    timeout: int | None
    retry: Retry | None
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"with_": "with"})

    @classmethod
    def of(cls, d: dict) -> Compensation:
        return cls(
            action=d["action"],
            with_=dict(d.get("with") or {}),
            timeout=_opt(d.get("timeout"), _millis),
            retry=_opt(d.get("retry"), Retry.of),
        )


class Step(_Record):
    id: str
    action: str
    with_: dict[str, Any]
    name: str | None
    description: str | None
    needs: tuple[str, ...] | None
    when: str | None
    timeout: int | None
    retry: Retry | None
    risk: str
    compensate: Compensation | None
    continue_on_error: bool
    idempotent: bool | None
    runner: str | None
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"with_": "with"})
    _omit_when = MappingProxyType({"runner": None})

    @classmethod
    def of(cls, d: dict) -> Step:
        return cls(
            id=d["id"],
            action=d["action"],
            with_=dict(d.get("with") or {}),
            name=d.get("name"),
            description=d.get("description"),
            needs=_tuple(d.get("needs")),
            when=d.get("when"),
            timeout=_opt(d.get("timeout"), _millis),
            retry=_opt(d.get("retry"), Retry.of),
            risk=d.get("risk", "low"),
            compensate=_opt(d.get("compensate"), Compensation.of),
            continue_on_error=d.get("continue_on_error", False),
            idempotent=d.get("idempotent"),
            runner=d.get("runner"),
        )


class Input(_Record):
    type: str
    default: Any
    required: bool
    from_: str | None
    description: str | None
    pattern: str | None
    enum: tuple[Any, ...] | None
    max_length: int | None
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"from_": "from"})

    @classmethod
    def of(cls, d: dict) -> Input:
        return cls(
            type=d["type"],
            default=d.get("default"),
            required=_required(d),
            from_=d.get("from"),
            description=d.get("description"),
            pattern=d.get("pattern"),
            enum=_tuple(d.get("enum")),
            max_length=_opt(d.get("max_length"), _int),
        )


class Playbook(_Record):
    severity: str
    description: str | None
    inputs: dict[str, Input]
    timeout: int | None
    steps: tuple[Step, ...]
    finally_: tuple[Step, ...]
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"finally_": "finally"})

    @classmethod
    def of(cls, d: dict) -> Playbook:
        return cls(
            severity=d["severity"],
            description=d.get("description"),
            inputs={k: Input.of(v) for k, v in (d.get("inputs") or {}).items()},
            timeout=_opt(d.get("timeout"), _millis),
            steps=tuple(Step.of(s) for s in d["steps"]),
            finally_=tuple(Step.of(s) for s in d.get("finally") or ()),
        )


class Policy(_Record):
    id: str
    when: str
    effect: str
    message: str
    description: str | None
    approvals: int
    distinct_from_requester: bool
    __slots__ = tuple(__annotations__)
    _omit_when = MappingProxyType({"distinct_from_requester": False})

    @classmethod
    def of(cls, d: dict) -> Policy:
        return cls(
            id=d["id"],
            when=d["when"],
            effect=d["effect"],
            message=d["message"],
            description=d.get("description"),
            approvals=_int(d.get("approvals", 1)),
            distinct_from_requester=d.get("distinct_from_requester", False),
        )


class Pack(_Record):
    api_version: str
    kind: str
    metadata: Metadata
    params: dict[str, Param]
    triggers: dict[str, Trigger]
    hooks: dict[str, Hook]
    playbooks: dict[str, Playbook]
    policies: tuple[Policy, ...]
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"api_version": "apiVersion"})

    @classmethod
    def of(cls, d: dict) -> Pack:
        return cls(
            api_version=d["apiVersion"],
            kind=d["kind"],
            metadata=Metadata.of(d["metadata"]),
            params={k: Param.of(v) for k, v in (d.get("params") or {}).items()},
            triggers={k: Trigger.of(v) for k, v in (d.get("triggers") or {}).items()},
            hooks={k: Hook.of(v) for k, v in (d.get("hooks") or {}).items()},
            playbooks={k: Playbook.of(v) for k, v in d["playbooks"].items()},
            policies=tuple(Policy.of(p) for p in d.get("policies") or ()),
        )


class PolicyPack(_Record):
    api_version: str
    kind: str
    metadata: Metadata
    policies: tuple[Policy, ...]
    __slots__ = tuple(__annotations__)
    _aliases = MappingProxyType({"api_version": "apiVersion"})

    @classmethod
    def of(cls, d: dict) -> PolicyPack:
        return cls(
            api_version=d["apiVersion"],
            kind=d["kind"],
            metadata=Metadata.of(d["metadata"]),
            policies=tuple(Policy.of(p) for p in d["policies"]),
        )


AnyPack = Pack | PolicyPack


def build_checked_model(data: dict) -> AnyPack:
    """The checked model of a schema-valid document (what `opsdsl.lang.model.build_model`
    builds, without pydantic)."""
    if data.get("kind") == "PolicyPack":
        return PolicyPack.of(data)
    return Pack.of(data)
