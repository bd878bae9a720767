"""Approval announcements (opsdsl.runtime.announce): runs paused by the real runtime, a real
aiohttp receiver on 127.0.0.1 standing in for Slack, PagerDuty and a webhook, and a clock the
test moves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from opsdsl.errors import UsageError
from opsdsl.runtime import runner
from opsdsl.runtime.announce import MAX_ATTEMPTS, Announcer, notifier_problem
from opsdsl.runtime.announce_text import MESSAGE_LIMIT, reminder_time, slack_escape
from opsdsl.runtime.secrets import Secrets
from opsdsl.serve.intake import v2_signature

T0 = 1_800_000_000.0
PUBLIC = "https://opsdsl.example.test"
HMAC_KEY = "whsec-0123456789abcdef"
ROUTING_KEY = "R0UTING-KEY-0123456789"

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: announce, version: 1.0.0, owner: sre}
playbooks:
  restart:
    severity: SEV-2
    steps:
      - id: ask
        name: Restart the primary
        action: approval
        with:
          message: "Restart db-1 now?"
          approvers: [alice, bob]
          min_approvals: 2
          on_timeout: approve
          inputs:
            reason: {type: string, default: none given, description: why restart}
        timeout: 15m
      - id: done
        action: assert
        with: {that: "true"}
  hostile:
    severity: SEV-3
    inputs:
      text: {type: string}
    steps:
      - id: ask
        action: approval
        with:
          message: "${{ inputs.text }}"
        timeout: 10m
  charge:
    severity: SEV-2
    inputs:
      url: {type: string}
    steps:
      - id: charge
        name: Charge the card
        action: http.request
        with: {method: POST, url: "${{ inputs.url }}"}
        timeout: 5s
  risky:
    severity: SEV-2
    steps:
      - id: drop_table
        risk: high
        action: assert
        with: {that: "true"}
policies:
  - id: high-risk-needs-a-person
    when: step.risk == "high"
    effect: require_approval
    message: high-risk steps need an on-call approval
"""


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """Slack, PagerDuty and a webhook on 127.0.0.1: records every request; `fail[path]` is a
    list of statuses answered first (then 200)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.fail: dict[str, list[int]] = {}
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append(
            {
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body": body,
                "json": json.loads(body) if body else None,
            }
        )
        statuses = self.fail.get(request.path, [])
        if statuses:
            return web.Response(status=statuses.pop(0), text="try later")
        return web.Response(status=202 if request.path.startswith("/pd") else 200, text="ok")

    def at(self, path: str) -> list[dict[str, Any]]:
        return [seen for seen in self.seen if seen["path"].startswith(path)]


def notifiers(receiver: Receiver) -> list[dict[str, Any]]:
    return [
        {"kind": "slack", "url_secret": "slack_url"},
        {"kind": "pagerduty", "routing_key_secret": "pd_key", "url": receiver.url("/pd/v2/enqueue")},
        {"kind": "webhook", "url": receiver.url("/hook?team=db"), "hmac_secret": "hook_key"},
    ]


def secrets_for(receiver: Receiver) -> dict[str, str]:
    return {"slack_url": receiver.url("/slack/T0/B0/secretpart"), "pd_key": ROUTING_KEY, "hook_key": HMAC_KEY}


class World:
    """A state dir with the pack compiled, the real runtime on the test's clock, and the receiver."""

    def __init__(self, tmp_path: Path, receiver: Receiver) -> None:
        pack = tmp_path / "pack.yaml"
        pack.write_text(PACK)
        self.state = tmp_path / "state"
        self.plan = runner.plan_from_pack(pack, [], self.state)
        self.clock = Clock()
        self.runtime = runner.Runtime(self.state, clock=self.clock)
        self.receiver = receiver

    async def start(self, playbook: str, **inputs: Any) -> str:
        secrets = Secrets(self.state)
        run = self.runtime.create_run(self.plan, runner.Selection(playbook), {}, inputs, {}, secrets)
        outcome = await self.runtime.drive(run, secrets)
        assert outcome.status == "paused", outcome
        return run.id

    async def resume(self, run_id: str) -> str:
        secrets = Secrets(self.state)
        run = self.runtime.resumable(run_id)
        return (await self.runtime.drive(run, secrets, "approval")).status

    def announcer(self, public_url: str | None = PUBLIC, specs: list | None = None, **kw: Any) -> Announcer:
        specs = notifiers(self.receiver) if specs is None else specs
        secrets = kw.pop("secrets", secrets_for(self.receiver))
        return Announcer(self.runtime.store, specs, public_url, clock=self.clock, secrets=secrets, **kw)

    def announced(self, **match: Any) -> list[dict[str, Any]]:
        rows = [e.data for e in self.runtime.store.ledger.entries() if e.kind == "approval.announced"]
        return [row for row in rows if all(row.get(k) == v for k, v in match.items())]


