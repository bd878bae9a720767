"""`opsdsl report`'s figures: MTTA, MTTR, auto-mitigation and RCA completion against the seed's targets."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdsl.audit.metrics import compute_report, format_duration, summarize_run

T0 = 1_740_823_200.0  # 2025-03-01T10:00:00Z
_seq = itertools.count(1)


def run(
    name: str,
    *,
    severity: str = "SEV-2",
    detected: float = 0.0,
    first_step: float | None = 30.0,
    acknowledged: float | None = None,
    approved: float | None = None,
    finished: float | None = 600.0,
    status: str = "succeeded",
    human: bool = False,
    rca: float | None = None,
    dry_run: bool = False,
    parent: str | None = None,
    requested: float | None = None,
    reviewed: float | None = None,
    claimed: float | None = None,
) -> list[dict]:
    """One run's entries; every time is seconds after its detection, which is `detected` after T0."""
    entries = []

    def add(at: float, kind: str, **data) -> None:
        entries.append({"seq": next(_seq), "ts": T0 + detected + at, "run": name, "kind": kind, "data": data})

    add(2, "run.created", run=name, incident_id=f"INC-{name}", pack="sqlx", pack_version="1.0.0", pack_digest=None,
        plan_digest=None, playbook="respond", severity=severity, params={}, inputs={}, event={},
        detected_at=T0 + detected if claimed is None else claimed, received_at=T0 + detected,
        dry_run=dry_run, trigger=None, hook=None, escalate=None, parent_run=parent, parent_step="call" if parent else None)  # fmt: skip
    add(2, "run.started", reason="start", by=None)
    if acknowledged is not None:
        add(acknowledged, "run.acknowledged", by="oncall")
    if requested is not None:
        add(requested, "approval.requested", step="fix", reason="policy", message="risky", approvers=[],
            min_approvals=1, policies=["p"], inputs={})  # fmt: skip
    if reviewed is not None:
        add(reviewed, "incident.reviewed", by="carol", root_cause="x", impact="y", follow_ups=[])
    if approved is not None:
        add(approved, "approval.recorded", step="fix", by="lead", decision="approve", answers={}, comment=None)
    if first_step is not None:
        add(
            first_step,
            "step.intent",
            step="fix",
            attempt=1,
            action="shell",
            idempotency_key=f"{name}:fix",
            timeout=None,
        )
        add(first_step + 1, "step.succeeded", step="fix", attempts=1, outputs={})
    if rca is not None:
        add(
            rca - 1,
            "step.intent",
            step="rca",
            attempt=1,
            action="report.rca",
            idempotency_key=f"{name}:rca",
            timeout=None,
        )
        add(rca, "step.succeeded", step="rca", attempts=1, outputs={})
    if finished is not None:
        add(
            finished,
            "run.finished",
            status=status,
            error=None,
            failed_steps=[],
            compensated=[],
            human=human,
            escalate=None,
        )
    entries.sort(key=lambda entry: entry["ts"])
    return entries


NOW = T0 + 200_000  # more than 24 h after every detection below


def scenario() -> list[dict]:
    """Two SEV-1 incidents a person acknowledged and reviewed, six SEV-2 (five automated,
    four of them fixed; one a person denied), and runs that do not count."""
    runs = [
        run("s1-a", severity="SEV-1", first_step=120, acknowledged=180, finished=1200, rca=1300, reviewed=3600),
        run("s1-b", severity="SEV-1", detected=1000, acknowledged=240, first_step=300, finished=3000, reviewed=90_000),
        *(run(f"s2-{i}", detected=100 * i) for i in range(4)),
        run("s2-fail", status="failed", finished=400),
        run("s2-denied", status="failed", human=True, requested=5, approved=10, first_step=None),
        run("dry", severity="SEV-1", dry_run=True, first_step=5000),
        run("child", severity="SEV-1", parent="s1-a", first_step=5000),
    ]
    orphan = [
        {"seq": next(_seq), "ts": T0, "run": "orphan", "kind": "step.intent", "data": {"step": "x", "action": "shell"}}
    ]
    return [entry for entries in runs for entry in entries] + orphan


def test_known_figures() -> None:
    report = compute_report(scenario(), now=NOW)
    sev1, sev2, sev3 = report.severities[:3]
    assert (sev1.runs, sev1.succeeded, sev1.failed) == (2, 2, 0)
    assert sev1.mtta == 210.0  # (180 + 240) / 2: people acknowledging, not the first automated step
    assert sev1.mttr == 2100.0  # (1200 + 3000) / 2
    assert (sev2.runs, sev2.succeeded, sev2.failed) == (6, 4, 2)
    assert (sev2.mtta, sev2.acknowledged, sev2.unacknowledged) == (10.0, 1, 5)  # only the denial was a person
    assert (sev2.auto_succeeded, sev2.auto_finished, sev2.auto_mitigation) == (4, 5, 0.8)  # the denial is apart
    assert (sev2.person_succeeded, sev2.person_finished) == (0, 1)
    assert sev3.runs == 0 and sev3.mtta is None and sev3.auto_mitigation is None
    overall = report.overall
    assert (overall.rca_on_time, overall.rca_late, overall.rca_missing, overall.rca_pending) == (1, 1, 6, 0)
    assert overall.rca_completion == 1 / 8  # a report.rca step is not a review
    assert report.excluded == {"dry_run": 1, "child": 1, "incomplete": 1}
    verdicts = {verdict.target.metric: verdict.verdict for verdict in report.verdicts}
    assert verdicts == {"mtta": "met", "mttr": "missed", "auto_mitigation": "met", "rca_completion": "missed"}


