"""Plugin actions: discovered from a real (temporary) distribution's entry points."""

from __future__ import annotations

import asyncio
import pickle
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opsdsl.runtime.actions import (
    PluginAction,
    UnknownAction,
    load_action,
    plugin_actions,
    plugin_problems,
    reset_plugin_cache,
)
from opsdsl.runtime.actions.base import ActionContext, ActionFailed, ActionRequest
from opsdsl.runtime.actions.shell import ShellAction

PLUGIN_MODULE = '''
class EchoAction:
    """Echo `with.message` back as an output."""

    name = "example.echo"
    schema = {
        "type": "object",
        "properties": {"message": {"type": "string"}, "times": {"type": "integer", "minimum": 1}},
        "required": ["message"],
        "additionalProperties": False,
    }

    async def run(self, request, context):
        return {"message": request.inputs["message"] * request.inputs.get("times", 1), "attempt": request.attempt}


class _Upper:
    name = "example.upper"

    async def run(self, request, context):
        return {"text": request.inputs["text"].upper()}


def make_upper():
    return _Upper()


class SetOutputs:
    name = "example.sets"

    async def run(self, request, context):
        return {"ids": {1, 2}}


class Synchronous:
    name = "example.sync"

    def run(self, request, context):
        return {}


class BadSchema:
    name = "example.bad_schema"
    schema = {"type": "no-such-type"}

    async def run(self, request, context):
        return {}
'''

ENTRY_POINTS = """\
[opsdsl.actions]
example.echo = example_plugin:EchoAction
example.upper = example_plugin:make_upper
example.sets = example_plugin:SetOutputs
example.sync = example_plugin:Synchronous
example.bad_schema = example_plugin:BadSchema
example.missing = example_plugin:NoSuchThing
shell = example_plugin:EchoAction
wait = example_plugin:EchoAction
echo = example_plugin:EchoAction
"""


@pytest.fixture
def example_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution `example-plugin 0.1` installed on sys.path for this test only."""
    (tmp_path / "example_plugin.py").write_text(PLUGIN_MODULE)
    dist_info = tmp_path / "example_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: example-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_plugin_cache()
    yield tmp_path
    sys.modules.pop("example_plugin", None)
    monkeypatch.undo()
    reset_plugin_cache()


def request(action: str, inputs: dict[str, Any]) -> ActionRequest:
    return ActionRequest(
        run_id="run-3",
        step_id="echo",
        action=action,
        inputs=inputs,
        attempt=2,
        idempotency_key="run-3:echo",
        timeout=None,
    )


def run_action(action: str, inputs: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    return asyncio.run(load_action(action).run(request(action, inputs), ActionContext(tmp_path / "evidence")))


def test_a_plugin_class_is_loaded_and_run(example_plugin: Path) -> None:
    entry = plugin_actions()["example.echo"]
    assert entry.value == "example_plugin:EchoAction"
    action = load_action("example.echo")
    assert isinstance(action, PluginAction)
    assert action.name == "example.echo"
    assert run_action("example.echo", {"message": "hi", "times": 2}, example_plugin) == {
        "message": "hihi",
        "attempt": 2,
    }


def test_a_plugin_factory_is_loaded_and_run(example_plugin: Path) -> None:
    assert run_action("example.upper", {"text": "drain"}, example_plugin) == {"text": "DRAIN"}


def test_the_plugin_schema_is_enforced_before_it_runs(example_plugin: Path) -> None:
    with pytest.raises(ActionFailed) as caught:
        run_action("example.echo", {"times": 0, "extra": True}, example_plugin)
    assert not caught.value.retryable
    message = caught.value.message
    assert "example.echo: invalid inputs" in message
    assert "'message' is a required property" in message
    assert "with.times: 0 is less than the minimum of 1" in message
    assert "'extra' was unexpected" in message


def test_a_plugin_named_like_a_built_in_is_refused(example_plugin: Path) -> None:
    assert "shell" not in plugin_actions()
    assert "built-in" in plugin_problems()["shell"]
    assert "example_plugin:EchoAction" in plugin_problems()["shell"]
    assert isinstance(load_action("shell"), ShellAction)
    with pytest.raises(UnknownAction, match="scheduler"):
        load_action("wait")


def test_a_plugin_name_without_a_namespace_is_refused(example_plugin: Path) -> None:
    assert "echo" not in plugin_actions()
    with pytest.raises(UnknownAction, match=r"namespace\.name"):
        load_action("echo")


def test_broken_plugins_are_refused_with_the_reason(example_plugin: Path) -> None:
    with pytest.raises(UnknownAction, match="failed to load"):
        load_action("example.missing")
    with pytest.raises(UnknownAction, match="async def run"):
        load_action("example.sync")
    with pytest.raises(UnknownAction, match="invalid schema"):
        load_action("example.bad_schema")


def test_plugin_outputs_must_be_json(example_plugin: Path) -> None:
    with pytest.raises(ActionFailed, match="not JSON") as caught:
        run_action("example.sets", {}, example_plugin)
    assert not caught.value.retryable


def test_an_unknown_action_names_the_entry_point_group(example_plugin: Path) -> None:
    with pytest.raises(UnknownAction, match=r"opsdsl\.actions") as caught:
        load_action("example.absent")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.name, copy.message) == ("example.absent", caught.value.message)


def test_discovery_is_cached_until_reset(example_plugin: Path) -> None:
    assert "example.echo" in plugin_actions()
    (example_plugin / "example_plugin-0.1.dist-info" / "entry_points.txt").write_text("[opsdsl.actions]\n")
    assert "example.echo" in plugin_actions()
    reset_plugin_cache()
    assert "example.echo" not in plugin_actions()
