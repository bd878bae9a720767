"""The evidence pack: the signed plan and its packs, and a ledger excerpt a third party can check.

A real SQLite ledger (opsdsl.audit.ledger) holds two runs whose entries interleave, as
under `opsdsl serve`; a real signed checkpoint closes it. The folder is written, verified,
exported, and tampered with in every place the excerpt and the plan files offer.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from test_incident import INCIDENT, MALLORY, SIGNER, TRUSTED, place_evidence, sev2_run

from opsdsl.audit.incident import export_incident, verify_archive, verify_folder, write_incident
from opsdsl.audit.incident.pack import MAX_EXCERPT_ENTRIES, check_excerpt, ledger_excerpt
from opsdsl.audit.ledger import Ledger, open_database
from opsdsl.build.signing import envelope_bytes, sign_envelope
from opsdsl.canonical import canonical_json, sha256_digest

PLAN = {
    "apiVersion": "opsdsl/v1",
    "kind": "Plan",
    "pack": {"name": "sqlx-sev2", "version": "4.0.0", "owner": "sre", "digest": "sha256:" + "11" * 32},
    "params": {"slo_p95_ms": {"type": "number", "default": 250}},
    "triggers": {"latency_breach": {"on": "alert"}},
    "hooks": {"onLatencyBreach": {"trigger": "latency_breach", "run": "query-latency-regression"}},
    "policies": [
        {"id": "approval-for-high-risk", "effect": "require_approval", "origin": "sqlx-sev2"},
        {"id": "no-prod-drop", "effect": "deny", "origin": "org-policies"},
    ],
    "policyPacks": [{"name": "org-policies", "version": "1.2.0", "digest": "sha256:" + "33" * 32}],
    "playbooks": {"query-latency-regression": {"severity": "SEV-2", "nodes": [], "edges": []}},
}


def plan_envelope() -> tuple[bytes, str]:
    payload = canonical_json(PLAN)
    return envelope_bytes(sign_envelope(payload, [SIGNER])), sha256_digest(payload)


def ledger_with(entries_by_run: list[list[dict]], tmp_path: Path) -> Ledger:
    """A real ledger holding the runs' entries interleaved one by one (as under serve), then a signed checkpoint."""
    conn = open_database(tmp_path / "state.db")
    ledger = Ledger(conn)
    longest = max(len(run) for run in entries_by_run)
    order = [run[i] for i in range(longest) for run in entries_by_run if i < len(run)]
    conn.execute("BEGIN IMMEDIATE")
    for entry in order:
        ledger.append(entry["kind"], entry["run"], entry["data"], ts=entry["ts"])
    conn.execute("COMMIT")
    ledger.checkpoint(SIGNER)
    return ledger


def run_of(ledger: Ledger, run: str) -> list[dict]:
    return [entry.to_dict() for entry in ledger.entries(run=run)]


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, Ledger]:
    """Two runs of one server, interleaved; the incident folder of the first with its full evidence pack."""
    first = sev2_run(run="r-0001")
    for entry in first:
        entry["data"] = entry["data"] | ({"plan_digest": plan_envelope()[1]} if entry["kind"] == "run.created" else {})
    other = sev2_run(run="r-0002")
    other[0]["data"] = other[0]["data"] | {"incident_id": "INC-2025-0043"}
    ledger = ledger_with([first, other], tmp_path)
    entries = run_of(ledger, "r-0001")
    root = tmp_path / "incidents"
    place_evidence(root, entries)
    checkpoint = ledger.latest_checkpoint().to_dict()
    folder = write_incident(
        root, entries, checkpoint=checkpoint, signer=SIGNER, plan_envelope=plan_envelope()[0], ledger=ledger
    )
    return folder, ledger


def excerpt_of(folder: Path) -> dict:
    return json.loads((folder / "ledger" / "excerpt.json").read_text())


