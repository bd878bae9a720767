"""Incident folders: the record, the RCA report, the signed manifest, export, and every way to tamper.

Real Ed25519 keys, real files and real tar archives; nothing is mocked.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.audit.incident import (
    MANIFEST_PAYLOAD_TYPE,
    RECORD_PAYLOAD_TYPE,
    IncidentError,
    IncidentFileError,
    build_record,
    entries_digest,
    export_incident,
    headline,
    incident_folder,
    render_rca,
    signed_file_bytes,
    verify_archive,
    verify_folder,
    write_incident,
)
from opsdsl.build.signing import keyid, pae
from opsdsl.canonical import canonical_json
from opsdsl.errors import OpsdslError
from opsdsl.resources import read_text

SCHEMA = jsonschema.Draft202012Validator(json.loads(read_text("schemas/incident.schema.json")))
T0 = 1_740_823_200.0  # 2025-03-01T10:00:00Z: the alert fired
INCIDENT = "INC-2025-0042"
EVIDENCE = b'{"cluster": "eu-1", "p95_ms": 912}\n'
EVIDENCE_SHA = hashlib.sha256(EVIDENCE).hexdigest()


def seeded_key(byte: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


SIGNER, MALLORY = seeded_key(7), seeded_key(9)
TRUSTED = {keyid(SIGNER.public_key()): SIGNER.public_key()}
CHECKPOINT = {"seq": 40, "head": "sha256:" + "ab" * 32, "ts": T0 + 300, "keyid": "k1", "sig": "c2ln"}


class Ledger:
    """Appends entries the way the scheduler does: increasing seq, one run id, redacted data."""

    def __init__(self, run: str = "r-0001", seq: int = 1) -> None:
        self.run, self.seq, self.entries = run, seq, []

    def add(self, at: float, kind: str, **data) -> None:
        self.entries.append({"seq": self.seq, "ts": T0 + at, "run": self.run, "kind": kind, "data": data})
        self.seq += 1

    def step(self, at: float, step: str, action: str, *, took: float = 1.0, attempts: int = 1, **outputs) -> None:
        self.add(at, "policy.decision", step=step, action=action, decision="allow", policies=[], approvals=0, errors=[])
        for attempt in range(1, attempts + 1):
            start = at + (attempt - 1) * 2
            self.add(
                start,
                "step.intent",
                step=step,
                attempt=attempt,
                action=action,
                idempotency_key=f"{self.run}:{step}",
                timeout=10,
                **{"with": {}},
            )
            if attempt < attempts:
                self.add(
                    start + 1, "attempt.failed", step=step, attempt=attempt, error="HTTP 503 from kernel", retry_in=1
                )
        self.add(at + took + (attempts - 1) * 2, "step.succeeded", step=step, attempts=attempts, outputs=outputs)


def sev2_run(
    *,
    run: str = "r-0001",
    outcome: str = "succeeded",
    approval: bool = False,
    evidence: bool = True,
    seq: int = 1,
) -> list[dict]:
    """The sketch's query-latency-regression run: inspect, invalidate (one retry), scale, evidence, RCA."""
    ledger = Ledger(run, seq)
    ledger.add(
        5,
        "run.created",
        run=run,
        incident_id=INCIDENT,
        pack="sqlx-sev2",
        pack_version="4.0.0",
        pack_digest="sha256:" + "11" * 32,
        plan_digest="sha256:" + "22" * 32,
        playbook="query-latency-regression",
        severity="SEV-2",
        params={"kernel_url": "http://127.0.0.1:8080", "slo_p95_ms": 250},
        inputs={"cluster": "eu-1"},
        event={"labels": {"alertname": "SqlxExecLatencyHigh", "cluster": "eu-1"}, "value": 912},
        detected_at=T0,
        dry_run=False,
        trigger="latency_breach",
        hook="onLatencyBreach",
        escalate=None,
        parent_run=None,
        parent_step=None,
    )
    ledger.add(5, "plan.verified", keyids=["k1"], trust="trust.yaml")
    ledger.add(5, "run.started", reason="start", by=None)
    ledger.step(6, "inspect", "http.request", took=2, json={"p95_ms": 912})
    ledger.step(9, "invalidate_plans", "http.request", attempts=2, status=200)
    human = False
    if approval:
        human = True
        ledger.add(
            15,
            "policy.decision",
            step="scale_pool",
            action="shell",
            decision="require_approval",
            approvals=1,
            errors=[],
            policies=[
                {
                    "id": "approval-for-high-risk",
                    "effect": "require_approval",
                    "message": "high-risk steps need a human outside SEV-1",
                    "origin": "sqlx-sev2",
                }
            ],
        )
        ledger.add(
            15,
            "approval.requested",
            step="scale_pool",
            reason="policy",
            message="high-risk steps need a human outside SEV-1",
            approvers=["alice", "bob"],
            min_approvals=1,
            policies=["approval-for-high-risk"],
            inputs={},
        )
        ledger.add(15, "run.paused", waiting=[{"step": "scale_pool", "reason": "approval"}])
        ledger.add(
            75, "approval.recorded", step="scale_pool", by="alice", decision="approve", answers={}, comment="go | scale"
        )
        ledger.add(75, "run.started", reason="approval", by="alice")
    else:
        ledger.add(
            15,
            "policy.decision",
            step="scale_pool",
            action="shell",
            decision="allow",
            approvals=0,
            errors=[],
            policies=[],
        )
    ledger.add(
        80,
        "step.intent",
        step="scale_pool",
        attempt=1,
        action="shell",
        idempotency_key=f"{run}:scale_pool",
        timeout=None,
        **{"with": {"argv": ["sqlxctl"]}},
    )
    failed = outcome == "failed"
    if failed:
        ledger.add(
            90,
            "step.failed",
            step="scale_pool",
            attempts=1,
            error="exit status 3: pool locked",
            outputs={"exit_code": 3},
            denied_by=None,
            continue_on_error=False,
        )
        ledger.step(91, "invalidate_plans.compensate", "http.request", took=1)
    else:
        ledger.add(200, "step.succeeded", step="scale_pool", attempts=1, outputs={"exit_code": 0})
    if evidence:
        ledger.add(
            201,
            "step.intent",
            step="snapshot",
            attempt=1,
            action="evidence.collect",
            idempotency_key=f"{run}:snapshot",
            timeout=30,
            **{"with": {}},
        )
        ledger.add(
            202,
            "evidence.added",
            step="snapshot",
            name="latency",
            files=[{"path": "snapshot/latency.json", "sha256": EVIDENCE_SHA, "size": len(EVIDENCE)}],
        )
        ledger.add(202, "step.succeeded", step="snapshot", attempts=1, outputs={"files": 1})
    ledger.add(
        250,
        "step.intent",
        step="rca",
        attempt=1,
        action="report.rca",
        idempotency_key=f"{run}:rca",
        timeout=None,
        **{"with": {"title": "Plan regression on eu-1", "summary": "Stale plans after a statistics refresh."}},
    )
    ledger.add(251, "step.succeeded", step="rca", attempts=1, outputs={})
    ledger.add(
        252,
        "run.finished",
        status=outcome,
        error="step scale_pool failed" if failed else None,
        failed_steps=["scale_pool"] if failed else [],
        compensated=["invalidate_plans"] if failed else [],
        human=human,
        escalate=None,
    )
    return ledger.entries


