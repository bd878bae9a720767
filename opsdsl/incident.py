"""Incident folders: the signed record, the RCA report, the evidence and a signed manifest.

A run leaves `ROOT/{year}/{incident_id}/` holding `record.json` (what happened, computed
from the run's ledger entries alone and signed), `rca.md` (the same, for people),
`evidence/...` (written by evidence.collect) and `manifest.json` (the sha256 of every
other file, signed, written last). Signed files are readable JSON: the signature covers
DSSE's PAE of the payload type and the RFC 8785 bytes of the body, so a record signature
can never pass for a manifest's or a plan's. `verify_folder` and `verify_archive` check
all of it; `export_incident` packs a folder into a byte-for-byte reproducible tar.gz.
Layout and definitions for users: docs/incidents.md; the record's schema:
schemas/incident.schema.json.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import secrets
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsdsl.canonical import canonical_json, sha256_digest
from opsdsl.errors import OpsdslError
from opsdsl.files import write_atomic, write_atomic_bytes
from opsdsl.reporting import RunSummary, format_duration, summarize_run
from opsdsl.runtime import entries as kinds
from opsdsl.signing import decode_base64, encode_base64, keyid, pae

RECORD_PAYLOAD_TYPE = "application/vnd.opsdsl.incident+json"
MANIFEST_PAYLOAD_TYPE = "application/vnd.opsdsl.manifest+json"
RECORD_FILE = "record.json"
RCA_FILE = "rca.md"
MANIFEST_FILE = "manifest.json"
EVIDENCE_DIR = "evidence"
DEFAULT_SECTIONS = ("timeline", "steps", "policy_decisions", "evidence")
RCA_SECTIONS = (*DEFAULT_SECTIONS, "context")  # context: params, inputs and the event
_MAX_SAFE_INT = 2**53 - 1
_ENTRY_FIELDS = ("seq", "ts", "run", "kind", "data")
_MAX_SIGNED_FILE = 64 * 1024 * 1024  # record.json / manifest.json kept in memory while verifying
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class IncidentError(OpsdslError):
    """An incident folder or archive was refused: tampered with, incomplete, or unsafe to unpack."""

    exit_code = 1


class IncidentFileError(IncidentError):
    """The folder or archive to check cannot be read at all: missing, unreadable, not a tar.gz."""

    exit_code = 2


# --- the record -----------------------------------------------------------------------


def iso_time(ts: float | None) -> str | None:
    """ISO 8601 UTC with milliseconds and `Z`: `2025-03-01T10:04:12.250Z`."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run_entries(entries: Iterable[dict]) -> list[dict]:
    """One run's entries in ledger order: the run of the first run.created, others dropped."""
    ordered = sorted(entries, key=lambda entry: entry["seq"])
    created = next((entry for entry in ordered if entry["kind"] == kinds.RUN_CREATED), None)
    if created is None:
        raise IncidentError("no run.created entry: the ledger entries do not start a run (truncated?)")
    return [entry for entry in ordered if entry.get("run") == created["run"]]


def entries_digest(entries: Sequence[dict]) -> str:
    """sha256 over the entries as canonical JSON lines (RFC 8785, each followed by a newline).

    Only the contract's fields count ({seq, ts, run, kind, data}), so entries read from the
    database (which also carry their chain links, `prev` and `hash`) give the same digest.
    """
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(_canonical({field: entry.get(field) for field in _ENTRY_FIELDS}))
        digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


def json_safe(value: Any) -> Any:
    """`value` with integers beyond ±2^53 as decimal strings, which RFC 8785 (so a signature) cannot carry.

    Plans refuse such numbers at load time; events cannot be refused, and a nanosecond
    timestamp in an alert is enough to need this.
    """
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if type(value) is int and abs(value) > _MAX_SAFE_INT:
        return str(value)
    return value


def _canonical(value: Any) -> bytes:
    try:
        return canonical_json(value)
    except ValueError:  # rfc8785's IntegerDomainError
        return canonical_json(json_safe(value))