def rewrite_excerpt(folder: Path, excerpt: dict) -> None:
    """Change the excerpt and re-sign nothing: what an attacker without the key can do."""
    (folder / "ledger" / "excerpt.json").write_text(json.dumps(excerpt, indent=2, sort_keys=True) + "\n")


def resign_manifest(folder: Path) -> None:
    """Sign the manifest again with the runtime's own key, as someone holding it (not the ledger's past) could."""
    from opsdsl.audit.incident import MANIFEST_PAYLOAD_TYPE, digest_folder, signed_file_bytes

    (folder / "manifest.json").write_bytes(
        signed_file_bytes(MANIFEST_PAYLOAD_TYPE, "manifest", {"files": digest_folder(folder)}, [SIGNER])
    )


def test_the_pack_holds_the_plan_its_packs_and_an_anchored_excerpt(served) -> None:
    folder, _ = served
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [
        "evidence/snapshot/latency.json",
        "ledger/excerpt.json",
        "manifest.json",
        "plan/packs/sqlx-sev2.json",
        "plan/plan.dsse.json",
        "plan/policy-packs/org-policies.json",
        "rca.md",
        "record.json",
    ]
    assert (folder / "plan" / "plan.dsse.json").read_bytes() == plan_envelope()[0]
    policy_pack = json.loads((folder / "plan" / "policy-packs" / "org-policies.json").read_text())
    assert policy_pack["digest"] == "sha256:" + "33" * 32
    assert [p["id"] for p in policy_pack["policies"]] == ["no-prod-drop"]
    pack = json.loads((folder / "plan" / "packs" / "sqlx-sev2.json").read_text())
    assert [p["id"] for p in pack["policies"]] == ["approval-for-high-risk"] and pack["version"] == "4.0.0"
    excerpt = excerpt_of(folder)
    runs = {entry["run"] for entry in excerpt["entries"]}
    assert runs == {"r-0001", "r-0002"}  # the other run's entries sit in between: the chain needs them
    assert excerpt["before"] == {"seq": 0, "hash": "00" * 32}
    assert excerpt["checkpoint"]["seq"] == excerpt["entries"][-1]["seq"]
    assert excerpt["complete"] is True
    assert verify_folder(folder, TRUSTED) == []


def test_verify_reports_the_excerpt_chained_to_the_checkpoint(served, tmp_path: Path) -> None:
    folder, _ = served
    report = verify_archive(export_incident(folder, tmp_path / "inc.tar.gz"), TRUSTED)
    assert report.ok, report.problems
    assert any(line.startswith("ledger excerpt: ") and "chained to checkpoint" in line for line in report.pack)
    assert any(line.startswith("plan: sha256:") for line in report.pack)


def test_a_third_party_recomputes_the_chain_with_hashlib_alone(served) -> None:
    """docs/ledger.md's bytes: sha256(domain || prev || seq (8 bytes) || ts NUL run NUL kind NUL data)."""
    import hashlib

    from opsdsl.audit.ledger import ts_text

    excerpt = excerpt_of(served[0])
    prev = bytes.fromhex(excerpt["before"]["hash"])
    for entry in excerpt["entries"]:
        text = f"{ts_text(float(entry['ts']))}\0{entry['run'] or ''}\0{entry['kind']}\0"
        text += canonical_json(entry["data"]).decode()
        digest = hashlib.sha256(
            b"opsdsl.ledger.entry.v1\0" + prev + entry["seq"].to_bytes(8, "big") + text.encode()
        ).digest()
        assert digest.hex() == entry["hash"] and entry["prev"] == prev.hex()
        prev = digest
    assert prev.hex() == excerpt["checkpoint"]["head"]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda e: e["entries"][3]["data"].update(status=500), "content does not match its hash"),
        (lambda e: e["entries"].pop(4), "follows seq"),
        (lambda e: e["entries"].__setitem__(slice(2, 4), e["entries"][3:1:-1]), "follows seq"),
        (lambda e: e["entries"][4].update(run="r-0002"), "content does not match its hash"),
        (lambda e: e["checkpoint"].update(head="ab" * 32), "does not vouch for the excerpt's last entry"),
        (lambda e: e["checkpoint"].update(sig=base64.b64encode(b"\1" * 64).decode()), "bad signature"),
        (lambda e: e.update(entries=e["entries"][:-3]), "does not vouch for the excerpt's last entry"),
        (lambda e: e["before"].update(hash="11" * 32), "its link to the entry before does not match"),
    ],
    ids=["edited", "removed", "reordered", "moved-to-another-run", "head", "signature", "cut-short", "link-before"],
)
def test_a_tampered_excerpt_fails_verification(served, tamper, expected: str) -> None:
    folder, _ = served
    excerpt = excerpt_of(folder)
    tamper(excerpt)
    rewrite_excerpt(folder, excerpt)
    resign_manifest(folder)  # even with the manifest signed again, the chain and the checkpoint tell
    problems = verify_folder(folder, TRUSTED)
    assert any(expected in problem for problem in problems), problems


