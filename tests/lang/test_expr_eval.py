"""Evaluation: every operator and function, CEL's error cases and error absorption.

Each case runs through both the compiled fast path and the exact evaluator.
"""

from __future__ import annotations

import math

import pytest

from opsdsl.errors import EvalError
from opsdsl.lang.expr import compile_expr, parse
from opsdsl.lang.expr.evaluator import build_exact

# Generated code must compile silently, whatever the expression.
pytestmark = pytest.mark.filterwarnings("error::SyntaxWarning")

ACTIVATION = {
    "event": {
        "labels": {"alertname": "SqlxExecLatencyHigh", "cluster": "eu-1"},
        "value": 412.5,
        "count": 7,
        "flag": True,
        "none": None,
        "items": [{"name": "a"}, {"name": "b"}],
        "tags": ["x", "y"],
    },
    "params": {"slo_p95_ms": 250, "url": "http://h", "zero": 0, "big": 2**63 - 1},
    "n": 3,
    "d": 2.5,
    "s": "héllo",
    "b": True,
    "l": [1, 2, 3],
    "m": {"a": 1, "b": {"c": "deep"}},
}


def both(text, activation=ACTIVATION):
    """The results of the fast path and the exact evaluator: values or error messages."""
    outcomes = []
    for evaluate in (compile_expr(parse(text)), build_exact(parse(text))):
        try:
            outcomes.append(("value", evaluate(activation)))
        except EvalError as error:
            outcomes.append(("error", error.message))
    return outcomes


def assert_value(text, expected, activation=ACTIVATION):
    for kind, value in both(text, activation):
        assert kind == "value", f"{text}: {value}"
        assert value == expected or (isinstance(expected, float) and math.isnan(expected) and math.isnan(value)), text
        assert type(value) is type(expected), f"{text}: {value!r} is not a {type(expected)}"