def scenario(test: Callable[[World], Awaitable[None]]) -> Callable[[Path], None]:
    """Run `test(world)` in one event loop with the receiver up."""

    def run(tmp_path: Path) -> None:
        async def main() -> None:
            async with Receiver() as receiver:
                world = World(tmp_path, receiver)
                try:
                    await test(world)
                finally:
                    world.runtime.close()

        asyncio.run(main())

    run.__name__ = test.__name__
    run.__doc__ = test.__doc__
    return run


# --- the request -------------------------------------------------------------------------


@scenario
async def test_a_paused_run_is_announced_to_every_notifier(world: World) -> None:
    """What is asked, why, the deadline, how many and who, and where to approve."""
    run = await world.start("restart")
    announcer = world.announcer()
    await announcer.tick()
    receiver = world.receiver

    (hook,) = receiver.at("/hook")
    body = hook["json"]
    assert body["message"].startswith("Approval needed: Restart the primary in announce/restart (SEV-2)")
    assert (body["run_id"], body["step_id"], body["pack"], body["playbook"]) == (run, "ask", "announce", "restart")
    assert body["severity"] == "error"
    facts = body["fields"]
    assert facts["what"] == "request"
    assert facts["step"] == {"id": "ask", "name": "Restart the primary"}
    assert facts["ask"] == {
        "message": "Restart db-1 now?",
        "inputs": {"reason": {"type": "string", "description": "why restart", "default": "none given"}},
    }
    assert facts["why"] == {"reason": "action", "policies": []}
    assert facts["approvals"] == {"needed": 2, "approvers": ["alice", "bob"]}
    assert facts["deadline"]["at"] == pytest.approx(T0 + 900)
    assert facts["deadline"]["on_timeout"] == "approve"
    assert facts["deadline"]["iso"] == "2027-01-15 08:15:00 UTC"
    assert facts["approve"] == {"url": f"{PUBLIC}/v1/runs/{run}", "cli": f"opsdsl approve {run} ask --by NAME"}
    # The body is signed as `opsdsl serve` checks signatures: method, path with query, time, body.
    headers = hook["headers"]
    expected = v2_signature(HMAC_KEY.encode(), "POST", "/hook?team=db", headers["X-Opsdsl-Timestamp"], hook["body"])
    assert headers["X-Opsdsl-Signature"] == expected
    assert headers["Idempotency-Key"] == f"opsdsl-announce:{run}:ask:approval:request:webhook"

    (slack,) = receiver.at("/slack/T0/B0/secretpart")
    text = slack["json"]["text"]
    assert text.splitlines()[:2] == [
        "*Approval needed*: Restart the primary (`ask`) in announce/restart",
        "> Restart db-1 now?",
    ]
    fields = {f["title"]: f["value"] for f in slack["json"]["attachments"][0]["fields"]}
    assert fields["Approvals"] == "2 from alice, bob"
    assert fields["Deadline"] == "2027-01-15 08:15:00 UTC, then approve"
    assert fields["Approve"] == f"<{PUBLIC}/v1/runs/{run}|Open run {run}>"
    assert fields["Why"] == "the playbook's approval step"

    (page,) = receiver.at("/pd/v2/enqueue")
    assert page["json"]["routing_key"] == ROUTING_KEY
    assert page["json"]["event_action"] == "trigger"
    assert page["json"]["dedup_key"] == f"opsdsl-approval:{run}:ask"
    assert page["json"]["payload"]["custom_details"]["approve"]["url"] == f"{PUBLIC}/v1/runs/{run}"

    sent = world.announced(what="request")
    assert sorted((e["notifier"], e["notifier_kind"], e["delivered"]) for e in sent) == [
        ("pagerduty", "pagerduty", True),
        ("slack", "slack", True),
        ("webhook", "webhook", True),
    ]
    assert {e["detail"] for e in sent} == {"HTTP 200", "HTTP 202"}
    # Secrets never reach the ledger.
    ledger = json.dumps([e.to_dict() for e in world.runtime.store.ledger.entries()])
    assert ROUTING_KEY not in ledger and "secretpart" not in ledger and HMAC_KEY not in ledger

    await announcer.tick()  # nothing new: nothing sent again
    assert len(receiver.seen) == 3


