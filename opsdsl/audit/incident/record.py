"""The incident record: what happened in one run, computed from its ledger entries alone."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath

from opsdsl.audit import entries as kinds
from opsdsl.audit.incident._common import (
    EVIDENCE_DIR,
    IncidentError,
    _brief,
    _canonical,
    _file_digest,
    _pick,
    _walk_files,
    iso_time,
    json_safe,
)
from opsdsl.audit.incident.record_builder import _RecordBuilder
from opsdsl.audit.metrics import summarize_run

_ENTRY_FIELDS = ("seq", "ts", "run", "kind", "data")
ENTRY_HASHES_DOMAIN = b"opsdsl.incident.entry-hashes.v1\0"
HASHES = "hashes"  # ledger.entries_digest_of: the digest is over the ledger's entry hashes


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


def entry_hashes_digest(hashes: Iterable[bytes]) -> str:
    """sha256 over a domain tag and the entries' ledger hashes (32 bytes each), in ledger order.

    Each ledger hash already covers its entry's seq, ts, run, kind and canonical data (and
    its link to the entry before), so this anchors the same facts as `entries_digest`
    without canonicalising every entry again.
    """
    digest = hashlib.sha256(ENTRY_HASHES_DOMAIN)
    for value in hashes:
        if len(value) != 32:
            raise ValueError("a ledger entry hash is 32 bytes")
        digest.update(value)
    return "sha256:" + digest.hexdigest()


def _stored_hashes(run: Sequence[dict]) -> list[bytes] | None:
    """The ledger hashes the entries carry (Entry.to_dict()'s `hash`), or None if any lacks one."""
    hashes = []
    for entry in run:
        value = entry.get("hash")
        if type(value) is not str or len(value) != 64:
            return None
        try:
            hashes.append(bytes.fromhex(value))
        except ValueError:
            return None
    return hashes


def ledger_anchor(run: Sequence[dict], checkpoint: dict | None) -> dict:
    """The record's `ledger` field: where the run's entries sit and a digest of them.

    Entries read from the ledger carry their hashes, and the digest is taken over those
    (`entries_digest_of: "hashes"`); entries without them (a rehearsal, a test) are
    digested by content (`entries_digest`), the field then absent as in records before it.
    """
    anchor = {
        "first_seq": run[0]["seq"],
        "last_seq": run[-1]["seq"],
        "entries": len(run),
        "entries_digest": "",
        "checkpoint": _checkpoint(checkpoint),
    }
    hashes = _stored_hashes(run)
    if hashes is None:
        anchor["entries_digest"] = entries_digest(run)
    else:
        anchor["entries_digest"] = entry_hashes_digest(hashes)
        anchor["entries_digest_of"] = HASHES
    return anchor


def build_record(
    entries: list[dict], *, checkpoint: dict | None, evidence_dir: Path | None, signing: dict | None = None
) -> dict:
    """The incident record of one run, from its ledger entries alone (deterministic).

    `evidence_dir` is where the run's evidence files are: each file the ledger recorded is
    checked against it (status ok / missing / changed), and files there that the ledger
    never recorded are listed as "unrecorded". None skips the check ("unchecked").
    `signing` ({keyid, key, mode}) names the key that signs the record, kept as "signing".
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
        "plan_verification": None
        if verified is None
        else _pick(verified["data"], "keyids", "trust", "path", "environment"),
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
        "detection": {
            "claimed": iso_time(summary.claimed_detected),
            "received": iso_time(summary.received),
            "clamped": summary.detection_clamped,
        },
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
        "signing": None if signing is None else _pick(signing, "keyid", "key", "mode"),
        "review": _review(summary.review),
        "ledger": ledger_anchor(run, checkpoint),
    }
    record["follow_ups"] = _follow_ups(record)
    return json_safe(record)


def _review(review: dict | None) -> dict | None:
    """The latest person's review (incident.reviewed), its time in ISO form."""
    return None if review is None else review | {"ts": iso_time(review["ts"])}


def _first(entries: Sequence[dict], kind: str) -> dict:
    return next(entry for entry in entries if entry["kind"] == kind)


def _last(entries: Sequence[dict], kind: str) -> dict | None:
    return next((entry for entry in reversed(entries) if entry["kind"] == kind), None)


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(max(0.0, value), 3)


def _checkpoint(checkpoint: dict | None) -> dict | None:
    """The latest signed ledger checkpoint, copied so a truncated or rewritten ledger shows."""
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, Mapping) or "seq" not in checkpoint or "head" not in checkpoint:
        raise IncidentError("a ledger checkpoint needs at least `seq` and `head`")
    return _pick(checkpoint, "seq", "head", "ts", "keyid", "sig")


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

    if record["status"] not in ("succeeded", "failed", "refused", "cancelled"):
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
    review = record["review"]
    if review is None:
        if not record["dry_run"] and record["status"] in ("succeeded", "failed", "refused", "cancelled"):
            add("review", None, f"Review the incident: opsdsl incident review {record['incident_id']} --by NAME")
    else:
        for text in review["follow_ups"]:
            add("review", None, _brief(text, 400))
    return todo