def place_evidence(root: Path, entries: list[dict], data: bytes = EVIDENCE) -> Path:
    """Write the evidence file where evidence.collect would have, before the record is written."""
    folder = incident_folder(root, entries)
    path = folder / "evidence" / "snapshot" / "latency.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    entries = sev2_run()
    place_evidence(tmp_path / "incidents", entries)
    return write_incident(tmp_path / "incidents", entries, checkpoint=CHECKPOINT, signer=SIGNER)


# --- the record -------------------------------------------------------------------------


def test_record_matches_schema_and_ledger(tmp_path: Path) -> None:
    entries = sev2_run()
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=place_evidence(tmp_path, entries) / "evidence")
    SCHEMA.validate(record)
    assert record["incident_id"] == INCIDENT and record["run"] == "r-0001" and record["severity"] == "SEV-2"
    assert record["pack"] == {"name": "sqlx-sev2", "version": "4.0.0", "digest": "sha256:" + "11" * 32}
    assert record["times"] == {
        "created": "2025-03-01T10:00:05.000Z",
        "detected": "2025-03-01T10:00:00.000Z",
        "acknowledged": None,  # automation acknowledges nothing: no person did
        "mitigated": "2025-03-01T10:03:20.000Z",  # scale_pool, the last step that changed something
        "resolved": "2025-03-01T10:04:12.000Z",
        "finished": "2025-03-01T10:04:12.000Z",
    }
    assert record["acknowledged_by"] is None
    assert record["detection"] == {
        "claimed": "2025-03-01T10:00:00.000Z",
        "received": "2025-03-01T10:00:05.000Z",
        "clamped": False,
    }
    assert record["review"] is None
    assert record["durations"] == {"acknowledge": None, "mitigate": 200.0, "resolve": 252.0, "total": 252.0}
    assert record["retries"] == 1
    steps = {step["id"]: step for step in record["steps"]}
    assert steps["invalidate_plans"]["attempts"] == 2 and steps["invalidate_plans"]["status"] == "succeeded"
    assert steps["inspect"]["outputs_digest"].startswith("sha256:")
    assert record["failures"] == [
        {"seq": 9, "ts": "2025-03-01T10:00:10.000Z", "step": "invalidate_plans", "attempt": 1, "final": False,
         "error": "HTTP 503 from kernel", "retry_in": 1, "denied_by": None}
    ]  # fmt: skip
    assert record["evidence"] == [
        {"step": "snapshot", "name": "latency", "path": "evidence/snapshot/latency.json",
         "sha256": "sha256:" + EVIDENCE_SHA, "size": len(EVIDENCE), "status": "ok"}
    ]  # fmt: skip
    assert record["follow_ups"] == [
        {
            "kind": "review",
            "step": None,
            "summary": "Review the incident: opsdsl incident review INC-2025-0042 --by NAME",
        }
    ]
    assert record["ledger"] == {
        "first_seq": 1,
        "last_seq": entries[-1]["seq"],
        "entries": len(entries),
        "entries_digest": "sha256:" + hashlib.sha256(b"".join(canonical_json(e) + b"\n" for e in entries)).hexdigest(),
        "checkpoint": CHECKPOINT,
    }


