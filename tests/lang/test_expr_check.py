"""Static checks: unknown names, functions, arity, and certain type errors (no false alarms)."""

from __future__ import annotations

import pytest

from opsdsl.lang.expr import Problem, RootSpec, check, parse

ROOTS = {
    "event": RootSpec("dyn"),
    "params": RootSpec(
        "map",
        fields={"slo_p95_ms": RootSpec("number"), "kernel_url": RootSpec("string")},
        open=False,
    ),
    "steps": RootSpec(
        "map",
        fields={
            "inspect": RootSpec(
                "map",
                fields={"status": RootSpec("string"), "outputs": RootSpec("dyn")},
                open=False,
            )
        },
        open=False,
    ),
    "inputs": RootSpec("map"),
    "run": RootSpec("map", fields={"severity": RootSpec("string")}),
    "count": RootSpec("int"),
    "ratio": RootSpec("double"),
    "flag": RootSpec("bool"),
    "names": RootSpec("list"),
}


def problems(text, roots=ROOTS):
    return check(parse(text), roots)


def codes(text, roots=ROOTS):
    return [problem.code for problem in problems(text, roots)]


def only(text, roots=ROOTS):
    found = problems(text, roots)
    assert len(found) == 1, found
    return found[0]


def test_clean_expressions_have_no_problems():
    for text in [
        'event.labels.alertname == "SqlxExecLatencyHigh" && event.value > params.slo_p95_ms',
        "steps.inspect.outputs.json.p95_ms > params.slo_p95_ms",
        'steps.inspect.status == "ok" && has(steps.inspect.outputs)',
        "inputs.cluster.startsWith('eu') || size(names) > 2",
        "run.severity != 'SEV-1' && run.anything_else == 1",
        "count + 1 > 2 && ratio * 2.0 < 1.5 && !flag",
        "params.slo_p95_ms + 1 > 2",  # number: may be an int
        "params.slo_p95_ms * 1.5 > 2.0",  # or a double
        "event.value > 5m ? 'slow' : 'fine'",
        "event.x == null || params.kernel_url == null",
        "int(event.value) % 2 == 0 && string(count) + 's' == '1s' && duration('1s') > 0.5",
        '{"a": 1}.a + [1, 2][0] == 2',
    ]:
        assert problems(text) == [], text


def test_unknown_root_with_did_you_mean():
    problem = only("evnt.value > 5")
    assert problem == Problem("OPS021", "unknown name `evnt`", 0, 4, "did you mean `event`?")


def test_python_spellings_get_a_hint():
    assert only("flag == True").hint == "booleans are written `true` and `false`"
    assert only("event.x != None").hint == "null is written `null`"


def test_unknown_root_without_a_close_match_lists_the_known_ones():
    problem = only("zzz", {"event": RootSpec(), "params": RootSpec()})
    assert problem.code == "OPS021"
    assert problem.hint == "known names here: event, params"


def test_unknown_field_of_a_closed_root():
    text = "event.value > params.slo_ms"
    problem = only(text)
    assert problem.code == "OPS021"
    assert problem.message == "unknown field `slo_ms` of params"
    assert problem.hint == "did you mean `slo_p95_ms`?"
    assert text[problem.offset : problem.end] == "slo_ms"


def test_unknown_field_deeper_and_through_index_and_has():
    assert only("steps.inspct.status").message == "unknown field `inspct` of steps"
    assert only("steps.inspect.stauts").message == "unknown field `stauts` of steps.inspect"
    assert only('params["slo"]').hint == "did you mean `slo_p95_ms`?"  # a prefix counts
    text = "has(params.slo)"
    problem = only(text)
    assert problem.code == "OPS021"
    assert text[problem.offset : problem.end] == "slo"


def test_open_maps_and_dyn_accept_any_field():
    assert problems("inputs.anything.deeper && event.x.y.z && run.other") == []


def test_unknown_function_and_method():
    problem = only("size(x) > 1 && x.startWith('a')", {"x": RootSpec()})
    assert (problem.code, problem.message, problem.hint) == (
        "OPS022",
        "unknown method `startWith`",
        "did you mean `startsWith`?",
    )
    assert only("sise(names)").hint == "did you mean `size`?"
    assert only("lenght(names)").code == "OPS022"


