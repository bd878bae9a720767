"""Folding a run's ledger entries, in order, into the record's steps, decisions, approvals, failures and timeline."""

from __future__ import annotations

from dataclasses import dataclass

from opsdsl.audit.incident._common import (
    _brief,
    _canonical,
    _pick,
    iso_time,
)
from opsdsl.audit.metrics import RunSummary
from opsdsl.canonical import sha256_digest

_NO_OUTPUTS_DIGEST = sha256_digest(_canonical({}))


def _outputs_digest(outputs: object) -> str:
    """sha256 of a step's outputs (RFC 8785); most steps have none, and their digest is one constant."""
    return sha256_digest(_canonical(outputs)) if outputs else _NO_OUTPUTS_DIGEST


@dataclass
class _StepState:
    id: str
    first_seq: int
    action: str | None = None
    status: str = "pending"
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    denied_by: str | None = None
    outputs_digest: str | None = None
    continue_on_error: bool = False
    decided_by: str | None = None

    @property
    def compensates(self) -> str | None:
        return self.id.removesuffix(".compensate") if self.id.endswith(".compensate") else None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "action": self.action,
            "status": self.status,
            "attempts": self.attempts,
            "started": iso_time(self.started),
            "finished": iso_time(self.finished),
            "error": self.error,
            "denied_by": self.denied_by,
            "continue_on_error": self.continue_on_error,
            "decided_by": self.decided_by,
            "outputs_digest": self.outputs_digest,
            "compensates": self.compensates,
        }

    def compensation_dict(self) -> dict:
        return {
            "step": self.compensates,
            "compensation": self.id,
            "status": self.status,
            "started": iso_time(self.started),
            "finished": iso_time(self.finished),
            "error": self.error,
        }


