"""opsdsl.rehearsal in-process: the virtual clock, matching and diffs, facts from the ledger,
and every bad-input diagnostic at its exact location. (`opsdsl test` as a command, on the
fixtures under tests/fixtures/rehearsal/, is in test_test_cli.py.)"""

from __future__ import annotations

import asyncio
import textwrap
import time
from pathlib import Path

import pytest

from opsdsl.rehearsal import Options, run_tests
from opsdsl.rehearsal.clock import Stalled, VirtualClock, run_virtual
from opsdsl.rehearsal.expect import contains, match_started, project, started_lines, unified
from opsdsl.rehearsal.ops_form import load_text as load_ops_test

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: unit, version: 1.0.0, owner: sre}
playbooks:
  p:
    severity: SEV-3
    steps:
      - id: a
        needs: []
        action: http.request
        with: {url: "http://127.0.0.1:9/a"}
        timeout: 5s
        retry: {attempts: 3, backoff: fixed, initial: 1m, max: 1m}
      - {id: b, needs: [], action: wait, with: {duration: 2m}}
      - id: c
        needs: [a, b]
        when: steps.a.outputs.json.go
        action: shell
        with: {argv: [/nonexistent/tool]}
        timeout: 30s
        compensate: {action: shell, with: {argv: [/nonexistent/undo]}, timeout: 30s}
      - {id: d, risk: high, action: http.request, with: {url: "http://127.0.0.1:9/d", method: PUT}, timeout: 5s}
    finally:
      - {id: rca, action: report.rca, with: {title: Unit}}
policies:
  - id: high-risk-approval
    when: step.risk == "high"
    effect: require_approval
    message: a human must look