@scenario
async def test_a_policy_approval_says_which_policy_and_why(world: World) -> None:
    run = await world.start("risky")
    await world.announcer(specs=[{"kind": "webhook", "url": world.receiver.url("/hook")}]).tick()
    (hook,) = world.receiver.at("/hook")
    facts = hook["json"]["fields"]
    assert facts["step"]["id"] == "drop_table"
    assert facts["why"] == {
        "reason": "policy",
        "policies": [{"id": "high-risk-needs-a-person", "message": "high-risk steps need an on-call approval"}],
    }
    assert facts["ask"]["message"] == "high-risk-needs-a-person: high-risk steps need an on-call approval"
    assert facts["approvals"] == {"needed": 1, "approvers": []}
    assert facts["deadline"] is None
    assert run in hook["json"]["message"]


@scenario
async def test_without_a_public_url_the_announcement_says_how_to_approve_with_the_cli(world: World) -> None:
    run = await world.start("restart")
    await world.announcer(public_url=None).tick()
    (slack,) = world.receiver.at("/slack")
    fields = {f["title"]: f["value"] for f in slack["json"]["attachments"][0]["fields"]}
    assert fields["Approve"] == f"on the server: opsdsl approve {run} ask --by NAME"
    (hook,) = world.receiver.at("/hook")
    assert hook["json"]["fields"]["approve"]["url"] is None


# --- reminder and outcome ----------------------------------------------------------------


def test_the_reminder_comes_at_80_percent_or_5_minutes_before_the_deadline() -> None:
    assert reminder_time(0, 900) == 720  # 15 min: 80% (12 min) is later than 10 min
    assert reminder_time(0, 3600) == 3300  # 1 h: 5 min before (55 min) is later than 48 min
    assert reminder_time(0, 60) is None  # too short to remind anyone
    assert reminder_time(0, None) == 1800  # no deadline: after 30 minutes


@scenario
async def test_a_reminder_goes_out_before_the_deadline_only_while_still_waiting(world: World) -> None:
    run = await world.start("restart")
    announcer = world.announcer()
    await announcer.tick()
    world.runtime.approve(run, "ask", "alice")
    world.clock.now = T0 + 719
    await announcer.tick()
    assert not world.receiver.at("/hook")[1:]  # one of two approvals: no outcome, no reminder yet

    world.clock.now = T0 + 720
    await announcer.tick()
    reminder = world.receiver.at("/hook")[1]["json"]
    assert reminder["fields"]["what"] == "reminder"
    assert reminder["message"].startswith("Reminder: approval still needed: Restart the primary")
    assert reminder["fields"]["approvals"]["received"] == ["alice"]
    slack = world.receiver.at("/slack")[1]["json"]
    assert {f["title"]: f["value"] for f in slack["attachments"][0]["fields"]}["Approvals"] == (
        "2 from alice, bob (1 so far)"
    )
    assert len(world.announced(what="reminder", delivered=True)) == 3

    world.clock.now = T0 + 800
    await announcer.tick()
    assert len(world.receiver.at("/hook")) == 2  # one reminder only


