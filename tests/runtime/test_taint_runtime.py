"""Event data is hostile, at run time: a label cannot climb out of its URL segment, run code
through a program lint could not see, pass itself off as an option, or start a run its
input's `pattern:` refuses. Real subprocesses against the Kernel API stand-in, which logs
every request: the attack must not reach it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kernel_api import FIXTURES, KernelAPI, Result, ledger_rows, opsdsl, param_args

PACK = FIXTURES / "taint" / "attacks.yaml"


@pytest.fixture
def api():
    with KernelAPI() as server:
        yield server


def run(state: Path, event: dict, *args: str, params: dict) -> Result:
    return opsdsl(
        "run", "--pack", PACK, "--state-dir", state, "--log-format", "json", "--event", "-",
        *param_args(**params), *args, stdin=json.dumps(event),
    )  # fmt: skip


def alert(**labels: str) -> dict:
    return {"status": "firing", "labels": {"alertname": "PoolDegraded", **labels}}


def denials(state: Path) -> list[dict]:
    return [
        row["data"]
        for row in ledger_rows(state, "policy.decision")
        if row["data"]["decision"] == "deny" and row["data"]["policies"][0]["id"] == "opsdsl-tainted-data"
    ]


def test_a_label_stays_inside_its_path_segment_and_query_value(api: KernelAPI, tmp_path: Path) -> None:
    event = alert(cluster="eu-1/credentials/rotate#", by="x&admin=1")
    result = run(tmp_path / "state", event, params={"kernel_url": api.url})
    assert result.code == 0, result.stderr
    assert api.paths() == ["POST /v1/clusters/eu-1%2Fcredentials%2Frotate%23/pool/reconnect"]
    (request,) = api.seen()
    assert request.query == {"by": "x&admin=1"}


@pytest.mark.parametrize("cluster", ["..", "."])
def test_a_label_cannot_be_a_dot_segment(api: KernelAPI, tmp_path: Path, cluster: str) -> None:
    result = run(tmp_path / "state", alert(cluster=cluster, by="me"), params={"kernel_url": api.url})
    assert result.code == 1
    assert api.seen() == []
    assert "may not be" in result.stdout + result.stderr


def test_the_runtime_refuses_an_injection_lint_could_not_see(tmp_path: Path) -> None:
    state, markers = tmp_path / "state", tmp_path / "markers"
    markers.mkdir()
    event = alert(file="x; touch pwned")
    result = run(state, event, "--playbook", "param-shell", params={"marker_dir": markers})
    assert result.code == 1
    assert list(markers.iterdir()) == []
    (denied,) = denials(state)
    assert denied["step"] == "touch" and "runs its arguments as code" in denied["policies"][0]["message"]
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0


def test_a_label_that_reads_as_an_option_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = run(state, alert(folder="--help"), "--playbook", "option-injection", params={})
    assert result.code == 1
    (denied,) = denials(state)
    assert "would read it as an option" in denied["policies"][0]["message"]
    ok = run(tmp_path / "state2", alert(folder=str(tmp_path)), "--playbook", "option-injection", params={})
    assert ok.code == 0, ok.stderr


@pytest.mark.parametrize("cluster", ["eu-1/credentials/rotate#", "x" * 64, "EU-1", "9" * 5000])
def test_a_value_its_pattern_refuses_starts_no_run(api: KernelAPI, tmp_path: Path, cluster: str) -> None:
    state = tmp_path / "state"
    result = run(state, alert(cluster=cluster), "--playbook", "validated", params={"kernel_url": api.url})
    assert result.code not in (0, 3), result.stderr
    assert "does not match its `pattern:`" in result.stdout + result.stderr
    assert cluster not in result.stdout + result.stderr or len(cluster) < 8
    assert api.seen() == []


def test_a_value_its_pattern_accepts_runs(api: KernelAPI, tmp_path: Path) -> None:
    result = run(tmp_path / "state", alert(cluster="eu-1"), "--playbook", "validated", params={"kernel_url": api.url})
    assert result.code == 0, result.stderr
    assert api.paths() == ["POST /v1/clusters/eu-1/pool/reconnect"]


def test_a_dry_run_shows_what_the_run_would_do(tmp_path: Path) -> None:
    event = alert(cluster="eu-1/credentials/rotate#", by="me", file="x; touch pwned")
    state = tmp_path / "state"
    shown = run(state, event, "--dry-run", params={"kernel_url": "http://127.0.0.1:9"})
    assert shown.code == 0, shown.stderr
    assert "/v1/clusters/eu-1%2Fcredentials%2Frotate%23/pool/reconnect" in shown.stdout
    shell = run(state, event, "--dry-run", "--playbook", "param-shell", params={})
    assert "deny — opsdsl-tainted-data" in shell.stdout and "runs its arguments as code" in shell.stdout
    assert not state.exists()


@pytest.mark.parametrize(
    "labels",
    [
        {"replicas": "9" * 5000, "ratio": "1", "wait": "1s"},
        {"replicas": "3", "ratio": "1e400", "wait": "1s"},
        {"replicas": "3", "ratio": "1", "wait": "9" * 400 + "h"},
    ],
    ids=["5000-digit int", "double overflow", "huge duration"],
)
def test_a_label_that_breaks_an_expression_fails_the_run_which_compensates(
    api: KernelAPI, tmp_path: Path, labels: dict
) -> None:
    state, pack = tmp_path / "state", tmp_path / "pinned.yaml"
    pack.write_text((FIXTURES / "taint" / "pinned.yaml").read_text().replace("http://127.0.0.1:9", api.url))
    event = alert(cluster="eu-1", **labels)
    result = opsdsl("fire", "--pack", pack, "--state-dir", state, "-", stdin=json.dumps(event))
    assert result.code in (0, 1), result.stdout + result.stderr
    assert api.paths() == ["PUT /v1/drain", "DELETE /v1/drain"]
    (finished,) = [row["data"] for row in ledger_rows(state, "run.finished")]
    assert finished["status"] == "failed" and finished["compensated"] == ["drain"]
    assert "Traceback" not in result.stderr
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0


def test_a_sub_run_inherits_taint_from_what_its_caller_passed(tmp_path: Path) -> None:
    literal = run(tmp_path / "a", alert(cluster="x; id"), "--playbook", "caller-literal", params={})
    assert literal.code == 0, literal.stdout + literal.stderr
    from_event = run(tmp_path / "b", alert(cluster="x; id"), "--playbook", "caller-event", params={})
    assert from_event.code == 1
    assert [d["step"] for d in denials(tmp_path / "b")] == ["echo"]