def assert_error(text, fragment, activation=ACTIVATION):
    for kind, value in both(text, activation):
        assert kind == "error", f"{text} gave {value!r}"
        assert fragment in value, f"{text}: {value!r}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the motivating example
        (
            'event.labels.alertname == "SqlxExecLatencyHigh" && event.value > params.slo_p95_ms',
            True,
        ),
        # literals
        ("42", 42),
        ("0x10", 16),
        ("1.5", 1.5),
        ("'a' + \"b\"", "ab"),
        ("null", None),
        ("[1, 'a', null]", [1, "a", None]),
        ('{"k": 1, 2: "two", true: [1]}', {"k": 1, 2: "two", True: [1]}),
        # durations are doubles of seconds
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("250ms", 0.25),
        ("5m + 30s", 330.0),
        ("event.value > 5m", True),
        ("2d / 1h", 48.0),
        # arithmetic
        ("1 + 2", 3),
        ("7 - 10", -3),
        ("6 * 7", 42),
        ("7 / 2", 3),
        ("-7 / 2", -3),
        ("7 / -2", -3),
        ("7 % 3", 1),
        ("-7 % 3", -1),
        ("7 % -3", 1),
        ("1.5 + 2.25", 3.75),
        ("1.0 / 4.0", 0.25),
        ("1.0 / 0.0", math.inf),
        ("-1.0 / 0.0", -math.inf),
        ("0.0 / 0.0", math.nan),
        ("-n", -3),
        ("-d", -2.5),
        ("--n", 3),
        ("-9223372036854775807 - 1", -(2**63)),
        ("params.big", 2**63 - 1),
        ("'ab' + 'cd'", "abcd"),
        ("l + [4]", [1, 2, 3, 4]),
        ("[] + []", []),
        # comparisons
        ("1 == 1", True),
        ("1 == 1.0", True),
        ("1 != 1.0", False),
        ("1 < 1.5", True),
        ("2 >= 1.5", True),
        ("1.5 <= 1", False),
        ("true == 1", False),
        ("true != 1", True),
        ("1 == '1'", False),
        ("null == null", True),
        ("event.none == null", True),
        ("null == 0", False),
        ("[1, 2] == [1, 2.0]", True),
        ("[1] == [true]", False),
        ("[[1]] == [[true]]", False),
        ('{"a": 1} == {"a": 1.0}', True),
        ('{"a": 1} == {"b": 1}', False),
        ('"abc" < "abd"', True),
        ('"b" > "abc"', True),
        ("false < true", True),
        ("true <= true", True),
        ("0.0 / 0.0 == 0.0 / 0.0", False),
        # logic
        ("true && false", False),
        ("true || false", True),
        ("!true", False),
        ("!!b", True),
        ("!(n > 2)", False),
        ("n > 2 ? 'big' : 'small'", "big"),
        ("n > 5 ? 'big' : n > 2 ? 'mid' : 'small'", "mid"),
        ("true ? 1 : 1 / 0", 1),
        # membership
        ("2 in l", True),
        ("2.0 in l", True),
        ("true in [1]", False),
        ("1 in [true]", False),
        ("'x' in event.tags", True),
        ("'z' in event.tags", False),
        ("'a' in m", True),
        ("'z' in m", False),
        ("1 in {1: 'x'}", True),
        ("1.0 in {1: 'x'}", True),
        ("true in {1: 'x'}", False),
        ("[1] in [[1], [2]]", True),
        ("null in [null]", True),
        # member access and indexing
        ("event.labels.cluster", "eu-1"),
        ('event["labels"]["cluster"]', "eu-1"),
        ("event.items[1].name", "b"),
        ("l[0]", 1),
        ("m.b.c", "deep"),
        ("{1: 'a'}[1.0]", "a"),
        ("{true: 'yes', false: 'no'}[false]", "no"),
        ("{0: 'zero'}[0]", "zero"),
        # has()
        ("has(m.a)", True),
        ("has(m.z)", False),
        ("has(m.b.c)", True),
        ("has(event.none)", True),
        # functions
        ("size(s)", 5),
        ("s.size()", 5),
        ("size(l)", 3),
        ("size(m)", 2),
        ("size('')", 0),
        ("s.startsWith('hé')", True),
        ("s.endsWith('lo')", True),
        ("s.contains('ll')", True),
        ("s.contains('')", True),
        ("s.matches('^h.l+o$')", True),
        ("matches(s, 'l{2}')", True),
        ("'abc'.matches('b')", True),
        ("int(2.9)", 2),
        ("int(-2.9)", -2),
        ("int('-12')", -12),
        ("int(7)", 7),
        ("double(2)", 2.0),
        ("double('1e3')", 1000.0),
        ("double('-1.5')", -1.5),
        ("string(12)", "12"),
        ("string(1.5)", "1.5"),
        ("string(300.0)", "300"),
        ("string(1e6)", "1e+06"),
        ("string(true)", "true"),
        ("string('x')", "x"),
        ("duration('1h30m')", 5400.0),
        ("duration('-1.5h')", -5400.0),
        ("duration('300ms')", 0.3),
        ("duration('0')", 0.0),
        ("duration(2.5)", 2.5),
        ("size(l) == 3 && l[size(l) - 1] == 3", True),
    ],
)
def test_values(text, expected):
    assert_value(text, expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # no implicit conversions
        ("1 + 1.0", "no such overload"),
        ("1.0 - 1", "no such overload"),
        ("5m + 1", "no such overload"),
        ("'a' + 1", "no such overload"),
        ("'a' - 'b'", "no such overload"),
        ("[1] - [1]", "no such overload"),
        ("true + true", "no such overload"),
        ("3.5 % 2.0", "no such overload"),
        ("-'a'", "no such overload"),
        ("-true", "no such overload"),
        ("!1", "no such overload"),
        ("!null", "no such overload"),
        # division and overflow
        ("1 / 0", "division by zero"),
        ("1 % 0", "modulus by zero"),
        ("params.zero == 0 && 1 / params.zero == 1", "division by zero"),
        ("9223372036854775807 + 1", "integer overflow"),
        ("-9223372036854775807 - 2", "integer overflow"),
        ("4611686018427387904 * 2", "integer overflow"),
        ("-(-9223372036854775807 - 1)", "integer overflow"),
        ("(-9223372036854775807 - 1) / -1", "integer overflow"),
        ("(-9223372036854775807 - 1) % -1", "integer overflow"),
        ("params.big + 1", "integer overflow"),
        # ordering across types
        ("true < 1", "no such overload"),
        ("'a' < 1", "no such overload"),
        ("null < 1", "no such overload"),
        ("[1] < [2]", "no such overload"),
        ("{} < {}", "no such overload"),
        # lookups
        ("m.z", "no such key: z"),
        ('m["z"]', "no such key: z"),
        ("{1: 'a'}[2]", "no such key: 2"),
        ("{true: 1}[1]", "no such key: 1"),
        ("{1: 1}[true]", "no such key: true"),
        ("m.a.b", "cannot select field `b` of int"),
        ("s.x", "cannot select field `x` of string"),
        ("l.x", "cannot select field `x` of list"),
        ("l[3]", "index out of range: 3"),
        ("l[-1]", "index out of range: -1"),
        ("l[1.5]", "list index must be an int"),
        ("l[true]", "list index must be an int"),
        ("'abc'[0]", "cannot index into string"),
        ("{[1]: 2}", "unsupported map key type list"),
        ("{1.5: 2}", "unsupported map key type double"),
        ("{'a': 1, 'a': 2}", "repeated key in map literal: a"),
        ("{1: 1, 2 - 1: 2}", "repeated key in map literal: an int"),  # computed: described, not shown
        ("nope", "undeclared reference to `nope`"),
        ("has(m.z.y)", "no such key: z"),
        ("has(m.a.y)", "has() needs a map, got int"),
        ("'a' in 'abc'", "no such overload"),
        ("1 in 1", "no such overload"),
        # logic needs bools
        ("1 ? 2 : 3", "must be a bool"),
        ("null ? 1 : 2", "must be a bool"),
        ("true && 1", "`&&` needs bool operands, got int"),
        ("1 || false", "`||` needs bool operands, got int"),
        # functions
        ("size(1)", "no such overload: size() on int"),
        ("s.startsWith(1)", "no such overload"),
        ("1.startsWith('a')", "no such overload"),
        ("s.matches('(')", "invalid regular expression"),
        ("int(1e19)", "out of the int range"),
        ("int(0.0 / 0.0)", "out of the int range"),
        ("int('1.5')", "cannot convert"),
        ("int(' 1')", "cannot convert"),
        ("int('9223372036854775808')", "integer overflow"),
        ("int(true)", "no such overload"),
        ("double('x')", "cannot convert"),
        ("double('1_0')", "cannot convert"),
        ("string(null)", "no such overload"),
        ("string([1])", "no such overload"),
        ("duration('5 minutes')", "invalid duration"),
        ("duration('')", "invalid duration"),
        ("duration(5)", "no such overload"),
        ("foo(1)", "unknown function `foo`"),
        ("s.int()", "`int` is a function, not a method"),
        ("startsWith(s, 'a')", "`startsWith` is a method"),
        ("size(s, s)", "size() takes 1 argument, got 2"),
        ("s.size(1)", "size() takes 0 arguments, got 1"),
    ],
)
def test_errors(text, fragment):
    assert_error(text, fragment)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("false && 1 / 0 == 1", False),
        ("1 / 0 == 1 && false", False),
        ("true || 1 / 0 == 1", True),
        ("1 / 0 == 1 || true", True),
        ("m.z == 1 && false", False),
        ("false && m.z", False),
        ("m.z || true", True),
        ("1 && false", False),  # a non-bool is an error too, and absorbed like one
        ("'x' || true", True),
        ("(1 / 0 == 1 || true) && !(m.z && false)", True),
        ("[1 / 0 == 1 || true, false && nope][0]", True),
    ],
)
def test_error_absorption(text, expected):
    assert_value(text, expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("true && 1 / 0 == 1", "division by zero"),
        ("1 / 0 == 1 && true", "division by zero"),
        ("false || m.z", "no such key: z"),
        ("m.z || false", "no such key: z"),
        ("1 / 0 == 1 && m.z", "division by zero"),  # the left error wins
        ("m.z || 1 / 0 == 1", "no such key: z"),
        ("(1 / 0 == 1) ? 1 : 2", "division by zero"),
    ],
)
def test_errors_that_are_not_absorbed(text, fragment):
    assert_error(text, fragment)