@scenario
async def test_the_outcome_is_announced_once_enough_people_approved(world: World) -> None:
    run = await world.start("restart")
    announcer = world.announcer()
    await announcer.tick()
    world.runtime.approve(run, "ask", "alice")
    await announcer.tick()
    assert len(world.receiver.at("/hook")) == 1  # 1 of 2 is no outcome
    world.runtime.approve(run, "ask", "Bob", comment="go ahead")
    announcer.wake()
    await announcer.tick()
    outcome = world.receiver.at("/hook")[1]["json"]
    assert outcome["message"].startswith("Approved by alice, bob: Restart the primary")
    assert outcome["fields"]["outcome"] == {"decision": "approved", "by": ["alice", "bob"], "comment": "go ahead"}
    (resolve,) = [p["json"] for p in world.receiver.at("/pd") if p["json"]["event_action"] == "resolve"]
    assert resolve == {"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": f"opsdsl-approval:{run}:ask"}
    slack = world.receiver.at("/slack")[1]["json"]["text"]
    assert slack.startswith("*Approved by alice, bob*: Restart the primary")
    assert "Comment: go ahead" in slack

    # The run goes on and ends: no second outcome, and the reminder is off.
    assert await world.resume(run) == "succeeded"
    world.clock.now = T0 + 3600
    await announcer.tick()
    assert len(world.receiver.seen) == 6
    assert not world.announced(what="reminder")


@scenario
async def test_a_denial_and_a_timeout_are_announced(world: World) -> None:
    denied = await world.start("restart")
    timed_out = await world.start("restart")
    announcer = world.announcer(specs=[{"kind": "webhook", "url": world.receiver.url("/hook")}])
    await announcer.tick()
    world.runtime.approve(denied, "ask", "bob", deny=True, comment="not during the sale")
    world.clock.now = T0 + 901
    assert await world.resume(timed_out) == "succeeded"  # on_timeout: approve
    await announcer.tick()
    outcomes = {h["json"]["run_id"]: h["json"] for h in world.receiver.at("/hook") if "outcome" in h["json"]["fields"]}
    assert outcomes[denied]["fields"]["outcome"] == {
        "decision": "denied",
        "by": ["bob"],
        "comment": "not during the sale",
    }
    assert outcomes[denied]["message"].startswith("Denied by bob:")
    assert outcomes[timed_out]["fields"]["outcome"] == {"decision": "timed_out", "on_timeout": "approve"}
    assert outcomes[timed_out]["message"].startswith("Timed out, so on_timeout decided: approve")
    # The denied run ends failed: no second outcome for it; no reminder for either.
    assert await world.resume(denied) == "failed"
    await announcer.tick()
    assert len(world.receiver.at("/hook")) == 4


@scenario
async def test_a_run_that_ends_while_waiting_closes_its_announcement(world: World) -> None:
    run = await world.start("restart")
    announcer = world.announcer(specs=[{"kind": "webhook", "url": world.receiver.url("/hook")}])
    await announcer.tick()
    store = world.runtime.store
    with store.transaction():  # what a cancel does, as far as the ledger says
        store.update_run(run, status="cancelled", finished_at=world.clock())
        store.ledger.append("run.finished", run, {"status": "cancelled", "error": None}, ts=world.clock())
    await announcer.tick()
    closed = world.receiver.at("/hook")[1]["json"]
    assert closed["fields"]["outcome"] == {"decision": "closed", "run_status": "cancelled"}
    assert closed["message"].startswith("No longer needed: the run ended cancelled")


# --- failures, retries, restarts ---------------------------------------------------------