def test_a_whole_chain_rewritten_and_resigned_by_another_key_is_not_trusted(served) -> None:
    folder, _ = served
    excerpt = excerpt_of(folder)
    from opsdsl.audit.ledger import Checkpoint

    fake = Checkpoint(excerpt["checkpoint"]["seq"], bytes.fromhex(excerpt["checkpoint"]["head"]), 0.0, "", b"")
    signature = MALLORY.sign(fake.signed_bytes())
    from opsdsl.build.signing import keyid

    excerpt["checkpoint"].update(keyid=keyid(MALLORY.public_key()), sig=base64.b64encode(signature).decode())
    rewrite_excerpt(folder, excerpt)
    resign_manifest(folder)
    assert any("not trusted" in problem for problem in verify_folder(folder, TRUSTED))


def test_plan_files_must_be_what_the_signed_plan_holds(served) -> None:
    folder, _ = served
    pack = folder / "plan" / "policy-packs" / "org-policies.json"
    pack.write_text(pack.read_text().replace("no-prod-drop", "anything-goes"))
    (folder / "plan" / "policy-packs" / "extra.json").write_text("{}\n")
    resign_manifest(folder)
    problems = verify_folder(folder, TRUSTED)
    assert "plan/policy-packs/org-policies.json: differs from the pack the signed plan holds" in problems
    assert "plan/policy-packs/extra.json: the plan holds no such pack" in problems


def test_another_plan_than_the_record_ran_is_refused(served) -> None:
    folder, _ = served
    other = dict(PLAN, params={})
    (folder / "plan" / "plan.dsse.json").write_bytes(envelope_bytes(sign_envelope(canonical_json(other), [SIGNER])))
    resign_manifest(folder)
    problems = verify_folder(folder, TRUSTED)
    assert any(p.startswith("plan/plan.dsse.json: holds plan sha256:") for p in problems)


def test_an_excerpt_over_its_bound_keeps_the_runs_entries_only(tmp_path: Path, monkeypatch) -> None:
    import opsdsl.audit.incident.pack as pack

    monkeypatch.setattr(pack, "MAX_EXCERPT_ENTRIES", 10)  # a busy server: thousands of entries interleaved
    first = sev2_run(run="r-0001")
    ledger = ledger_with([first, sev2_run(run="r-0002")], tmp_path)
    entries = run_of(ledger, "r-0001")
    excerpt = ledger_excerpt(ledger, entries, ledger.latest_checkpoint().to_dict())
    assert excerpt["complete"] is False
    assert [e["seq"] for e in excerpt["entries"]] == [e["seq"] for e in entries]
    from opsdsl.audit.incident import build_record

    record = build_record(entries, checkpoint=ledger.latest_checkpoint().to_dict(), evidence_dir=None)
    problems, summary = check_excerpt(excerpt, record, TRUSTED)
    assert problems == [] and summary.startswith("incomplete")
    assert MAX_EXCERPT_ENTRIES >= 10_000  # the real bound