def test_record_is_of_one_run_only() -> None:
    mine, other = sev2_run(run="r-a", seq=1), sev2_run(run="r-b", seq=1000)
    interleaved = [entry for pair in zip(mine, other, strict=False) for entry in pair]
    record = build_record(interleaved, checkpoint=None, evidence_dir=None)
    assert record["run"] == "r-a"
    assert record["ledger"]["entries_digest"] == entries_digest(mine)
    from_database = [entry | {"prev": "00" * 32, "hash": "ff" * 32} for entry in mine]  # Entry.to_dict()'s extras
    assert entries_digest(from_database) == entries_digest(mine)
    assert record["evidence"][0]["status"] == "unchecked"


def test_record_without_run_created_is_refused() -> None:
    with pytest.raises(IncidentError, match=r"no run\.created"):
        build_record(sev2_run()[1:], checkpoint=None, evidence_dir=None)


def test_failed_run_lists_compensation_and_follow_ups(tmp_path: Path) -> None:
    entries = sev2_run(outcome="failed", evidence=False)
    record = build_record(entries, checkpoint=None, evidence_dir=tmp_path / "evidence")
    SCHEMA.validate(record)
    assert record["status"] == "failed" and record["times"]["resolved"] is None and record["times"]["mitigated"] is None
    assert record["compensations"] == [
        {"step": "invalidate_plans", "compensation": "invalidate_plans.compensate", "status": "succeeded",
         "started": "2025-03-01T10:01:31.000Z", "finished": "2025-03-01T10:01:32.000Z", "error": None}
    ]  # fmt: skip
    assert [(item["kind"], item["step"]) for item in record["follow_ups"]] == [
        ("failed", "scale_pool"),
        ("compensated", "invalidate_plans"),
        ("review", None),  # a finished incident waits for a person's review
    ]


def test_approvals_and_policy_decisions_are_recorded() -> None:
    record = build_record(sev2_run(approval=True), checkpoint=None, evidence_dir=None)
    SCHEMA.validate(record)
    (approval,) = record["approvals"]
    assert approval["outcome"] == "approve" and approval["responses"][0]["by"] == "alice"
    gated = [d for d in record["policy_decisions"] if d["decision"] != "allow"]
    assert [(d["step"], d["policies"][0]["id"]) for d in gated] == [("scale_pool", "approval-for-high-risk")]
    assert record["human"] is True


def test_paused_run_is_unfinished() -> None:
    entries = [e for e in sev2_run(approval=True) if e["ts"] < T0 + 20]
    record = build_record(entries, checkpoint=None, evidence_dir=None)
    SCHEMA.validate(record)
    assert record["status"] == "paused" and record["times"]["finished"] is None
    assert {s["id"]: s["status"] for s in record["steps"]}["scale_pool"] == "waiting_approval"
    assert record["follow_ups"][0]["kind"] == "unfinished"


