"""The live view: each mode fed the entries of a realistic run, written to a StringIO."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from opsdsl.audit import entries as k
from opsdsl.runtime.view import (
    AWAITING,
    FAILED,
    IN_DOUBT,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Board,
    JsonView,
    QuietView,
    RichView,
    TextView,
    approve_command,
    format_elapsed,
    make_view,
)

RUN_ID = "r-20240501-0001"
NOON_UTC = 1714564800.0  # 2024-05-01 12:00:00 UTC

RUN = {"id": RUN_ID, "incident_id": "INC-42", "pack": "checkout", "playbook": "respond", "severity": "SEV-2"}
NODES = [
    {"id": "check_latency", "name": "Check latency", "action": "http.request", "section": "steps", "risk": "low",
     "retry": {"attempts": 3}, "with": {"url": "http://kernel/v1/latency"}},
    {"id": "page_oncall", "name": "page_oncall", "action": "notify", "section": "steps", "risk": "low"},
    {"id": "drain_node", "name": "drain_node", "action": "shell", "section": "steps", "risk": "high",
     "compensation": "drain_node.compensate"},
    {"id": "post_summary", "name": "post_summary", "action": "notify", "section": "finally", "risk": "low"},
    {"id": "drain_node.compensate", "section": "compensation", "for": "drain_node", "action": "shell"},
]  # fmt: skip


class Ledger:
    """Builds entries the way the scheduler appends them: consecutive seq, advancing ts."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.ts = NOON_UTC

    def add(self, kind: str, after: float = 1.0, **data: Any) -> Ledger:
        self.ts += after
        self.entries.append({"seq": len(self.entries) + 1, "ts": self.ts, "run": RUN_ID, "kind": kind, "data": data})
        return self

    def start(self) -> Ledger:
        return (
            self.add(k.RUN_CREATED, incident_id="INC-42", pack="checkout", playbook="respond", severity="SEV-2")
            .add(k.PLAN_VERIFIED, keyids=["k1"], trust="dev-key")
            .add(k.RUN_STARTED, reason="start", by=None)
            .add(k.POLICY_DECISION, step="check_latency", action="http.request", decision="allow", policies=[])
            .add(k.STEP_INTENT, step="check_latency", attempt=1, action="http.request", idempotency_key="x", timeout=10)
            .add(k.ATTEMPT_FAILED, step="check_latency", attempt=1, error="503 Service Unavailable", retry_in=2.1)
            .add(k.STEP_INTENT, after=2.1, step="check_latency", attempt=2, action="http.request", timeout=10)
            .add(k.STEP_SUCCEEDED, after=0.4, step="check_latency", attempts=2, outputs={"p99_ms": 950})
            .add(k.STEP_SKIPPED, step="page_oncall", when="outputs.check_latency.p99_ms > 2000")
        )


def paused_run() -> list[dict[str, Any]]:
    """The run stops at drain_node: a change freeze wants a person's approval."""
    policies = [{"id": "change-freeze", "effect": "require_approval", "message": "freeze", "origin": "org"}]
    return (
        Ledger()
        .start()
        .add(k.POLICY_DECISION, step="drain_node", action="shell", decision="require_approval", policies=policies)
        .add(k.APPROVAL_REQUESTED, step="drain_node", reason="policy", message="Drain during the freeze?",
             approvers=["alice", "bob"], min_approvals=1, policies=["change-freeze"], inputs={})
        .add(k.RUN_PAUSED, waiting=[{"step": "drain_node", "reason": "approval"}])
        .entries
    )  # fmt: skip


def failed_run() -> list[dict[str, Any]]:
    """drain_node fails, its compensation runs, the finally step still posts a summary."""
    return (
        Ledger()
        .start()
        .add(k.STEP_INTENT, step="drain_node", attempt=1, action="shell")
        .add(k.STEP_FAILED, step="drain_node", attempts=1, error="exit 1: [/bold] node busy", outputs={},
             denied_by=None, continue_on_error=False)
        .add(k.STEP_INTENT, step="drain_node.compensate", attempt=1, action="shell")
        .add(k.STEP_SUCCEEDED, step="drain_node.compensate", attempts=1, outputs={})
        .add(k.STEP_INTENT, step="post_summary", attempt=1, action="notify")
        .add(k.STEP_SUCCEEDED, step="post_summary", attempts=1, outputs={})
        .add(k.RUN_FINISHED, status="failed", error="drain_node failed", failed_steps=["drain_node"],
             compensated=["drain_node"], human=False, escalate=None)
        .entries
    )  # fmt: skip


PAUSED = {"incident_folder": "incidents/INC-42", "exit_code": 3, "pending_approvals": ["drain_node"], "error": None}
FAILED_END = {
    "incident_folder": "incidents/INC-42",
    "exit_code": 1,
    "pending_approvals": [],
    "error": "drain_node failed",
}


