"""The action registry: the built-in executor actions and the installed plugin actions.

`load_action(name)` is the one way in for the executor. Built-ins are imported on first
use (shell, http.request, notify, evidence.collect); any other `namespace.name` comes from
the entry-point group `opsdsl.actions`, discovered once and cached. A plugin can never
take a built-in's name, and its `with:` is checked against its own `schema` before it runs.

The scheduler-side built-ins (wait, approval, assert, playbook.call, report.rca) are not
actions: they pause, decide or recurse, so the scheduler runs them itself.

Also here, shared by every action: checking `with:` against a schema, and redacting
outputs and failures.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint
from typing import Any

from opsdsl.lang.actions import BUILTIN_ACTIONS
from opsdsl.lang.plugins import PLUGIN_GROUP, _discover_plugins, _origin, reset_plugin_cache
from opsdsl.runtime.actions.base import Action, ActionContext, ActionFailed, ActionRequest

__all__ = [
    "EXECUTOR_ACTIONS",
    "PLUGIN_GROUP",
    "Action",
    "ActionContext",
    "ActionFailed",
    "ActionRequest",
    "PluginAction",
    "UnknownAction",
    "builtin_schema",
    "check_inputs",
    "load_action",
    "plugin_actions",
    "plugin_problems",
    "redact_failure",
    "redact_outputs",
    "reset_plugin_cache",
]


# Built-in actions the executor runs, and the class behind each (imported on first use).
_EXECUTOR_CLASSES: dict[str, tuple[str, str]] = {
    "shell": ("opsdsl.runtime.actions.shell", "ShellAction"),
    "http.request": ("opsdsl.runtime.actions.http", "HttpRequestAction"),
    "notify": ("opsdsl.runtime.actions.notify", "NotifyAction"),
    "evidence.collect": ("opsdsl.runtime.actions.evidence", "EvidenceCollectAction"),
}
EXECUTOR_ACTIONS: tuple[str, ...] = tuple(_EXECUTOR_CLASSES)


class UnknownAction(Exception):
    """No action of this name can be run here: not built in, not installed, or refused."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message

    def __reduce__(self):
        return (type(self), (self.name, self.message))


# ---------------------------------------------------------------- loading


def load_action(name: str) -> Action:
    """The action called `name`: a built-in executor action, else an installed plugin."""
    if name in _EXECUTOR_CLASSES:
        module_name, class_name = _EXECUTOR_CLASSES[name]
        return getattr(importlib.import_module(module_name), class_name)()
    if name in BUILTIN_ACTIONS:
        raise UnknownAction(name, f"{name!r} is run by the scheduler itself, not by an executor action")
    plugins, problems = _discover_plugins()
    if name in problems:
        raise UnknownAction(name, problems[name])
    if name not in plugins:
        raise UnknownAction(
            name,
            f"unknown action {name!r}: not built in, and no installed plugin declares it "
            f"in the {PLUGIN_GROUP!r} entry-point group",
        )
    return _load_plugin(name, plugins[name])


def plugin_actions() -> dict[str, EntryPoint]:
    """The installed plugin actions that may be used, by name (discovered once, then cached)."""
    return dict(_discover_plugins()[0])


def plugin_problems() -> dict[str, str]:
    """Entry points in the plugin group that were refused, by name, with the reason."""
    return dict(_discover_plugins()[1])


def _load_plugin(name: str, entry: EntryPoint) -> PluginAction:
    try:
        target = entry.load()
        action = target() if inspect.isclass(target) or not hasattr(target, "run") else target
    except Exception as exc:
        raise UnknownAction(name, f"plugin action {name!r} from {_origin(entry)} failed to load: {exc}") from exc
    if not inspect.iscoroutinefunction(getattr(action, "run", None)):
        raise UnknownAction(
            name, f"plugin action {name!r} from {_origin(entry)} has no `async def run(request, context)`"
        )
    schema = getattr(action, "schema", None)
    if schema is not None:
        problem = _schema_problem(schema)
        if problem:
            raise UnknownAction(name, f"plugin action {name!r} from {_origin(entry)} has an invalid schema: {problem}")
    return PluginAction(name, action, schema)


def _schema_problem(schema: Any) -> str | None:
    import jsonschema

    if not isinstance(schema, Mapping):
        return f"expected a JSON Schema object, got {type(schema).__name__}"
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        return f"not JSON: {exc}"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


class PluginAction:
    """A plugin action as the executor sees it: its `with:` checked against its schema
    before it runs, and its outputs checked to be a JSON object afterwards."""

    def __init__(self, name: str, action: Any, schema: Mapping[str, Any] | None) -> None:
        self.name = name
        self.action = action
        self.schema = schema

    async def run(self, request: ActionRequest, context: ActionContext) -> dict[str, Any]:
        if self.schema is not None:
            check_inputs(self.name, self.schema, request.inputs, context.redact)
        outputs = await self.action.run(request, context)
        if not isinstance(outputs, dict):
            raise ActionFailed(
                f"plugin action {self.name!r} returned {type(outputs).__name__}, not a dict of outputs",
                retryable=False,
            )
        try:
            json.dumps(outputs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ActionFailed(
                f"plugin action {self.name!r} returned outputs that are not JSON: {exc}", retryable=False
            ) from None
        return outputs


# ---------------------------------------------------------------- inputs


@functools.cache
def builtin_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of a built-in action's `with:`, from the pack schema (`$defs/with.NAME`)."""
    from opsdsl.resources import read_text

    root = json.loads(read_text("schemas/pack.schema.json"))
    return {"$schema": root["$schema"], **root["$defs"][f"with.{name}"]}


@functools.cache
def _validator(schema_json: str) -> Any:
    import jsonschema

    schema = json.loads(schema_json)
    return jsonschema.validators.validator_for(schema)(schema)


def check_inputs(
    action: str, schema: Mapping[str, Any], inputs: Any, redact: Callable[[str], str] = lambda text: text
) -> None:
    """Refuse a rendered `with:` that its schema does not allow (not retryable).

    The compiler checked the `with:` as written, but `${{ }}` keeps the value's type, so a
    rendered value can still be a number where a string belongs. Messages quote values,
    which may hold substituted secrets: they pass through `redact`.
    """
    validator = _validator(json.dumps(schema, sort_keys=True))
    errors = sorted(validator.iter_errors(inputs), key=lambda error: [str(part) for part in error.absolute_path])
    if not errors:
        return
    lines = []
    for error in errors[:5]:
        where = "with" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
        lines.append(f"{where}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    raise ActionFailed(redact(f"{action}: invalid inputs: " + "; ".join(lines) + more), retryable=False)


# ---------------------------------------------------------------- redaction


def redact_outputs(value: Any, redact: Callable[[str], str]) -> Any:
    """`value` with every string in it (keys too) passed through `redact`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_outputs(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_outputs(item, redact) for item in value]
    return value


def redact_failure(failure: ActionFailed, redact: Callable[[str], str]) -> ActionFailed:
    """The same failure with its message and outputs redacted."""
    return ActionFailed(redact(failure.message), redact_outputs(failure.outputs, redact), failure.retryable)
