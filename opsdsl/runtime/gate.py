"""The policy gate: the verdict on one step before it runs.

Every policy in the plan (the pack's own and those of the policy packs compiled with it)
is evaluated on `{run, playbook, step, event, params, now}` (`run.inputs`: the run's inputs,
redacted); deny > require_approval > allow; the largest `approvals` among the approval policies wins; a policy whose `when`
fails to evaluate counts as applying (fail closed). An action that is neither built in nor
provided by an installed plugin is denied whatever the policies say.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opsdsl.errors import EvalError

ALLOW, DENY, REQUIRE_APPROVAL = "allow", "deny", "require_approval"
UNKNOWN_ACTION_POLICY = "opsdsl-known-actions"
TAINT_POLICY = "opsdsl-tainted-data"  # event data where it may not go (opsdsl.lang.taint)


@dataclass(frozen=True)
class Decision:
    decision: str  # allow | deny | require_approval
    policies: tuple[dict[str, Any], ...] = ()  # {id, effect, message, origin} of each applying policy
    approvals: int = 0
    errors: tuple[dict[str, str], ...] = field(default=())

    @property
    def reason(self) -> str:
        """The messages of the policies that decided, for people."""
        deciding = [p for p in self.policies if p["effect"] == self.decision]
        if not deciding:
            return "no policy applies" if self.decision == ALLOW else ""
        return "; ".join(f"{p['id']}: {p['message']}" for p in deciding)

    @property
    def deciding_policy(self) -> str | None:
        for policy in self.policies:
            if policy["effect"] == self.decision:
                return policy["id"]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "policies": list(self.policies),
            "approvals": self.approvals,
            "errors": list(self.errors),
        }


class Gate:
    """Compiled policies of one plan, ready to judge steps."""

    def __init__(self, policies: Sequence[Mapping[str, Any]], known_action: Callable[[str], bool]) -> None:
        from opsdsl.lang.expr import compile_expr, parse

        self._policies = [(dict(p), compile_expr(parse(p["when"]))) for p in policies]
        self._known_action = known_action

    def judge(self, activation: Mapping[str, Any]) -> Decision:
        """The decision for `activation["step"]` (a policy step view, `with` rendered)."""
        step = activation["step"]
        if not self._known_action(step["action"]):
            unknown = {
                "id": UNKNOWN_ACTION_POLICY,
                "effect": DENY,
                "message": f"action `{step['action']}` is neither built in nor provided by an installed plugin",
                "origin": "opsdsl",
            }
            return Decision(DENY, (unknown,))
        applying: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        for policy, predicate in self._policies:
            try:
                applies = predicate(activation) is True
            except EvalError as error:
                errors.append({"id": policy["id"], "error": error.message})
                applies = True
            if applies:
                applying.append(
                    {
                        "id": policy["id"],
                        "effect": policy["effect"],
                        "message": policy["message"],
                        "origin": policy.get("origin", ""),
                    }
                )
        effects = {p["effect"] for p in applying}
        if DENY in effects:
            return Decision(DENY, tuple(applying), 0, tuple(errors))
        if REQUIRE_APPROVAL in effects:
            needed = max(
                int(policy.get("approvals") or 1)
                for policy, _ in self._policies
                if policy["effect"] == REQUIRE_APPROVAL and policy["id"] in {p["id"] for p in applying}
            )
            return Decision(REQUIRE_APPROVAL, tuple(applying), needed, tuple(errors))
        return Decision(ALLOW, tuple(applying), 0, tuple(errors))