def test_hostile_excerpts_are_problems_not_crashes(served) -> None:
    folder, _ = served
    record = json.loads((folder / "record.json").read_text())["record"]
    for hostile in (
        None,
        [],
        {"format": "opsdsl.ledger-excerpt/v1"},
        {"format": "opsdsl.ledger-excerpt/v1", "entries": [{"seq": "1"}], "before": {}},
        {"format": "opsdsl.ledger-excerpt/v1", "entries": [1] * 3, "before": {"seq": 0, "hash": None}},
        excerpt_of(folder) | {"checkpoint": {"seq": -1}},
    ):
        problems, _ = check_excerpt(hostile, record, TRUSTED)
        assert problems, hostile
    (folder / "ledger" / "excerpt.json").write_text("[" * 100_000)
    resign_manifest(folder)
    assert any(p.startswith("ledger/excerpt.json: not valid JSON") for p in verify_folder(folder, TRUSTED))


def test_folder_name_is_the_incident(served) -> None:
    assert served[0].name == INCIDENT


def test_a_pack_name_that_is_no_file_name_becomes_its_digest() -> None:
    from opsdsl.audit.incident.pack import plan_files

    hostile = dict(PLAN, pack=PLAN["pack"] | {"name": "../../etc/passwd"})
    hostile["policyPacks"] = [{"name": "a/b", "version": "1", "digest": "sha256:" + "44" * 32}]
    files = plan_files(envelope_bytes(sign_envelope(canonical_json(hostile), [SIGNER])))
    assert sorted(files) == [
        "plan/packs/" + "11" * 32 + ".json",
        "plan/plan.dsse.json",
        "plan/policy-packs/" + "44" * 32 + ".json",
    ]


def test_plan_files_are_rendered_once_per_plan_and_handed_out_as_copies() -> None:
    # A server writes the same plan's files into every incident folder: they are cached by the
    # envelope's bytes, and no caller can change what the next incident gets.
    from opsdsl.audit.incident import pack

    envelope, _ = plan_envelope()
    first = pack.plan_files(envelope)
    first["plan/plan.dsse.json"] = b"tampered"
    first.clear()
    again = pack.plan_files(bytearray(envelope))  # the same bytes, another object (and type)
    assert again["plan/plan.dsse.json"] == envelope
    assert again == pack.plan_files(bytes(envelope))
    other = dict(PLAN, pack=PLAN["pack"] | {"version": "9.9.9"})
    other_files = pack.plan_files(envelope_bytes(sign_envelope(canonical_json(other), [SIGNER])))
    assert other_files != again
    with pytest.raises(ValueError):  # a bad envelope is refused each time, never cached as good
        pack.plan_files(b"{}")
    with pytest.raises(ValueError):
        pack.plan_files(b"{}")


def signed_record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())["record"]


def test_the_record_digests_the_ledger_hashes_a_third_party_can_recompute(served) -> None:
    """docs/incidents.md's bytes: sha256("opsdsl.incident.entry-hashes.v1" NUL || each hash of the run, in order)."""
    import hashlib

    from test_incident import SCHEMA

    folder, _ = served
    record = signed_record(folder)
    SCHEMA.validate(record)
    own = [entry for entry in excerpt_of(folder)["entries"] if entry["run"] == record["run"]]
    expected = hashlib.sha256(b"opsdsl.incident.entry-hashes.v1\0" + b"".join(bytes.fromhex(e["hash"]) for e in own))
    assert record["ledger"]["entries_digest_of"] == "hashes"
    assert record["ledger"]["entries_digest"] == "sha256:" + expected.hexdigest()
    assert verify_folder(folder, TRUSTED) == []


def rehash_entry(entry: dict) -> None:
    """Recompute an edited entry's own hash, as someone rewriting the ledger row would."""
    from opsdsl.audit.ledger import entry_hash

    text = canonical_json(entry["data"]).decode()
    prev = bytes.fromhex(entry["prev"])
    entry["hash"] = entry_hash(prev, entry["seq"], float(entry["ts"]), entry["run"], entry["kind"], text).hex()


