"""The built-in actions as every stage sees them: names, defaults, and how a step looks
to a policy. One table, so the linter, the compiler and (later) the runtime agree."""

from __future__ import annotations

from typing import Any

BUILTIN_ACTIONS = (
    "shell",
    "http.request",
    "wait",
    "approval",
    "notify",
    "assert",
    "evidence.collect",
    "playbook.call",
    "report.rca",
)
NETWORK_ACTIONS = frozenset({"http.request", "notify"})
# Built-ins the scheduler runs itself, in the process that drives the run: they pause,
# decide or recurse, with no side effect outside, so a runner pool has nothing to run
# (as opsdsl.runtime.actions: every other built-in, and every plugin, is an executor action).
SCHEDULER_ACTIONS = frozenset({"wait", "approval", "assert", "playbook.call", "report.rca"})

# What an action does when a step leaves a setting out (timeouts in milliseconds).
# `idempotent` decides whether a step interrupted mid-flight is re-run on resume.
ACTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "shell": {"timeout": 600_000, "idempotent": False},
    "http.request": {"timeout": 30_000, "idempotent": True},  # GET, HEAD, PUT, DELETE; see resolved_idempotent
    "wait": {"timeout": None, "idempotent": True},
    "approval": {"timeout": 86_400_000, "idempotent": True},
    "notify": {"timeout": 30_000, "idempotent": False},
    "assert": {"timeout": 10_000, "idempotent": True},
    "evidence.collect": {"timeout": 300_000, "idempotent": True},
    "playbook.call": {"timeout": None, "idempotent": True},
    "report.rca": {"timeout": 60_000, "idempotent": True},
}
PLUGIN_DEFAULTS: dict[str, Any] = {"timeout": None, "idempotent": False}


def defaults(action: str) -> dict[str, Any]:
    return ACTION_DEFAULTS.get(action, PLUGIN_DEFAULTS)


def resolved_timeout(action: str, declared: int | None) -> int | None:
    """Milliseconds: the step's own timeout, else the action's default (None: no limit)."""
    return declared if declared is not None else defaults(action)["timeout"]


def resolved_idempotent(action: str, with_: dict, declared: bool | None) -> bool:
    if declared is not None:
        return declared
    if action == "notify" and with_.get("kind") == "pagerduty":
        return True  # PagerDuty deduplicates by dedup_key (the run id by default)
    if action == "http.request":
        # A POST or PATCH carries Idempotency-Key, but only a server that honours it makes
        # a repeat harmless; the method's own semantics are the safe default.
        return str(with_.get("method", "GET")).upper() in ("GET", "HEAD", "PUT", "DELETE")
    if action == "evidence.collect" and with_.get("commands"):
        return False  # its commands are side effects like any shell step's: never re-run blindly on resume
    return bool(defaults(action)["idempotent"])


def policy_step_view(
    step_id: str,
    name: str | None,
    action: str,
    risk: str,
    with_: dict,
    timeout_ms: int | None,
    idempotent: bool | None,
    has_compensation: bool,
) -> dict[str, Any]:
    """`step` as policies see it (docs/language.md §13): resolved values, durations in
    seconds like every duration in expressions."""
    timeout = resolved_timeout(action, timeout_ms)
    return {
        "id": step_id,
        "name": name or step_id,
        "action": action,
        "risk": risk,
        "with": with_,
        "timeout": timeout / 1000 if timeout is not None else 0.0,
        "compensation": has_compensation,
        "idempotent": resolved_idempotent(action, with_, idempotent),
    }