def build_record(entries: list[dict], *, checkpoint: dict | None, evidence_dir: Path | None) -> dict:
    """The incident record of one run, from its ledger entries alone (deterministic).

    `evidence_dir` is where the run's evidence files are: each file the ledger recorded is
    checked against it (status ok / missing / changed), and files there that the ledger
    never recorded are listed as "unrecorded". None skips the check ("unchecked").
    """
    run = run_entries(entries)
    created = _first(run, kinds.RUN_CREATED)["data"]
    summary = summarize_run(run)
    builder = _RecordBuilder(summary)
    for entry in run:
        builder.add(entry)
    evidence = _check_evidence(builder.evidence, evidence_dir)
    finished = _last(run, kinds.RUN_FINISHED)
    verified = _last(run, kinds.PLAN_VERIFIED)
    record = {
        "apiVersion": "opsdsl/v1",
        "kind": "IncidentRecord",
        "incident_id": created.get("incident_id") or summary.run,
        "run": summary.run,
        "parent_run": created.get("parent_run"),
        "parent_step": created.get("parent_step"),
        "dry_run": summary.dry_run,
        "pack": {
            "name": created.get("pack"),
            "version": created.get("pack_version"),
            "digest": created.get("pack_digest"),
        },
        "plan_digest": created.get("plan_digest"),
        "plan_verification": None if verified is None else _pick(verified["data"], "keyids", "trust"),
        "playbook": created.get("playbook"),
        "severity": created.get("severity"),
        "status": summary.status,
        "error": finished["data"].get("error") if finished else None,
        "human": summary.human,
        "trigger": created.get("trigger"),
        "hook": created.get("hook"),
        "escalate": (finished["data"].get("escalate") if finished else None) or created.get("escalate"),
        "params": created.get("params") or {},
        "inputs": created.get("inputs") or {},
        "event": created.get("event"),
        "times": {
            "created": iso_time(summary.created),
            "detected": iso_time(summary.detected),
            "acknowledged": iso_time(summary.acknowledged),
            "mitigated": iso_time(summary.mitigated),
            "resolved": iso_time(summary.resolved),
            "finished": iso_time(summary.finished),
        },
        "acknowledged_by": summary.acknowledged_by,
        "durations": {
            "acknowledge": _seconds(summary.acknowledge_delay),
            "mitigate": _seconds(None if summary.mitigated is None else summary.mitigated - summary.detected),
            "resolve": _seconds(summary.resolve_delay),
            "total": _seconds(None if summary.finished is None else summary.finished - summary.detected),
        },
        "retries": summary.retries,
        "timeline": builder.timeline,
        "steps": [state.to_dict() for state in builder.steps.values()],
        "policy_decisions": builder.decisions,
        "approvals": builder.approvals,
        "failures": builder.failures,
        "compensations": [state.compensation_dict() for state in builder.steps.values() if state.compensates],
        "evidence": evidence,
        "follow_ups": [],
        "ledger": {
            "first_seq": run[0]["seq"],
            "last_seq": run[-1]["seq"],
            "entries": len(run),
            "entries_digest": entries_digest(run),
            "checkpoint": _checkpoint(checkpoint),
        },
    }
    record["follow_ups"] = _follow_ups(record)
    return json_safe(record)


def _first(entries: Sequence[dict], kind: str) -> dict:
    return next(entry for entry in entries if entry["kind"] == kind)


def _last(entries: Sequence[dict], kind: str) -> dict | None:
    return next((entry for entry in reversed(entries) if entry["kind"] == kind), None)


def _pick(data: Mapping, *fields: str) -> dict:
    return {field: data.get(field) for field in fields}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 3)


def _checkpoint(checkpoint: dict | None) -> dict | None:
    """The latest signed ledger checkpoint, copied so a truncated or rewritten ledger shows."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, Mapping) or "seq" not in checkpoint or "head" not in checkpoint:
        raise IncidentError("a ledger checkpoint needs at least `seq` and `head`")
    return _pick(checkpoint, "seq", "head", "ts", "keyid", "sig")


def _brief(text: object, limit: int = 240) -> str:
    """One line of at most `limit` characters: what timelines and tables can hold."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


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
        state.outputs_digest = sha256_digest(_canonical(data.get("outputs") or {}))
        plural = "s" if state.attempts != 1 else ""
        self.line(entry, f"{data['step']} succeeded after {state.attempts} attempt{plural}")

    def on_step_failed(self, entry: dict, data: dict) -> None:
        state = self.step(entry)
        state.finished, state.error = float(entry["ts"]), data.get("error")
        state.attempts = max(state.attempts, int(data.get("attempts") or 0))
        state.denied_by = data.get("denied_by")
        state.status = "denied" if state.denied_by else "failed"
        state.continue_on_error = bool(data.get("continue_on_error"))
        state.outputs_digest = sha256_digest(_canonical(data.get("outputs") or {}))
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


def _evidence_relpath(path: object, evidence_dir: Path | None) -> str | None:
    """`evidence/<path>` for a path relative to the evidence folder (or absolute inside it); None if outside."""
    if not isinstance(path, str) or not path:
        return None
    pure = PurePosixPath(path.replace(os.sep, "/"))
    if pure.is_absolute():
        if evidence_dir is None:
            return None
        try:
            pure = PurePosixPath(Path(path).relative_to(evidence_dir).as_posix())
        except ValueError:
            return None
    if any(part in ("", ".", "..") for part in pure.parts) or not pure.parts:
        return None
    return f"{EVIDENCE_DIR}/{pure.as_posix()}"