def test_text_report() -> None:
    text = compute_report(scenario(), now=NOW).to_text()
    assert text.startswith(
        "opsdsl report: 8 runs detected any time … now\nleft out: 1 child, 1 dry run, 1 incomplete run(s)\n"
    )
    assert (
        "Severity  Runs  Succeeded  Failed  Unfinished   MTTA  Unacked    MTTR  Auto-mitigation  With people  RCA ≤ 24 h\n"
        in text
    )
    assert (
        "SEV-2        6          4       2           0    10s        5  10m00s       80 % (4/5)    0 % (0/1)   0 % (0/6)\n"
        in text
    )
    assert "  ✓ MTTA SEV-1 < 5 min              3m30s over 2 runs\n" in text
    assert "  ✓ Auto-mitigation SEV-2 ≥ 80 %    80 % of 5 runs (1 run(s) that needed a person reported apart)\n" in text
    assert "  ✗ RCA within 24 h, all incidents  12 % of 8 runs (1 reviewed late; 6 never reviewed)\n" in text


def test_json_report_is_deterministic() -> None:
    document = compute_report(scenario(), now=NOW).to_dict()
    assert json.loads(compute_report(scenario(), now=NOW).to_json()) == document
    assert document["severities"]["SEV-1"]["mtta_seconds"] == 210.0
    assert document["severities"]["SEV-2"]["auto_mitigation"] == {"rate": 0.8, "succeeded": 4, "finished": 5}
    assert document["severities"]["SEV-2"]["with_people"] == {"succeeded": 0, "finished": 1}
    assert document["all"]["rca_completion"] == {
        "rate": 0.125, "within_24h": 1, "late": 1, "missing": 6, "pending": 0, "expected": 8,
    }  # fmt: skip
    assert document["targets"][1] == {
        "metric": "mttr",
        "severity": "SEV-1",
        "target": "< 1800",
        "label": "MTTR SEV-1 < 30 min",
        "value": 2100.0,
        "sample": 2,
        "verdict": "missed",
        "note": None,
    }


def test_an_unreviewed_run_inside_its_24_hours_is_pending_not_missed() -> None:
    figures = compute_report(run("fresh"), now=T0 + 3600).overall
    assert (figures.rca_pending, figures.rca_missing, figures.rca_completion) == (1, 0, None)


def test_no_runs_is_said_plainly() -> None:
    report = compute_report([])
    text = report.to_text()
    assert "\nno runs\n" in text
    assert all(verdict.verdict == "no data" for verdict in report.verdicts)
    assert "  – MTTA SEV-1 < 5 min              no acknowledged runs\n" in text
    assert "  – Auto-mitigation SEV-2 ≥ 80 %    no run finished without a person\n" in text
    assert report.to_dict()["severities"]["SEV-1"]["mtta_seconds"] is None


def test_since_and_until_select_by_detection() -> None:
    entries = scenario()
    since = datetime.fromtimestamp(T0 + 150, UTC)  # after s2-0 and s2-1, before s2-2
    report = compute_report(entries, since=since, until=T0 + 1000)  # s1-b (detected at 1000) is out
    assert [(f.severity, f.runs) for f in report.severities[:2]] == [("SEV-1", 0), ("SEV-2", 2)]
    assert report.to_dict()["since"] == "2025-03-01T10:02:30Z"


def test_unfinished_runs_count_but_do_not_resolve() -> None:
    summary = summarize_run(run("open", finished=None))
    assert (summary.status, summary.resolved, summary.human, summary.acknowledged_by) == ("running", None, None, None)
    figures = compute_report(run("open", finished=None)).severities[1]
    assert (figures.runs, figures.finished, figures.mttr, figures.mtta, figures.unacknowledged) == (1, 0, None, None, 1)


@pytest.mark.parametrize(
    ("claimed", "clamped"),
    [
        (T0 + 3600, True),  # a startsAt in the future would make MTTA 0
        (0.0, True),  # 1970 would make it 55 years
        (T0 - 25 * 3600, True),  # more than a day before we received it
        ("2025-03-01", True),  # not a time at all
        (T0 - 600, False),  # ten minutes before receipt: believed
    ],
)
def test_the_senders_clock_is_bounded_by_our_receipt(claimed: object, clamped: bool) -> None:
    summary = summarize_run(run("r", acknowledged=120, claimed=claimed))
    assert summary.detection_clamped is clamped
    assert summary.detected == (T0 if clamped else claimed)
    assert summary.acknowledge_delay == (120 + 600 if not clamped else 120)
    report = compute_report(run("r2", acknowledged=120, claimed=claimed))
    assert report.overall.clamped == int(clamped)
    assert ("detection clamped to receipt for 1 run(s)" in report.to_text()) is clamped


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (45, "45s"), (252, "4m12s"), (3720, "1h02m"), (2 * 86400 + 3 * 3600, "2d03h")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


delays = st.floats(min_value=0, max_value=86_400, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), delays, st.one_of(st.none(), delays), st.one_of(st.none(), delays)), max_size=12)
)
def test_mtta_is_the_mean_of_a_persons_acknowledgement(
    runs: list[tuple[bool, float, float | None, float | None]],
) -> None:
    entries, expected = [], []
    for index, (sev1, step, ack, approval) in enumerate(runs):
        severity = "SEV-1" if sev1 else "SEV-3"
        entries += run(
            f"r{index}", severity=severity, detected=index * 10.0, first_step=step, acknowledged=ack, approved=approval
        )
        people = [value for value in (ack, approval) if value is not None]
        expected.append((severity, min(people) if people else None))  # the automated step never counts
    report = compute_report(entries)
    for figures in report.severities:
        mine = [delay for severity, delay in expected if severity == figures.severity and delay is not None]
        if mine:
            assert figures.mtta == pytest.approx(sum(mine) / len(mine), abs=1e-6)
        else:
            assert figures.mtta is None
