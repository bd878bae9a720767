"""Ledger entry kinds: the one stream of facts a run produces.

Each entry is `{seq, ts, run, kind, data}`: `seq` the ledger position, `ts` seconds since
the epoch (float), `run` the run id (None for entries about no run), `kind` one of the
names below and `data` a JSON object with the listed fields. The scheduler appends them
(persisted, hash-chained) and the live view shows them; incident records, RCA reports and
`opsdsl report` are computed from them alone. Secret values never appear: everything is
redacted before it is appended.

Step ids are plan node ids; a compensation is "STEP.compensate".
"""

from __future__ import annotations

# A run is created: what runs, why, with what.
# data: run, incident_id, pack, pack_version, pack_digest, plan_digest, playbook, severity,
#       params, inputs, event, detected_at (the time the event claims, else of creation),
#       received_at (when opsdsl received the event: serve's intake, else creation), dry_run,
#       trigger (or null), hook (or null), escalate (or null), parent_run, parent_step
RUN_CREATED = "run.created"
# The plan was verified before the run: data: keyids (list), trust ("dev-key" | trust file path)
PLAN_VERIFIED = "plan.verified"
# data: reason ("start" | "resume" | "approval"), by (or null)
RUN_STARTED = "run.started"
# The run stopped to wait for people: data: waiting (list of {step, reason})
RUN_PAUSED = "run.paused"
# Ctrl-C / SIGTERM, or an error of opsdsl's own that ended the drive: data: running (step ids
# that were cancelled), error (the exception's type, only in the second case)
RUN_INTERRUPTED = "run.interrupted"
# data: status ("succeeded" | "failed" | "refused" | "cancelled"), error (or null),
#       failed_steps (list), compensated (list), human (bool: a person approved, denied or
#       decided something in this run), escalate (or null)
RUN_FINISHED = "run.finished"

# `when` was false: data: step, when (the expression)
STEP_SKIPPED = "step.skipped"
# The policy gate's verdict before a step (or compensation) runs:
# data: step, action, decision ("allow" | "deny" | "require_approval"),
#       policies: [{id, effect, message, origin}]  (every policy that applied),
#       approvals (how many distinct approvers are needed; 0 unless require_approval),
#       errors: [{id, error}] (policies whose `when` failed: they count as applying)
POLICY_DECISION = "policy.decision"
# Written before the side effect (write-ahead): data: step, attempt, action, with (rendered,
# redacted), idempotency_key, timeout (seconds or null)
STEP_INTENT = "step.intent"
# One attempt failed and another will follow: data: step, attempt, error, retry_in (seconds)
ATTEMPT_FAILED = "attempt.failed"
# data: step, attempts, outputs (redacted)
STEP_SUCCEEDED = "step.succeeded"
# data: step, attempts, error, outputs (redacted; what the action reported with the failure),
#       denied_by (policy id or null), continue_on_error (bool)
STEP_FAILED = "step.failed"
# A step caught mid-flight by a crash, not idempotent: a person must decide.
# data: step, attempt
STEP_IN_DOUBT = "step.in_doubt"

# data: step, reason ("action" | "policy"), message, approvers (list), min_approvals,
#       policies (ids), inputs (the structured answers asked for, or {})
APPROVAL_REQUESTED = "approval.requested"
# data: step, by, decision ("approve" | "deny"), answers (map), comment (or null), and via
#       ("token" | "proxy" | "local") when a person was identified: by is then `local:NAME` for
#       the CLI's unauthenticated `--by`, else the authenticated name (opsdsl.runtime.people)
APPROVAL_RECORDED = "approval.recorded"
# data: step, outcome ("approve" | "deny")
APPROVAL_TIMED_OUT = "approval.timed_out"
# The server told people about an approval, or a step left in doubt (opsdsl.runtime.announce):
# one entry per notifier and attempt, sent or not. data: step, asks ("approval" | "decision"),
#       notifier (its name), notifier_kind ("slack" | "pagerduty" | "webhook"), what ("request" |
#       "reminder" | "outcome"), delivered (bool), attempt, detail (the answer's status, or why
#       it failed and whether it is retried)
APPROVAL_ANNOUNCED = "approval.announced"
# A person acknowledged the incident: data: by, via (as for approval.recorded)
RUN_ACKNOWLEDGED = "run.acknowledged"
# A person resolved a step left in doubt: data: step, by, decision ("retry" | "succeeded" | "failed"),
# via (as for approval.recorded)
STEP_DECIDED = "step.decided"
# A person asked to stop the run: no new step starts, compensation runs as for a failure, and
# the run ends `cancelled`. data: by, via ("token" | "proxy" | "local"), reason (or null)
RUN_CANCEL_REQUESTED = "run.cancel_requested"
# Nobody acknowledged the incident within its severity's response time, or its severity is
# paged at once: it escalated to a level (runtime/escalation.py). data: level, index (1 = the
# first level), of (how many levels), who, notifiers (names), reason, severity, incident_id,
# response_seconds
INCIDENT_ESCALATED = "incident.escalated"

# A person reviewed the incident (its RCA): data: by, root_cause, impact, follow_ups (list of text).
# A later review amends an earlier one; the first counts for RCA completion.
INCIDENT_REVIEWED = "incident.reviewed"

# The people of the state directory (`opsdsl users`), about no run: who may use the API, with
# which role, from when to when. data: name, role, groups (user.added); name (user.revoked).
# Never a token or its hash.
USER_ADDED = "user.added"
USER_REVOKED = "user.revoked"
# A follow-up of the incident was opened as an issue in a tracker (opsdsl incident follow-ups):
# data: key (fu-…), kind, step, summary, tracker ("github" | "gitlab" | "jira"), url, id, by
INCIDENT_FOLLOW_UP_OPENED = "incident.follow_up_opened"

# Evidence written into the incident folder: data: step, name, files: [{path, sha256, size}]
EVIDENCE_ADDED = "evidence.added"

# The incident reached the last escalation level and the server wrote the compliance report
# of the 30 days up to then (runtime/compliance.py): data: path and signature (relative to the
# state directory), sha256 ("sha256:HEX" of the PDF), size, since, until (ISO UTC),
# incident_id, level, escalation_seq (the incident.escalated entry it answers)
COMPLIANCE_REPORT_WRITTEN = "compliance.report_written"

RUN_KINDS = (
    RUN_CREATED,
    PLAN_VERIFIED,
    RUN_STARTED,
    RUN_PAUSED,
    RUN_INTERRUPTED,
    RUN_FINISHED,
    STEP_SKIPPED,
    POLICY_DECISION,
    STEP_INTENT,
    ATTEMPT_FAILED,
    STEP_SUCCEEDED,
    STEP_FAILED,
    STEP_IN_DOUBT,
    APPROVAL_REQUESTED,
    APPROVAL_RECORDED,
    APPROVAL_TIMED_OUT,
    APPROVAL_ANNOUNCED,
    RUN_ACKNOWLEDGED,
    STEP_DECIDED,
    RUN_CANCEL_REQUESTED,
    INCIDENT_ESCALATED,
    EVIDENCE_ADDED,
    INCIDENT_REVIEWED,
    INCIDENT_FOLLOW_UP_OPENED,
    COMPLIANCE_REPORT_WRITTEN,
)