@scenario
async def test_a_failing_notifier_is_recorded_and_retried_with_back_off(world: World) -> None:
    await world.start("restart")
    world.receiver.fail["/hook"] = [503, 502]
    announcer = world.announcer()
    await announcer.tick()
    assert len(world.announced(notifier="slack", delivered=True)) == 1  # the others go on
    (first,) = world.announced(notifier="webhook")
    assert first["delivered"] is False and first["attempt"] == 1
    assert (
        first["detail"]
        == "webhook notifier webhook returned 503 (expected 2xx): try later; attempt 1 of 5, retrying in 5s"
    )

    world.clock.now = T0 + 4
    await announcer.tick()
    assert len(world.announced(notifier="webhook")) == 1  # not yet
    world.clock.now = T0 + 5
    await announcer.tick()
    world.clock.now = T0 + 14
    await announcer.tick()
    world.clock.now = T0 + 15
    await announcer.tick()
    attempts = [(e["attempt"], e["delivered"]) for e in world.announced(notifier="webhook")]
    assert attempts == [(1, False), (2, False), (3, True)]
    assert "retrying in 10s" in world.announced(notifier="webhook")[1]["detail"]
    assert {h["headers"]["Idempotency-Key"] for h in world.receiver.at("/hook")} == {
        f"opsdsl-announce:{h['json']['run_id']}:ask:approval:request:webhook" for h in world.receiver.at("/hook")
    }


@scenario
async def test_a_notifier_that_never_answers_is_given_up_after_a_bounded_number_of_tries(world: World) -> None:
    await world.start("restart")
    specs = [
        {"kind": "webhook", "name": "down", "url": "http://127.0.0.1:9/nobody", "timeout": 2},
        {"kind": "webhook", "name": "refuses", "url": world.receiver.url("/refuses")},
        {"kind": "slack", "name": "no-secret", "url_secret": "missing_secret"},
    ]
    world.receiver.fail["/refuses"] = [400]
    announcer = world.announcer(specs=specs, secrets={})
    for _ in range(MAX_ATTEMPTS + 2):
        await announcer.tick()
        world.clock.now += 600
    down = world.announced(notifier="down", what="request")
    assert [e["attempt"] for e in down] == [1, 2, 3, 4, 5]
    assert not any(e["delivered"] for e in down)
    assert down[-1]["detail"].endswith("gave up after 5 attempts")
    assert "127.0.0.1:9" not in json.dumps(down)  # notifier URLs can be credentials: redacted
    (refused,) = world.announced(notifier="refuses", what="request")
    assert refused["detail"].endswith("not retried: it would fail again")
    missing = world.announced(notifier="no-secret", what="request")
    assert len(missing) == MAX_ATTEMPTS
    assert "secret `missing_secret` has no value: set OPSDSL_SECRET_MISSING_SECRET" in missing[0]["detail"]


@scenario
async def test_a_restart_announces_nothing_twice_and_resends_only_the_unrecorded_one(world: World) -> None:
    run = await world.start("restart")
    hook_only = [{"kind": "webhook", "url": world.receiver.url("/hook")}]
    await world.announcer(specs=hook_only).tick()
    assert len(world.receiver.at("/hook")) == 1

    restarted = Announcer(runner.Runtime(world.state).store, hook_only, PUBLIC, clock=world.clock)
    await restarted.tick()
    assert len(world.receiver.at("/hook")) == 1  # the cursor and the outbox survived

    # Killed after the receiver answered and before the attempt was recorded: sent once more
    # (at least once), with the same Idempotency-Key.
    world.runtime.approve(run, "ask", "alice")
    world.runtime.approve(run, "ask", "bob")
    crashing = world.announcer(specs=hook_only)

    def crash(*args: Any) -> None:
        raise KeyboardInterrupt  # stands in for the process dying

    crashing._record = crash  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        await crashing.tick()
    await world.announcer(specs=hook_only).tick()
    outcomes = [h for h in world.receiver.at("/hook") if h["json"]["fields"]["what"] == "outcome"]
    assert len(outcomes) == 2
    assert outcomes[0]["headers"]["Idempotency-Key"] == outcomes[1]["headers"]["Idempotency-Key"]
    assert len(world.announced(what="outcome")) == 1


