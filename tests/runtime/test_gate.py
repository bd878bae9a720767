"""The policy gate: deny > require_approval > allow, fail closed, unknown actions denied."""

from __future__ import annotations

from opsdsl.runtime.gate import ALLOW, DENY, REQUIRE_APPROVAL, UNKNOWN_ACTION_POLICY, Gate


def policy(pid: str, when: str, effect: str, approvals: int | None = None) -> dict:
    return {
        "id": pid,
        "when": when,
        "effect": effect,
        "message": f"{pid} says so",
        "approvals": approvals,
        "origin": "org",
    }


def activation(**step) -> dict:
    base = {"id": "s", "name": "s", "action": "shell", "risk": "low", "with": {}, "timeout": 10.0}
    return {
        "run": {"severity": "SEV-2"},
        "playbook": {"name": "p", "severity": "SEV-2", "pack": "k"},
        "step": {**base, **step},
        "event": {},
        "params": {},
        "now": 0,
    }


def known(action: str) -> bool:
    return action in ("shell", "http.request", "notify")


def test_no_policy_allows():
    decision = Gate([], known).judge(activation())
    assert decision.decision == ALLOW and decision.policies == () and decision.reason == "no policy applies"


def test_deny_beats_approval_and_allow():
    gate = Gate(
        [
            policy("allow-all", "true", "allow"),
            policy("ask", 'step.risk == "high"', "require_approval", 2),
            policy("no-high-shell", 'step.action == "shell" && step.risk == "high"', "deny"),
        ],
        known,
    )
    decision = gate.judge(activation(risk="high"))
    assert decision.decision == DENY
    assert decision.deciding_policy == "no-high-shell"
    assert {p["id"] for p in decision.policies} == {"allow-all", "ask", "no-high-shell"}
    assert "no-high-shell: no-high-shell says so" in decision.reason


def test_largest_approvals_wins():
    gate = Gate(
        [policy("one", "true", "require_approval", 1), policy("two", 'step.risk == "high"', "require_approval", 2)],
        known,
    )
    assert gate.judge(activation(risk="high")).approvals == 2
    low = gate.judge(activation(risk="low"))
    assert low.decision == REQUIRE_APPROVAL and low.approvals == 1


def test_a_policy_that_cannot_be_evaluated_applies():
    gate = Gate([policy("needs-label", 'event.labels.team == "db"', "deny")], known)
    decision = gate.judge(activation())
    assert decision.decision == DENY
    assert decision.errors and decision.errors[0]["id"] == "needs-label"


def test_allow_records_which_rule_allowed():
    decision = Gate([policy("reads-are-fine", 'step.action == "http.request"', "allow")], known).judge(
        activation(action="http.request")
    )
    assert decision.decision == ALLOW and decision.deciding_policy == "reads-are-fine"


def test_unknown_actions_are_denied_whatever_the_policies_say():
    decision = Gate([policy("allow-all", "true", "allow")], known).judge(activation(action="acme.launch"))
    assert decision.decision == DENY and decision.deciding_policy == UNKNOWN_ACTION_POLICY
    assert "acme.launch" in decision.reason