def test_bools_are_never_ints():
    activation = {"t": True, "one": 1, "zero": 0, "f": False}
    assert_value("t == one", False, activation)
    assert_value("f != zero", True, activation)
    assert_value("t in [one]", False, activation)
    assert_value("one in {true: 1}", False, activation)
    assert_error("t + one", "no such overload", activation)
    assert_error("t > zero", "no such overload", activation)
    assert_error("[1, 2][t]", "list index must be an int", activation)
    assert_error("size(t)", "no such overload", activation)


def test_other_python_containers_are_lists_and_maps():
    from collections import OrderedDict
    from types import MappingProxyType

    activation = {
        "t": (1, 2),
        "o": OrderedDict(a=1),
        "p": MappingProxyType({"k": "v"}),
    }
    assert_value("t[1] + size(t)", 4, activation)
    assert_value("t == [1, 2]", True, activation)
    assert_value("o.a == 1 && has(o.a) && 'a' in o", True, activation)
    assert_value("p.k + p['k']", "vv", activation)
    assert_error("p.z", "no such key: z", activation)
    assert_error("size(x)", "unsupported value of Python type set", {"x": {1}})
    assert_error("x == 1", "unsupported value of Python type object", {"x": object()})


def test_compiled_callable_is_memoised_and_accepts_text():
    expr = parse("n + 1")
    assert compile_expr(expr) is compile_expr(expr)
    assert compile_expr("n + 1")({"n": 1}) == 2
    assert compile_expr(expr).__doc__ == "n + 1"


def test_results_are_fresh_containers():
    evaluate = compile_expr("[1, 2]")
    first = evaluate({})
    first.append(3)
    assert evaluate({}) == [1, 2]