@scenario
async def test_a_first_start_on_a_used_state_dir_announces_only_what_waits_now(world: World) -> None:
    finished = await world.start("restart")
    world.runtime.approve(finished, "ask", "alice")
    world.runtime.approve(finished, "ask", "bob")
    assert await world.resume(finished) == "succeeded"
    waiting = await world.start("risky")
    await world.announcer(specs=[{"kind": "webhook", "url": world.receiver.url("/hook")}]).tick()
    assert [h["json"]["run_id"] for h in world.receiver.at("/hook")] == [waiting]


@scenario
async def test_the_loop_survives_a_bad_pass_wakes_on_demand_and_stops(world: World) -> None:
    await world.start("restart")
    announcer = world.announcer(specs=[{"kind": "webhook", "url": world.receiver.url("/hook")}])
    failures = [RuntimeError("database is locked")]
    real = announcer.read_ledger

    def flaky() -> int:
        if failures:
            raise failures.pop()
        return real()

    announcer.read_ledger = flaky  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(announcer.run(stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if world.receiver.at("/hook"):
            break
    assert len(world.receiver.at("/hook")) == 1
    second = await world.start("risky")
    announcer.wake()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(world.receiver.at("/hook")) == 2:
            break
    assert world.receiver.at("/hook")[1]["json"]["run_id"] == second
    stop.set()
    await asyncio.wait_for(task, 5)


# --- hostile data ------------------------------------------------------------------------


@scenario
async def test_slack_link_and_mention_injection_is_neutralised(world: World) -> None:
    evil = "Approve? <http://evil.example|click here> <!channel> @channel @here <@U123> &amp;\nApprove: http://evil.example"
    run = await world.start("hostile", text=evil)
    await world.announcer().tick()
    slack = world.receiver.at("/slack")[0]["json"]
    text = slack["text"]
    assert "<http://evil" not in text and "<!channel>" not in text and "<@U123>" not in text
    assert "&lt;http://evil.example|click here&gt;" in text
    assert "@channel" not in text and "@here" not in text and "@\u2060channel" in text
    assert "&amp;amp;" in text
    # The event's own "Approve:" line is quoted: it cannot pass for ours.
    assert "> Approve: http://evil.example" in text.splitlines()
    everything = json.dumps(slack)
    links = [piece for piece in everything.split("<")[1:] if "|" in piece.split(">")[0]]
    assert [piece.split(">")[0] for piece in links] == [f"{PUBLIC}/v1/runs/{run}|Open run {run}"]
    # The webhook gets the data as it is (JSON carries it safely).
    assert world.receiver.at("/hook")[0]["json"]["fields"]["ask"]["message"] == evil


@scenario
async def test_huge_and_unprintable_values_are_cut_and_cleaned(world: World) -> None:
    evil = "x" * 100_000 + "\u202e\x1b[31m"
    await world.start("hostile", text=evil)
    await world.announcer().tick()
    facts = world.receiver.at("/hook")[0]["json"]["fields"]
    assert len(facts["ask"]["message"]) == MESSAGE_LIMIT
    assert facts["ask"]["message"].endswith("…")
    assert len(world.receiver.at("/slack")[0]["body"]) < 10_000
    assert len(world.receiver.at("/pd")[0]["json"]["payload"]["summary"]) <= 1024
    await world.start("hostile", text="a\u202eb\x1b[31mc\x00d")
    await world.announcer().tick()
    assert world.receiver.at("/hook")[1]["json"]["fields"]["ask"]["message"] == "ab [31mc d"


def test_slack_escape() -> None:
    assert slack_escape("<a|b> & @team me@example") == "&lt;a|b&gt; &amp; @\u2060team me@\u2060example"


# --- specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"kind": "slack", "url": "https://hooks.example.test/x"}, None),
        ({"kind": "slack", "url_secret": "slack_url", "name": "sre-slack", "timeout": 5}, None),
        ({"kind": "pagerduty", "routing_key_secret": "pd"}, None),
        ({"kind": "webhook", "url": "http://127.0.0.1:1/h", "hmac_secret": "k", "packs": ["p"]}, None),
        ("slack", "a notifier must be a table, not str"),
        ({"kind": "email"}, "kind: 'email' is not a notifier kind: expected one of pagerduty, slack, webhook"),
        ({"kind": "slack", "url": "https://x.test", "channel": "#x"}, "a slack notifier has no key 'channel'"),
        ({"kind": "slack"}, "a slack notifier needs one of url or url_secret"),
        (
            {"kind": "slack", "url": "https://x.test", "url_secret": "s"},
            "a slack notifier needs one of url or url_secret",
        ),
        ({"kind": "webhook", "url": "file:///etc/passwd"}, "url: only http:// and https:// URLs with a host"),
        ({"kind": "webhook", "url": "javascript:alert(1)"}, "url: only http:// and https:// URLs with a host"),
        ({"kind": "webhook", "url": "http://x.test/\nHost: evil"}, "url: no spaces or control characters in a URL"),
        ({"kind": "pagerduty"}, "a pagerduty notifier needs one of routing_key or routing_key_secret"),
        ({"kind": "pagerduty", "routing_key": " "}, "routing_key: a non-empty string"),
        ({"kind": "webhook", "url": "http://x.test", "hmac_secret": "../key"}, "hmac_secret: the name of a secret"),
        ({"kind": "webhook", "url": "http://x.test", "timeout": 600}, "timeout: between 1 and 60 seconds"),
        ({"kind": "webhook", "url": "http://x.test", "timeout": True}, "timeout: a number of seconds"),
        ({"kind": "webhook", "url": "http://x.test", "name": "a b"}, "name: 1 to 64 letters"),
        ({"kind": "webhook", "url": "http://x.test", "packs": "p"}, "packs: a list of pack names"),
    ],
)
def test_notifier_problem(spec: Any, problem: str | None) -> None:
    found = notifier_problem(spec)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_the_announcer_refuses_bad_notifiers_and_public_urls(tmp_path: Path) -> None:
    runtime = runner.Runtime(tmp_path / "state")
    try:
        store = runtime.store
        with pytest.raises(UsageError, match="notifier 2: kind: 'sms' is not a notifier kind"):
            Announcer(store, [{"kind": "webhook", "url": "http://x.test"}, {"kind": "sms"}], None)
        twice = [{"kind": "webhook", "url": "http://x.test", "name": "a"}] * 2
        with pytest.raises(UsageError, match="two notifiers are named 'a'"):
            Announcer(store, twice, None)
        with pytest.raises(UsageError, match="public URL"):
            Announcer(store, [], "javascript:alert(1)")
        names = Announcer(
            store, [{"kind": "webhook", "url": "http://x.test"}] * 2 + [{"kind": "slack", "url": "http://s.test"}], None
        )
        assert [n.name for n in names.notifiers] == ["webhook-1", "webhook-2", "slack"]
    finally:
        runtime.close()