"""


def suite(tmp_path: Path, cases: str, pack: str = PACK, head: str = "") -> Path:
    (tmp_path / "unit.yaml").write_text(pack)
    test = tmp_path / "unit.test.yaml"
    body = textwrap.indent(textwrap.dedent(cases), "  ")
    test.write_text(f"apiVersion: opsdsl/v1\nkind: PackTest\npack: unit.yaml\n{head}cases:\n{body}")
    return test


def only_case(tmp_path: Path, cases: str, **options):
    session = run_tests([suite(tmp_path, cases)], Options(**options))
    (result,) = session.files
    assert not result.diagnostics, [d.render() for d in result.diagnostics]
    return result.cases


def diagnostics_of(tmp_path: Path, cases: str) -> list[tuple[str, int, int, str]]:
    session = run_tests([suite(tmp_path, cases)])
    (result,) = session.files
    found = list(result.diagnostics) + [d for c in result.cases for d in c.diagnostics]
    return [(d.code, d.span.line, d.span.col, d.message) for d in found]


# ---- the virtual clock ---------------------------------------------------------------------


def test_virtual_clock_jumps_to_the_earliest_timer_only_when_every_task_waits():
    clock = VirtualClock.at("2026-11-27T07:50:00Z")
    log: list[tuple[str, float]] = []

    async def worker(name: str, waits: list[float]) -> None:
        for wait in waits:
            await asyncio.sleep(wait)
            log.append((name, clock.elapsed))

    async def busy() -> None:  # runnable work keeps the clock still
        for _ in range(100):
            await asyncio.sleep(0)
        log.append(("busy", clock.elapsed))

    async def main() -> None:
        await asyncio.gather(worker("hour", [3600, 60]), worker("seconds", [1, 1, 1]), busy())
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(100), 10)
        log.append(("timeout", clock.elapsed))

    began = time.perf_counter()
    run_virtual(main(), clock)
    assert time.perf_counter() - began < 0.5
    assert log == [
        ("busy", 0.0),
        ("seconds", 1.0),
        ("seconds", 2.0),
        ("seconds", 3.0),
        ("hour", 3600.0),
        ("hour", 3660.0),
        ("timeout", 3670.0),
    ]
    assert clock.now() == clock.epoch + 3670.0


def test_virtual_clock_reports_a_deadlock_instead_of_hanging():
    async def forever() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Stalled):
        run_virtual(forever(), VirtualClock.at(None))


def test_concurrent_retries_and_waits_run_on_virtual_time(tmp_path):
    (case,) = only_case(
        tmp_path,
        """\
        - name: retries beside a wait
          playbook: p
          mocks:
            a: {sequence: [{error: "503"}, {error: "503"}, {outputs: {json: {go: false}}}]}
          expect:
            started: [[a, b]]
            skipped: [c]
            decisions: {d: require_approval}
            status: paused
        """,
    )
    assert case.status == "passed", [f.render() for f in case.failures]
    assert case.virtual_seconds == 120.0  # a: 1m + 1m of backoff beside b's 2m wait
    assert case.seconds < 1.0


# ---- matching and diffs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual", "mismatch"),
    [
        (["a", "b", "c"], ["a", "b", "c"], None),
        (["a", ["b", "c"], "d"], ["a", "c", "b", "d"], None),
        (["a", ["b", "c"], "d"], ["a", "b", "d", "c"], 1),
        (["a", "b"], ["b", "a"], 0),
        (["a"], ["a", "b"], 1),
        (["a", "b"], ["a"], 1),
        ([["a", "b"]], ["a", "b"], None),
    ],
)
def test_started_matches_groups_in_any_order(expected, actual, mismatch):
    assert match_started(expected, actual) == mismatch


def test_started_diff_keeps_the_groups_that_matched():
    want, got = started_lines(["a", ["b", "c"], "d", "e"], ["a", "c", "b", "e", "d"])
    assert want == ["- a", "- [b, c]", "- d", "- e"]
    assert got == ["- a", "- [b, c]", "- e", "- d"]
    assert unified(want, got) == [
        "--- expected",
        "+++ actual",
        "@@ -1,4 +1,4 @@",
        " - a",
        " - [b, c]",
        "+- e",
        " - d",
        "-- e",
    ]


def test_outputs_match_as_subsets_and_diff_only_what_was_asked():
    actual = {"status": 200, "json": {"p95": 900, "nodes": ["n1"]}, "headers": {}}
    assert contains({"json": {"p95": 900}}, actual)
    assert contains({"json": {"nodes": ["n1"]}}, actual)
    assert not contains({"json": {"nodes": ["n1", "n2"]}}, actual)
    assert not contains({"status": True}, {"status": 1})
    assert not contains({"missing": None}, actual)
    assert project({"json": {"p95": 250}}, actual) == {"json": {"p95": 900}}


# ---- facts and failures, end to end ----------------------------------------------------------


def test_a_wrong_order_fails_at_the_first_differing_item_with_a_diff(tmp_path):
    (case,) = only_case(
        tmp_path,
        """\
        - name: wrong
          playbook: p
          mocks:
            a: {outputs: {json: {go: true}}}
          approvals:
            d: [{by: dave}]
          expect:
            started: [b, a, c, d, rca]
            status: succeeded
        """,
    )
    assert case.status == "failed"
    (failure,) = case.failures
    assert failure.key == "expect.started"
    assert (failure.span.line, failure.span.col) == (12, 17)
    assert "expected `b` at position 1, got `a`" in failure.message
    assert failure.diff[3:] == ("+- a", " - b", "-- a", " - c", " - d", " - rca")


def test_policy_decisions_compensation_and_headline(tmp_path):
    (case,) = only_case(
        tmp_path,
        """\
        - name: d is refused by people, c is undone
          playbook: p
          mocks:
            a: {outputs: {json: {go: true}}}
          approvals:
            d: [{by: dave, decision: deny}]
          expect:
            started: [[a, b], c, c.compensate, rca]
            compensated: [c]
            decisions:
              d: {decision: require_approval, policy: high-risk-approval}
              c: allow
            status: failed
            error: denied by dave
            rca_headline: {equals: "SEV-3 p on unit failed in 2m00s with no retries; 0 steps denied."}
        """,
    )
    assert case.status == "passed", [f.render() for f in case.failures]


def test_a_decision_that_differs_names_the_policy(tmp_path):
    (case,) = only_case(
        tmp_path,
        """\
        - name: wrong decision
          playbook: p
          mocks:
            a: {outputs: {json: {go: false}}}
          expect:
            decisions: {d: allow, c: allow}
        """,
    )
    messages = {f.key: f.message for f in case.failures}
    assert messages == {
        "expect.decisions.c": "no policy decision was made for `c`: it was skipped (its `when:` was false)",
        "expect.decisions.d": "the gate said require_approval (high-risk-approval), not allow",
    }


def test_mocked_outputs_are_judged_like_the_real_action(tmp_path):
    (case,) = only_case(
        tmp_path,
        """\
        - name: exit code and status
          playbook: p
          mocks:
            a: {outputs: {status: 404}}
          expect:
            status: failed
            error: "GET http://127.0.0.1:9/a returned 404 (expected 2xx)"
            started: [[a, b], rca]
        """,
    )
    assert case.status == "passed", [f.render() for f in case.failures]  # 404 is final: no retry


def test_strict_mocks_fail_unmocked_steps_and_unused_mocks(tmp_path):
    cases = """\
    - name: strict
      playbook: p
      mocks:
        a: {outputs: {json: {go: false}}}
        c: {}
    """
    (lenient,) = only_case(tmp_path, cases)
    assert lenient.status == "passed" and lenient.notes == ["mock `c` was not used (the step did not run)"]
    (strict,) = only_case(tmp_path, cases, strict_mocks=True)
    assert strict.status == "failed"
    assert [f.message for f in strict.failures] == ["the mock for `c` was never used: the step did not run"]


def test_a_sequence_that_runs_out_and_an_answer_never_given_fail_the_case(tmp_path):
    (case,) = only_case(
        tmp_path,
        """\
        - name: exhausted
          playbook: p
          mocks:
            a: {sequence: [{error: "503"}]}
          approvals:
            d: [{by: dave}]
        """,
    )
    assert case.status == "failed"
    assert [(f.key, f.span.line) for f in case.failures] == [("mocks.a.sequence", 8), ("approvals.d[0]", 10)]
    assert "made attempt 2, but its mock's sequence has 1" in case.failures[0].message


def test_no_process_no_connection_no_sleep(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a rehearsal touched the outside world")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse)
    monkeypatch.setattr(asyncio, "open_connection", refuse)
    monkeypatch.setattr(time, "sleep", refuse)
    import socket

    monkeypatch.setattr(socket.socket, "connect", refuse)
    (case,) = only_case(
        tmp_path,
        """\
        - name: unmocked steps get neutral outputs, not real effects
          playbook: p
          mocks:
            a: {outputs: {json: {go: true}}}
          approvals:
            d: [{by: dave}]
          expect:
            started: [[a, b], c, d, rca]
            status: succeeded
        """,
    )
    assert case.status == "passed", [f.render() for f in case.failures]


# ---- bad input: located diagnostics ------------------------------------------------------


def test_malformed_yaml_is_located(tmp_path):
    assert diagnostics_of(tmp_path, "- name: x\n  playbook: [p\n") == [
        ("OPS002", 6, 15, "did not find expected ',' or ']' (while parsing a flow sequence)")
    ]


def test_schema_problems_are_located_and_only_stop_their_case(tmp_path):
    cases = """\
    - name: typo
      playbook: p
      expect:
        startd: [a]
    - name: fine
      playbook: p
    """
    session = run_tests([suite(tmp_path, cases)])
    typo, fine = session.files[0].cases
    assert [(d.code, d.span.line, d.span.col, d.hint) for d in typo.diagnostics] == [
        ("OPS011", 8, 7, "did you mean `started`?")
    ]
    assert typo.status == "error" and fine.status == "passed"


def test_unknown_names_are_located(tmp_path):
    found = diagnostics_of(
        tmp_path,
        """\
        - name: unknown
          playbook: p
          params: {nope: 1}
          mocks:
            aa: {}
          approvals:
            zz: [{by: x}]
          expect:
            outputs: {cc: {}}
            decisions: {d: {decision: allow, policy: no-such-policy}}
        """,
    )
    assert found == [
        ("OPS062", 7, 14, "the pack declares no param `nope`"),
        ("OPS062", 9, 7, "mock for an unknown step: playbook `p` has no step `aa`; did you mean `a`?"),
        ("OPS062", 11, 7, "answers for an unknown step: playbook `p` has no step `zz`"),
        ("OPS062", 13, 17, "playbook `p` has no step `cc`; did you mean `c`?"),
        ("OPS062", 14, 48, "no policy `no-such-policy` is in scope"),
    ]


def test_unknown_playbook_is_located(tmp_path):
    assert diagnostics_of(tmp_path, "- {name: x, playbook: q}\n") == [("OPS062", 5, 25, "the pack has no playbook `q`")]


def test_unmockable_steps_are_located(tmp_path):
    found = diagnostics_of(
        tmp_path,
        """\
        - name: unmockable
          playbook: p
          mocks:
            b: {}
            rca: {}
        """,
    )
    assert [(code, line, col) for code, line, col, _ in found] == [("OPS063", 8, 7), ("OPS063", 9, 7)]
    assert found[0][3] == "`b` is a `wait` step, which the scheduler runs itself: it cannot be mocked"


def test_impossible_expectations_are_located(tmp_path):
    found = diagnostics_of(
        tmp_path,
        """\
        - name: impossible
          playbook: p
          expect:
            started: [c, [a, b], [rca, d]]
            skipped: [a]
            compensated: [a]
            triggers: [t]
        """,
    )
    assert found == [
        ("OPS064", 8, 17, "`c` cannot start before `a`: `c` needs `a`"),
        (
            "OPS064",
            8,
            34,
            "`rca` and `d` cannot start together: `finally` steps start only after the main steps have ended",
        ),
        ("OPS064", 9, 17, "`a` has no `when:`, so it is never skipped"),
        ("OPS064", 10, 21, "`a` has no `compensate:`, so nothing can undo it"),
        ("OPS064", 11, 7, "`triggers`: this case runs playbook `p` directly; triggers and hooks are not consulted"),
    ]


def test_bad_values_and_duplicate_names_are_located(tmp_path):
    pack = PACK.replace("playbooks:", "params:\n  limit: {type: integer, default: 1}\nplaybooks:")
    session = run_tests(
        [
            suite(
                tmp_path,
                """\
                - name: twice
                  playbook: p
                  params: {limit: "three"}
                  clock: 2026-02-30T00:00:00Z
                - name: twice
                  playbook: p
                """,
                pack=pack,
            )
        ]
    )
    found = [(d.code, d.span.line, d.span.col) for c in session.files[0].cases for d in c.diagnostics]
    assert found == [("OPS065", 7, 21), ("OPS065", 8, 12), ("OPS066", 9, 11)]


def test_a_missing_pack_is_located(tmp_path):
    test = tmp_path / "x.test.yaml"
    test.write_text("apiVersion: opsdsl/v1\nkind: PackTest\npack: gone.yaml\ncases:\n  - {name: x, playbook: p}\n")
    (result,) = run_tests([test]).files
    assert [(d.code, d.span.line, d.span.col) for d in result.diagnostics] == [("OPS061", 3, 7)]


def test_ops_test_files_give_the_yaml_data_with_positions():
    text = textwrap.dedent(
        """\
        packtest "unit.yaml" {
          case "one" {
            playbook p
            mock a {sequence: [{error: "503"}, {outputs: {json: {go: true}}}]}
            approval d {by: dave}
            expect {
              started [[a, b], c, d, rca]
              decision d {decision: require_approval, policy: high-risk-approval}
            }
          }
        }
        """
    )
    document, diagnostics = load_ops_test(text, "unit.test.ops")
    assert not diagnostics
    case = document.data["cases"][0]
    assert case["mocks"]["a"]["sequence"][1] == {"outputs": {"json": {"go": True}}}
    assert case["approvals"] == {"d": [{"by": "dave"}]}
    assert case["expect"]["started"] == [["a", "b"], "c", "d", "rca"]
    assert str(document.span(("cases", 0, "expect", "started", 1))) == "unit.test.ops:7:24"
    assert str(document.key_span(("cases", 0, "mocks", "a"))) == "unit.test.ops:4:10"


def test_ops_test_syntax_errors_are_located():
    _, diagnostics = load_ops_test('packtest "x" {\n  case "y" {\n    status: failed\n  }\n}\n', "x.test.ops")
    (diagnostic,) = diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.col) == ("OPS002", 3, 11)
    assert diagnostic.hint == "statements take no `:` — write `status succeeded`, not `status: succeeded`"


# ---- the schema -----------------------------------------------------------------------------


def _properties(node, path=""):
    """Every (path, schema) of a property declared anywhere in the schema."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{path}.{name}", sub
        for key, sub in node.items():
            yield from _properties(sub, f"{path}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            yield from _properties(sub, f"{path}[{index}]")


def test_the_test_schema_is_draft_2020_12_and_describes_every_property():
    import jsonschema

    from opsdsl.rehearsal.loading import pack_test_schema

    schema = pack_test_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    undocumented = [path for path, sub in _properties(schema) if "description" not in sub]
    assert undocumented == []


def test_our_validator_and_jsonschema_agree_on_test_files(tmp_path):
    import jsonschema

    from opsdsl.lang.loader import load_file
    from opsdsl.rehearsal.loading import pack_test_schema, validate_test

    validator = jsonschema.Draft202012Validator(pack_test_schema())
    fixtures = Path(__file__).parents[1] / "fixtures" / "rehearsal"
    documents = [load_file(p)[0].data for p in sorted(fixtures.rglob("*.test.yaml")) if "broken" not in p.parts]
    documents += [load_ops_test(p.read_text(), p.name)[0].data for p in sorted(fixtures.rglob("*.test.ops"))]
    invalid = [
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x.yaml", "cases": []},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x.yaml", "cases": [{"name": "x"}]},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x", "cases": [{"name": "x", "event": {}, "events": [{"event": {}}]}]},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x", "cases": [{"name": "x", "playbook": "p", "mocks": {"a": {"error": "e", "timeout": True}}}]},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x", "cases": [{"name": "x", "playbook": "p", "mocks": {"a": {"sequence": [], "outputs": {}}}}]},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x", "cases": [{"name": "x", "playbook": "p", "approvals": {"a": [{"comment": "c"}]}}]},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x", "cases": [{"name": "x", "playbook": "p", "expect": {"started": [["a"]]}}]},
        {"apiVersion": "opsdsl/v1", "kind": "PackTest", "pack": "x", "cases": [{"name": "x", "playbook": "p", "expect": {"rca_headline": {"equals": "a", "matches": "b"}}}]},
    ]  # fmt: skip
    assert len(documents) >= 4
    for document in documents:
        assert validate_test(document) == [] and validator.is_valid(document), document
    for document in invalid:
        assert validate_test(document) != [] and not validator.is_valid(document), document


