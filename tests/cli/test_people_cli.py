"""Names that reach the ledger, through the real CLI: one spelling per person, no forged lines;
`opsdsl ack` records only the first acknowledgement; `opsdsl incident review` signs a person's RCA."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_api import FIXTURES, KernelAPI, ledger_rows, opsdsl, param_args, run_status

PACK = FIXTURES / "approvals" / "approvals.yaml"


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


def start(playbook: str, state: Path, api: KernelAPI):
    return opsdsl(
        "run", "--pack", PACK, "--playbook", playbook, "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url),
    )  # fmt: skip


def test_spellings_of_one_person_count_once_for_the_two_person_rule(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = start("migration-rollback", state, api).run_id
    first = opsdsl("approve", run, "rollback", "--by", "Carol", "--state-dir", state)
    assert first.code == 0 and "approved by carol (1 of 2" in first.stdout, first.stderr
    for spelling in ("carol", "carol ", "CAROL", "carol\u200b"):
        again = opsdsl("approve", run, "rollback", "--by", spelling, "--state-dir", state)
        assert again.code == 2 and "carol has already answered" in again.stderr, (spelling, again.stderr)
    second = opsdsl("approve", run, "rollback", "--by", "Bob", "--state-dir", state)
    assert "approved (2 of 2)" in second.stdout, second.stderr
    rows = ledger_rows(state, "approval.recorded")
    assert [(row["data"]["by"], row["data"]["via"]) for row in rows] == [
        ("local:carol", "local"),
        ("local:bob", "local"),
    ]
    assert "recorded as local:bob (a local user of this state directory; not authenticated)" in second.stderr
    assert opsdsl("resume", run, "--state-dir", state, "--log-format", "json").code == 0


@pytest.mark.parametrize(
    "name",
    ["mallory\n✓ run succeeded by admin", "\x1b[2K\x1b[1Gmallory", "mal\x07lory", "\u202eyrollam", "\u200b ", ""],
)
def test_a_name_that_could_forge_a_line_is_refused_before_anything_is_recorded(
    api: KernelAPI, tmp_path: Path, name: str
) -> None:
    state = tmp_path / "state"
    run = start("migration-rollback", state, api).run_id
    before = len(ledger_rows(state))
    for command in (["approve", run, "rollback"], ["ack", run], ["decide", run, "rollback", "--as", "retry"]):
        refused = opsdsl(*command, "--by", name, "--state-dir", state)
        assert refused.code == 2, (command, refused.stdout, refused.stderr)
        assert "--by" in refused.stderr and "Traceback" not in refused.stderr
        assert "\x1b" not in refused.stderr and "✓ run succeeded" not in refused.stderr
    assert len(ledger_rows(state)) == before
    assert run_status(state, run)["pending_approvals"] == ["rollback"]


def test_ack_records_the_first_person_only(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = start("migration-rollback", state, api).run_id
    first = opsdsl("ack", run, "--by", " Dana ", "--state-dir", state)
    assert first.code == 0 and f"{run}: acknowledged by dana at " in first.stdout, first.stderr
    again = opsdsl("ack", run, "--by", "erin", "--state-dir", state)
    assert (
        again.code == 0 and "already acknowledged by local:dana" in again.stdout and "nothing recorded" in again.stdout
    )
    assert [row["data"]["by"] for row in ledger_rows(state, "run.acknowledged")] == ["local:dana"]


def test_an_approval_is_an_acknowledgement(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = start("migration-rollback", state, api).run_id
    opsdsl("approve", run, "rollback", "--by", "carol", "--state-dir", state)
    later = opsdsl("ack", run, "--by", "dana", "--state-dir", state)
    assert "already acknowledged by local:carol" in later.stdout and "(an approval)" in later.stdout
    assert ledger_rows(state, "run.acknowledged") == []


def _finished_run(api: KernelAPI, state: Path) -> tuple[str, Path]:
    run = start("migration-rollback", state, api).run_id
    opsdsl("approve", run, "rollback", "--by", "carol", "--state-dir", state)
    opsdsl("approve", run, "rollback", "--by", "bob", "--state-dir", state)
    assert opsdsl("resume", run, "--state-dir", state, "--log-format", "json").code == 0
    folder = Path(run_status(state, run)["incident_dir"]) if "incident_dir" in run_status(state, run) else None
    if folder is None:
        (folder,) = (state / "incidents").glob("*/*")
    return run, folder


def test_incident_review_signs_the_rca_into_the_record(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run, folder = _finished_run(api, state)
    incident = folder.name
    rca = (folder / "rca.md").read_text()
    assert "## Review" in rca and "_Not reviewed yet._" in rca and f"opsdsl incident review {incident}" in rca
    record = json.loads((folder / "record.json").read_text())["record"]
    assert record["review"] is None
    assert any(item["kind"] == "review" for item in record["follow_ups"])

    reviewed = opsdsl(
        "incident", "review", incident, "--by", "Carol\u200b", "--root-cause", "A plan regression after deploy 412",
        "--impact", "p95 latency over SLO for 9 minutes", "--follow-up", "Pin the planner version",
        "--follow-up", "Alert on plan cache churn", "--state-dir", state,
    )  # fmt: skip
    assert reviewed.code == 0, reviewed.stderr
    assert f"{incident}: reviewed by carol, 2 follow-ups" in reviewed.stdout
    (entry,) = ledger_rows(state, "incident.reviewed")
    assert entry["run"] == run and entry["data"]["by"] == "carol"
    record = json.loads((folder / "record.json").read_text())["record"]
    assert record["review"]["by"] == "carol" and record["review"]["revision"] == 1
    assert record["review"]["follow_ups"] == ["Pin the planner version", "Alert on plan cache churn"]
    assert [i["summary"] for i in record["follow_ups"] if i["kind"] == "review"] == record["review"]["follow_ups"]
    rca = (folder / "rca.md").read_text()
    assert "Reviewed by carol at " in rca and "A plan regression after deploy 412" in rca
    assert "- [ ] Pin the planner version" in rca and "_Not reviewed yet._" not in rca

    archive = tmp_path / "incident.tar.gz"
    assert opsdsl("incident", "export", incident, "-o", archive, "--state-dir", state).code == 0
    verified = opsdsl("incident", "verify", archive, "--state-dir", state)
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "reviewed by carol at " in verified.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert f"{incident}/record.json" in names

    report = json.loads(opsdsl("report", "--format", "json", "--state-dir", state).stdout)
    assert report["all"]["rca_completion"]["within_24h"] == 1


def test_incident_review_from_a_file_and_its_refusals(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    _, folder = _finished_run(api, state)
    review = tmp_path / "review.yaml"
    review.write_text(
        "by: Dana\nroot_cause: |\n  Pool exhausted.\n\n  Second paragraph.\nimpact: none\nfollow_ups: []\n"
    )
    done = opsdsl("incident", "review", folder.name, "--file", review, "--state-dir", state)
    assert done.code == 0, done.stderr
    record = json.loads((folder / "record.json").read_text())["record"]
    assert record["review"]["root_cause"] == "Pool exhausted.\n\nSecond paragraph."
    missing = opsdsl("incident", "review", folder.name, "--by", "dana", "--impact", "x", "--state-dir", state)
    assert missing.code == 2 and "--root-cause" in missing.stderr
    forged = opsdsl(
        "incident", "review", folder.name, "--by", "dana\n## Root cause: nobody", "--root-cause", "x", "--impact", "y",
        "--state-dir", state,
    )  # fmt: skip
    assert forged.code == 2 and "newline" in forged.stderr
    unknown = opsdsl("incident", "review", "INC-nope", "--by", "d", "--root-cause", "x", "--impact", "y",
                     "--state-dir", state)  # fmt: skip
    assert unknown.code == 2 and "no incident" in unknown.stderr


def test_an_unfinished_incident_cannot_be_reviewed(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = start("migration-rollback", state, api).run_id
    early = opsdsl("incident", "review", run, "--by", "d", "--root-cause", "x", "--impact", "y", "--state-dir", state)
    assert early.code == 2 and "is paused; review it once the run has finished" in early.stderr


def test_a_senders_clock_is_not_believed_beyond_our_receipt(api: KernelAPI, tmp_path: Path) -> None:
    state = tmp_path / "state"
    for name, starts in (("past", "1970-01-01T00:00:00Z"), ("future", "2999-01-01T00:00:00Z")):
        event = tmp_path / f"{name}.json"
        event.write_text(json.dumps({"labels": {"alertname": "X"}, "startsAt": starts}))
        ran = opsdsl(
            "run", "--pack", PACK, "--playbook", "migration-rollback", "--event", event, "--state-dir", state,
            "--log-format", "json", *param_args(kernel_url=api.url),
        )  # fmt: skip
        assert ran.code == 4, ran.stderr
        opsdsl("ack", ran.run_id, "--by", "dana", "--state-dir", state)
    report = json.loads(opsdsl("report", "--format", "json", "--state-dir", state).stdout)
    assert report["all"]["detection_clamped"] == 2
    assert report["all"]["acknowledged"] == 2 and 0 <= report["all"]["mtta_seconds"] < 60
    text = opsdsl("report", "--state-dir", state).stdout
    assert "detection clamped to receipt for 2 run(s)" in text
