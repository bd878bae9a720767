"""Plugin actions: which entry points of the `opsdsl.actions` group may be used.

One place decides, so the linter (OPS036) and the runtime agree: a plugin action must be
named `namespace.name`, must not take a built-in action's name, and must be declared by
one installed distribution only. The runtime loads the accepted ones
(`opsdsl.runtime.actions.load_action`); the linter only needs their names.
"""

from __future__ import annotations

import functools
import importlib
import re
from importlib.metadata import EntryPoint, entry_points

from opsdsl.lang.actions import BUILTIN_ACTIONS

PLUGIN_GROUP = "opsdsl.actions"

# The same shape the pack schema's `actionName` allows, but with at least one dot.
_PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


def plugin_names() -> frozenset[str]:
    """The names of the usable plugin actions."""
    return frozenset(_discover_plugins()[0])


def reset_plugin_cache() -> None:
    """Forget discovered plugins, so the next lookup sees newly installed ones."""
    importlib.invalidate_caches()
    _discover_plugins.cache_clear()


@functools.cache
def _discover_plugins() -> tuple[dict[str, EntryPoint], dict[str, str]]:
    accepted: dict[str, EntryPoint] = {}
    problems: dict[str, str] = {}
    for entry in entry_points(group=PLUGIN_GROUP):
        name, origin = entry.name, _origin(entry)
        if name in BUILTIN_ACTIONS:
            problems[name] = f"plugin {origin} declares {name!r}, the name of a built-in action; it is refused"
        elif not _PLUGIN_NAME.match(name):
            problems[name] = (
                f"plugin {origin} declares {name!r}; plugin actions must be named `namespace.name` "
                "(lower-case letters, digits and `_`, at least one dot); it is refused"
            )
        elif name in accepted and accepted[name].value != entry.value:
            problems[name] = (
                f"plugin action {name!r} is declared twice ({_origin(accepted.pop(name))} and {origin}); "
                "uninstall one of them"
            )
        elif name not in problems:
            accepted[name] = entry
    return accepted, problems


def _origin(entry: EntryPoint) -> str:
    dist = entry.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"{entry.value!r} ({where})"
