"""`opsdsl show`, `opsdsl ledger show`, `opsdsl runs` and RUN prefixes, run as a user runs
them: real `opsdsl` processes on a state directory made by `opsdsl run` of the packs in
tests/fixtures/inspect/ (an approval, a two-person policy, a secret param; and a pack whose
output is hostile).

Golden files (tests/fixtures/inspect/golden/) hold the output with what changes from run to
run replaced: run ids, times, durations, ages, hashes and keyids, epoch seconds. Rewrite
them with `pytest --update-golden` (or OPSDSL_UPDATE_GOLDEN=1) and read the diff.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "inspect"
GOLDEN = FIXTURES / "golden"
TOKEN = "s3cr3t-t0ken-value"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str


def opsdsl(folder: Path, *args: object, timeout: float = 60) -> Result:
    env = {k: v for k, v in os.environ.items() if k != "OPSDSL_HOME"}
    env["API_TOKEN"] = TOKEN
    done = subprocess.run(
        [sys.executable, "-m", "opsdsl", *map(str, args)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A state dir holding one finished run of demo.yaml: paused for an approval step (answered
    with an input and a comment), then for a two-person policy (two approvers), then done."""
    folder = tmp_path_factory.mktemp("demo")
    for name in ("demo.yaml", "policies.yaml"):
        shutil.copy(FIXTURES / name, folder / name)
    secret = ("--secret", "api_token=env:API_TOKEN")
    first = opsdsl(folder, "run", "--pack", "demo.yaml", *secret, "--log-format", "json")
    assert first.code == 4, first
    run_id = json.loads(first.stdout.splitlines()[0])["run"]
    steps = [
        ("approve", "latest", "ask", "--by", "alice", "--input", "reason=it is stuck", "--comment", "go ahead"),
        ("resume", run_id[:8], *secret, "--log-format", "quiet"),
        ("approve", run_id[:12], "restart", "--by", "alice"),
        ("approve", run_id, "restart", "--by", "bob"),
        ("resume", "latest", *secret, "--log-format", "quiet"),
    ]
    for args in steps:
        result = opsdsl(folder, *args)
        assert result.code in (0, 4), (args, result)
    return folder, run_id


# ---- normalising what changes from run to run -------------------------------------------------

_RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{12}")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
_EPOCH = re.compile(r"\b1\d{9}(\.\d+)?\b")
_DURATION = re.compile(r"\b(\d+\.\ds|\d+m\d\ds|\d+h\d\dm)\b")
_AGE = re.compile(r"\b\d+[smhd] ago\b")
_YEAR = re.compile(r"/\d{4}/INC-")
_TIMES = {"ts", "created_at", "updated_at", "finished_at", "started_at", "wake_at", "detected_at", "received_at"}
_SPANS = {"age_seconds", "duration_seconds"}
_CUT = "more characters; --format json has all)"


CUT_KEPT = 160  # characters of a cut line compared (normalised), see _normalise_line


def normalise_text(text: str) -> str:
    return "\n".join(_normalise_line(line) for line in text.split("\n"))


def _normalise_line(line: str) -> str:
    normal = _RUN_ID.sub("RUN", line)
    normal = _ISO.sub("TIME", normal)
    normal = _HEX64.sub("HEX", normal)
    normal = _EPOCH.sub("EPOCH", normal)
    normal = _AGE.sub("AGE ago", normal)
    normal = _DURATION.sub("DURATION", normal)
    normal = _YEAR.sub("/YEAR/INC-", normal)
    if _CUT in line and _EPOCH.search(line[: line.index(_CUT)]):
        # cut where the raw text reached the limit: epochs of other lengths move the cut, so
        # compare a fixed length of the normalised text, well before any raw cut can fall
        normal = normal[: min(normal.index(_CUT), CUT_KEPT)] + "… (cut)"
    return normal


def normalise_json(value: object, key: str | None = None) -> object:
    if isinstance(value, dict):
        return {k: normalise_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise_json(v) for v in value]
    if value is not None and key in _TIMES:
        return "EPOCH"
    if value is not None and key in _SPANS:
        return "SECONDS"
    if isinstance(value, str):
        return normalise_text(value)
    return value


