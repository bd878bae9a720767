"""`opsdsl run` end to end: real subprocesses, a real HTTP Kernel API on 127.0.0.1, real
programs for shell steps, and the state directory read back with sqlite3 and the CLI.

The packs are fixtures in tests/fixtures/runtime/; the Kernel API is tests/kernel_api.py.
Approvals are in test_run_approvals.py, crashes and signals in test_run_crash.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_api import (
    FIXTURES,
    KernelAPI,
    Result,
    cli_env,
    drop_ledger_guards,
    ledger_rows,
    opsdsl,
    param_args,
    run_status,
    runs_json,
    shell_params,
    state_db,
)

PLUGIN_SITE = FIXTURES / "plugin" / "site"


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def run_pack(pack: Path, state: Path, *args: str, params: dict, env: dict | None = None) -> Result:
    return opsdsl(
        "run", "--pack", pack, "--state-dir", state, "--log-format", "json", *param_args(**params), *args, env=env
    )


def step_entries(state: Path, kind: str, step: str) -> list[dict]:
    return [row["data"] for row in ledger_rows(state, kind) if row["data"].get("step") == step]


def incident_folder(result: Result) -> Path:
    return Path(result.end["incident_folder"])


def test_the_fixture_packs_lint_without_errors() -> None:
    # The plugin pack needs its plugin installed, as it is when it is compiled.
    result = opsdsl("lint", "--fail-on", "error", FIXTURES, env=cli_env(PYTHONPATH=str(PLUGIN_SITE)))
    assert result.code == 0, result.stdout + result.stderr


# ---- 1. the happy path ---------------------------------------------------------------------


def test_happy_path_runs_the_playbook_and_signs_the_incident(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    result = run_pack(FIXTURES / "driver_failure.yaml", state, params=shell_params(api))

    assert result.code == 0, result.stdout + result.stderr
    run = result.run_id
    assert run_status(state, run)["status"] == "succeeded"
    # An output of `inspect` fed `reconnect`'s `when` and its JSON body, numbers as numbers.
    (reconnect,) = api.seen("POST", "/v1/pool/reconnect")
    assert reconnect.json() == {"cluster": "c1", "from_generation": 0, "reason": "p95 was 480 ms"}
    assert reconnect.key == f"{run}:reconnect"
    # `failover` was skipped by its `when`, and `verify`, which needs it, ran anyway.
    assert step_entries(state, "step.skipped", "failover")
    assert not api.seen(path="/v1/failover")
    assert len(api.seen("GET", "/v1/pool")) == 2
    (note,) = step_entries(state, "step.succeeded", "note")
    assert note["outputs"]["stdout"] == "cluster c1 reconnected, generation 1\n"
    # The two probes ran at the same time: each answered after 0.5 s, both within 0.9 s.
    (tls,) = api.seen(path="/v1/probe/tls")
    (endpoint,) = api.seen(path="/v1/probe/endpoint")
    assert tls.started < endpoint.finished and endpoint.started < tls.finished
    assert max(tls.finished, endpoint.finished) - min(tls.started, endpoint.started) < 0.9

    verify = opsdsl("ledger", "verify", "--state-dir", state)
    assert verify.code == 0, verify.stdout + verify.stderr
    folder = incident_folder(result)
    assert folder.parent.parent == state / "incidents" and folder.parent.name.isdigit()  # incidents/{year}/{id}
    assert folder.name == run_status(state, run)["incident_id"]
    for name in ("record.json", "rca.md", "manifest.json"):
        assert (folder / name).is_file(), name
    record = json.loads((folder / "record.json").read_text())["record"]
    assert record["status"] == "succeeded"
    rca = (folder / "rca.md").read_text()
    assert rca.startswith("# Driver connection failure")
    assert "The pool of c1 was reconnected." in rca

    archive = tmp_path / "incident.tar.gz"
    exported = opsdsl("incident", "export", folder.name, "-o", archive, "--state-dir", state)
    assert exported.code == 0, exported.stderr
    checked = opsdsl("incident", "verify", archive, "--state-dir", state)
    assert checked.code == 0, checked.stdout + checked.stderr

    report = opsdsl("report", "--format", "json", "--state-dir", state)
    assert report.code == 0, report.stderr
    assert json.loads(report.stdout)["severities"]["SEV-2"]["succeeded"] == 1


def test_when_false_on_an_earlier_output_skips_only_that_step(api: KernelAPI, state: Path) -> None:
    pool = api.pool("c1")
    pool.healthy, pool.generation = True, 1

    result = run_pack(FIXTURES / "driver_failure.yaml", state, params=shell_params(api))

    assert result.code == 0, result.stdout + result.stderr
    assert not api.seen("POST")
    assert {e["step"] for e in (r["data"] for r in ledger_rows(state, "step.skipped"))} == {"reconnect", "failover"}
    assert [e["step"] for e in (r["data"] for r in ledger_rows(state, "step.succeeded"))].count("verify") == 1


# ---- 2. retries ----------------------------------------------------------------------------


def test_retries_carry_one_idempotency_key(api: KernelAPI, state: Path) -> None:
    api.rule("POST", "/v1/pool/reconnect", fail_first=2, fail_status=503)

    result = run_pack(FIXTURES / "retries.yaml", state, params={"kernel_url": api.url})

    assert result.code == 0, result.stdout + result.stderr
    calls = api.seen("POST", "/v1/pool/reconnect")
    assert [c.status for c in calls] == [503, 503, 200]
    assert {c.key for c in calls} == {f"{result.run_id}:reconnect"}
    failed = step_entries(state, "attempt.failed", "reconnect")
    assert [f["attempt"] for f in failed] == [1, 2]
    assert [f["retry_in"] for f in failed] == [0.05, 0.1]  # exponential from 50ms, no jitter
    assert all("503" in f["error"] for f in failed)
    assert [i["attempt"] for i in step_entries(state, "step.intent", "reconnect")] == [1, 2, 3]
    assert api.pool("c1").generation == 1


def test_retries_run_out_and_the_step_fails(api: KernelAPI, state: Path) -> None:
    api.rule("POST", "/v1/pool/reconnect", status=503)

    result = run_pack(FIXTURES / "retries.yaml", state, params={"kernel_url": api.url})

    assert result.code == 1, result.stdout + result.stderr
    assert len(api.seen("POST", "/v1/pool/reconnect")) == 3
    (failed,) = step_entries(state, "step.failed", "reconnect")
    assert failed["attempts"] == 3 and "503" in failed["error"]
    assert not api.seen("GET")


# ---- 3. failure, compensation, finally -------------------------------------------------------


def test_a_failure_compensates_newest_first_then_runs_finally(api: KernelAPI, state: Path) -> None:
    api.rule("POST", "/v1/status", status=500)
    api.rule("POST", "/v1/replica/verify", status=500)

    result = run_pack(FIXTURES / "compensation.yaml", state, params={"kernel_url": api.url})

    assert result.code == 1, result.stdout + result.stderr
    paths = api.paths()
    # drain_primary and open_replica start together; open_replica finishes first.
    assert sorted(paths[:2]) == ["POST /v1/drain/primary", "POST /v1/open/replica"]
    assert paths[2:] == [
        "POST /v1/status",  # post_status fails, but continue_on_error
        "POST /v1/switch",
        "POST /v1/replica/verify",  # fails the run
        "POST /v1/undo/switch_traffic",
        "POST /v1/undo/drain_primary",
        "POST /v1/undo/open_replica",
        "POST /v1/finally",
    ]
    (finished,) = ledger_rows(state, "run.finished")
    assert finished["data"]["status"] == "failed"
    assert finished["data"]["failed_steps"] == ["verify_replica"]
    assert finished["data"]["compensated"] == ["drain_primary", "open_replica", "switch_traffic"]
    (tolerated,) = step_entries(state, "step.failed", "post_status")
    assert tolerated["continue_on_error"] is True
    assert run_status(state, result.run_id)["status"] == "failed"
    assert (incident_folder(result) / "rca.md").is_file()
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0


def test_a_continue_on_error_failure_alone_does_not_fail_the_run(api: KernelAPI, state: Path) -> None:
    api.rule("POST", "/v1/status", status=500)

    result = run_pack(FIXTURES / "compensation.yaml", state, params={"kernel_url": api.url})

    assert result.code == 0, result.stdout + result.stderr
    assert not [p for p in api.paths() if "/undo/" in p]
    assert api.paths()[-2:] == ["POST /v1/never", "POST /v1/finally"]
    (tolerated,) = step_entries(state, "step.failed", "post_status")
    assert tolerated["continue_on_error"] is True
    assert run_status(state, result.run_id)["status"] == "succeeded"


# ---- 4. timeouts -----------------------------------------------------------------------------


def test_an_http_step_times_out(api: KernelAPI, state: Path) -> None:
    result = run_pack(FIXTURES / "timeouts.yaml", state, "--playbook", "slow-kernel", params={"kernel_url": api.url})

    assert result.code == 1, result.stdout + result.stderr
    (failed,) = step_entries(state, "step.failed", "inspect")
    assert failed["error"] == "timed out after 1s"
    (intent,) = [r for r in ledger_rows(state, "step.intent") if r["data"]["step"] == "inspect"]
    (end,) = [r for r in ledger_rows(state, "step.failed") if r["data"]["step"] == "inspect"]
    assert end["ts"] - intent["ts"] < 3.0  # the server answers after 4 s: the attempt did not wait for it
    assert len(api.seen()) == 1
    assert api.seen()[0].finished is None  # the server was still at it when the run gave up


def test_a_shell_step_that_times_out_is_killed(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    params = {**shell_params(api), "pid_file": pid_file}

    result = run_pack(FIXTURES / "timeouts.yaml", state, "--playbook", "hung-program", params=params)

    assert result.code == 1, result.stdout + result.stderr
    (failed,) = step_entries(state, "step.failed", "collect")
    assert "timed out" in failed["error"]
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_playbook_out_of_time_cancels_compensates_and_runs_finally(api: KernelAPI, state: Path) -> None:
    result = run_pack(FIXTURES / "timeouts.yaml", state, "--playbook", "slow-playbook", params={"kernel_url": api.url})

    assert result.code == 1, result.stdout + result.stderr
    assert api.paths() == ["PUT /v1/drain", "GET /v1/replan", "PUT /v1/undrain", "POST /v1/finally"]
    (failed,) = step_entries(state, "step.failed", "replan")
    assert "the playbook's timeout passed" in failed["error"]
    (finished,) = ledger_rows(state, "run.finished")
    assert finished["data"]["status"] == "failed"
    assert finished["data"]["compensated"] == ["drain"]
    created = ledger_rows(state, "run.created")[0]["ts"]
    assert finished["ts"] - created < 2.5  # 1 s, then undo and finally; not the 3 s `replan` would take


# ---- 5. the policy gate ----------------------------------------------------------------------


def test_a_policy_beside_the_pack_denies_a_step(api: KernelAPI, state: Path) -> None:
    result = run_pack(FIXTURES / "policy" / "gated.yaml", state, params={"kernel_url": api.url})

    assert result.code == 1, result.stdout + result.stderr
    assert api.paths() == ["GET /v1/pool"]  # inspect only: failover never left, verify never started
    (decision,) = step_entries(state, "policy.decision", "failover")
    assert decision["decision"] == "deny"
    assert "failover-only-in-sev1" in [p["id"] for p in decision["policies"]]
    (failed,) = step_entries(state, "step.failed", "failover")
    assert failed["denied_by"] == "failover-only-in-sev1"
    assert "reserved for SEV-1" in failed["error"]
    (allowed,) = step_entries(state, "policy.decision", "inspect")
    assert allowed["decision"] == "allow"
    assert [p["id"] for p in allowed["policies"]] == ["reads-are-fine"]


def test_policies_given_on_the_command_line_apply(api: KernelAPI, state: Path) -> None:
    result = run_pack(
        FIXTURES / "retries.yaml",
        state,
        "--policies",
        str(FIXTURES / "policies" / "no-reconnects.yaml"),
        params={"kernel_url": api.url},
    )

    assert result.code == 1, result.stdout + result.stderr
    assert api.seen() == []
    (decision,) = step_entries(state, "policy.decision", "reconnect")
    assert decision["decision"] == "deny"
    assert [p["id"] for p in decision["policies"]] == ["change-freeze"]


def signed_plan(tmp_path: Path, pack: Path, *, env: dict | None = None) -> tuple[Path, Path]:
    """Compile `pack` signed with a fresh key; the plan and a trust file naming that key."""
    key = tmp_path / "keys" / "release.key"
    key.parent.mkdir(exist_ok=True)
    made = opsdsl("keygen", "--out", key)
    assert made.code == 0, made.stderr
    build = tmp_path / "build"
    compiled = opsdsl("compile", pack, "-o", build, "--key", key, env=env)
    assert compiled.code == 0, compiled.stdout + compiled.stderr
    (plan,) = build.glob("*.plan.dsse.json")
    trust = tmp_path / "trust.yaml"
    trust.write_text("apiVersion: opsdsl/v1\nkind: Trust\nkeys:\n  - {name: release, file: keys/release.key.pub}\n")
    return plan, trust


def test_an_action_neither_built_in_nor_installed_is_denied(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    # Compiled where the plugin is installed, run where it is not.
    plan, trust = signed_plan(
        tmp_path, FIXTURES / "plugin" / "kernel_plugin.yaml", env=cli_env(PYTHONPATH=str(PLUGIN_SITE))
    )
    result = opsdsl(
        "run", "--plan", plan, "--trust", trust, "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url),
    )  # fmt: skip

    assert result.code == 1, result.stdout + result.stderr
    assert api.seen() == []
    (decision,) = step_entries(state, "policy.decision", "reconnect")
    assert decision["decision"] == "deny"
    assert [p["id"] for p in decision["policies"]] == ["opsdsl-known-actions"]
    assert "kernel.reconnect_pool" in decision["policies"][0]["message"]


def test_the_same_plan_runs_where_the_plugin_is_installed(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    with_plugin = cli_env(PYTHONPATH=str(PLUGIN_SITE))
    plan, trust = signed_plan(tmp_path, FIXTURES / "plugin" / "kernel_plugin.yaml", env=with_plugin)
    result = opsdsl(
        "run", "--plan", plan, "--trust", trust, "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url), env=with_plugin,
    )  # fmt: skip

    assert result.code == 0, result.stdout + result.stderr
    (done,) = step_entries(state, "step.succeeded", "reconnect")
    assert done["outputs"] == {"reconnected": "c1"}
    assert api.paths() == ["GET /v1/pool"]


# ---- 7. signed plans -------------------------------------------------------------------------


def test_a_signed_plan_runs_against_a_trust_file(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    plan, trust = signed_plan(tmp_path, FIXTURES / "retries.yaml")

    result = opsdsl(
        "run", "--plan", plan, "--trust", trust, "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url),
    )  # fmt: skip

    assert result.code == 0, result.stdout + result.stderr
    (verified,) = ledger_rows(state, "plan.verified")
    assert verified["data"]["trust"] == str(trust)
    assert len(verified["data"]["keyids"]) == 1
    assert len(api.seen()) == 2


def _flip_payload_byte(plan: Path) -> None:
    envelope = json.loads(plan.read_text())
    payload = bytearray(base64.b64decode(envelope["payload"]))
    index = payload.index(b"/v1/pool/reconnect")
    payload[index + 4] ^= 0x01  # /v1/pool → /v1/qool
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    plan.write_text(json.dumps(envelope, indent=2))


def test_a_tampered_plan_is_refused(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    plan, trust = signed_plan(tmp_path, FIXTURES / "retries.yaml")
    _flip_payload_byte(plan)

    result = opsdsl("run", "--plan", plan, "--trust", trust, "--state-dir", state, *param_args(kernel_url=api.url))

    assert result.code == 5, result.stdout + result.stderr
    assert "bad signature" in result.stderr
    assert api.seen() == []
    assert not (state / "state.db").exists() or ledger_rows(state) == []


def test_a_plan_signed_by_an_untrusted_key_is_refused(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    plan, _ = signed_plan(tmp_path, FIXTURES / "retries.yaml")
    stranger = tmp_path / "keys" / "stranger.key"
    assert opsdsl("keygen", "--out", stranger).code == 0
    trust = tmp_path / "stranger-trust.yaml"
    trust.write_text("apiVersion: opsdsl/v1\nkind: Trust\nkeys:\n  - {name: stranger, file: keys/stranger.key.pub}\n")

    result = opsdsl("run", "--plan", plan, "--trust", trust, "--state-dir", state, *param_args(kernel_url=api.url))

    assert result.code == 5, result.stdout + result.stderr
    assert "unknown key" in result.stderr
    assert api.seen() == []


def test_a_plan_without_a_trust_file_is_refused(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    plan, _ = signed_plan(tmp_path, FIXTURES / "retries.yaml")

    result = opsdsl("run", "--plan", plan, "--state-dir", state, *param_args(kernel_url=api.url))

    assert result.code == 5, result.stdout + result.stderr
    assert api.seen() == []


# ---- 8. secrets ------------------------------------------------------------------------------

SECRET = "kt-9f8e7d6c5b4a-secret-value"


def assert_secret_nowhere(state: Path, result: Result) -> None:
    """The raw value is in no byte of any file under the state directory, nor in the output."""
    assert SECRET not in result.stdout + result.stderr
    leaks = [str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []


def test_secrets_reach_the_server_and_nothing_else(api: KernelAPI, state: Path) -> None:
    env = cli_env({"kernel_token": SECRET})

    result = run_pack(
        FIXTURES / "secrets.yaml", state, "--playbook", "rotate-credentials", params=shell_params(api), env=env
    )

    assert result.code == 0, result.stdout + result.stderr
    (rotate,) = api.seen("POST", "/v1/echo")
    assert rotate.headers["authorization"] == f"Bearer {SECRET}"
    assert rotate.json()["note"] == f"token {SECRET}"
    assert api.seen("POST", "/v1/fail")[0].query == {"auth": SECRET}
    # The ledger, read with sqlite3.
    (echoed,) = step_entries(state, "step.succeeded", "rotate")
    assert echoed["outputs"]["json"]["headers"]["authorization"] == "Bearer ***"
    assert echoed["outputs"]["json"]["json"]["note"] == "token ***"
    (intent,) = step_entries(state, "step.intent", "rotate")
    assert intent["with"]["headers"]["Authorization"] == "Bearer ***"
    (printed,) = step_entries(state, "step.succeeded", "show")
    assert printed["outputs"]["stdout"] == "***\n"
    (refused,) = step_entries(state, "step.failed", "revoke_old")
    assert "auth=***" in refused["error"]
    # The incident record and the RCA.
    folder = incident_folder(result)
    assert "auth=***" in (folder / "record.json").read_text()
    rca = (folder / "rca.md").read_text()
    assert "echoed: Bearer ***, printed: ***" in rca
    assert "auth=***" in rca
    assert_secret_nowhere(state, result)


def test_a_secret_in_an_assertion_message_is_redacted(api: KernelAPI, state: Path) -> None:
    env = cli_env({"kernel_token": SECRET})

    result = run_pack(
        FIXTURES / "secrets.yaml", state, "--playbook", "confirm-rotation", params={"kernel_url": api.url}, env=env
    )

    assert result.code == 0, result.stdout + result.stderr
    (failed,) = step_entries(state, "step.failed", "confirm")
    assert failed["error"] == "the kernel did not create a token for ***"
    folder = incident_folder(result)
    assert "create a token for ***" in (folder / "record.json").read_text()
    assert "create a token for ***" in (folder / "rca.md").read_text()
    assert_secret_nowhere(state, result)


# ---- 9. dry run ------------------------------------------------------------------------------


def test_dry_run_shows_each_step_and_its_policy_decision_and_touches_nothing(api: KernelAPI, state: Path) -> None:
    result = opsdsl("run", "--pack", FIXTURES / "policy" / "gated.yaml", "--dry-run", "--state-dir", state,
                    *param_args(kernel_url=api.url))  # fmt: skip

    assert result.code == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for step in ("inspect", "failover", "verify", "rca"):
        assert any(f"{step} [" in line for line in lines), step
    (failover,) = [line for line in lines if "failover [" in line]
    assert "policy: deny" in failover and "failover-only-in-sev1" in failover
    (inspect,) = [line for line in lines if "inspect [" in line]
    assert "policy: allow" in inspect
    assert api.seen() == []
    assert not state.exists()


# ---- 10. events ------------------------------------------------------------------------------


def test_an_event_runs_the_hook_whose_trigger_matches(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(
        json.dumps(
            {"name": "sqlx_driver_errors_total", "value": 73, "labels": {"cluster": "c7", "region": "eu-west-2"}}
        )
    )

    result = run_pack(FIXTURES / "events.yaml", state, "--event", str(event), params={"kernel_url": api.url})

    assert result.code == 0, result.stdout + result.stderr
    assert api.paths() == ["POST /v1/pool/reconnect"]
    assert api.seen()[0].json() == {"cluster": "c7", "region": "eu-west-2"}
    (run,) = runs_json(state)
    assert run["playbook"] == "reconnect-pool"
    (created,) = ledger_rows(state, "run.created")
    assert created["data"]["hook"] == "onDriverErrorSpike"
    assert created["data"]["trigger"] == "driver_errors"
    assert created["data"]["inputs"] == {"cluster": "c7", "region": "eu-west-2"}


def test_an_alert_event_on_stdin_runs_the_other_hook(api: KernelAPI, state: Path) -> None:
    alert = {"status": "firing", "labels": {"alertname": "SqlxExecLatencyHigh", "cluster": "c3"}}

    result = opsdsl(
        "run", "--pack", FIXTURES / "events.yaml", "--event", "-", "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url), stdin=json.dumps(alert),
    )  # fmt: skip

    assert result.code == 0, result.stdout + result.stderr
    assert api.paths() == ["POST /v1/plans/invalidate"]
    assert api.seen()[0].json() == {"cluster": "c3", "slower_than_ms": 250}
    assert [r["playbook"] for r in runs_json(state)] == ["replan"]


def test_an_event_that_matches_no_trigger_runs_nothing(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    event = tmp_path / "quiet.json"
    event.write_text(json.dumps({"name": "sqlx_driver_errors_total", "value": 3, "labels": {"cluster": "c7"}}))

    result = run_pack(FIXTURES / "events.yaml", state, "--event", str(event), params={"kernel_url": api.url})

    assert result.code == 0, result.stdout + result.stderr
    assert "nothing to run" in result.stderr
    assert api.seen() == []
    assert not (state / "state.db").exists() or runs_json(state) == []


def test_a_playbook_run_by_hand_needs_its_inputs(api: KernelAPI, state: Path) -> None:
    refused = run_pack(FIXTURES / "events.yaml", state, "--playbook", "reconnect-pool", params={"kernel_url": api.url})

    assert refused.code == 5, refused.stdout + refused.stderr
    assert "input `cluster`" in refused.stderr
    assert api.seen() == []

    given = run_pack(
        FIXTURES / "events.yaml", state, "--playbook", "reconnect-pool", "--input", "cluster=c9",
        params={"kernel_url": api.url},
    )  # fmt: skip
    assert given.code == 0, given.stdout + given.stderr
    assert api.seen()[0].json() == {"cluster": "c9", "region": "eu-west-1"}


# ---- 12. tampering with the ledger ----------------------------------------------------------


def _finished_run(api: KernelAPI, state: Path) -> Result:
    result = run_pack(FIXTURES / "retries.yaml", state, params={"kernel_url": api.url})
    assert result.code == 0, result.stdout + result.stderr
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0
    return result


def _tamper(state: Path, *statements: tuple[str, tuple]) -> None:
    """What an attacker with the database file does: drop the guard triggers, then edit."""
    conn = state_db(state)
    try:
        drop_ledger_guards(conn)
        for sql, args in statements:
            conn.execute(sql, args)
    finally:
        conn.close()


def test_an_edited_ledger_entry_is_named(api: KernelAPI, state: Path) -> None:
    _finished_run(api, state)
    (target,) = [r for r in ledger_rows(state, "step.succeeded") if r["data"]["step"] == "reconnect"]
    edited = json.dumps({**target["data"], "attempts": 7}, sort_keys=True, separators=(",", ":"))

    _tamper(state, ("UPDATE ledger SET data = ? WHERE seq = ?", (edited, target["seq"])))

    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 1, result.stdout + result.stderr
    assert f"seq {target['seq']}" in result.stdout + result.stderr


def test_a_cut_off_tail_is_caught_by_the_incident_records_checkpoint(api: KernelAPI, state: Path) -> None:
    _finished_run(api, state)
    last = ledger_rows(state)[-1]["seq"]

    _tamper(state, ("DELETE FROM ledger WHERE seq > ?", (last - 3,)), ("DELETE FROM checkpoints", ()))

    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 1, result.stdout + result.stderr
    assert f"seq {last}" in result.stdout + result.stderr
    # Without the incident records nothing vouches for the lost tail: it is the record that caught it.
    alone = opsdsl("ledger", "verify", "--no-incidents", "--state-dir", state)
    assert alone.code == 0, alone.stdout + alone.stderr
