"""The comprehension macros: semantics through both evaluators, the fast path without
fallback for the common shapes, the checker's scoping, and the evaluation budget under
attack (huge lists, nested macros, growing values, deep nesting)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.errors import EvalError
from opsdsl.lang.expr import ExprSyntaxError, RootSpec, check, compile_expr, parse
from opsdsl.lang.expr.evaluator import build_exact
from opsdsl.lang.expr.macros import EVALUATION_BUDGET, BudgetExceeded

# An Alertmanager webhook body, as `event`, and a list of nodes.
EVENT = {
    "status": "firing",
    "commonLabels": {"cluster": "eu-1"},
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "DiskFull", "severity": "warning", "cluster": "eu-1", "instance": "db-1:9100"},
        },
        {
            "status": "firing",
            "labels": {"alertname": "DiskFull", "severity": "critical", "cluster": "eu-1", "instance": "db-2:9100"},
        },
        {
            "status": "resolved",
            "labels": {"alertname": "DiskFull", "severity": "warning", "cluster": "eu-1", "instance": "db-3:9100"},
        },
    ],
    "nodes": [
        {"name": "node-a", "ready": True, "restarts": 0},
        {"name": "node-b", "ready": False, "restarts": 7},
        {"name": "node-c", "ready": True, "restarts": 9},
    ],
    "labels": {"team": "db", "canary": "false", "env": "PROD"},
}
ACTIVATION = {"event": EVENT, "params": {"n": 2}, "l": [1, 2, 3], "m": {"a": 1, "b": 2}}


def both(text: str, activation: dict = ACTIVATION) -> list:
    """The outcome through the compiled fast path and the exact evaluator: a value, or
    ("error", message)."""
    outcomes = []
    for evaluate in (compile_expr(text), build_exact(parse(text))):
        try:
            outcomes.append(evaluate(activation))
        except EvalError as error:
            outcomes.append(("error", error.message))
    return outcomes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('event.alerts.exists(a, a.labels.severity == "critical")', True),
        ("event.alerts.all(a, a.labels.cluster == event.commonLabels.cluster)", True),
        ('event.alerts.all(a, a.status == "firing")', False),
        ("event.nodes.exists_one(n, n.ready == false)", True),
        ("event.nodes.filter(n, !n.ready).map(n, n.name)", ["node-b"]),
        ("event.nodes.map(n, !n.ready, n.name)", ["node-b"]),
        ("event.nodes.map(n, n.name).join(', ')", "node-a, node-b, node-c"),
        ("size(event.pods_or_nodes_missing.filter(p, true)) > 0 || true", True),
        ("size(event.nodes.filter(p, p.restarts > 5)) >= 2", True),
        ('event.labels.exists(k, event.labels[k].contains("false"))', True),
        ("event.alerts.map(a, a.labels.instance.split(':')[0])", ["db-1", "db-2", "db-3"]),
        ("l.map(x, x * 2)", [2, 4, 6]),
        ("l.map(x, x > 1, x * 10)", [20, 30]),
        ("l.filter(x, x % 2 == 1)", [1, 3]),
        ("l.all(x, x > 0)", True),
        ("l.exists(x, x > 2)", True),
        ("l.exists_one(x, x > 1)", False),
        ("[].all(x, x > 0)", True),
        ("[].exists(x, x > 0)", False),
        ("m.map(k, k)", ["a", "b"]),
        ("m.filter(k, m[k] > 1)", ["b"]),
        ("m.all(k, v, v > 0)", True),
        ("l.transformList(i, v, i * v)", [0, 2, 6]),
        ("l.transformList(i, v, v > 1, i)", [1, 2]),
        ("m.transformMap(k, v, v * 100)", {"a": 100, "b": 200}),
        ("l.transformMap(i, v, v > 2, v)", {2: 3}),
        ("l.existsOne(i, v, i == v)", False),
        ("[[1, 2], [3]].map(x, x.map(y, y + 1))", [[2, 3], [4]]),
        ("l.map(x, l.filter(y, y > x).size())", [2, 1, 0]),
        # the variable shadows nothing outside: `x` after the macro is the root again
        ("l.map(x, x + 1) == [2, 3, 4] && x == 9", True),
        # errors are absorbed as && and || absorb them
        ("[1, 0].exists(x, 10 / x > 1)", True),
        ("[0, 1].all(x, 10 / x > 100)", False),
    ],
)
def test_macros(text: str, expected: object) -> None:
    activation = {**ACTIVATION, "x": 9}
    assert both(text, activation) == [expected, expected]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[0, 1].exists(x, 10 / x > 100)", "division by zero"),
        ("[0, 1].exists_one(x, 10 / x > 1)", "division by zero"),
        ("[0, 1].map(x, 10 / x)", "division by zero"),
        ("l.filter(x, x)", "the predicate of filter() must be a bool, got int"),
        ("l.all(x, x)", "the predicate of all() must be a bool, got int"),
        ("l.map(x, x, x)", "the filter of map() must be a bool, got int"),
        ("'abc'.all(x, true)", "no such overload: all() on string"),
        ("params.n.map(x, x)", "no such overload: map() on int"),
        ("l.map(x, y)", "undeclared reference to `y`"),
    ],
)
def test_macro_errors(text: str, fragment: str) -> None:
    for outcome in both(text):
        assert isinstance(outcome, tuple), outcome
        assert fragment in outcome[1]


COMMON_SHAPES = [
    'event.alerts.exists(a, a.labels.severity == "critical")',
    "event.alerts.all(a, a.labels.cluster == event.commonLabels.cluster)",
    "event.nodes.exists_one(n, !n.ready)",
    "event.nodes.filter(n, !n.ready).map(n, n.name)",
    "event.nodes.map(n, n.restarts > 5, n.name)",
    "size(event.nodes.filter(n, n.restarts > params.n)) >= 1",
    "event.labels.exists(k, k.startsWith('ca'))",
    "event.alerts.map(a, a.labels.instance).join(',')",
    "l.transformList(i, v, i + v)",
    "m.transformMap(k, v, v + 1)",
    "l.all(i, v, v > i)",
]


@pytest.mark.parametrize("text", COMMON_SHAPES)
def test_common_shapes_run_on_the_fast_path_without_fallback(text: str) -> None:
    compiled = compile_expr(text)
    assert compiled.__name__ == "evaluate"  # generated code, not the exact evaluator

    def no_fallback(activation: object) -> None:
        raise AssertionError(f"fell back to the exact evaluator: {text}")

    expected = build_exact(parse(text))(ACTIVATION)
    compiled.__globals__["_exact"] = no_fallback
    try:
        assert compiled(ACTIVATION) == expected
    finally:
        compiled.__globals__["_exact"] = build_exact(parse(text))


# -- the two evaluators agree on any data --------------------------------------------------

DIFFERENTIAL = [
    "v.all(x, x > 1)",
    "v.exists(x, x == 'a')",
    "v.exists_one(x, x == 2)",
    "v.map(x, x + 1)",
    "v.map(x, x != null, x)",
    "v.filter(x, x < 3)",
    "v.all(i, x, i < 2 || x == 1)",
    "v.exists(i, x, x == i)",
    "v.transformList(i, x, x)",
    "v.transformMap(i, x, i != 0, x)",
    "v.map(x, v.filter(y, y == x).size())",
    "v.exists(x, 10 / x == 5) || v.all(x, x == x)",
    "v.filter(x, x in v).size() == v.size()",
]
elements = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b"]), st.floats(-2, 2))
collections_ = st.one_of(
    st.lists(elements, max_size=5),
    st.dictionaries(st.one_of(st.sampled_from(["a", "b", "c"]), st.integers(0, 3)), elements, max_size=4),
    elements,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DIFFERENTIAL), collections_)
def test_fast_path_and_exact_evaluator_agree(text: str, value: object) -> None:
    fast, exact = both(text, {"v": value})
    if isinstance(exact, tuple):
        assert isinstance(fast, tuple) and fast == exact
    else:
        assert fast == exact and type(fast) is type(exact)


# -- the checker ---------------------------------------------------------------------------

ROOTS = {
    "event": RootSpec("dyn"),
    "params": RootSpec("map", fields={"n": RootSpec("number"), "names": RootSpec("list")}, open=False),
}


def problems(text: str) -> list[tuple[str, str, int, int]]:
    return [(p.code, p.message, p.offset, p.end) for p in check(parse(text), ROOTS)]


def test_the_bound_variable_is_known_inside_the_macro_only() -> None:
    assert problems("event.alerts.exists(a, a.labels.severity == 'critical')") == []
    assert problems("params.names.map(n, n + '!').all(n, n.size() > 1)") == []
    text = "event.alerts.exists(a, true) && a.x"
    assert problems(text) == [("OPS021", "unknown name `a`", text.index("a.x"), text.index("a.x") + 1)]


def test_an_unknown_name_in_a_macro_is_located_and_suggested() -> None:
    text = "event.alerts.all(alert, alrt.status == 'firing')"
    (problem,) = check(parse(text), ROOTS)
    assert (problem.code, problem.offset, problem.end) == ("OPS021", text.index("alrt"), text.index("alrt") + 4)
    assert problem.hint == "did you mean `alert`?"


def test_a_variable_that_hides_a_root_is_an_error_at_the_variable() -> None:
    text = "event.alerts.exists(event, event.x == 1)"
    (problem,) = problems(text)
    assert problem[0] == "OPS021" and "hides the root `event`" in problem[1]
    assert problem[2:] == (20, 25)


def test_a_macro_on_a_certain_non_collection_is_a_type_error() -> None:
    text = "params.n.all(x, x > 1)"
    (problem,) = problems(text)
    assert problem == ("OPS024", "all() needs a list or a map, not a number", 0, 8)
    assert problems("event.value.all(x, x > 1)") == []  # dyn: maybe a list


def test_a_predicate_that_is_surely_no_bool_is_a_type_error() -> None:
    (problem,) = problems("params.names.filter(x, 1)")
    assert problem[0] == "OPS024" and "predicate of filter()" in problem[1]


def test_wrong_macro_forms() -> None:
    assert problems("params.names.all(x)")[0][:2] == ("OPS023", "all() takes 2 or 3 arguments, got 1")
    with pytest.raises(ExprSyntaxError, match="must have different names"):
        parse("params.names.all(x, x, true)")
    with pytest.raises(ExprSyntaxError, match="must be a simple name"):
        parse("l.all(x.y, true)")


def test_references_skip_macro_variables() -> None:
    expression = parse("event.alerts.exists(a, a.labels.x == params.n && has(a.y))")
    assert [ref.dotted for ref in expression.references()] == ["event.alerts", "params.n"]


# -- attacks: bounded work -----------------------------------------------------------------


def _budget_error(text: str, activation: dict) -> str:
    messages = []
    for evaluate in (compile_expr(text), build_exact(parse(text))):
        with pytest.raises(BudgetExceeded) as caught:
            evaluate(activation)
        messages.append(caught.value.message)
    assert messages[0] == messages[1]
    return messages[0]


def test_a_macro_over_a_huge_list_runs_out_of_budget() -> None:
    message = _budget_error("event.l.exists(x, x == 'never')", {"event": {"l": ["a"] * (EVALUATION_BUDGET + 1)}})
    assert message.startswith("evaluation budget exceeded")


def test_nested_macros_run_out_of_budget() -> None:
    activation = {"l": list(range(1000))}
    _budget_error("l.all(x, l.all(y, l.all(z, true)))", activation)
    assert compile_expr("l.all(x, true)")(activation) is True  # one level fits


def test_values_growing_inside_a_macro_are_charged() -> None:
    big = list(range(20_000))
    _budget_error("l.map(x, l + l).size() > 0", {"l": big})
    _budget_error("l.map(x, s + s).size() > 0", {"l": list(range(100)), "s": "x" * 1_000_000})
    _budget_error("l.filter(x, x in l).size() > 0", {"l": big})


def test_the_budget_is_not_absorbed_by_logical_operators() -> None:
    huge = {"l": [1] * (EVALUATION_BUDGET + 1)}
    _budget_error("l.all(x, true) || true", huge)
    _budget_error("[1, 2].exists(y, l.all(x, true)) || true", huge)
    assert compile_expr("true || l.all(x, true)")(huge) is True  # never evaluated: CEL short-circuits


def _nested_macros(levels: int) -> str:
    return "l" + "".join(f".all(x{i}, x{i}" for i in range(levels)) + ".size() > 0" + ")" * levels


def test_macros_nest_only_as_deep_as_the_depth_limit() -> None:
    with pytest.raises(ExprSyntaxError, match="nests too deeply"):
        parse(_nested_macros(70))
    value: list = []
    for _ in range(30):
        value = [value, value]  # 2^30 paths, but shared: the budget stops the walk
    assert both(_nested_macros(10), {"l": value})[0] is True
    _budget_error(_nested_macros(25), {"l": value})


def test_deeply_nested_data_inside_a_macro_is_an_evaluation_error() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for outcome in both("l.exists(x, x == x)", {"l": [deep]}):
        assert outcome == ("error", "evaluation failed: a value is nested too deeply")


def test_macro_errors_never_quote_data() -> None:
    secret = "S3cr3t-t0ken"
    activation = {"event": {"l": [secret, {"k": secret}], "k": secret}}
    for text in (
        "event.l.all(x, int(x) > 0)",
        "event.l.map(x, x[event.k])",
        "event.l.filter(x, x)",
        "event.l.exists_one(x, x.matches(event.k + '('))",
        "event.l.map(x, x.substring(100))",
    ):
        for outcome in both(text, activation):
            assert isinstance(outcome, tuple), (text, outcome)
            assert secret not in outcome[1] and "t0ken" not in outcome[1]


# -- the examples of docs/expressions.md -------------------------------------------------------


def test_the_docs_macro_examples_do_what_they_say() -> None:
    import yaml

    from opsdsl.lang.expr import parse_template

    docs = (Path(__file__).resolve().parents[2] / "docs" / "expressions.md").read_text(encoding="utf-8")
    block = docs.split("```yaml\n# a generic event (`on: event`)", 1)[1].split("```", 1)[0].split("\n", 1)[1]
    group = {"alerts": EVENT["alerts"], "nodes": EVENT["nodes"], "labels": {"track": "canary-7", "team": "db"}}
    group["pods"] = [{"restarts": n} for n in (6, 7, 8, 0)]
    active = [{"status": {"state": "active"}, "labels": {"cluster": "eu-1"}}] * 3
    activation = {"event": group, "inputs": {"cluster": "eu-1"}, "steps": {"active": {"outputs": {"json": active}}}}
    seen = 0
    for line in block.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        ((key, value),) = yaml.safe_load(line).items()
        assert key in ("when", "inputs", "with"), line
        if key == "when":
            assert both(value, activation) == [True, True], value
        elif key == "inputs":
            assert both(value["down"]["from"], activation) == [["node-b"], ["node-b"]]
        else:
            assert parse_template(value["message"]).render(activation) == "down: node-b"
        seen += 1
    assert seen == 7


# -- through the real linter ---------------------------------------------------------------------

LINTED_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: macro-lint, version: 1.0.0, owner: sre}
params:
  limit: {type: number, default: 3}
triggers:
  group:
    on: event
    when: event.alerts.exists(a, a.labels.severity == "critical") && event.alerts.all(event, evnt.ok)
  numbers:
    on: event
    when: params.limit.all(x, x > 1)
hooks:
  onGroup: {trigger: group, run: drain, cooldown: 10m}
  onNumbers: {trigger: numbers, run: drain, cooldown: 10m}
playbooks:
  drain:
    severity: SEV-2
    inputs:
      down: {type: list, from: "event.nodes.filter(n, !n.ready).map(n, n.name)"}
    steps:
      - id: tell
        action: notify
        with: {kind: webhook, url: "http://127.0.0.1:9/x", message: "down: ${{ inputs.down.join(', ') }}"}
        timeout: 5s
"""


def test_the_linter_reports_macro_problems_at_their_positions(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    pack = tmp_path / "pack.yaml"
    pack.write_text(LINTED_PACK, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "opsdsl", "lint", str(pack), "--format", "json", "-j", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    found = {(d["code"], d["line"], d["column"], d["message"]) for d in json.loads(result.stdout)["diagnostics"]}
    line9 = LINTED_PACK.splitlines()[8]
    assert found == {
        ("OPS021", 9, line9.index("(event,") + 2, "the variable `event` of all() hides the root `event`"),
        ("OPS021", 9, line9.index("evnt") + 1, "unknown name `evnt`"),
        ("OPS024", 12, 11, "all() needs a list or a map, not a number"),
    }