def _check_evidence(items: list[dict], evidence_dir: Path | None) -> list[dict]:
    """The ledger's evidence files, each checked against the folder, plus files it never recorded."""
    checked, seen = [], set()
    for item in items:
        relpath = _evidence_relpath(item["path"], evidence_dir)
        declared = item.get("sha256")
        digest = (
            None
            if not isinstance(declared, str)
            else declared
            if declared.startswith("sha256:")
            else f"sha256:{declared}"
        )
        status = "unchecked"
        if relpath is None:
            status = "invalid_path"
        elif evidence_dir is not None:
            on_disk = evidence_dir / relpath.removeprefix(f"{EVIDENCE_DIR}/")
            if on_disk.is_symlink() or not on_disk.is_file():
                status = "missing"
            else:
                status = "ok" if _file_digest(on_disk) == digest else "changed"
            seen.add(relpath)
        checked.append(item | {"path": relpath or item["path"], "sha256": digest, "status": status})
    if evidence_dir is not None and evidence_dir.is_dir():
        for relpath, full in sorted(_walk_files(evidence_dir, prefix=EVIDENCE_DIR)):
            if relpath not in seen and full.is_file() and not full.is_symlink():
                size, digest = full.stat().st_size, _file_digest(full)
                checked.append(
                    {
                        "step": None,
                        "name": None,
                        "path": relpath,
                        "sha256": digest,
                        "size": size,
                        "status": "unrecorded",
                    }
                )
    return checked


def _follow_ups(record: dict) -> list[dict]:
    """What someone still has to do, from failures, denials, doubts, compensations and evidence."""
    todo: list[dict] = []

    def add(kind: str, step: str | None, text: str) -> None:
        todo.append({"kind": kind, "step": step, "summary": text})

    if record["status"] not in ("succeeded", "failed", "refused"):
        add("unfinished", None, f"The run is {record['status']}: resume it or close the incident by hand")
    for step in record["steps"]:
        if step["compensates"]:
            continue
        if step["status"] == "denied":
            add("denied", step["id"], f"Review policy {step['denied_by']}, which denied {step['id']}")
        elif step["status"] == "failed":
            add("failed", step["id"], f"Find why {step['id']} failed: {_brief(step['error'], 160)}")
        elif step["status"] == "in_doubt":
            add("in_doubt", step["id"], f"Decide whether {step['id']} took effect (it was interrupted mid-flight)")
    for compensation in record["compensations"]:
        if compensation["status"] == "succeeded":
            add("compensated", compensation["step"], f"Confirm that undoing {compensation['step']} restored the state")
        else:
            add(
                "compensation_failed",
                compensation["step"],
                f"Undo {compensation['step']} by hand: compensation {compensation['status']}",
            )
    for approval in record["approvals"]:
        if approval["timed_out"]:
            add(
                "approval_timed_out",
                approval["step"],
                f"Approval for {approval['step']} timed out: check the paging path",
            )
    for item in record["evidence"]:
        if item["status"] in ("missing", "changed", "invalid_path", "unrecorded"):
            add("evidence", item["step"], f"Evidence {item['path']} is {item['status'].replace('_', ' ')}")
    if record["escalate"]:
        add("escalate", None, f"Escalate to {record['escalate']}")
    return todo


# --- the RCA report -------------------------------------------------------------------