def test_evidence_missing_changed_and_unrecorded(tmp_path: Path) -> None:
    entries = sev2_run()
    evidence = place_evidence(tmp_path, entries, data=b"something else") / "evidence"
    (evidence / "stray.txt").write_text("not in the ledger")
    record = build_record(entries, checkpoint=None, evidence_dir=evidence)
    assert [(e["path"], e["status"]) for e in record["evidence"]] == [
        ("evidence/snapshot/latency.json", "changed"),
        ("evidence/stray.txt", "unrecorded"),
    ]
    (evidence / "snapshot" / "latency.json").unlink()
    record = build_record(entries, checkpoint=None, evidence_dir=evidence)
    assert record["evidence"][0]["status"] == "missing"
    assert [f["kind"] for f in record["follow_ups"]] == ["evidence", "evidence", "review"]


# --- the RCA report ---------------------------------------------------------------------


def test_headline() -> None:
    record = build_record(sev2_run(), checkpoint=None, evidence_dir=None)
    assert (
        headline(record)
        == "SEV-2 query-latency-regression on sqlx-sev2 succeeded in 4m12s after 1 retry; 0 steps denied."
    )


def test_rca_is_deterministic_and_complete() -> None:
    entries = sev2_run(approval=True, outcome="failed")
    text = render_rca(entries, title="Plan regression", summary="Stale plans.")
    assert text == render_rca(list(reversed(entries)), title="Plan regression", summary="Stale plans.")
    assert text.startswith(
        "# Plan regression\n\n**SEV-2 query-latency-regression on sqlx-sev2 failed in 4m12s after 1 retry; 0 steps denied.**"
    )
    for heading in (
        "## Summary",
        "## Timeline",
        "## Steps",
        "## Decisions",
        "## Failures",
        "## Compensations",
        "## Follow-ups",
    ):
        assert heading in text
    assert "- T0 (2025-03-01T10:00:00.000Z) Detected by trigger latency_breach (SqlxExecLatencyHigh)" in text
    assert "- T+1m15s (2025-03-01T10:01:15.000Z) alice approved scale_pool: go | scale" in text
    assert "policy `approval-for-high-risk` (require_approval): high-risk steps need a human outside SEV-1" in text
    assert "- [ ] Find why scale_pool failed: exit status 3: pool locked" in text


def test_rca_sections_can_be_chosen() -> None:
    entries = sev2_run()
    text = render_rca(entries, include=("steps", "context"))
    assert "## Timeline" not in text and "## Steps" in text and '"alertname": "SqlxExecLatencyHigh"' in text
    with pytest.raises(ValueError, match="unknown RCA section"):
        render_rca(entries, include=("timelines",))


# --- writing and verifying a folder -----------------------------------------------------


def test_write_incident_layout(folder: Path) -> None:
    assert folder.relative_to(folder.parents[1]) == Path("2025") / INCIDENT
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "evidence/snapshot/latency.json",
        "manifest.json",
        "rca.md",
        "record.json",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["payloadType"] == MANIFEST_PAYLOAD_TYPE
    assert list(manifest["manifest"]["files"]) == ["evidence/snapshot/latency.json", "rca.md", "record.json"]
    assert manifest["manifest"]["files"]["evidence/snapshot/latency.json"] == "sha256:" + EVIDENCE_SHA
    signed = json.loads((folder / "record.json").read_text())
    assert signed["payloadType"] == RECORD_PAYLOAD_TYPE and signed["record"]["kind"] == "IncidentRecord"
    (signature,) = signed["signatures"]
    SIGNER.public_key().verify(
        base64.b64decode(signature["sig"]), pae(RECORD_PAYLOAD_TYPE, canonical_json(signed["record"]))
    )
    rca = (folder / "rca.md").read_text()
    assert rca.startswith("# Plan regression on eu-1\n")  # from the report.rca step
    assert "## Summary\n\nStale plans after a statistics refresh.\n" in rca
    assert verify_folder(folder, TRUSTED) == []


def test_rewrite_is_stable_and_rca_option_wins(tmp_path: Path, folder: Path) -> None:
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    write_incident(tmp_path / "incidents", sev2_run(), checkpoint=CHECKPOINT, signer=SIGNER)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    rca = {"title": "Other", "include": ["steps", "no-such-section"]}  # what the scheduler passes
    write_incident(tmp_path / "incidents", sev2_run(), checkpoint=CHECKPOINT, signer=SIGNER, rca=rca)
    text = (folder / "rca.md").read_text()
    assert text.startswith("# Other\n") and "## Steps" in text and "## Timeline" not in text
    assert verify_folder(folder, TRUSTED) == []