CALLING = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: calls, version: 1.0.0, owner: sre}
playbooks:
  parent:
    severity: SEV-2
    timeout: 2h
    steps:
      - {id: look, action: shell, with: {argv: [look]}, timeout: 10s}
      - {id: fix, action: playbook.call, with: {playbook: child}}
      - {id: pause, action: wait, with: {duration: 3h}}
      - {id: done, action: shell, with: {argv: [done]}, timeout: 10s}
  child:
    severity: SEV-2
    steps:
      - {id: ask, action: approval, with: {message: go?}, timeout: 1h}
      - {id: look, action: shell, with: {argv: [child-look]}, timeout: 10s}
"""


def test_sub_run_steps_are_mocked_and_answered_by_playbook_and_the_deadline_is_virtual(tmp_path):
    session = run_tests(
        [
            suite(
                tmp_path,
                """\
                - name: the child asks; the parent's 2h deadline cuts its 3h wait
                  playbook: parent
                  mocks:
                    look: {outputs: {stdout: parent}}
                    child/look: {outputs: {stdout: child}}
                  approvals:
                    child/ask: [{by: alice, after: 10m}]
                  expect:
                    started: [look, fix, pause]
                    outputs: {look: {stdout: parent}}
                    status: failed
                    error: the playbook's timeout passed
                    rca_headline: failed in 2h00m
                - name: expectations are about the case's own run
                  playbook: parent
                  expect:
                    outputs: {child/look: {}}
                """,
                pack=CALLING,
                head="strict_mocks: true\n",
            )
        ]
    )
    deadline, own_run = session.files[0].cases
    assert deadline.status == "passed", [f.render() for f in deadline.failures]
    assert deadline.virtual_seconds == 7200.0
    (diagnostic,) = own_run.diagnostics
    assert (diagnostic.code, diagnostic.span.line, diagnostic.span.col) == ("OPS064", 22, 17)


def test_a_constant_when_makes_start_or_skip_impossible(tmp_path):
    pack = PACK.replace(
        "      - {id: b, needs: [], action: wait, with: {duration: 2m}}",
        "      - {id: b, needs: [], when: 1 > 2, action: wait, with: {duration: 2m}}\n"
        "      - {id: e, needs: [], when: 'true', action: wait, with: {duration: 2m}}",
    )
    session = run_tests(
        [suite(tmp_path, "- name: x\n  playbook: p\n  expect: {started: [b], skipped: [e]}\n", pack=pack)]
    )
    (case,) = session.files[0].cases
    assert [(d.code, d.span.col, d.message) for d in case.diagnostics] == [
        ("OPS064", 24, "`b` never starts: its `when:` is always false"),
        ("OPS064", 38, "`e` is never skipped: its `when:` is always true"),
    ]