def play(view: Any, entries: list[dict[str, Any]], status: str, summary: dict[str, Any]) -> None:
    view.begin(RUN, NODES)
    for entry in entries:
        view.entry(entry)
    view.end(status, summary)


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Text lines carry local times: pin the zone so the expected lines can be written out."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


class TtyStringIO(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- make_view


def test_auto_picks_json_for_a_stream_that_is_not_a_terminal() -> None:
    assert isinstance(make_view("auto", io.StringIO()), JsonView)


def test_auto_picks_rich_for_a_terminal() -> None:
    assert isinstance(make_view("auto", TtyStringIO()), RichView)


def test_each_mode_makes_its_view() -> None:
    out = io.StringIO()
    assert isinstance(make_view("json", out), JsonView)
    assert isinstance(make_view("text", out), TextView)
    assert isinstance(make_view("rich", out), RichView)
    assert isinstance(make_view("quiet", out), QuietView)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown view mode 'fancy'"):
        make_view("fancy", io.StringIO())


def test_quiet_writes_nothing() -> None:
    out = io.StringIO()
    play(make_view("quiet", out), paused_run(), "paused", PAUSED)
    assert out.getvalue() == ""


def test_importing_the_view_does_not_import_rich() -> None:
    code = "import sys, opsdsl.runtime.view; sys.exit('rich' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- json


def test_json_lines_round_trip_the_entries_in_order() -> None:
    out, entries = io.StringIO(), paused_run()
    play(make_view("json", out), entries, "paused", PAUSED)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]

    begin, *middle, end = lines
    assert begin["event"] == "begin" and begin["run"] == RUN_ID and begin["pack"] == "checkout"
    assert [n["id"] for n in begin["nodes"]] == [n["id"] for n in NODES]
    assert "with" not in begin["nodes"][0]  # display fields only; the plan has the rest
    assert [m.pop("event") for m in middle] == ["entry"] * len(entries)
    assert middle == entries
    assert end == {"event": "end", "run": RUN_ID, "status": "paused", **PAUSED}


def test_json_lines_are_compact_sorted_unescaped_and_flushed_one_by_one() -> None:
    class Recorder(io.StringIO):
        flushed: list[str]

        def flush(self) -> None:
            self.flushed.append(self.getvalue())

    out = Recorder()
    out.flushed = []
    view = make_view("json", out)
    view.entry({"seq": 1, "ts": 1.5, "run": RUN_ID, "kind": k.RUN_ACKNOWLEDGED, "data": {"by": "zoë"}})
    view.entry({"seq": 2, "ts": 2.5, "run": RUN_ID, "kind": k.RUN_ACKNOWLEDGED, "data": {"by": "bob"}})
    first = '{"data":{"by":"zoë"},"event":"entry","kind":"run.acknowledged","run":"r-20240501-0001","seq":1,"ts":1.5}\n'
    assert out.flushed[0] == first
    assert len(out.flushed) == 2 and out.flushed[1].count("\n") == 2


# --- text


def test_text_has_one_line_per_significant_entry(utc: None) -> None:
    out = io.StringIO()
    play(make_view("text", out), paused_run(), "paused", PAUSED)
    lines = out.getvalue().splitlines()

    assert re.fullmatch(
        r"\d\d:\d\d:\d\d ▶ checkout / respond / SEV-2 / run r-20240501-0001 \(incident INC-42, 4 steps\)", lines[0]
    )
    assert lines[1:-3] == [
        "12:00:02 ✓ plan verified (trust dev-key, keys k1)",
        "12:00:03 ▶ run started",
        "12:00:05 ▶ check_latency http.request started",
        "12:00:06 ↻ check_latency attempt 1 failed: 503 Service Unavailable; retry in 2.1s",
        "12:00:08 ▶ check_latency retrying (attempt 2 of 3)",
        "12:00:08 ✓ check_latency succeeded (2 attempts)",
        "12:00:09 ↷ page_oncall skipped (when: outputs.check_latency.p99_ms > 2000)",
        "12:00:10 ⏸ drain_node approval required by policy change-freeze",
        "12:00:11 ⏸ drain_node awaiting approval (1 of alice, bob): Drain during the freeze?",
        "12:00:12 ⏸ run paused, waiting for drain_node (approval)",
    ]  # fmt: skip
    assert lines[-3].endswith("⏸ run r-20240501-0001 paused · incident folder incidents/INC-42 · 1 approval pending")
    assert lines[-2].endswith("→ to continue: opsdsl approve r-20240501-0001 drain_node --by NAME")
    assert lines[-1].endswith("→ then: opsdsl resume r-20240501-0001")