def test_function_in_the_wrong_form():
    assert only("event.x.int()").message == "`int` is a function, not a method"
    problem = only("startsWith(event.x, 'a')")
    assert (problem.code, problem.hint) == ("OPS022", "write x.startsWith(...)")
    assert only("event.has(event.x)").hint == "has is a macro: write has(a.b)"


def test_wrong_number_of_arguments():
    text = "size(names, names) == 1"
    problem = only(text)
    assert (problem.code, problem.message) == ("OPS023", "size() takes 1 argument, got 2")
    assert text[problem.offset : problem.end] == "size(names, names)"
    assert only("names.size(1)").message == "size() takes 0 arguments, got 1"
    assert only("event.x.startsWith()").message == "startsWith() takes 1 argument, got 0"
    assert only("has(event.a, event.b)").message == "has() takes 1 argument, got 2"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('"a" < 3', "cannot order a string and an int with `<`"),
        ("steps.inspect.status == 5", "between a string and an int is always false"),
        ("true == 1", "between a bool and an int is always false"),
        ("'a' != 1.5", "is always true"),
        ('!"x"', "`!` needs a bool, not a string"),
        ('"a" - 1', "`-` cannot combine a string with an int"),
        ("1 + 1.0", "`+` cannot combine an int with a double"),
        ("count + 5m", "`+` cannot combine an int with a double"),
        ("-'a'", "`-` needs a number, not a string"),
        ("3.5 % 2.0", "`%` cannot combine a double with a double"),
        ("flag && 1", "`&&` needs bool operands, not an int"),
        ("'x' || flag", "`||` needs bool operands, not a string"),
        ("count ? 1 : 2", "the condition of `? :` must be a bool, not an int"),
        ("1 in 'abc'", "`in` needs a list or map on its right, not a string"),
        ("params.kernel_url.host", "cannot select field `host` of a string"),
        ("count[0]", "cannot index into an int"),
        ("names['a']", "a list index must be an int, not a string"),
        ("has(count.x)", "has() needs a map, not an int"),
        ("size(5)", "size() needs a list or a map or a string, not an int"),
        ("params.kernel_url.startsWith(1)", "startsWith() needs a string, not an int"),
        ("count.startsWith('a')", "startsWith() needs a string, not an int"),
        ("{[1]: 2}", "map keys must be strings, ints or bools, not a list"),
        ("[1] < [2]", "cannot order a list and a list"),
        ("size(names) == 'three'", "between an int and a string is always false"),
        ("(count > 1) + 1", "`+` cannot combine a bool with an int"),
        ("int('1') == true", "between an int and a bool is always false"),
    ],
)
def test_certain_type_errors(text, fragment):
    problem = only(text)
    assert problem.code == "OPS024"
    assert fragment in problem.message


def test_int_double_mix_hint_mentions_conversion():
    assert "double(x)" in only("1 + 1.0").hint


def test_never_a_false_positive_on_dyn_or_mixed_types():
    for text in [
        "event.x < 3 && event.y == 'a' && event.z + 1 > 0 && -event.w < 0 && !event.v",
        "event.x ? event.y : 1",
        "event.x in event.y",
        "event.x[0] + event.y['k']",
        "size(event.x) > 0 && event.s.startsWith(event.p)",
        "(flag ? 1 : 'a') == 'a'",  # int or string: may equal a string
        "(flag ? 1 : 1.5) + 1",  # int or double: may be an int
        "params.slo_p95_ms == 250.0",
        "event.x == null && null == count",
    ]:
        assert problems(text) == [], text


def test_problems_come_in_text_order_and_do_not_cascade():
    found = problems("evnt.a > 1 && size(1, 2) && foo()")
    assert [p.code for p in found] == ["OPS021", "OPS023", "OPS022"]
    assert [p.offset for p in found] == sorted(p.offset for p in found)


def test_bad_root_spec_type_is_rejected():
    with pytest.raises(ValueError, match="unknown RootSpec type"):
        RootSpec("strng")


def test_json_schema_type_names_are_understood():
    roots = {"p": RootSpec("object", fields={"n": RootSpec("integer"), "b": RootSpec("boolean")})}
    assert codes("p.n == 'a'", roots) == ["OPS024"]
    assert codes("p.b + 1", roots) == ["OPS024"]
    assert codes("p.other", roots) == []
