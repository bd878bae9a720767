"""`opsdsl users add|list|revoke` and the CLI's people, through real `opsdsl` processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from kernel_api import ledger_rows, opsdsl

from opsdsl.runtime.people import People
from opsdsl.runtime.store import Store

PACK = Path(__file__).resolve().parents[1] / "fixtures" / "people" / "people.yaml"


def test_users_add_prints_the_token_once_and_list_never_shows_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    added = opsdsl("users", "add", "Alice", "--role", "approver", "--group", "oncall", "--state-dir", state)
    assert added.code == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("opsdsl_") and added.stdout == token + "\n"  # alone on stdout
    assert "added alice (approver; groups: oncall)" in added.stderr and "shown once" in added.stderr
    store = Store(state)
    assert People(store).authenticate(token).name == "alice"
    store.close()
    assert token.encode() not in (state / "state.db").read_bytes()

    listed = opsdsl("users", "list", "--state-dir", state)
    assert listed.code == 0 and "alice" in listed.stdout and "approver" in listed.stdout and "active" in listed.stdout
    as_json = opsdsl("users", "list", "--format", "json", "--state-dir", state)
    (row,) = json.loads(as_json.stdout)
    assert row["name"] == "alice" and row["groups"] == ["oncall"] and row["active"] is True
    assert token not in listed.stdout + as_json.stdout and "hash" not in as_json.stdout

    again = opsdsl("users", "add", "ALICE", "--role", "admin", "--state-dir", state)
    assert again.code == 2 and "user alice exists" in again.stderr and again.stdout == ""

    revoked = opsdsl("users", "revoke", "alice", "--state-dir", state)
    assert revoked.code == 0 and "revoked alice" in revoked.stdout
    assert "revoked already" in opsdsl("users", "revoke", "alice", "--state-dir", state).stdout
    (row,) = json.loads(opsdsl("users", "list", "--format", "json", "--state-dir", state).stdout)
    assert row["active"] is False and row["revoked_at"]
    store = Store(state)
    assert People(store).authenticate(token) is None
    store.close()
    kept = [(r["kind"], r["run"], r["data"]) for r in ledger_rows(state) if r["kind"].startswith("user.")]
    assert kept == [
        ("user.added", None, {"name": "alice", "role": "approver", "groups": ["oncall"]}),
        ("user.revoked", None, {"name": "alice"}),
    ]


def test_users_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert opsdsl("users", "add", "bob", "--role", "root", "--state-dir", state).code == 2
    for name in ("bob\nadmin", "local:bob", "аlice", "a b"):
        refused = opsdsl("users", "add", name, "--role", "viewer", "--state-dir", state)
        assert refused.code == 2 and "Traceback" not in refused.stderr, (name, refused.stderr)
    assert opsdsl("users", "add", "bob", "--role", "viewer", "--group", "on call", "--state-dir", state).code == 2
    assert opsdsl("users", "revoke", "nobody", "--state-dir", state).code == 2
    missing = opsdsl("users", "list", "--state-dir", tmp_path / "nowhere")
    assert missing.code == 2 and "no opsdsl state" in missing.stderr


def test_the_cli_approves_as_a_local_user_with_the_rows_role_and_groups(tmp_path: Path) -> None:
    state = tmp_path / "state"
    started = opsdsl("run", "--pack", PACK, "--playbook", "restart", "--state-dir", state, "--log-format", "json")
    assert started.code == 4, started.stderr
    run = started.run_id
    for name, role, groups in (
        ("carol", "approver", ["oncall"]),
        ("vera", "viewer", ["oncall"]),
        ("dave", "admin", []),
    ):
        args = [arg for group in groups for arg in ("--group", group)]
        assert opsdsl("users", "add", name, "--role", role, *args, "--state-dir", state).code == 0

    viewer = opsdsl("approve", run, "ask", "--by", "vera", "--state-dir", state)
    assert viewer.code == 2 and "vera is a viewer" in viewer.stderr
    outsider = opsdsl("approve", run, "ask", "--by", "dave", "--state-dir", state)  # admin, but not an approver here
    assert outsider.code == 2 and "its approvers are alice, group:oncall" in outsider.stderr
    stranger = opsdsl("approve", run, "ask", "--by", "zed", "--state-dir", state)
    assert stranger.code == 2 and "may not approve" in stranger.stderr

    carol = opsdsl("approve", run, "ask", "--by", "Carol", "--state-dir", state)
    assert carol.code == 0, carol.stderr
    assert "recorded as local:carol (a local user of this state directory; not authenticated)" in carol.stderr
    alice = opsdsl("approve", run, "ask", "--by", "local:alice", "--state-dir", state)  # no row: a name, as before
    assert alice.code == 0 and "approved (2 of 2)" in alice.stdout, alice.stderr
    votes = [r["data"] for r in ledger_rows(state, "approval.recorded")]
    assert [(v["by"], v["via"]) for v in votes] == [("local:carol", "local"), ("local:alice", "local")]
    conn = sqlite3.connect(state / "state.db")
    assert sorted(r[0] for r in conn.execute("SELECT by FROM approvals")) == ["alice", "carol"]
    conn.close()
    done = opsdsl("resume", run, "--state-dir", state, "--log-format", "json")
    assert done.code == 0, done.stdout + done.stderr
    assert done.end["status"] == "succeeded"
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0
