"""People of a state directory: tokens stored as hashes, roles, `group:` approvers,
`distinct_from_requester`, and the ledger's `by` + `via` — on real runs in a real state database."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from kernel_api import ledger_rows, opsdsl, run_status, state_db

from opsdsl.errors import UsageError
from opsdsl.lang.names import same_person_key
from opsdsl.runtime.people import ACTS, ROLES, People, Person, allowed, local_person, may_approve
from opsdsl.runtime.runner import Runtime
from opsdsl.runtime.store import Store

PACK = Path(__file__).resolve().parents[1] / "fixtures" / "people" / "people.yaml"


def paused(state: Path, playbook: str, requested_by: str | None) -> str:
    """A run of the people pack paused at its approval; `requested_by` as a server would record it."""
    started = opsdsl("run", "--pack", PACK, "--playbook", playbook, "--state-dir", state, "--log-format", "json")
    assert started.code == 4, started.stdout + started.stderr
    run = started.run_id
    conn = state_db(state)
    conn.execute("UPDATE runs SET requested_by = ? WHERE id = ?", (requested_by, run))
    conn.close()
    return run


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


# ---- the users table -------------------------------------------------------------------------


def test_a_token_is_shown_once_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    store = Store(tmp_path)
    people = People(store)
    token = people.add("Alice", "approver", ["OnCall", "dba"])
    assert token.startswith("opsdsl_") and len(token) == len("opsdsl_") + 43
    stored = store.conn.execute("SELECT * FROM users").fetchall()
    assert token not in repr(stored)
    assert hashlib.sha256(token.encode()).hexdigest() in repr(stored)
    assert people.authenticate(token) == Person("alice", "approver", ("dba", "oncall"), "token")
    (listed,) = people.list()
    assert listed["name"] == "alice" and listed["groups"] == ["dba", "oncall"] and listed["active"]
    assert "token" not in repr(listed).replace("token_", "")
    assert people.add("bob", "viewer") != people.add("carol", "viewer")
    store.close()


def test_revoking_refuses_the_token_at_once_and_keeps_the_row(tmp_path: Path) -> None:
    store = Store(tmp_path)
    people = People(store)
    token = people.add("bob", "responder")
    assert people.revoke("BOB") is True
    assert people.authenticate(token) is None and people.get("bob") is None
    assert people.revoke("bob") is False
    assert [r["active"] for r in people.list()] == [False]
    again = people.add("bob", "approver")  # re-admitted: a new token, the old one stays dead
    assert people.authenticate(again).role == "approver" and people.authenticate(token) is None
    with pytest.raises(UsageError, match="no user zed"):
        people.revoke("zed")
    store.close()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("аlice", "a-z"),  # Cyrillic а
        ("local:alice", "a-z"),
        ("group:oncall", "a-z"),
        ("alice smith", "a-z"),
        ("alice\n", "newline"),
        ("\u202eecila", "bidirectional"),
        ("a" * 129, "a-z"),
        ("", "empty"),
    ],
)
def test_user_names_are_plain_so_no_two_can_look_alike(tmp_path: Path, name: str, problem: str) -> None:
    store = Store(tmp_path)
    with pytest.raises(UsageError, match=problem):
        People(store).add(name, "viewer")
    store.close()


def test_names_differing_only_by_case_or_invisible_characters_are_one_user(tmp_path: Path) -> None:
    store = Store(tmp_path)
    people = People(store)
    people.add("alice", "viewer")
    for spelling in ("ALICE", "Alice", "alice\u200b", "ａｌｉｃｅ", " alice "):
        with pytest.raises(UsageError, match="user alice exists"):
            people.add(spelling, "admin")
        assert people.get(spelling).name == "alice"
    with pytest.raises(UsageError, match="--role"):
        people.add("zoe", "root")
    store.close()


def test_roles_grant_in_order() -> None:
    grants = {role: {act for act in ACTS if allowed(Person("p", role), act)} for role in ROLES}
    assert grants["viewer"] == {"read"}
    assert grants["responder"] == {"read", "fire", "ack", "resume", "cancel"}
    assert grants["approver"] == grants["responder"] | {"approve", "decide"}
    assert grants["admin"] == set(ACTS)
    assert not allowed(Person("p", "superuser"), "read")
    with pytest.raises(ValueError):
        allowed(Person("p", "admin"), "delete")


def test_approvers_hold_names_and_groups() -> None:
    carol = Person("carol", "approver", ("oncall",), "token")
    assert may_approve(carol, [])
    assert may_approve(carol, ["alice", "group:oncall"])
    assert may_approve(carol, ["Carol"])
    assert not may_approve(carol, ["alice", "group:dba"])
    assert not may_approve(Person("oncall", "approver"), ["group:oncall"])  # a name is not a group
    assert may_approve(Person("dave", "approver", ("OnCall",)), ["group:oncall"])
    assert not may_approve(Person("dave", "approver", ("oncall",)), ["group:local:oncall"])
    assert may_approve(Person("dave", "approver", ("oncall",)), ["Group:OnCall"])


def test_local_and_authenticated_spellings_are_one_person() -> None:
    assert same_person_key("local:alice") == same_person_key("alice") == same_person_key("Local:ALICE")
    assert same_person_key("local:bob") != same_person_key("alice")


# ---- approvals with people ------------------------------------------------------------------


def test_group_approvers_roles_and_the_requester_on_an_approval_step(state: Path) -> None:
    run = paused(state, "restart", requested_by="alice")
    people = People(Store(state))
    people.add("carol", "approver", ["oncall"])
    runtime = Runtime(state, create=False)
    try:
        viewer = Person("vera", "viewer", ("oncall",), "token")
        with pytest.raises(UsageError, match="vera is a viewer; approving needs the role approver or admin"):
            runtime.approve(run, "ask", "ignored", person=viewer)
        outsider = Person("bob", "approver", (), "token")
        with pytest.raises(UsageError, match="bob may not approve ask: its approvers are alice, group:oncall"):
            runtime.approve(run, "ask", "ignored", person=outsider)
        requester = Person("alice", "approver", (), "token")
        with pytest.raises(UsageError, match=r"alice started run .* may not approve ask: approval step ask says"):
            runtime.approve(run, "ask", "ignored", person=requester)
        with pytest.raises(UsageError, match="alice started run"):  # the CLI's spelling of her too
            runtime.approve(run, "ask", "alice", person=local_person(runtime.store, "Alice"))
        first = runtime.approve(run, "ask", "ignored", person=Person("carol", "approver", ("oncall",), "token"))
        assert (first["approved"], first["needed"], first["by"]) == (1, 2, "carol")
        with pytest.raises(UsageError, match="carol has already answered"):
            runtime.approve(run, "ask", "carol", person=local_person(runtime.store, "carol"))
        second = runtime.approve(run, "ask", "x", person=Person("dave@example.com", "approver", ("oncall",), "proxy"))
        assert second["approved"] == 2
    finally:
        runtime.close()
    votes = [r["data"] for r in ledger_rows(state, "approval.recorded")]
    assert [(v["by"], v["via"]) for v in votes] == [("carol", "token"), ("dave@example.com", "proxy")]
    done = opsdsl("resume", run, "--state-dir", state, "--log-format", "json")
    assert done.code == 0, done.stdout + done.stderr
    assert run_status(state, run)["status"] == "succeeded"
    assert opsdsl("ledger", "verify", "--state-dir", state).code == 0


def test_the_requester_may_still_deny(state: Path) -> None:
    run = paused(state, "restart", requested_by="local:alice")
    runtime = Runtime(state, create=False)
    try:
        result = runtime.approve(run, "ask", "alice", deny=True, person=Person("alice", "approver", (), "token"))
    finally:
        runtime.close()
    assert result["decision"] == "deny"


def test_a_policy_can_keep_the_requester_out_of_a_two_person_rule(state: Path) -> None:
    run = paused(state, "failover", requested_by="alice")
    runtime = Runtime(state, create=False)
    try:
        with pytest.raises(UsageError, match="policy high-risk-two-people says `distinct_from_requester: true`"):
            runtime.approve(run, "failover", "x", person=Person("alice", "admin", (), "token"))
        runtime.approve(run, "failover", "x", person=Person("bob", "approver", (), "token"))
        runtime.approve(run, "failover", "x", person=Person("carol", "admin", (), "proxy"))
    finally:
        runtime.close()
    assert opsdsl("resume", run, "--state-dir", state, "--log-format", "json").code == 0


def test_a_run_started_by_an_event_has_no_requester_to_keep_out(state: Path) -> None:
    run = paused(state, "failover", requested_by=None)
    runtime = Runtime(state, create=False)
    try:
        result = runtime.approve(run, "failover", "x", person=Person("alice", "approver", (), "token"))
    finally:
        runtime.close()
    assert result["approved"] == 1


def test_decide_and_ack_check_roles_and_record_the_channel(state: Path) -> None:
    run = paused(state, "restart", requested_by=None)
    runtime = Runtime(state, create=False)
    try:
        with pytest.raises(UsageError, match="vera is a viewer; acknowledging needs the role responder, approver or"):
            runtime.acknowledge(run, "vera", person=Person("vera", "viewer", (), "token"))
        with pytest.raises(UsageError, match="rita is a responder; deciding needs the role approver or admin"):
            runtime.decide(run, "ask", "rita", "retry", person=Person("rita", "responder", (), "token"))
        first = runtime.acknowledge(run, "rita", person=Person("rita", "responder", (), "proxy"))
        assert first == {**first, "by": "rita", "new": True}
    finally:
        runtime.close()
    (acked,) = [r["data"] for r in ledger_rows(state, "run.acknowledged")]
    assert acked == {"by": "rita", "via": "proxy"}


def test_a_revoked_user_cannot_act_from_the_cli_either(state: Path) -> None:
    run = paused(state, "restart", requested_by=None)
    store = Store(state)
    People(store).add("carol", "approver", ["oncall"])
    People(store).revoke("carol")
    with pytest.raises(UsageError, match="revoked"):
        local_person(store, "carol")
    store.close()
    refused = opsdsl("approve", run, "ask", "--by", "carol", "--state-dir", state)
    assert refused.code == 2 and "revoked" in refused.stderr


def test_group_approvers_and_distinct_from_requester_lint_clean_in_yaml_and_ops(tmp_path: Path) -> None:
    assert opsdsl("lint", PACK).code == 0
    converted = opsdsl("fmt", "--to", "ops", "-o", tmp_path, PACK)
    assert converted.code == 0, converted.stderr
    ops = tmp_path / "people.ops"
    assert "distinct_from_requester true" in ops.read_text()
    assert opsdsl("lint", ops).code == 0
    models = [opsdsl("compile", "--emit", "model", path) for path in (PACK, ops)]
    assert models[0].stdout == models[1].stdout and '"distinct_from_requester": true' in models[0].stdout


def test_a_policy_without_the_flag_dumps_as_before_so_plans_keep_their_digests() -> None:
    from opsdsl.lang.model import Policy

    plain = Policy(id="p", when="true", effect="require_approval", message="m")
    assert "distinct_from_requester" not in plain.model_dump(mode="json")
    strict = Policy(id="p", when="true", effect="require_approval", message="m", distinct_from_requester=True)
    assert strict.model_dump(mode="json")["distinct_from_requester"] is True


def test_rehearsals_answer_as_people_with_groups(tmp_path: Path) -> None:
    rehearsal = PACK.with_name("people.test.yaml")
    passed = opsdsl("test", rehearsal)
    assert passed.code == 0, passed.stdout + passed.stderr
    outsider = tmp_path / "people.test.yaml"
    text = rehearsal.read_text().replace("{by: carol, groups: [oncall]}", "{by: bob, groups: [dba]}")
    outsider.write_text(text.replace("pack: people.yaml", f"pack: {PACK}"))
    failed = opsdsl("test", outsider)
    assert failed.code == 1
    assert "bob (groups: dba) may not approve ask: its approvers are alice, group:oncall" in failed.stdout