@scenario
async def test_a_notifier_limited_to_other_packs_is_not_told(world: World) -> None:
    await world.start("restart")
    specs = [{"kind": "webhook", "url": world.receiver.url("/hook"), "packs": ["someone-else"]}]
    await world.announcer(specs=specs).tick()
    assert world.receiver.seen == []


@scenario
async def test_an_entry_that_cannot_be_read_is_skipped_not_a_wall(world: World) -> None:
    announcer = world.announcer(specs=[{"kind": "webhook", "url": world.receiver.url("/hook")}])
    await announcer.tick()  # first use, on an empty ledger
    first = await world.start("restart")
    store = world.runtime.store
    with store.transaction():
        store.ledger.append("approval.requested", first, {"step": "other", "policies": 7}, ts=world.clock())
    second = await world.start("risky")
    await announcer.tick()
    assert [h["json"]["run_id"] for h in world.receiver.at("/hook")] == [first, second]


def test_runs_driven_and_approved_by_the_cli_are_announced(tmp_path: Path) -> None:
    """Real `opsdsl run` and `opsdsl approve` processes on the state dir the announcer reads."""
    from kernel_api import opsdsl

    pack = tmp_path / "pack.yaml"
    pack.write_text(PACK)
    state = tmp_path / "state"
    started = opsdsl("run", "--pack", pack, "--playbook", "risky", "--state-dir", state, "--log-format", "json")
    assert started.code == 4, started.stdout + started.stderr
    run = started.run_id

    async def main() -> list[dict[str, Any]]:
        async with Receiver() as receiver:
            store = runner.Runtime(state).store
            try:
                announcer = Announcer(store, [{"kind": "webhook", "url": receiver.url("/hook")}], None)
                await announcer.tick()
                approved = opsdsl("approve", run, "drop_table", "--by", "carol", "--state-dir", state)
                assert approved.code == 0, approved.stderr
                await announcer.tick()
                done = opsdsl("resume", run, "--state-dir", state)
                assert done.code == 0, done.stdout + done.stderr
                await announcer.tick()
            finally:
                store.close()
            return [seen["json"] for seen in receiver.seen]

    request, outcome = asyncio.run(main())
    assert (request["run_id"], request["fields"]["what"]) == (run, "request")
    assert request["fields"]["approve"] == {"url": None, "cli": f"opsdsl approve {run} drop_table --by NAME"}
    assert outcome["fields"]["outcome"]["decision"] == "approved"
    assert [name.removeprefix("local:") for name in outcome["fields"]["outcome"]["by"]] == ["carol"]