@pytest.mark.parametrize("rehash", [False, True], ids=["hash-left", "hash-recomputed"])
def test_an_entry_edited_in_an_incomplete_excerpt_fails_the_records_digest(tmp_path: Path, monkeypatch, rehash) -> None:
    # Without the whole chain to the checkpoint, the signed record's digest is what catches an
    # edited entry, whether or not its own hash was recomputed to match.
    import opsdsl.audit.incident.pack as pack
    from opsdsl.audit.incident import build_record

    monkeypatch.setattr(pack, "MAX_EXCERPT_ENTRIES", 10)
    ledger = ledger_with([sev2_run(run="r-0001"), sev2_run(run="r-0002")], tmp_path)
    entries = run_of(ledger, "r-0001")
    checkpoint = ledger.latest_checkpoint().to_dict()
    record = build_record(entries, checkpoint=checkpoint, evidence_dir=None)
    excerpt = ledger_excerpt(ledger, entries, checkpoint)
    assert check_excerpt(excerpt, record, TRUSTED)[0] == []
    edited = next(entry for entry in excerpt["entries"] if entry["kind"] == "step.succeeded")
    edited["data"]["outputs"] = {"rows": 0}
    if rehash:
        rehash_entry(edited)
    problems, _ = check_excerpt(excerpt, record, TRUSTED)
    assert any("the run's entries digest to" in problem for problem in problems), problems
    assert any("content does not match its hash" in problem for problem in problems) is not rehash


def test_a_record_digest_of_an_unknown_kind_is_a_problem(served) -> None:
    folder, _ = served
    record = signed_record(folder)
    record["ledger"]["entries_digest_of"] = "content-v9"
    problems, _ = check_excerpt(excerpt_of(folder), record, TRUSTED)
    assert any("digests its entries as 'content-v9'" in problem for problem in problems), problems


def test_a_record_without_entries_digest_of_is_checked_by_content(served) -> None:
    # Records written before the hashes digest (and rehearsals) digest the entries' content.
    from opsdsl.audit.incident import entries_digest

    folder, _ = served
    record = signed_record(folder)
    own = [entry for entry in excerpt_of(folder)["entries"] if entry["run"] == record["run"]]
    del record["ledger"]["entries_digest_of"]
    assert any(
        "the run's entries digest to" in problem for problem in check_excerpt(excerpt_of(folder), record, TRUSTED)[0]
    )
    record["ledger"]["entries_digest"] = entries_digest(own)
    assert check_excerpt(excerpt_of(folder), record, TRUSTED)[0] == []


def test_hostile_event_data_is_anchored_by_hash_and_verifies(tmp_path: Path) -> None:
    # An alert's labels end up in run.created and in rendered step data: keys above U+FFFF,
    # numbers json.dumps and RFC 8785 write differently, a "hash" and "prev" of its own. The
    # record digests the ledger's hashes, not anything the event says, and the folder verifies.
    from opsdsl.audit.incident import build_record

    run = sev2_run(run="r-0001")
    hostile = {"hash": "00" * 32, "big": 1e300, "tiny": 5e-324, "\U0001f600": "x", "\ue000": 1.0, "prev": ["ff" * 32]}
    run[0]["data"] = run[0]["data"] | {"event": {"labels": hostile}}
    ledger = ledger_with([run], tmp_path)
    entries = run_of(ledger, "r-0001")
    checkpoint = ledger.latest_checkpoint().to_dict()
    record = build_record(entries, checkpoint=checkpoint, evidence_dir=None)
    assert record["ledger"]["entries_digest_of"] == "hashes"
    assert record["event"]["labels"] == hostile
    root = tmp_path / "incidents"
    place_evidence(root, entries)
    folder = write_incident(root, entries, checkpoint=checkpoint, signer=SIGNER, ledger=ledger)
    assert verify_folder(folder, TRUSTED) == []