def check_golden(name: str, actual: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.is_file(), f"no golden file {path}: run pytest --update-golden"
    assert actual == path.read_text(encoding="utf-8")


# ---- golden output ---------------------------------------------------------------------------


def test_show_text_golden(demo: tuple[Path, str], update_golden: bool):
    folder, _ = demo
    result = opsdsl(folder, "show", "latest")
    assert result.code == 0, result
    assert TOKEN not in result.stdout
    check_golden("show.txt", normalise_text(result.stdout), update_golden)


def test_show_json_golden(demo: tuple[Path, str], update_golden: bool):
    folder, run_id = demo
    result = opsdsl(folder, "show", run_id[:10], "--format", "json")
    assert result.code == 0, result
    assert TOKEN not in result.stdout
    detail = json.loads(result.stdout)
    assert detail["id"] == run_id and detail["params"]["api_token"] == "***"
    check_golden("show.json", json.dumps(normalise_json(detail), indent=2, sort_keys=True) + "\n", update_golden)


def test_ledger_show_text_golden(demo: tuple[Path, str], update_golden: bool):
    folder, _ = demo
    result = opsdsl(folder, "ledger", "show", "--run", "latest")
    assert result.code == 0, result
    assert TOKEN not in result.stdout
    check_golden("ledger.txt", normalise_text(result.stdout), update_golden)


def test_ledger_show_json_golden(demo: tuple[Path, str], update_golden: bool):
    folder, run_id = demo
    result = opsdsl(folder, "ledger", "show", "--run", run_id, "--format", "json")
    assert result.code == 0, result
    entries = json.loads(result.stdout)
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    check_golden("ledger.json", json.dumps(normalise_json(entries), indent=2, sort_keys=True) + "\n", update_golden)


# ---- what show says, checked beside the goldens ----------------------------------------------


def test_show_json_tells_the_whole_story(demo: tuple[Path, str]):
    folder, run_id = demo
    detail = json.loads(opsdsl(folder, "show", run_id, "--format", "json").stdout)
    assert [s["id"] for s in detail["steps"]] == ["look", "ask", "restart", "rca"]
    assert {s["status"] for s in detail["steps"]} == {"succeeded"}
    restart = next(s for s in detail["steps"] if s["id"] == "restart")
    assert restart["approvals_needed"] == 2 and restart["approval_reason"] == "policy"
    assert restart["outputs"]["stdout"] == "restarted with token ***"
    answers = [(a["step"], a["decision"], a["answers"], a["comment"]) for a in detail["approvals"]]
    assert answers[0] == ("ask", "approve", {"reason": "it is stuck"}, "go ahead")
    assert [a[0] for a in answers] == ["ask", "restart", "restart"]
    policies = [d for d in detail["policy_decisions"] if d["decision"] == "require_approval"]
    assert [(d["step"], [p["id"] for p in d["policies"]]) for d in policies] == [("restart", ["high-risk-two-person"])]
    assert detail["waiting_for"] == [] and detail["status"] == "succeeded"
    kinds = [entry["kind"] for entry in detail["ledger"]]
    assert kinds[0] == "run.created" and kinds[-1] == "run.finished"
    # the same entries as `ledger show --run` gives, in the same order
    shown = json.loads(opsdsl(folder, "ledger", "show", "--run", run_id, "--format", "json").stdout)
    assert [(e["seq"], e["hash"]) for e in shown] == [(e["seq"], e["hash"]) for e in detail["ledger"]]


def test_ledger_show_filters_by_kind_and_limit(demo: tuple[Path, str]):
    folder, _ = demo
    approvals = opsdsl(folder, "ledger", "show", "--kind", "approval.recorded", "--format", "json")
    assert [e["data"]["step"] for e in json.loads(approvals.stdout)] == ["ask", "restart", "restart"]
    last = json.loads(opsdsl(folder, "ledger", "show", "--limit", "2", "--format", "json").stdout)
    assert [e["kind"] for e in last] == ["step.succeeded", "run.finished"]
    text = opsdsl(folder, "ledger", "show", "--limit", "1").stdout.splitlines()
    assert len(text) == 1 and "run.finished" in text[0]
    unknown = opsdsl(folder, "ledger", "show", "--kind", "run.exploded")
    assert unknown.code == 2 and "no such entry kind" in unknown.stderr


def test_a_paused_run_says_what_it_waits_for(tmp_path: Path):
    for name in ("demo.yaml", "policies.yaml"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    assert opsdsl(tmp_path, "run", "--pack", "demo.yaml", "--secret", "api_token=env:API_TOKEN").code == 4
    text = opsdsl(tmp_path, "show", "latest").stdout
    assert "waiting for approval of ask: 0 of 1" in text
    assert "⏸ ask (approval, risk low)  awaiting approval" in text
    assert "· restart (shell, risk high)  pending" in text
    detail = json.loads(opsdsl(tmp_path, "show", "latest", "--format", "json").stdout)
    assert [(w["kind"], w["step"], w["needed"]) for w in detail["waiting_for"]] == [("approval", "ask", 1)]
    assert detail["pending_approvals"] == ["ask"]
    listed = opsdsl(tmp_path, "runs").stdout.splitlines()
    assert listed[0].split() == [
        "RUN",
        "STATUS",
        "SEVERITY",
        "PACK/PLAYBOOK",
        "STARTED",
        "(UTC)",
        "AGE",
        "WAITING",
        "FOR",
    ]
    assert listed[1].split()[1] == "paused" and listed[1].split()[-1] == "ask"


# ---- runs ------------------------------------------------------------------------------------


def test_runs_filters_and_json_shape(demo: tuple[Path, str]):
    folder, run_id = demo
    items = json.loads(opsdsl(folder, "runs", "--format", "json").stdout)
    assert [item["id"] for item in items] == [run_id]
    item = items[0]
    assert _ISO.fullmatch(item["started"]) and item["age_seconds"] >= 0
    assert {"id", "status", "pack", "playbook", "severity", "created_at", "pending_approvals"} <= set(item)
    for args, expected in [
        (("--pack", "inspect-demo"), [run_id]),
        (("--pack", "other"), []),
        (("--playbook", "restart-api", "--severity", "SEV-2"), [run_id]),
        (("--severity", "SEV-1"), []),
        (("--since", "1h"), [run_id]),
        (("--since", "2999-01-01"), []),
        (("--status", "succeeded"), [run_id]),
        (("--status", "cancelled"), []),
    ]:
        result = opsdsl(folder, "runs", *args, "--format", "json")
        assert result.code == 0, (args, result)
        assert [item["id"] for item in json.loads(result.stdout)] == expected, args
    text = opsdsl(folder, "runs").stdout.splitlines()
    assert text[0].startswith("RUN ") and "STARTED (UTC)" in text[0] and "AGE" in text[0]
    assert run_id in text[1] and "inspect-demo/restart-api" in text[1] and _ISO.search(text[1])
    assert opsdsl(folder, "runs", "--pack", "other").stdout.strip() == "no runs"
    not_utf8 = opsdsl(folder, "runs", "--pack", "\udcff", "--playbook", "%")
    assert not_utf8.code == 2 and "Traceback" not in not_utf8.stderr
    for bad in ("yesterday", "-5m", "9" * 80, "2026-13-01", "\udcff1h"):
        result = opsdsl(folder, "runs", "--since", bad)
        assert result.code == 2 and "--since" in result.stderr and "Traceback" not in result.stderr, bad


# ---- RUN: prefixes, latest, hostile text -------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Two failed runs of hostile.yaml, whose output holds escape sequences and 300 kB."""
    folder = tmp_path_factory.mktemp("hostile")
    shutil.copy(FIXTURES / "hostile.yaml", folder / "hostile.yaml")
    ids = []
    for _ in range(2):
        result = opsdsl(folder, "run", "--pack", "hostile.yaml", "--log-format", "json")
        assert result.code == 1, result
        ids.append(json.loads(result.stdout.splitlines()[0])["run"])
    return folder, ids


def test_every_command_that_takes_a_run_accepts_a_prefix_and_latest(hostile: tuple[Path, list[str]]):
    folder, ids = hostile
    newest = ids[-1]  # the one created last: both may start in the same second, so not max(ids)
    prefix = newest[:20]  # the time and 4 hex digits of its own (16 characters may name both runs)
    for text in ("latest", newest, prefix):
        result = opsdsl(folder, "show", text, "--format", "json")
        assert result.code == 0 and json.loads(result.stdout)["id"] == newest, (text, result)
    # ack and resume resolve the same way: ack records against the full id; resume names it
    acked = opsdsl(folder, "ack", prefix, "--by", "carol")
    assert acked.code == 0 and newest in acked.stdout, acked
    resumed = opsdsl(folder, "resume", "latest", "--log-format", "quiet")
    assert resumed.code == 2 and newest in resumed.stderr, resumed
    decided = opsdsl(folder, "decide", prefix, "shout", "--as", "retry", "--by", "carol")
    assert decided.code == 2 and newest in decided.stderr, decided


def test_hostile_run_references_are_usage_errors(hostile: tuple[Path, list[str]]):
    folder, ids = hostile
    year = ids[0][:4]
    cases = {
        year: "several runs",  # ambiguous: both ids start so
        "%%%%": "no run",
        "____": "no run",
        "2026%": "no run",
        "20__": "no run",
        "' OR 1=1 --": "no run",
        "\x1b[2J\x1b]0;owned\x07": "no run",
        "a" * 100_000: "is not a run id",
        "\udcff\udcfe\udcfd\udcfc": "is not a run id",  # bytes that are not UTF-8 (argv keeps them)
        "abc": "4 characters or more",
        " ": "name a run",
    }
    for i, (text, said) in enumerate(cases.items()):
        commands = [("show", text), ("ledger", "show", "--run", text), ("approve", text, "shout", "--by", "x")]
        for args in commands if i % 3 == 0 else commands[i % 3 : i % 3 + 1]:
            result = opsdsl(folder, *args)
            assert result.code == 2, (args[:2], text[:20], result)
            assert said in result.stderr, (text[:20], result.stderr)
            assert "\x1b" not in result.stderr and "Traceback" not in result.stderr
            assert len(result.stderr) < 2000
    ambiguous = opsdsl(folder, "show", year).stderr
    assert all(run_id in ambiguous for run_id in ids)


def test_hostile_outputs_are_escaped_and_cut_in_text_and_whole_in_json(hostile: tuple[Path, list[str]]):
    folder, ids = hostile
    text = opsdsl(folder, "show", ids[0])
    assert text.code == 0, text
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert raw not in text.stdout, repr(raw)
    assert "\\x1b[2J\\x1b[31mred\\x1b]0;owned\\x07 \\u202eevil\\u202c \\x9b31m c1 \\r back" in text.stdout
    assert "\\x1b[5mblink\\x1b[0m" in text.stdout  # the error, from stderr, escaped too
    assert "more characters; --format json has all" in text.stdout
    assert "(49 more lines; --format json has all)" in text.stdout
    assert len(text.stdout) < 10_000
    ledger_text = opsdsl(folder, "ledger", "show", "--run", ids[0])
    assert "\x1b" not in ledger_text.stdout and max(map(len, ledger_text.stdout.splitlines())) < 600
    whole = opsdsl(folder, "show", ids[0], "--format", "json")
    assert whole.stdout.isascii()
    stdout = json.loads(whole.stdout)["steps"][0]["outputs"]["stdout"]
    assert stdout.startswith("\x1b[2J\x1b[31mred") and len(stdout) > 300_000 and stdout.endswith("line 49\n")


def test_without_state_show_and_ledger_show_say_so(tmp_path: Path):
    for args in (("show", "latest"), ("ledger", "show"), ("runs",), ("show", "x" * 28)):
        result = opsdsl(tmp_path, *args, "--state-dir", tmp_path / "nothing")
        assert result.code == 2 and "no opsdsl state" in result.stderr, (args, result)
    assert not (tmp_path / "nothing").exists()


def test_a_failed_run_shows_its_retries_and_compensation(tmp_path: Path):
    shutil.copy(FIXTURES / "compensate.yaml", tmp_path / "compensate.yaml")
    assert opsdsl(tmp_path, "run", "--pack", "compensate.yaml", "--log-format", "quiet").code == 1
    text = opsdsl(tmp_path, "show", "latest").stdout
    assert "✗ flaky (shell, risk low)  failed" in text and "attempts   2 of 2" in text
    assert re.search(r"attempt    1 failed at \S+: sh exited with 1 \(expected 0\): no; retried in 0\.\ds", text)
    assert "✓ make.compensate (shell)  succeeded  [compensation]" in text
    detail = json.loads(opsdsl(tmp_path, "show", "latest", "--format", "json").stdout)
    flaky = next(step for step in detail["steps"] if step["id"] == "flaky")
    assert [f["attempt"] for f in flaky["failed_attempts"]] == [1]
    assert 0.05 <= flaky["failed_attempts"][0]["retry_in"] < 1  # 100 ms, with jitter
    assert detail["status"] == "failed" and detail["waiting_for"] == []