@scenario
async def test_a_step_left_in_doubt_is_announced_and_so_is_the_decision(world: World) -> None:
    secrets = Secrets(world.state)
    inputs = {"url": world.receiver.url("/kernel/charge")}
    run = world.runtime.create_run(world.plan, runner.Selection("charge"), {}, inputs, {}, secrets)
    assert (await world.runtime.drive(run, secrets)).status == "succeeded"
    store = world.runtime.store
    with store.transaction() as conn:  # as a crash mid-flight leaves it
        conn.execute("UPDATE steps SET status = 'running' WHERE run_id = ?", (run.id,))
        conn.execute("UPDATE runs SET status = 'running', phase = 'steps' WHERE id = ?", (run.id,))
    recovered = await world.runtime.drive(store.run(run.id), secrets, "resume")
    assert recovered.status == "paused" and recovered.in_doubt == ["charge"]

    announcer = world.announcer(public_url=None)
    await announcer.tick()
    (hook,) = world.receiver.at("/hook")
    facts = hook["json"]["fields"]
    assert (facts["kind"], facts["topic"], facts["what"]) == ("opsdsl.decision", "decision:1", "request")
    assert facts["ask"]["choices"] == ["retry", "succeeded", "failed"]
    assert facts["approve"]["cli"] == f"opsdsl decide {run.id} charge --as retry|succeeded|failed --by NAME"
    assert hook["json"]["message"].startswith("Decision needed: Charge the card in announce/charge (SEV-2)")
    (slack,) = world.receiver.at("/slack")
    fields = {f["title"]: f["value"] for f in slack["json"]["attachments"][0]["fields"]}
    assert fields["Decide"] == f"on the server: {facts['approve']['cli']}"
    (page,) = world.receiver.at("/pd")
    assert page["json"]["dedup_key"] == f"opsdsl-decision:1:{run.id}:charge"
    assert {e["asks"] for e in world.announced()} == {"decision"}

    world.runtime.decide(run.id, "charge", "carol", "succeeded")
    await announcer.tick()
    outcome = world.receiver.at("/hook")[1]["json"]
    assert outcome["fields"]["outcome"] == {"decision": "decided", "by": ["carol"], "choice": "succeeded"}
    assert outcome["message"].startswith("Decided by carol: succeeded: Charge the card")
    assert world.receiver.at("/pd")[1]["json"]["event_action"] == "resolve"
    assert await world.resume(run.id) == "succeeded"
    await announcer.tick()
    assert len(world.receiver.at("/hook")) == 2