def test_text_reports_failures_compensation_and_the_outcome(utc: None) -> None:
    out = io.StringIO()
    play(make_view("text", out), failed_run(), "failed", FAILED_END)
    text = out.getvalue()

    assert "12:00:11 ✗ drain_node failed (1 attempt): exit 1: [/bold] node busy\n" in text
    assert "12:00:13 ✓ drain_node.compensate succeeded (1 attempt)\n" in text
    assert "12:00:15 ✓ post_summary succeeded (1 attempt)\n" in text
    assert "12:00:16 ✗ run failed: drain_node failed; failed: drain_node; compensated: drain_node\n" in text
    assert "opsdsl approve" not in text


def test_text_is_one_line_per_entry_even_for_multiline_errors(utc: None) -> None:
    out = io.StringIO()
    view = make_view("text", out)
    entry = Ledger().add(k.STEP_FAILED, step="s", attempts=1, error="line one\nline two\n" + "x" * 500).entries[0]
    view.entry(entry)
    assert out.getvalue().count("\n") == 1
    assert out.getvalue().endswith("line one line two " + "x" * 500 + "\n")  # a log line is never cut short


def test_text_never_cuts_the_approval_question_or_a_secret_hint_short(utc: None) -> None:
    """Issue 13 #11: what a person must read to act (the question, the secret to provide) is whole."""
    question = "Scale the pool of cluster eu-west-1 by two? " + "Check the dashboard first. " * 12 + "END-OF-QUESTION"
    hint = "secret `pagerduty_routing_key` has no value: pass " + "--secret NAME=env:VAR " * 12 + "LAST_SECRET_NAME"
    out = io.StringIO()
    view = make_view("text", out)
    ledger = Ledger()
    ledger.add(k.APPROVAL_REQUESTED, step="scale", approvers=["sre"], min_approvals=1, message=question)
    ledger.add(k.STEP_FAILED, step="page", attempts=1, error=hint)
    for entry in ledger.entries:
        view.entry(entry)
    view.end("failed", {"run": "r1", "error": hint, "pending_approvals": []})
    text = out.getvalue()
    assert "END-OF-QUESTION" in text and text.count("LAST_SECRET_NAME") == 2
    assert "…" not in text


def test_the_board_keeps_the_whole_approval_question(utc: None) -> None:
    question = "Scale the pool? " + "Read the runbook section 4 first. " * 6 + "END-OF-QUESTION"
    board = Board({"id": "r1"}, [{"id": "scale", "action": "shell"}])
    board.apply(Ledger().add(k.APPROVAL_REQUESTED, step="scale", min_approvals=1, message=question).entries[0])
    assert board.rows["scale"].note.endswith("END-OF-QUESTION")


# --- rich

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def render_rich(entries: list[dict[str, Any]], status: str, summary: dict[str, Any]) -> str:
    out = io.StringIO()
    play(RichView(out, force_terminal=True, width=100), entries, status, summary)
    return ANSI.sub("", out.getvalue())


def test_rich_shows_every_step_its_final_status_and_the_approve_command() -> None:
    shown = render_rich(paused_run(), "paused", PAUSED)

    assert "checkout / respond / SEV-2 / run r-20240501-0001" in shown
    for step in ("check_latency", "page_oncall", "drain_node", "post_summary"):
        assert step in shown
    assert "drain_node.compensate" not in shown  # a compensation appears only when it starts
    assert re.search(r"✓ succeeded\s+check_latency\s+http.request\s+2/3\s+3.5s\s+\n", shown)
    assert re.search(r"↷ skipped\s+page_oncall\s+notify.*when: outputs", shown)
    assert re.search(r"⏸ awaiting approval\s+drain_node\s+shell.*approvals 0/1 \(policy change-freeze\)", shown)
    assert re.search(r"· pending\s+post_summary", shown)
    assert "run r-20240501-0001 paused · incident folder incidents/INC-42 · 1 approval pending" in shown
    assert "to continue: opsdsl approve r-20240501-0001 drain_node --by NAME" in shown


def test_rich_shows_a_compensation_once_it_runs_and_errors_verbatim() -> None:
    shown = render_rich(failed_run(), "failed", FAILED_END)

    assert re.search(r"✗ failed\s+drain_node\s+shell\s+1\s+1.0s\s+exit 1: \[/bold\] node busy", shown)
    assert re.search(r"✓ succeeded\s+drain_node.compensate", shown)
    assert re.search(r"✓ succeeded\s+post_summary", shown)
    assert "run r-20240501-0001 failed: drain_node failed · incident folder incidents/INC-42" in shown
    assert "opsdsl approve" not in shown


