"""Where expressions live in a pack: every `when:`, `dedupe:`, `from:`, `assert` and `${{ }}`.

Checks walk these sites; the compiler will compile the same ones, so the two never
disagree about what is an expression and which names it may use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # either model: pydantic's (compile) or the checked one (lint)
    from opsdsl.lang.model import Pack, Playbook, PolicyPack, Step


Path_ = tuple[str | int, ...]

TRIGGER, HOOK, INPUT, STEP, POLICY = "trigger", "hook", "input", "step", "policy"


@dataclass(frozen=True)
class Site:
    """One expression (`template=False`) or `${{ }}` template string at `path`."""

    path: Path_
    text: str
    context: str
    template: bool = False
    playbook: str | None = None
    step: str | None = None
    in_finally: bool = False
    compensation: bool = False
    with_path: Path_ = ()  # the path inside the action's `with:` for templates


def iter_sites(pack: Pack | PolicyPack) -> Iterator[Site]:
    for i, policy in enumerate(pack.policies):
        yield Site(("policies", i, "when"), policy.when, POLICY)
    if pack.kind == "PolicyPack":
        return
    for name, trigger in pack.triggers.items():
        if trigger.when is not None:
            yield Site(("triggers", name, "when"), trigger.when, TRIGGER)
        if trigger.threshold is not None and trigger.threshold.per is not None:
            yield Site(("triggers", name, "threshold", "per"), trigger.threshold.per, TRIGGER)
    for name, hook in pack.hooks.items():
        if hook.dedupe is not None:
            yield Site(("hooks", name, "dedupe"), hook.dedupe, HOOK)
    for name, playbook in pack.playbooks.items():
        yield from _playbook_sites(name, playbook)


def _playbook_sites(name: str, playbook: Playbook) -> Iterator[Site]:
    base: Path_ = ("playbooks", name)
    for input_name, spec in playbook.inputs.items():
        if spec.from_ is not None:
            yield Site((*base, "inputs", input_name, "from"), spec.from_, INPUT, playbook=name)
    for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
        for i, step in enumerate(steps):
            yield from _step_sites((*base, section, i), step, name, section == "finally")


def _step_sites(path: Path_, step: Step, playbook: str, in_finally: bool) -> Iterator[Site]:
    common = {"playbook": playbook, "step": step.id, "in_finally": in_finally}
    if step.when is not None:
        yield Site((*path, "when"), step.when, STEP, **common)
    if step.action == "assert" and isinstance(step.with_.get("that"), str):
        yield Site((*path, "with", "that"), step.with_["that"], STEP, **common)
    yield from _templates((*path, "with"), step.with_, common, False, ("that",) if step.action == "assert" else ())
    if step.compensate is not None:
        yield from _templates((*path, "compensate", "with"), step.compensate.with_, common, True, ())


def _templates(
    path: Path_, value: Any, common: dict, compensation: bool, skip: tuple, inner: Path_ = ()
) -> Iterator[Site]:
    if isinstance(value, str):
        if "${{" in value:
            yield Site(path, value, STEP, template=True, compensation=compensation, with_path=inner, **common)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not inner and key in skip:
                continue
            yield from _templates((*path, key), item, common, compensation, skip, (*inner, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _templates((*path, i), item, common, compensation, skip, (*inner, i))
