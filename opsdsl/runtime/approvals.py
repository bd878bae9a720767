"""Approvals inside the scheduler: asking, counting distinct people, timeouts, denials.

A mixin of `Scheduler` (the methods use its state: steps, store, commit), kept apart so
the scheduler reads as the DAG walk it is.
"""

from __future__ import annotations

from opsdsl.audit import entries as E
from opsdsl.lang.names import same_person_key
from opsdsl.runtime import store as S
from opsdsl.runtime.gate import REQUIRE_APPROVAL
from opsdsl.runtime.outcome import TIMEOUT_VOTER, Paused


def with_digest(rendered: dict) -> str:
    """sha256 of a step's rendered `with:` (canonical JSON)."""
    import json

    from opsdsl.canonical import canonical_json, sha256_digest

    try:
        return sha256_digest(canonical_json(rendered))
    except Exception:  # a value RFC 8785 refuses (an integer beyond 2^53): still one digest per value
        return sha256_digest(json.dumps(rendered, sort_keys=True, default=repr).encode())


def approval_verdict(votes: list[dict], needed: int) -> str | None:
    """approve | deny | None (not yet), from the votes on one step: an expired deadline's vote
    decides, then any denial, then enough distinct people (names normalised)."""
    for vote in votes:
        if vote["by"] == TIMEOUT_VOTER:
            return vote["decision"]
    if any(v["decision"] == "deny" for v in votes):
        return "deny"
    people = {same_person_key(v["by"]) for v in votes if v["decision"] == "approve"}
    return "approve" if len(people) >= max(1, needed) else None


class ApprovalSteps:
    def _request_approval(self, sid, rendered, decision, needed, decision_entry) -> None:
        node = self.nodes[sid]
        row = self.steps[sid]
        by_action = node["action"] == "approval"
        row.status, row.started_at = S.AWAITING_APPROVAL, self.env.clock()
        row.approvals_needed = needed
        row.approval_reason = "action" if by_action else "policy"
        row.approvers = list(rendered.get("approvers") or []) if by_action else []
        message = rendered.get("message") if by_action else decision.reason
        data = {
            "step": sid,
            "reason": row.approval_reason,
            "message": message,
            "approvers": row.approvers,
            "min_approvals": needed,
            "policies": [p["id"] for p in decision.policies if p["effect"] == REQUIRE_APPROVAL],
            "inputs": rendered.get("inputs") or {} if by_action else {},
            # What the approvers approve: the step as rendered now (secrets redacted). The step
            # runs only if it renders the same when it is approved (`_changed_since_asked`).
            "with_sha256": with_digest(self.redactor.data(rendered)),
        }
        timeout = node["timeout"] if by_action else None
        timers = [(sid, "approval_timeout", row.started_at + timeout / 1000)] if timeout is not None else []
        self._commit([*decision_entry, (E.APPROVAL_REQUESTED, data)], steps=[row], timers=timers)
        raise Paused()

    def _approval_verdict(self, sid: str) -> str | None:
        """approve | deny | None (not yet): counts distinct people (names normalised); a timeout decides too."""
        row = self.steps[sid]
        verdict = approval_verdict(self.store.approvals(self.run.id, sid), row.approvals_needed)
        if verdict is not None:
            return verdict
        node = self.nodes[sid]
        timeout = node["timeout"] if node["action"] == "approval" else None
        if timeout is not None and row.started_at is not None and self.env.clock() >= row.started_at + timeout / 1000:
            outcome = self._rendered_cache(sid).get("on_timeout", "deny")
            vote = (sid, TIMEOUT_VOTER, outcome, {}, None, self.env.clock())
            self._commit([(E.APPROVAL_TIMED_OUT, {"step": sid, "outcome": outcome})], approvals=[vote])
            return outcome
        return None

    def _changed_since_asked(self, sid: str, rendered: dict) -> bool:
        """Whether the step renders differently now than when its approval was asked for
        (an input that reads `now`, a param changed by a resume): the approvers did not
        approve that. Runs asked before this check existed have no digest: not checked."""
        asked = None
        for entry in self.store.ledger.entries(run=self.run.id):
            if entry.kind == E.APPROVAL_REQUESTED and entry.data.get("step") == sid:
                asked = entry.data.get("with_sha256")
        return asked is not None and asked != with_digest(self.redactor.data(rendered))

    def _approval_settled(self, sid: str) -> bool:
        return self._approval_verdict(sid) is not None

    def _denial_message(self, sid: str) -> str:
        votes = [v for v in self.store.approvals(self.run.id, sid) if v["decision"] == "deny"]
        if votes and votes[0]["by"] == TIMEOUT_VOTER:
            return "the approval timed out (on_timeout: deny)"
        who = ", ".join(v["by"] for v in votes)
        return f"denied by {who}" if who else "denied"

    def _approve_action_step(self, sid: str) -> None:
        rendered = self._rendered_cache(sid)
        declared = rendered.get("inputs") or {}
        answers = {name: spec.get("default") for name, spec in declared.items() if isinstance(spec, dict)}
        approved_by: list[str] = []
        for vote in self.store.approvals(self.run.id, sid):
            if vote["decision"] == "approve":
                answers.update(vote["answers"])
                if vote["by"] != TIMEOUT_VOTER:
                    approved_by.append(vote["by"])
        self.steps[sid].attempts = max(1, self.steps[sid].attempts)
        self._succeed(sid, self.redactor.data({**answers, "approved_by": approved_by}))