def test_rich_view_shows_runs_one_after_another() -> None:
    out = io.StringIO()
    view = RichView(out, force_terminal=True, width=100)
    play(view, failed_run(), "failed", FAILED_END)
    play(view, paused_run(), "paused", PAUSED)
    shown = ANSI.sub("", out.getvalue())
    assert shown.index("run r-20240501-0001 failed") < shown.index("to continue: opsdsl approve")


def test_rich_end_without_begin_still_prints_the_summary() -> None:
    out = io.StringIO()
    RichView(out, width=100).end("refused", {"incident_folder": None, "exit_code": 4, "error": "bad signature"})
    assert out.getvalue() == "run ? refused: bad signature\n"


# --- the board the rich view draws


def board_after(entries: list[dict[str, Any]]) -> Board:
    board = Board(RUN, NODES)
    for entry in entries:
        board.apply(entry)
    return board


def test_board_orders_main_then_finally_and_hides_compensations_until_they_start() -> None:
    nodes = [NODES[3], NODES[4], *NODES[:3]]  # finally first: the board puts it after the main steps
    board = Board(RUN, nodes)
    assert [r.id for r in board.visible()] == ["check_latency", "page_oncall", "drain_node", "post_summary"]
    board.apply(Ledger().add(k.POLICY_DECISION, step="drain_node.compensate", decision="allow", policies=[]).entries[0])
    assert board.visible()[-1].id == "drain_node.compensate"


def test_board_counts_attempts_and_drops_the_retry_note_on_success() -> None:
    entries = paused_run()
    row = board_after(entries[:6]).rows["check_latency"]
    assert (row.status, row.attempts, row.note) == (RUNNING, 1, "retry in 2.1s: 503 Service Unavailable")
    row = board_after(entries[:8]).rows["check_latency"]
    assert (row.status, row.attempts, row.note) == (SUCCEEDED, 2, "")
    assert row.elapsed(now=0) == pytest.approx(3.5)


def test_board_keeps_policy_and_approval_notes() -> None:
    board = board_after(paused_run())
    row = board.rows["drain_node"]
    assert (board.status, row.status) == ("paused", AWAITING)
    board.apply(Ledger().add(k.APPROVAL_RECORDED, step="drain_node", by="alice", decision="approve").entries[0])
    assert row.note == "approvals 1/1 by alice"
    board.apply(Ledger().add(k.STEP_INTENT, step="drain_node", attempt=1).entries[0])
    board.apply(Ledger().add(k.STEP_SUCCEEDED, step="drain_node", attempts=1).entries[0])
    assert (row.status, row.note) == (SUCCEEDED, "approvals 1/1 by alice")


def test_board_denial_names_the_policy() -> None:
    deny = [{"id": "no-prod-drain", "effect": "deny", "message": "", "origin": "org"}]
    ledger = Ledger().add(k.POLICY_DECISION, step="drain_node", decision="deny", policies=deny)
    board = board_after(ledger.entries)
    assert board.rows["drain_node"].note == "denied by policy no-prod-drain"
    board.apply(ledger.add(k.STEP_FAILED, step="drain_node", attempts=0, denied_by="no-prod-drain").entries[-1])
    assert (board.rows["drain_node"].status, board.rows["drain_node"].note) == (
        FAILED,
        "denied by policy no-prod-drain",
    )


def test_board_in_doubt_waits_for_a_person_and_a_finished_step_stays_finished() -> None:
    ledger = (
        Ledger().add(k.STEP_INTENT, step="drain_node", attempt=1).add(k.STEP_IN_DOUBT, step="drain_node", attempt=1)
    )
    board = board_after(ledger.entries)
    row = board.rows["drain_node"]
    assert row.status == IN_DOUBT
    board.apply(ledger.add(k.STEP_DECIDED, step="drain_node", by="alice", decision="retry").entries[-1])
    assert (row.status, row.started, row.note) == (PENDING, None, "decided retry by alice")
    board.apply(ledger.add(k.STEP_INTENT, step="drain_node", attempt=1).entries[-1])
    board.apply(ledger.add(k.STEP_SUCCEEDED, step="drain_node", attempts=1).entries[-1])
    board.apply(ledger.add(k.STEP_INTENT, step="drain_node", attempt=2).entries[-1])  # late or repeated
    assert row.status == SUCCEEDED


def test_approve_command_quotes_what_the_shell_would_split() -> None:
    assert approve_command("r 1", "drain_node") == "opsdsl approve 'r 1' drain_node --by NAME"


@pytest.mark.parametrize(
    ("seconds", "shown"), [(None, ""), (0.04, "0.0s"), (12.34, "12.3s"), (125, "2m05s"), (3720, "1h02m")]
)
def test_format_elapsed(seconds: float | None, shown: str) -> None:
    assert format_elapsed(seconds) == shown
