"""What a run starts with: params and inputs converted to their declared types, and the
playbooks an event selects through the pack's triggers and hooks."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opsdsl.errors import EvalError, UsageError
from opsdsl.lang.taint import input_problem
from opsdsl.runtime.plans import RunRefused
from opsdsl.runtime.secrets import Secrets


@dataclass
class Selection:
    """One playbook to run, and why."""

    playbook: str
    trigger: str | None = None
    hook: str | None = None
    escalate: str | None = None
    dedupe_key: str | None = None
    event_id: int | None = None


def coerce(text: str, kind: str, what: str) -> Any:
    """A command-line value converted to its declared type; a value the ledger could not
    record (NaN, 1e400, an integer beyond ±(2**53 - 1), text that is not UTF-8) is refused."""
    from opsdsl.lang.untrusted import MAX_DEPTH, json_problem

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{what}: the value is not valid UTF-8 text") from None
    value: Any = None
    try:
        if kind == "string":
            return text
        if kind == "integer":
            value = int(text)
        elif kind == "number":
            value = float(text)
            if value.is_integer() and "." not in text and "e" not in text.lower():
                value = int(value)
        elif kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        elif kind == "duration":
            from opsdsl.lang.durations import parse_duration

            value = parse_duration(text) / 1000
        elif kind in ("list", "map"):
            value = json.loads(text)
            if not isinstance(value, list if kind == "list" else dict):
                raise ValueError
        else:
            raise ValueError
    except RecursionError:
        raise UsageError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, OverflowError):
        article = "an" if kind[0] in "aeiou" else "a"
        write_json = " (write JSON)" if kind in ("list", "map") else ""
        raise UsageError(f"{what}: {_shown(text)} is not {article} {kind}{write_json}") from None
    problem = json_problem(value)
    if problem is not None:
        raise UsageError(f"{what}: {_shown(text)}: {problem}")
    return value


def _shown(text: str, width: int = 40) -> str:
    """`text` quoted for a message, cut short: a value may be thousands of characters."""
    return repr(text if len(text) <= width else text[:width] + "…")


def secret_hint(name: str) -> str:
    """Where a secret param's value may come from, for messages: never `--param`, which `ps` shows."""
    return f"--secret {name}=env:VARIABLE or --secret {name}=file:PATH"


def refuse_secret_params(plan: dict[str, Any], given: Mapping[str, str]) -> None:
    """A secret param given as `--param` is refused: the command line is visible to every
    user of the machine (`ps`, /proc/PID/cmdline) and kept in shell histories."""
    declared = plan.get("params") or {}
    for name in given:
        if (declared.get(name) or {}).get("secret"):
            raise UsageError(
                f"--param {name}: `{name}` is a secret param, and a command line is visible to every user "
                f"of the machine (ps); pass {secret_hint(name)} instead"
            )


def _declared_value(value: Any, kind: str) -> Any:
    if kind == "duration" and isinstance(value, str):
        from opsdsl.lang.durations import parse_duration

        return parse_duration(value) / 1000
    return value


def resolve_params(plan: dict[str, Any], given: Mapping[str, str], secrets: Secrets) -> dict[str, Any]:
    declared = plan.get("params") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"--param {unknown[0]}: the pack declares no such param (it has: {', '.join(declared)})")
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        if name in given:
            value = coerce(given[name], spec["type"], f"--param {name}")
        elif spec.get("secret") and name in secrets:
            value = secrets[name]
        elif spec.get("default") is not None:
            value = _declared_value(spec["default"], spec["type"])
        elif spec.get("secret"):
            raise RunRefused(f"secret param `{name}` has no value: pass {secret_hint(name)}")
        else:
            raise RunRefused(f"param `{name}` is required: pass --param {name}=VALUE")
        if spec.get("enum") and value not in spec["enum"]:
            raise UsageError(f"--param {name}: {value!r} is not one of {spec['enum']}")
        if spec.get("secret"):
            secrets.redactor.add(str(value))
        values[name] = value
    return values


