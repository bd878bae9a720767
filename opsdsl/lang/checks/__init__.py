"""Check stage: semantic rules over checked models, each a small named function.

A rule reads one `Unit` (a pack's document and model) and the `Scope` around it (the
policy packs linted with it) and returns diagnostics. `SEMANTIC_CHECKS` find what makes a
pack wrong; `REVIEW_CHECKS` find what a careful reviewer would flag.
"""

from __future__ import annotations

from collections.abc import Iterator

from opsdsl.errors import Diagnostic
from opsdsl.lang.checks.context import Rule, Scope, Unit, ancestors, find_cycle, predecessors, roots_for
from opsdsl.lang.checks.events import check_event_fields
from opsdsl.lang.checks.review import (
    check_conditions,
    check_hook_cooldowns,
    check_network_timeouts,
    check_plaintext_secrets,
    check_retry_idempotency,
    check_risky_steps,
    check_runner_pools,
    check_tainted_data,
    check_unused,
)
from opsdsl.lang.checks.semantic import (
    check_cycles,
    check_defaults,
    check_duplicate_ids,
    check_durations,
    check_expressions,
    check_references,
)


def check_untested_high_risk(unit: Unit, scope: Scope) -> Iterator[Diagnostic]:
    """OPS050 (opsdsl.lang.checks.coverage), loaded only when the configuration turns it on:
    lint without `require-tested-high-risk` never imports the module."""
    config = scope.config
    if config is None or not config.require_tested_high_risk:
        return iter(())
    from opsdsl.lang.checks.coverage import check_untested_high_risk as rule

    return rule(unit, scope)


__all__ = [
    "REVIEW_CHECKS",
    "SEMANTIC_CHECKS",
    "WARNING_CHECKS",
    "Scope",
    "Unit",
    "ancestors",
    "find_cycle",
    "predecessors",
    "roots_for",
    "run_checks",
]

SEMANTIC_CHECKS: tuple[Rule, ...] = (
    check_duplicate_ids,
    check_references,
    check_cycles,
    check_durations,
    check_defaults,
    check_expressions,
)
REVIEW_CHECKS: tuple[Rule, ...] = (
    check_conditions,
    check_risky_steps,
    check_network_timeouts,
    check_hook_cooldowns,
    check_tainted_data,
    check_plaintext_secrets,
    check_unused,
    check_retry_idempotency,
    check_runner_pools,
    check_untested_high_risk,
    check_event_fields,
)


# The rules whose every finding is a warning (tests/lang/test_warning_checks.py holds them to it).
WARNING_CHECKS: frozenset[Rule] = frozenset(
    {
        check_conditions,
        check_risky_steps,
        check_network_timeouts,
        check_hook_cooldowns,
        check_unused,
        check_retry_idempotency,
        check_untested_high_risk,
        check_event_fields,
    }
)


def run_checks(unit: Unit, scope: Scope, errors_only: bool = False) -> list[Diagnostic]:
    """Every rule's findings. `errors_only` (`opsdsl compile`, which reports errors only)
    leaves out `WARNING_CHECKS`, unless a configuration could make a warning an error."""
    skip = WARNING_CHECKS if errors_only and scope.config is None else frozenset()
    out: list[Diagnostic] = []
    for check_rule in (*SEMANTIC_CHECKS, *REVIEW_CHECKS):
        if check_rule not in skip:
            out.extend(check_rule(unit, scope))
    return out
