"""Test files as frozen values: built from schema-valid data, each part knowing its path.

A path is the tuple the loaded data uses (`("cases", 0, "mocks", "inspect")`), so any
part can be located in the test file (`Document.span` / `key_span`) when it fails.
Durations are converted to seconds here; everything else is kept as written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl.lang.durations import parse_duration
from opsdsl.lang.source import Document

Path_ = tuple[str | int, ...]
COMPENSATE = ".compensate"


@dataclass(frozen=True)
class Attempt:
    """One mocked attempt: outputs, an error, or a timeout, after `duration` seconds."""

    path: Path_
    outputs: dict[str, Any] | None = None
    error: str | None = None
    retryable: bool = True
    timeout: bool = False
    duration: float = 0.0


@dataclass(frozen=True)
class Mock:
    """A step's mocked results: one attempt for every try, or a sequence, one per try."""

    key: str
    path: Path_
    attempts: tuple[Attempt, ...]
    sequence: bool  # False: attempts[0] answers every attempt

    def attempt(self, number: int) -> Attempt | None:
        """The result of attempt `number` (1-based); None past the end of a sequence."""
        if not self.sequence:
            return self.attempts[0]
        return self.attempts[number - 1] if number <= len(self.attempts) else None


@dataclass(frozen=True)
class Answer:
    """One answer to a waiting step; `by` None means "nobody answers for `after`"."""

    path: Path_
    by: str | None
    deny: bool = False
    answers: dict[str, Any] = field(default_factory=dict)
    comment: str | None = None
    after: float = 0.0
    groups: tuple[str, ...] = ()  # the answering person's, for `approvers: [group:NAME]`


@dataclass(frozen=True)
class TimedEvent:
    path: Path_
    at: float | None  # seconds from the case's start; None: with the previous event
    event: dict[str, Any]


@dataclass(frozen=True)
class Case:
    """One rehearsal, as written."""

    index: int
    name: str
    playbook: str | None
    event: dict[str, Any] | None
    events: tuple[TimedEvent, ...]
    params: dict[str, Any]
    inputs: dict[str, Any]
    secrets: dict[str, str]
    clock: str | None
    strict_mocks: bool | None
    mocks: dict[str, Mock]
    approvals: dict[str, tuple[Answer, ...]]
    expect: dict[str, Any]

    @property
    def path(self) -> Path_:
        return ("cases", self.index)

    @property
    def by_event(self) -> bool:
        """Whether the case goes through triggers and hooks (no `playbook:`)."""
        return self.playbook is None

    def stream(self) -> tuple[TimedEvent, ...]:
        """The events sent through the triggers: `events`, or `event` at the start."""
        if self.events:
            return self.events
        if self.event is not None and self.playbook is None:
            return (TimedEvent((*self.path, "event"), 0.0, self.event),)
        return ()


@dataclass(frozen=True)
class TestFile:
    """A loaded, schema-valid test file."""

    __test__ = False  # not a pytest class, whatever its name

    path: Path
    document: Document
    pack: Path
    policies: tuple[Path, ...] | None  # None: the policy packs beside the pack
    strict_mocks: bool
    cases: tuple[Case, ...]

    def span(self, path: Path_):
        return self.document.span(path)

    def key_span(self, path: Path_):
        return self.document.key_span(path)


def _normal(path: Path) -> Path:
    """`tests/failing/../restart/x.yaml` → `tests/restart/x.yaml`, as people write it."""
    return Path(os.path.normpath(path))


def seconds(text: str) -> float:
    return parse_duration(text) / 1000


def build_test_file(path: Path, document: Document, skip: set[int] = frozenset()) -> TestFile:
    """The TestFile of a document that passed the schema (cases in `skip` did not: left out)."""
    data = document.data
    here = path.parent
    policies = data.get("policies")
    return TestFile(
        path=path,
        document=document,
        pack=_normal(here / data["pack"]),
        policies=None if policies is None else tuple(_normal(here / p) for p in policies),
        strict_mocks=bool(data.get("strict_mocks", False)),
        cases=tuple(_case(i, c) for i, c in enumerate(data["cases"]) if i not in skip),
    )


def _case(index: int, data: dict[str, Any]) -> Case:
    base: Path_ = ("cases", index)
    return Case(
        index=index,
        name=data["name"],
        playbook=data.get("playbook"),
        event=data.get("event"),
        events=tuple(
            TimedEvent((*base, "events", i), seconds(e["at"]) if "at" in e else None, e["event"])
            for i, e in enumerate(data.get("events") or ())
        ),
        params=dict(data.get("params") or {}),
        inputs=dict(data.get("inputs") or {}),
        secrets=dict(data.get("secrets") or {}),
        clock=data.get("clock"),
        strict_mocks=data.get("strict_mocks"),
        mocks={key: _mock(key, (*base, "mocks", key), spec) for key, spec in (data.get("mocks") or {}).items()},
        approvals={
            key: tuple(_answer((*base, "approvals", key, i), a) for i, a in enumerate(items))
            for key, items in (data.get("approvals") or {}).items()
        },
        expect=dict(data.get("expect") or {}),
    )


def _attempt(path: Path_, spec: dict[str, Any]) -> Attempt:
    return Attempt(
        path=path,
        outputs=spec.get("outputs"),
        error=spec.get("error"),
        retryable=spec.get("retryable", True),
        timeout=bool(spec.get("timeout", False)),
        duration=seconds(spec["duration"]) if "duration" in spec else 0.0,
    )


def _mock(key: str, path: Path_, spec: dict[str, Any]) -> Mock:
    if "sequence" in spec:
        attempts = tuple(_attempt((*path, "sequence", i), s) for i, s in enumerate(spec["sequence"]))
        return Mock(key, path, attempts, sequence=True)
    return Mock(key, path, (_attempt(path, spec),), sequence=False)


def _answer(path: Path_, spec: dict[str, Any]) -> Answer:
    return Answer(
        path=path,
        by=spec.get("by"),
        deny=spec.get("decision") == "deny",
        answers=dict(spec.get("answers") or {}),
        comment=spec.get("comment"),
        after=seconds(spec["after"]) if "after" in spec else 0.0,
        groups=tuple(spec.get("groups") or ()),
    )


def split_key(key: str) -> tuple[str | None, str]:
    """`playbook/step` → ("playbook", "step"); `step` → (None, "step")."""
    playbook, sep, step = key.rpartition("/")
    return (playbook if sep else None), step