def test_unsafe_incident_id_is_refused(tmp_path: Path) -> None:
    entries = sev2_run()
    entries[0]["data"]["incident_id"] = "../../etc"
    with pytest.raises(IncidentError, match="cannot be a folder name"):
        write_incident(tmp_path, entries, checkpoint=None, signer=SIGNER)


def flip_byte(path: Path, needle: bytes) -> None:
    data = path.read_bytes()
    at = data.index(needle)
    path.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])


def test_tampered_record_byte(folder: Path) -> None:
    flip_byte(folder / "record.json", b"eu-1")
    problems = verify_folder(folder, TRUSTED)
    assert any(p.startswith("record.json: bad signature by trusted key") for p in problems)
    assert any(p.startswith("record.json: content changed since the manifest was signed") for p in problems)


def test_tampered_rca(folder: Path) -> None:
    flip_byte(folder / "rca.md", b"succeeded")
    assert verify_folder(folder, TRUSTED) == [
        f"rca.md: content changed since the manifest was signed (sha256:{hashlib.sha256((folder / 'rca.md').read_bytes()).hexdigest()}, "
        f"signed {json.loads((folder / 'manifest.json').read_text())['manifest']['files']['rca.md']})"
    ]


def test_tampered_evidence(folder: Path) -> None:
    flip_byte(folder / "evidence" / "snapshot" / "latency.json", b"912")
    (problem,) = verify_folder(folder, TRUSTED)
    assert problem.startswith("evidence/snapshot/latency.json: content changed since the manifest was signed")


def test_extra_file(folder: Path) -> None:
    (folder / "evidence" / "planted.sh").write_text("#!/bin/sh\n")
    assert verify_folder(folder, TRUSTED) == ["evidence/planted.sh: not in the manifest (added after signing)"]


def test_removed_file(folder: Path) -> None:
    (folder / "evidence" / "snapshot" / "latency.json").unlink()
    assert verify_folder(folder, TRUSTED) == ["evidence/snapshot/latency.json: listed in the manifest but missing"]
    (folder / "manifest.json").unlink()
    assert verify_folder(folder, TRUSTED) == ["manifest.json: missing"]


def test_record_signed_by_another_key(folder: Path) -> None:
    record = json.loads((folder / "record.json").read_text())["record"]
    record["status"] = "succeeded"  # a forger re-signs with their own key
    (folder / "record.json").write_bytes(signed_file_bytes(RECORD_PAYLOAD_TYPE, "record", record, [MALLORY]))
    problems = verify_folder(folder, TRUSTED)
    assert f"record.json: signed only by untrusted key(s) {keyid(MALLORY.public_key())}" in problems