def restore_params(
    plan: dict[str, Any], stored: dict[str, Any], given: Mapping[str, str], secrets: Secrets
) -> dict[str, Any]:
    """A resumed run's params: stored values, with secret ones looked up again (never stored)."""
    values = dict(stored)
    for name, spec in (plan.get("params") or {}).items():
        if not spec.get("secret"):
            continue
        if name in given:
            values[name] = coerce(given[name], spec["type"], f"--param {name}")
        elif name in secrets:
            values[name] = secrets[name]
        elif spec.get("default") is not None:
            values[name] = spec["default"]
        else:
            raise RunRefused(f"secret param `{name}` is not stored with the run: pass {secret_hint(name)}")
        secrets.redactor.add(str(values[name]))
    return values


def resolve_inputs(
    playbook: dict[str, Any], name: str, event: dict[str, Any], params: dict[str, Any], given: Mapping[str, str]
) -> dict[str, Any]:
    from opsdsl.lang.expr import compile_expr, parse

    declared = playbook.get("inputs") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise UsageError(f"--input {unknown[0]}: playbook `{name}` has no such input")
    values: dict[str, Any] = {}
    for input_name, spec in declared.items():
        if input_name in given:
            values[input_name] = coerce(given[input_name], spec["type"], f"--input {input_name}")
            continue
        problem = None
        if spec.get("from") and event:
            try:
                values[input_name] = compile_expr(parse(spec["from"]))({"event": event, "params": params})
                continue
            except EvalError as error:
                problem = error.message
        if spec.get("default") is not None:
            values[input_name] = _declared_value(spec["default"], spec["type"])
        else:
            because = f" (`{spec['from']}`: {problem})" if problem else ""
            raise RunRefused(
                f"input `{input_name}` of playbook `{name}` has no value{because}: "
                f"pass --input {input_name}=VALUE or an --event that carries it"
            )
    for input_name, value in values.items():
        problem = input_problem(declared[input_name], value)
        if problem is not None:
            raise RunRefused(f"input `{input_name}` of playbook `{name}` refused: its value {problem}")
    return values


def select_playbooks(
    plan: dict[str, Any], event: dict[str, Any] | None, playbook: str | None, params: dict[str, Any]
) -> list[Selection]:
    """What to run: the named playbook, else the hooks whose trigger matches the event, else the only playbook."""
    from opsdsl.lang.expr import compile_expr, parse

    playbooks = plan["playbooks"]
    if playbook is not None:
        if playbook not in playbooks:
            raise UsageError(f"--playbook {playbook}: the pack has no such playbook (it has: {', '.join(playbooks)})")
        return [Selection(playbook)]
    if event is None:
        if len(playbooks) != 1:
            raise UsageError(
                f"the pack has {len(playbooks)} playbooks; choose one with --playbook ({', '.join(playbooks)})"
            )
        return [Selection(next(iter(playbooks)))]
    from opsdsl.runtime.triggers import event_kind

    kind = event_kind(event)
    activation = {"event": event, "params": params, "now": time.time()}
    chosen: list[Selection] = []
    for hook_name, hook in sorted((plan.get("hooks") or {}).items()):
        trigger = plan["triggers"][hook["trigger"]]
        if trigger["on"] != kind:
            continue
        if trigger.get("when"):
            try:
                if compile_expr(parse(trigger["when"]))(activation) is not True:
                    continue
            except EvalError:
                continue
        if not any(s.playbook == hook["run"] for s in chosen):
            chosen.append(Selection(hook["run"], hook["trigger"], hook_name, hook.get("escalate")))
    return chosen


def _typed_inputs(playbook: dict, name: str, values: dict[str, Any], given: dict[str, str]) -> dict[str, Any]:
    declared = playbook.get("inputs") or {}
    out = {}
    for input_name, spec in declared.items():
        if input_name in values:
            out[input_name] = values[input_name]
        elif spec.get("default") is not None:
            out[input_name] = _declared_value(spec["default"], spec["type"])
        else:
            raise EvalError(f"playbook.call: input `{input_name}` of `{name}` has no value")
        problem = input_problem(spec, out[input_name])
        if problem is not None:
            raise EvalError(f"playbook.call: input `{input_name}` of `{name}` refused: its value {problem}")
    return out