def render_rca(
    entries: list[dict],
    record: dict | None = None,
    *,
    title: str | None = None,
    summary: str | None = None,
    include: Sequence[str] = DEFAULT_SECTIONS,
) -> str:
    """The RCA report in Markdown; the same entries give the same bytes.

    Failures, compensations and follow-ups always appear (when there are any); `include`
    picks the other sections from RCA_SECTIONS. `record` saves rebuilding it from `entries`.
    """
    unknown = [name for name in include if name not in RCA_SECTIONS]
    if unknown:
        raise ValueError(f"unknown RCA section(s) {', '.join(unknown)}; known: {', '.join(RCA_SECTIONS)}")
    if record is None:
        record = build_record(entries, checkpoint=None, evidence_dir=None)
    elif entries and run_entries(entries)[0]["run"] != record["run"]:
        raise ValueError(f"the record is of run {record['run']}, the entries of another run")
    out = [f"# {_md_line(title) if title else default_title(record)}", "", f"**{headline(record)}**", ""]
    out += _overview(record)
    if summary:
        out += ["## Summary", "", summary.strip(), ""]
    if "timeline" in include:
        out += ["## Timeline", ""] + [_timeline_line(item) for item in record["timeline"]] + [""]
    if "steps" in include and record["steps"]:
        out += [
            "## Steps",
            "",
            "| Step | Action | Status | Attempts | Started | Took | Error |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [_step_row(step) for step in record["steps"]] + [""]
    if "policy_decisions" in include and (record["policy_decisions"] or record["approvals"]):
        out += ["## Decisions", "", *_decision_lines(record), ""]
    if record["failures"]:
        out += ["## Failures", ""] + [_failure_line(failure) for failure in record["failures"]] + [""]
    if record["compensations"]:
        out += ["## Compensations", ""]
        out += [
            f"- `{item['step']}` undone by `{item['compensation']}`: {item['status']}"
            + (f" — {_md_line(item['error'])}" if item["error"] else "")
            for item in record["compensations"]
        ] + [""]
    if "evidence" in include and record["evidence"]:
        out += ["## Evidence", "", "| File | SHA-256 | Size | Step | Status |", "|---|---|---|---|---|"]
        out += [
            f"| `{_cell(item['path'])}` | `{item['sha256']}` | {item['size']} | {_cell(item['step'] or '–')} | {item['status']} |"
            for item in record["evidence"]
        ] + [""]
    if "context" in include:
        for field in ("params", "inputs", "event"):
            out += [
                f"## {field.capitalize()}",
                "",
                "```json",
                json.dumps(record[field], indent=2, sort_keys=True, ensure_ascii=False),
                "```",
                "",
            ]
    out += ["## Follow-ups", ""]
    out += [f"- [ ] {_md_line(item['summary'])}" for item in record["follow_ups"]] or ["None."]
    ledger = record["ledger"]
    checkpoint = ledger["checkpoint"]
    sealed = (
        f"; checkpoint at seq {checkpoint['seq']}, head `{checkpoint['head']}`" if checkpoint else "; no checkpoint"
    )
    out += [
        "",
        "---",
        "",
        f"Ledger entries {ledger['first_seq']}–{ledger['last_seq']} ({ledger['entries']}), digest `{ledger['entries_digest']}`{sealed}.",
    ]
    return "\n".join(out) + "\n"


def default_title(record: dict) -> str:
    return f"Incident {record['incident_id']}: {record['playbook']}"


def headline(record: dict) -> str:
    """One sentence: "SEV-2 query-latency-regression on sqlx-sev2 succeeded in 4m12s after 1 retry; 0 steps denied."."""
    durations = record["durations"]
    if record["status"] in ("succeeded", "failed", "refused"):
        outcome = f"{record['status']} in {format_duration(durations['total'] or 0)}"
    else:
        outcome = f"is {record['status']}"
    retries = record["retries"]
    tries = "with no retries" if not retries else f"after {retries} retr{'y' if retries == 1 else 'ies'}"
    denied = sum(step["status"] == "denied" for step in record["steps"])
    prefix = "Dry run: " if record["dry_run"] else ""
    pack = record["pack"]["name"]
    return f"{prefix}{record['severity']} {record['playbook']} on {pack} {outcome} {tries}; {denied} step{'s' if denied != 1 else ''} denied."


def _overview(record: dict) -> list[str]:
    times, pack = record["times"], record["pack"]
    rows = [
        ("Incident", f"`{record['incident_id']}`"),
        ("Run", f"`{record['run']}`"),
        ("Pack", f"{pack['name']} {pack['version']} (`{pack['digest']}`)"),
        ("Plan", f"`{record['plan_digest']}`"),
        ("Trigger", (record["trigger"] or "manual run") + (f" (hook {record['hook']})" if record["hook"] else "")),
        ("Detected", times["detected"]),
        ("Acknowledged", f"{times['acknowledged']} by {record['acknowledged_by']}" if times["acknowledged"] else "–"),
        ("Mitigated", times["mitigated"] or "–"),
        ("Resolved", times["resolved"] or "–"),
        ("Finished", times["finished"] or "–"),
    ]
    return ["| | |", "|---|---|", *(f"| {name} | {_cell(value)} |" for name, value in rows), ""]


def _offset(seconds: float) -> str:
    return "T0" if seconds <= 0 else f"T+{format_duration(seconds)}"


def _timeline_line(item: dict) -> str:
    return f"- {_offset(item['t'])} ({item['ts']}) {_md_line(item['summary'])}"


def _step_row(step: dict) -> str:
    took = "–"
    if step["started"] and step["finished"]:
        took = format_duration(_parse_iso(step["finished"]) - _parse_iso(step["started"]))
    error = _cell(_brief(step["error"], 120)) if step["error"] else ""
    status = step["status"] + (f" ({step['denied_by']})" if step["denied_by"] else "")
    return f"| `{step['id']}` | {step['action'] or '–'} | {_cell(status)} | {step['attempts']} | {step['started'] or '–'} | {took} | {error} |"


def _decision_lines(record: dict) -> list[str]:
    lines = []
    for decision in record["policy_decisions"]:
        if decision["decision"] == "allow" and not decision["policies"] and not decision["errors"]:
            continue  # nothing applied: no decision worth reading
        lines.append(f"- `{decision['step']}` ({decision['action']}): **{decision['decision']}**")
        lines += [
            f"  - policy `{p['id']}` ({p['effect']}): {_md_line(p.get('message') or '')}" for p in decision["policies"]
        ]
        lines += [
            f"  - policy `{e['id']}` failed to evaluate (counted as applying): {_md_line(e['error'])}"
            for e in decision["errors"]
        ]
    for approval in record["approvals"]:
        responses = "; ".join(
            f"{r['decision']} by {r['by']} at {r['ts']}" + (f" ({_md_line(r['comment'])})" if r["comment"] else "")
            for r in approval["responses"]
        )
        timed_out = " (timed out)" if approval["timed_out"] else ""
        lines.append(
            f"- approval of `{approval['step']}`: {approval['outcome'] or 'pending'}{timed_out}"
            + (f" — {responses}" if responses else "")
        )
    return lines or ["No policy applied and no approval was asked for."]


def _failure_line(failure: dict) -> str:
    what = "step failed" if failure["final"] else f"attempt {failure['attempt']} failed"
    return f"- {failure['ts']} `{failure['step']}` {what}: {_md_line(_brief(failure['error'], 400))}"


def _md_line(text: object) -> str:
    """One line of text from the run (errors, comments): no HTML reaches whoever renders the report."""
    return " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: object) -> str:
    return _md_line(text).replace("|", "\\|")


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- writing --------------------------------------------------------------------------


def incident_folder(root: Path, entries: Iterable[dict]) -> Path:
    """`root/{year of the run's creation, UTC}/{incident_id}`; an unsafe incident id is refused."""
    run = run_entries(entries)
    created = _first(run, kinds.RUN_CREATED)
    incident_id = created["data"].get("incident_id") or created["run"]
    if not isinstance(incident_id, str) or not _SAFE_ID.fullmatch(incident_id):
        raise IncidentError(f"incident id {incident_id!r} cannot be a folder name (letters, digits, '.', '_', '-')")
    year = datetime.fromtimestamp(float(created["ts"]), UTC).year
    return Path(root) / f"{year:04d}" / incident_id


def rca_settings(entries: Sequence[dict]) -> dict:
    """The `with:` of the run's latest report.rca intent ({title, summary, include}), else {}."""
    intent = next(
        (e for e in reversed(entries) if e["kind"] == kinds.STEP_INTENT and e["data"].get("action") == "report.rca"),
        None,
    )
    inputs = intent["data"].get("with") if intent else None
    return inputs if isinstance(inputs, dict) else {}


def write_incident(
    root: Path,
    entries: list[dict],
    *,
    checkpoint: dict | None,
    signer: Ed25519PrivateKey,
    rca: dict | None = None,
) -> Path:
    """Write (or rewrite) a run's incident folder: record.json, rca.md, then manifest.json last.

    `rca` ({title, summary, include}) overrides what the run's report.rca step asked for.
    Unknown section names are dropped rather than failing: the record matters more than
    its layout. Each file is replaced atomically; a reader between two files sees an old
    manifest that no longer matches, which verification reports.
    """
    run = run_entries(entries)
    folder = incident_folder(root, run)
    if folder.is_symlink():
        raise IncidentError(f"{folder} is a symlink; an incident folder must be a real directory")
    folder.mkdir(parents=True, exist_ok=True)
    _regular_files(folder)  # refuse links before writing anything, not halfway
    record = build_record(run, checkpoint=checkpoint, evidence_dir=folder / EVIDENCE_DIR)
    settings = rca_settings(run) | (rca or {})
    sections = settings.get("include", settings.get("sections"))  # the pack schema says `include`
    if not isinstance(sections, list | tuple):
        sections = DEFAULT_SECTIONS
    sections = [name for name in sections if name in RCA_SECTIONS]
    title, summary = settings.get("title"), settings.get("summary")
    markdown = render_rca(
        run,
        record,
        title=title if isinstance(title, str) else None,
        summary=summary if isinstance(summary, str) else None,
        include=sections,
    )
    write_atomic_bytes(folder / RECORD_FILE, signed_file_bytes(RECORD_PAYLOAD_TYPE, "record", record, [signer]))
    write_atomic(folder / RCA_FILE, markdown)
    manifest = {"files": digest_folder(folder)}
    write_atomic_bytes(folder / MANIFEST_FILE, signed_file_bytes(MANIFEST_PAYLOAD_TYPE, "manifest", manifest, [signer]))
    return folder


def signed_file_bytes(payload_type: str, field: str, body: dict, signers: Sequence[Ed25519PrivateKey]) -> bytes:
    """`{payloadType, <field>: body, signatures}` as indented JSON; each sig over PAE(type, RFC 8785 body)."""
    signed = pae(payload_type, canonical_json(body))
    signatures = sorted(
        ({"keyid": keyid(key.public_key()), "sig": encode_base64(key.sign(signed))} for key in signers),
        key=lambda item: item["keyid"],
    )
    document = {"payloadType": payload_type, field: body, "signatures": signatures}
    return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def digest_folder(folder: Path) -> dict[str, str]:
    """`{relative/path: "sha256:HEX"}` of every file but manifest.json, sorted; links are refused."""
    return {relpath: _file_digest(full) for relpath, full in _regular_files(folder) if relpath != MANIFEST_FILE}


def _regular_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file below `folder`, sorted; IncidentError at the first symlink or special file."""
    found = []
    for relpath, full in _walk_files(folder):
        mode = full.lstat().st_mode
        if not stat.S_ISREG(mode):
            raise IncidentError(f"{full} is {_describe_mode(mode)}; an incident folder holds regular files only")
        found.append((relpath, full))
    return sorted(found)


def _walk_files(folder: Path, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every non-directory below `folder`; links are not followed."""
    for current, dirs, names in os.walk(folder, followlinks=False):
        base = Path(current)
        # A symlink to a directory shows up in `dirs`; report it as the link it is.
        names = names + [name for name in dirs if (base / name).is_symlink()]
        dirs[:] = sorted(name for name in dirs if not (base / name).is_symlink())
        for name in sorted(names):
            relative = (base / name).relative_to(folder).as_posix()
            yield (f"{prefix}/{relative}" if prefix else relative), base / name


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _describe_mode(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "not a regular file"


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """What checking an incident folder or archive found; `problems` empty means intact and trusted."""

    source: str
    incident_id: str | None
    run: str | None
    signers: tuple[str, ...]
    files: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """IncidentError (exit 1) listing every problem, if there are any."""
        if self.problems:
            listed = "\n".join(f"  - {problem}" for problem in self.problems)
            raise IncidentError(f"{self.source}: incident pack failed verification:\n{listed}")


@dataclass(frozen=True)
class _Member:
    """One file of a folder or archive, as verification sees it."""

    kind: str  # "file", or what else it is ("a symlink", ...)
    digest: str | None
    data: bytes | None  # kept for record.json and manifest.json only


def verify_folder(folder: Path, trusted: Mapping[str, Ed25519PublicKey]) -> list[str]:
    """Problems found in an incident folder (empty: intact, signed by a trusted key)."""
    return list(verify_folder_report(folder, trusted).problems)


def verify_folder_report(folder: Path, trusted: Mapping[str, Ed25519PublicKey]) -> VerifyReport:
    """verify_folder's findings with who signed; IncidentFileError (exit 2) if `folder` is not a folder."""
    folder = Path(folder)
    _check_trust(trusted)
    if folder.is_symlink():
        raise IncidentFileError(f"{folder} is a symlink; give the incident folder itself")
    if not folder.is_dir():
        raise IncidentFileError(
            f"{folder}: no such incident folder" if not folder.exists() else f"{folder} is not a directory"
        )
    tree: dict[str, _Member] = {}
    for relpath, full in _walk_files(folder):
        try:
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                tree[relpath] = _Member(_describe_mode(mode), None, None)
                continue
            keep = relpath in (RECORD_FILE, MANIFEST_FILE) and full.stat().st_size <= _MAX_SIGNED_FILE
            tree[relpath] = _Member("file", _file_digest(full), full.read_bytes() if keep else None)
        except OSError as exc:
            tree[relpath] = _Member(f"unreadable ({exc.strerror or exc})", None, None)
    return _verify_tree(tree, folder.name, trusted, str(folder))


def _check_trust(trusted: Mapping[str, Ed25519PublicKey]) -> None:
    if not trusted:
        raise ValueError("no trusted keys: an empty trust set verifies nothing")


def _verify_tree(
    tree: Mapping[str, _Member], name: str, trusted: Mapping[str, Ed25519PublicKey], source: str
) -> VerifyReport:
    problems: list[str] = []
    # 1. record.json and manifest.json: present, well-formed, the right payload type, and
    #    signed by at least one trusted key (a bad signature by a trusted key is reported
    #    even when another one verifies).
    record, record_signers = _open_signed(tree, RECORD_FILE, RECORD_PAYLOAD_TYPE, "record", trusted, problems)
    manifest, manifest_signers = _open_signed(tree, MANIFEST_FILE, MANIFEST_PAYLOAD_TYPE, "manifest", trusted, problems)
    # 2. No symlinks, devices or unreadable files anywhere in the folder.
    for relpath, member in sorted(tree.items()):
        if member.kind != "file":
            problems.append(f"{relpath}: {member.kind}; an incident folder holds regular files only")
    listed: dict[str, str] = {}
    if manifest is not None:
        # 3. The manifest lists safe relative paths with sha256 digests, record.json and rca.md among them.
        files = manifest.get("files")
        if not isinstance(files, dict):
            problems.append(f"{MANIFEST_FILE}: `files` must map paths to digests")
            files = {}
        for path, digest in files.items():
            if not _safe_relpath(path) or path == MANIFEST_FILE:
                problems.append(f"{MANIFEST_FILE}: lists an unsafe or impossible path {path!r}")
            elif not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                problems.append(f"{MANIFEST_FILE}: {path}: digest must be sha256:<64 hex digits>")
            else:
                listed[path] = digest
        for required in (RECORD_FILE, RCA_FILE):
            if required not in files:
                problems.append(f"{MANIFEST_FILE}: does not cover {required}")
        # 4. Every listed file is present with the listed digest.
        for path, digest in sorted(listed.items()):
            member = tree.get(path)
            if member is None:
                problems.append(f"{path}: listed in the manifest but missing")
            elif member.kind == "file" and member.digest != digest:
                problems.append(
                    f"{path}: content changed since the manifest was signed ({member.digest}, signed {digest})"
                )
        # 5. Nothing else: every file but manifest.json is listed.
        for path in sorted(set(tree) - set(files) - {MANIFEST_FILE}):
            problems.append(f"{path}: not in the manifest (added after signing)")
    if record is not None:
        # 6. The record belongs here: the folder is named after its incident, and the evidence
        #    the ledger recorded is in the manifest with the digest the ledger recorded.
        incident_id = record.get("incident_id")
        if incident_id != name:
            problems.append(f"{RECORD_FILE}: the record is of incident {incident_id!r} but the folder is {name!r}")
        evidence = record.get("evidence") if manifest is not None else None
        for item in evidence if isinstance(evidence, list) else []:
            if (
                isinstance(item, dict)
                and item.get("status") == "ok"
                and listed.get(item.get("path")) != item.get("sha256")
            ):
                problems.append(
                    f"{item.get('path')}: the ledger recorded {item.get('sha256')}, the manifest does not agree"
                )
    return VerifyReport(
        source=source,
        incident_id=record.get("incident_id") if record else None,
        run=record.get("run") if record else None,
        signers=tuple(sorted(set(record_signers) | set(manifest_signers))),
        files=tuple(sorted(tree)),
        problems=tuple(problems),
    )


def _safe_relpath(path: object) -> bool:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _open_signed(
    tree: Mapping[str, _Member],
    relpath: str,
    payload_type: str,
    field: str,
    trusted: Mapping[str, Ed25519PublicKey],
    problems: list[str],
) -> tuple[dict | None, list[str]]:
    """The signed body of `relpath` and the trusted keyids that signed it; problems appended."""
    member = tree.get(relpath)
    if member is None:
        problems.append(f"{relpath}: missing")
        return None, []
    if member.kind != "file":
        return None, []  # reported with the other non-files
    if member.data is None:
        problems.append(f"{relpath}: larger than {_MAX_SIGNED_FILE // (1024 * 1024)} MiB")
        return None, []
    try:
        document = json.loads(member.data, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        problems.append(f"{relpath}: not valid JSON ({exc})")
        return None, []
    expected = {"payloadType", field, "signatures"}
    if not isinstance(document, dict) or set(document) != expected:
        problems.append(f"{relpath}: expected exactly the fields {', '.join(sorted(expected))}")
        return None, []
    if document["payloadType"] != payload_type:
        problems.append(f"{relpath}: payload type {document['payloadType']!r}, expected {payload_type!r}")
        return None, []
    body, signatures = document[field], document["signatures"]
    if not isinstance(body, dict) or not isinstance(signatures, list):
        problems.append(f"{relpath}: `{field}` must be an object and `signatures` a list")
        return None, []
    try:
        signed = pae(payload_type, canonical_json(body))
    except Exception as exc:  # rfc8785 refuses what JSON allows (huge integers): not our record
        problems.append(f"{relpath}: cannot be canonicalised ({exc})")
        return None, []
    good: list[str] = []
    untrusted: list[str] = []
    bad = False
    for entry in signatures:
        kid = entry.get("keyid") if isinstance(entry, dict) else None
        sig = entry.get("sig") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not isinstance(sig, str):
            problems.append(f"{relpath}: a signature needs string `keyid` and `sig`")
            continue
        key = trusted.get(kid)
        if key is None:
            untrusted.append(kid)
        elif _signature_verifies(key, sig, signed):
            good.append(kid)
        else:
            bad = True
            problems.append(f"{relpath}: bad signature by trusted key {kid} (the content changed after signing)")
    if not good and not bad:
        if untrusted:
            problems.append(f"{relpath}: signed only by untrusted key(s) {', '.join(sorted(set(untrusted)))}")
        else:
            problems.append(f"{relpath}: not signed")
    return body, sorted(set(good))


def _signature_verifies(key: Ed25519PublicKey, sig: str, signed: bytes) -> bool:
    try:
        key.verify(decode_base64(sig), signed)
    except (ValueError, InvalidSignature):
        return False
    return True


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result


# --- archives -------------------------------------------------------------------------


def export_incident(folder: Path, out_tar_gz: Path) -> Path:
    """Pack `folder` into a reproducible tar.gz: sorted names, mtime 0, owner 0, modes 0644/0755.

    Everything in the folder goes in, so an exported stray file still fails verification;
    symlinks and special files are refused outright.
    """
    folder, out = Path(folder), Path(out_tar_gz)
    if folder.is_symlink() or not folder.is_dir():
        raise IncidentFileError(f"{folder}: no such incident folder")
    if out.resolve().is_relative_to(folder.resolve()):
        raise IncidentError(f"{out} is inside {folder}; write the archive elsewhere")
    members: list[tuple[str, Path | None]] = [(folder.name, None)]
    for current, dirs, names in os.walk(folder, followlinks=False):
        base = Path(current)
        for name in sorted(dirs + names):
            full = base / name
            mode = full.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise IncidentError(f"{full} is {_describe_mode(mode)}; an incident folder holds regular files only")
            arcname = f"{folder.name}/{full.relative_to(folder).as_posix()}"
            members.append((arcname, None if stat.S_ISDIR(mode) else full))
        dirs.sort()
    members.sort(key=lambda member: member[0])
    _write_atomic_stream(out, lambda handle: _write_tar(handle, members))
    return out


def _write_tar(handle: io.BufferedWriter, members: Sequence[tuple[str, Path | None]]) -> None:
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=handle, mtime=0, compresslevel=9) as compressed,
        tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for arcname, path in members:
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, path.stat().st_size
                with open(path, "rb") as source:
                    tar.addfile(info, source)


def _write_atomic_stream(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Like files.write_atomic_bytes, but streamed: archives may be larger than memory should hold."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        if temp.exists():
            temp.unlink()


def verify_archive(tar_gz: Path, trusted: Mapping[str, Ed25519PublicKey]) -> VerifyReport:
    """Check an exported incident pack without extracting it: member safety first, then as verify_folder.

    Refused outright (nothing else is checked): absolute paths, `..` or empty components,
    links, devices, duplicate names, and anything outside one top-level folder.
    """
    _check_trust(trusted)
    source = str(tar_gz)
    tree: dict[str, _Member] = {}
    refusals: list[str] = []
    tops: set[str] = set()
    seen: dict[str, str] = {}  # member name → "file" | "dir"
    try:
        with tarfile.open(tar_gz, mode="r:gz") as tar:
            for member in tar:
                name = member.name
                problem = _unsafe_member(member, seen)
                seen.setdefault(name, "dir" if member.isdir() else "file")
                if problem:
                    refusals.append(f"member {name!r}: {problem}")
                    continue
                top, _, rest = name.partition("/")
                tops.add(top)
                if not member.isreg():
                    continue
                if not rest:
                    refusals.append(f"member {name!r}: a file outside the incident folder")
                    continue
                tree[rest] = _read_member(tar, member, keep=rest in (RECORD_FILE, MANIFEST_FILE))
    except FileNotFoundError:
        raise IncidentFileError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise IncidentFileError(f"{source} is a directory; `incident verify` takes an exported .tar.gz") from None
    except PermissionError as exc:
        raise IncidentFileError(f"{source}: cannot read ({exc.strerror})") from None
    except (tarfile.TarError, EOFError, OSError) as exc:  # gzip.BadGzipFile and zlib.error are OSError
        raise IncidentFileError(f"{source}: not a readable tar.gz archive ({exc})") from None
    if len(tops) > 1:
        refusals.append(f"more than one top-level folder ({', '.join(sorted(tops))}); an incident pack holds one")
    parents = {name.rsplit("/", 1)[0] for name in seen if "/" in name}
    refusals += [
        f"member {name!r}: both a file and a folder"
        for name, kind in seen.items()
        if kind == "file" and name in parents
    ]
    if refusals:
        return VerifyReport(
            source, None, None, (), (), tuple(f"unsafe archive, refused: {refusal}" for refusal in refusals)
        )
    if not tops:
        return VerifyReport(source, None, None, (), (), ("the archive is empty",))
    return _verify_tree(tree, tops.pop(), trusted, source)


def _unsafe_member(member: tarfile.TarInfo, seen: Mapping[str, str]) -> str | None:
    """Why this member must not be unpacked, or None."""
    name = member.name
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or name.startswith("\\"):
        return "absolute path"
    if "\\" in name or "\0" in name:
        return "a backslash or NUL in the name"
    parts = name.split("/")
    if ".." in parts:
        return "a '..' component"
    if any(part in ("", ".") for part in parts):
        return "an empty or '.' component"
    if member.issym():
        return f"a symlink (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr() or member.isblk() or member.isfifo():
        return "a device or FIFO"
    if not (member.isreg() or member.isdir()):
        return "an unsupported member type"
    if name in seen:
        return "a duplicate name"
    return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, *, keep: bool) -> _Member:
    handle = tar.extractfile(member)
    assert handle is not None  # regular files always have content
    digest = hashlib.sha256()
    kept = bytearray() if keep and member.size <= _MAX_SIGNED_FILE else None
    for block in iter(lambda: handle.read(1 << 20), b""):
        digest.update(block)
        if kept is not None:
            kept += block
    return _Member("file", "sha256:" + digest.hexdigest(), bytes(kept) if kept is not None else None)