def test_signature_cannot_move_between_kinds(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["payloadType"] = RECORD_PAYLOAD_TYPE
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert verify_folder(folder, TRUSTED)[0] == (
        f"manifest.json: payload type {RECORD_PAYLOAD_TYPE!r}, expected {MANIFEST_PAYLOAD_TYPE!r}"
    )


def test_symlink_in_folder(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("x")
    (folder / "evidence" / "link").symlink_to(tmp_path / "outside")
    problems = verify_folder(folder, TRUSTED)
    assert "evidence/link: a symlink; an incident folder holds regular files only" in problems
    record = (folder / "record.json").read_bytes()
    with pytest.raises(IncidentError, match="symlink"):
        write_incident(tmp_path / "incidents", sev2_run(), checkpoint=None, signer=SIGNER)
    assert (folder / "record.json").read_bytes() == record  # refused before writing anything


def test_folder_moved_under_another_name(folder: Path) -> None:
    moved = folder.rename(folder.with_name("INC-other"))
    assert verify_folder(moved, TRUSTED) == [
        f"record.json: the record is of incident {INCIDENT!r} but the folder is 'INC-other'"
    ]


def test_missing_folder_and_empty_trust(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(IncidentFileError, match="no such incident folder") as caught:
        verify_folder(tmp_path / "nope", TRUSTED)
    assert caught.value.exit_code == 2
    with pytest.raises(ValueError, match="empty trust set"):
        verify_folder(folder, {})


# --- export and archives ----------------------------------------------------------------


def test_export_is_deterministic_and_verifies(folder: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    export_incident(folder, first)
    (folder / "rca.md").touch()  # a new mtime changes nothing
    export_incident(folder, second)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first, "r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        INCIDENT,
        f"{INCIDENT}/evidence",
        f"{INCIDENT}/evidence/snapshot",
        f"{INCIDENT}/evidence/snapshot/latency.json",
        f"{INCIDENT}/manifest.json",
        f"{INCIDENT}/rca.md",
        f"{INCIDENT}/record.json",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.name.rsplit("/", 1)[-1]: oct(m.mode) for m in members if m.isdir()}[INCIDENT] == "0o700"
    assert {oct(m.mode) for m in members if m.isreg()} == {"0o600"}
    report = verify_archive(first, TRUSTED)
    assert report.ok and report.incident_id == INCIDENT and report.signers == (keyid(SIGNER.public_key()),)
    report.raise_for_problems()


def test_export_refuses_archive_inside_folder(folder: Path) -> None:
    with pytest.raises(IncidentError, match="inside"):
        export_incident(folder, folder / "x.tar.gz")


def make_archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def good_members(folder: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        (member(f"{INCIDENT}/{p.relative_to(folder).as_posix()}"), p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((member("../x"), b"x"), "member '../x': a '..' component"),
        ((member(f"{INCIDENT}/evidence/../../x"), b"x"), "a '..' component"),
        ((member("/etc/cron.d/x"), b"x"), "member '/etc/cron.d/x': absolute path"),
        ((member(f"{INCIDENT}/evidence/l", tarfile.SYMTYPE, "/etc/passwd"), None), "a symlink (to '/etc/passwd')"),
        ((member(f"{INCIDENT}/evidence/h", tarfile.LNKTYPE, f"{INCIDENT}/rca.md"), None), "a hard link"),
        ((member(f"{INCIDENT}/evidence/d", tarfile.CHRTYPE), None), "a device or FIFO"),
        ((member(f"{INCIDENT}/rca.md"), b"# forged\n"), f"member '{INCIDENT}/rca.md': a duplicate name"),
        ((member("other/record.json"), b"{}"), "more than one top-level folder"),
        ((member("loose.txt"), b"x"), "member 'loose.txt': a file outside the incident folder"),
    ],
)
def test_unsafe_archives_are_refused(folder: Path, tmp_path: Path, extra: tuple, message: str) -> None:
    archive = make_archive(tmp_path / "evil.tar.gz", [*good_members(folder), extra])
    before = sorted(tmp_path.rglob("*"))
    report = verify_archive(archive, TRUSTED)
    assert not report.ok
    assert any(message in problem and problem.startswith("unsafe archive, refused: ") for problem in report.problems)
    assert sorted(tmp_path.rglob("*")) == before  # nothing was extracted
    with pytest.raises(IncidentError, match="failed verification") as caught:
        report.raise_for_problems()
    assert caught.value.exit_code == 1


def test_tampered_archive_content(folder: Path, tmp_path: Path) -> None:
    members = [
        (info, data.replace(b"912", b"100") if info.name.endswith("latency.json") else data)
        for info, data in good_members(folder)
    ]
    report = verify_archive(make_archive(tmp_path / "t.tar.gz", members), TRUSTED)
    assert [p.split(":")[0] for p in report.problems] == ["evidence/snapshot/latency.json"]


def test_unreadable_archives(tmp_path: Path) -> None:
    with pytest.raises(IncidentFileError, match="no such file") as caught:
        verify_archive(tmp_path / "missing.tar.gz", TRUSTED)
    assert caught.value.exit_code == 2
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(IncidentFileError, match=r"not a readable tar\.gz"):
        verify_archive(tmp_path / "junk.tar.gz", TRUSTED)
    assert verify_archive(make_archive(tmp_path / "empty.tar.gz", []), TRUSTED).problems == ("the archive is empty",)


def test_errors_pickle_with_their_exit_codes() -> None:
    for error in (IncidentError("tampered"), IncidentFileError("missing")):
        copy = pickle.loads(pickle.dumps(error))
        assert isinstance(copy, OpsdslError) and copy.message == error.message and copy.exit_code == error.exit_code


def test_integers_json_signatures_cannot_carry_become_strings(tmp_path: Path) -> None:
    entries = sev2_run(evidence=False)
    entries[0]["data"]["event"]["startsAt_ns"] = 1_740_823_200_123_456_789  # beyond RFC 8785's integers
    folder = write_incident(tmp_path, entries, checkpoint=None, signer=SIGNER)
    record = json.loads((folder / "record.json").read_text())["record"]
    assert record["event"]["startsAt_ns"] == "1740823200123456789"
    assert verify_folder(folder, TRUSTED) == []