class _RecordBuilder:
    """Folds a run's entries, in order, into steps, decisions, approvals, failures and a timeline."""

    def __init__(self, summary: RunSummary) -> None:
        self.detected = summary.detected
        self.steps: dict[str, _StepState] = {}
        self.timeline: list[dict] = []
        self.decisions: list[dict] = []
        self.approvals: list[dict] = []
        self.failures: list[dict] = []
        self.evidence: list[dict] = []
        self._open_approvals: dict[str, dict] = {}

    def step(self, entry: dict) -> _StepState:
        name = entry["data"]["step"]
        if name not in self.steps:
            self.steps[name] = _StepState(name, entry["seq"])
        return self.steps[name]

    def line(self, entry: dict, summary: str, *, ts: float | None = None, kind: str | None = None) -> None:
        at = float(entry["ts"]) if ts is None else ts
        self.timeline.append(
            {
                "seq": entry["seq"] if ts is None else None,
                "ts": iso_time(at),
                "t": round(at - self.detected, 3),
                "kind": kind or entry["kind"],
                "step": entry["data"].get("step"),
                "summary": summary,
            }
        )

    def add(self, entry: dict) -> None:
        handler = getattr(self, "on_" + entry["kind"].replace(".", "_"), None)
        if handler is not None:
            handler(entry, entry["data"])

    def on_run_created(self, entry: dict, data: dict) -> None:
        event = data.get("event") if isinstance(data.get("event"), dict) else {}
        labels = event.get("labels") if isinstance(event.get("labels"), dict) else {}
        what = labels.get("alertname") or event.get("name") or event.get("id")
        source = f"trigger {data['trigger']}" if data.get("trigger") else "a manual run"
        detail = f" ({_brief(what, 80)})" if what else ""
        self.line(entry, f"Detected by {source}{detail}", ts=self.detected, kind="detected")
        via = f" via hook {data['hook']}" if data.get("hook") else ""
        dry = " (dry run)" if data.get("dry_run") else ""
        self.line(entry, f"Run {entry['run']} of playbook {data.get('playbook')} created{via}{dry}")

    def on_plan_verified(self, entry: dict, data: dict) -> None:
        count = len(data.get("keyids") or [])
        self.line(entry, f"Plan signature verified: {count} trusted key(s), trust {data.get('trust')}")

    def on_run_started(self, entry: dict, data: dict) -> None:
        reason = data.get("reason") or "start"
        text = {"start": "Run started", "resume": "Run resumed", "approval": "Run continued after approval"}
        by = f" by {data['by']}" if data.get("by") else ""
        self.line(entry, text.get(reason, f"Run started ({reason})") + by)

    def on_run_paused(self, entry: dict, data: dict) -> None:
        waiting = ", ".join(f"{item.get('step')} ({item.get('reason')})" for item in data.get("waiting") or [])
        self.line(entry, f"Run paused, waiting for: {waiting or 'nothing named'}")

    def on_run_interrupted(self, entry: dict, data: dict) -> None:
        running = data.get("running") or []
        for name in running:
            if name in self.steps:
                self.steps[name].status = "interrupted"
        self.line(entry, f"Run interrupted; cancelled: {', '.join(running) or 'no running step'}")

    def on_run_finished(self, entry: dict, data: dict) -> None:
        text = f"Run {data.get('status')}"
        if data.get("failed_steps"):
            text += f"; failed: {', '.join(data['failed_steps'])}"
        if data.get("compensated"):
            text += f"; compensated: {', '.join(data['compensated'])}"
        if data.get("escalate"):
            text += f"; escalate to {data['escalate']}"
        if data.get("error"):
            text += f": {_brief(data['error'])}"
        self.line(entry, text)

    def on_step_skipped(self, entry: dict, data: dict) -> None:
        self.step(entry).status = "skipped"
        self.line(entry, f"{data['step']} skipped: `when` was false ({_brief(data.get('when'), 120)})")

    def on_policy_decision(self, entry: dict, data: dict) -> None:
        state = self.step(entry)
        state.action = state.action or data.get("action")
        decision = data.get("decision")
        policies = [_pick(policy, "id", "effect", "message", "origin") for policy in data.get("policies") or []]
        self.decisions.append(
            {
                "seq": entry["seq"],
                "ts": iso_time(float(entry["ts"])),
                "step": data["step"],
                "action": data.get("action"),
                "decision": decision,
                "policies": policies,
                "approvals": data.get("approvals", 0),
                "errors": [_pick(error, "id", "error") for error in data.get("errors") or []],
            }
        )
        if decision == "require_approval":
            state.status = "waiting_approval"
        if decision != "allow" or policies or data.get("errors"):
            ids = ", ".join(policy["id"] for policy in policies) or "no policy"
            self.line(entry, f"Policy {decision} for {data['step']} ({ids})")

    def on_step_intent(self, entry: dict, data: dict) -> None:
        state = self.step(entry)
        attempt = int(data.get("attempt") or 1)
        state.action = data.get("action") or state.action
        state.status, state.attempts = "running", max(state.attempts, attempt)
        state.started = state.started if state.started is not None else float(entry["ts"])
        if attempt == 1:
            self.line(entry, f"{data['step']} started ({state.action})")
        else:
            self.line(entry, f"{data['step']} attempt {attempt} started")

    def on_attempt_failed(self, entry: dict, data: dict) -> None:
        self.failures.append(self._failure(entry, data, final=False))
        retry = f"; retry in {data['retry_in']:g}s" if isinstance(data.get("retry_in"), int | float) else ""
        self.line(entry, f"{data['step']} attempt {data.get('attempt')} failed: {_brief(data.get('error'))}{retry}")

    def on_step_succeeded(self, entry: dict, data: dict) -> None:
        state = self.step(entry)
        state.status, state.finished, state.error = "succeeded", float(entry["ts"]), None
        state.attempts = max(state.attempts, int(data.get("attempts") or 0))
        state.outputs_digest = _outputs_digest(data.get("outputs"))
        plural = "s" if state.attempts != 1 else ""
        self.line(entry, f"{data['step']} succeeded after {state.attempts} attempt{plural}")

    def on_step_failed(self, entry: dict, data: dict) -> None:
        state = self.step(entry)
        state.finished, state.error = float(entry["ts"]), data.get("error")
        state.attempts = max(state.attempts, int(data.get("attempts") or 0))
        state.denied_by = data.get("denied_by")
        state.status = "denied" if state.denied_by else "failed"
        state.continue_on_error = bool(data.get("continue_on_error"))
        state.outputs_digest = _outputs_digest(data.get("outputs"))
        self.failures.append(self._failure(entry, data, final=True))
        if state.denied_by:
            self.line(entry, f"{data['step']} denied by policy {state.denied_by}")
        else:
            tail = " (continue_on_error)" if state.continue_on_error else ""
            plural = "s" if state.attempts != 1 else ""
            self.line(
                entry, f"{data['step']} failed after {state.attempts} attempt{plural}: {_brief(state.error)}{tail}"
            )

    def on_step_in_doubt(self, entry: dict, data: dict) -> None:
        self.step(entry).status = "in_doubt"
        self.line(entry, f"{data['step']} in doubt: interrupted during attempt {data.get('attempt')}; a person decides")

    def on_step_decided(self, entry: dict, data: dict) -> None:
        state = self.step(entry)
        state.decided_by = data.get("by")
        decision = data.get("decision")
        if decision in ("succeeded", "failed"):
            state.status, state.finished = decision, float(entry["ts"])
        elif decision == "retry":
            state.status = "pending"
        self.line(entry, f"{data.get('by')} decided {data['step']}: {decision}")

    def on_approval_requested(self, entry: dict, data: dict) -> None:
        self.step(entry).status = "waiting_approval"
        approval = {
            "step": data["step"],
            "requested": iso_time(float(entry["ts"])),
            "reason": data.get("reason"),
            "message": data.get("message"),
            "policies": list(data.get("policies") or []),
            "approvers": list(data.get("approvers") or []),
            "min_approvals": data.get("min_approvals", 1),
            "responses": [],
            "outcome": None,
            "timed_out": False,
        }
        self.approvals.append(approval)
        self._open_approvals[data["step"]] = approval
        who = ", ".join(approval["approvers"]) or "anyone"
        self.line(entry, f"Approval requested for {data['step']} from {who}: {_brief(data.get('message'), 160)}")

    def _approval(self, entry: dict) -> dict:
        name = entry["data"]["step"]
        if name not in self._open_approvals:  # recorded without a request in these entries
            self.approvals.append(
                {"step": name, "requested": None, "reason": None, "message": None, "policies": [], "approvers": []}
                | {"min_approvals": 1, "responses": [], "outcome": None, "timed_out": False}
            )
            self._open_approvals[name] = self.approvals[-1]
        return self._open_approvals[name]

    def on_approval_recorded(self, entry: dict, data: dict) -> None:
        approval = self._approval(entry)
        approval["responses"].append(
            {
                "by": data.get("by"),
                "decision": data.get("decision"),
                "ts": iso_time(float(entry["ts"])),
                "comment": data.get("comment"),
                "answers": data.get("answers") or {},
            }
        )
        approves = sum(response["decision"] == "approve" for response in approval["responses"])
        if data.get("decision") == "deny":
            approval["outcome"] = "deny"
        elif approves >= (approval["min_approvals"] or 1):
            approval["outcome"] = "approve"
        verb = "approved" if data.get("decision") == "approve" else "denied"
        comment = f": {_brief(data['comment'], 160)}" if data.get("comment") else ""
        self.line(entry, f"{data.get('by')} {verb} {data['step']}{comment}")

    def on_approval_timed_out(self, entry: dict, data: dict) -> None:
        approval = self._approval(entry)
        approval["outcome"], approval["timed_out"] = data.get("outcome"), True
        self.line(entry, f"Approval for {data['step']} timed out: {data.get('outcome')}")

    def on_run_acknowledged(self, entry: dict, data: dict) -> None:
        self.line(entry, f"Acknowledged by {data.get('by')}")

    def on_incident_reviewed(self, entry: dict, data: dict) -> None:
        self.line(entry, f"Reviewed by {data.get('by')}: root cause {_brief(data.get('root_cause'), 160)}")

    def on_incident_escalated(self, entry: dict, data: dict) -> None:
        who = data.get("who")
        who = ", ".join(map(str, who)) if isinstance(who, list) else _brief(who or "nobody named", 120)
        reason = f" ({_brief(data.get('reason'), 160)})" if data.get("reason") else ""
        self.line(entry, f"Escalated to {data.get('level')} ({who}){reason}")

    def on_incident_follow_up_opened(self, entry: dict, data: dict) -> None:
        self.line(entry, f"Follow-up opened in {data.get('tracker')}: {_brief(data.get('url'), 200)}")

    def on_evidence_added(self, entry: dict, data: dict) -> None:
        files = data.get("files") or []
        for item in files:
            self.evidence.append(
                {
                    "step": data.get("step"),
                    "name": data.get("name"),
                    "path": item.get("path"),
                    "sha256": item.get("sha256"),
                }
                | {"size": item.get("size")}
            )
        self.line(entry, f"Evidence {data.get('name')} from {data.get('step')}: {len(files)} file(s)")

    @staticmethod
    def _failure(entry: dict, data: dict, *, final: bool) -> dict:
        return {
            "seq": entry["seq"],
            "ts": iso_time(float(entry["ts"])),
            "step": data["step"],
            "attempt": data.get("attempt", data.get("attempts")),
            "final": final,
            "error": data.get("error"),
            "retry_in": data.get("retry_in"),
            "denied_by": data.get("denied_by"),
        }
