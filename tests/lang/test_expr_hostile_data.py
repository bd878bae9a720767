"""Event data is hostile: whatever values reach an expression, every function and operator
either returns or raises EvalError (totality), through both evaluators, and an error's
message describes a value's type and shape, never its text."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.errors import EvalError
from opsdsl.lang.expr import compile_expr, parse
from opsdsl.lang.expr.evaluator import build_exact
from opsdsl.lang.expr.functions import BUILTINS

OPERATORS = ["==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%", "&&", "||"]
OTHER_FORMS = [
    "!a",
    "-a",
    "a[b]",
    "a[0]",
    "a['k']",
    "a.f",
    "has(a.f)",
    "a ? b : c",
    "[a, b, c]",
    "{a: b}",
    "{a: 1, b: 2}",
    "a == a",
    "a in [b, c]",
    "a in ['x', 'y']",
    "a + b + c",
    "a.all(x, x == b)",
    "a.exists(x, x in b)",
    "a.exists_one(x, x < c)",
    "a.map(x, x + b)",
    "a.map(x, x != c, [x, b])",
    "a.filter(x, x.startsWith(b))",
    "a.all(i, v, v == b[i])",
    "a.transformList(i, v, {v: i})",
    "a.transformMap(k, v, v.size() > 0, b)",
    "a.map(x, b.filter(y, y == x))",
]


def _call_forms() -> list[str]:
    """Every builtin in every form it has, fed from the roots a, b, c."""
    forms = []
    for builtin in BUILTINS.values():
        for count in range(len(builtin.params) - builtin.optional, len(builtin.params) + 1):
            args = ["a", "b", "c", "a"][:count]  # the optional arguments left out, and given
            if builtin.is_global:
                forms.append(f"{builtin.name}({', '.join(args)})")
            if builtin.is_method:
                forms.append(f"{args[0]}.{builtin.name}({', '.join(args[1:])})")
    return forms


FORMS = [*_call_forms(), *(f"a {op} b" for op in OPERATORS), *OTHER_FORMS]


def _nested_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _nested_map(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"f": value, "k": 1}
    return value


HUGE_DIGITS = "9" * 5000
ODD_VALUES = [
    10**5000,
    -(10**5000),
    2**63,
    -(2**63) - 1,
    2**64,
    -(2**63),
    2**63 - 1,
    -9223372036854775808.0,
    9223372036854775807.0,
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    5e-324,
    -0.0,
    HUGE_DIGITS,
    "-" + HUGE_DIGITS,
    HUGE_DIGITS + "s",
    HUGE_DIGITS + "h",
    "0." + HUGE_DIGITS + "s",
    "1" + "0" * 400,
    "1e400",
    "-1e400",
    "300000000000000h",
    "\ud800",
    "a\udfffb",
    "x" * 100_000,
    "^([a-z0-9]+-?)+$",
    "(a)\\1",
    "(?=x)",
    "(",
    "a{1001}",
    "inf",
    "nan",
    "",
    _nested_list(200),
    _nested_map(200),
    [math.nan],
    {"f": math.nan},
    {True: "b", 0: "a", 2.5: "c"},
    {"k": None},
]


def _odd_value(position: int) -> object:
    return ODD_VALUES[position]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    # by position: hypothesis prints its strategies, and a 5000-digit int has no repr
    st.integers(0, len(ODD_VALUES) - 1).map(_odd_value),
)
hostile_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-2, 2)), children, max_size=3),
    ),
    max_leaves=6,
)


def _short_id(value: object) -> str | None:
    """A test id for values pytest would spell at length, or fail to (5000-digit ints)."""
    if isinstance(value, str) and len(value) > 16:
        return f"str{len(value)}"
    if isinstance(value, (list, dict)):
        return type(value).__name__
    if isinstance(value, int) and abs(value) > 2**64:
        return "huge-int"
    return None


def _outcome(evaluate, activation) -> object:
    try:
        return evaluate(activation)
    except EvalError as error:
        return error


@pytest.mark.parametrize("text", FORMS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=hostile_values, b=hostile_values, c=hostile_values)
def test_every_function_and_operator_is_total(text, a, b, c):
    activation = {"a": a, "b": b, "c": c}
    exact = build_exact(parse(text))
    compiled = compile_expr(text)
    # anything but a value or an EvalError fails the test by escaping
    exact_result = _outcome(exact, activation)
    compiled_result = _outcome(compiled, activation)
    assert isinstance(exact_result, EvalError) == isinstance(compiled_result, EvalError)


@pytest.mark.parametrize("text", FORMS)
@pytest.mark.parametrize("value", ODD_VALUES, ids=_short_id)
def test_odd_values_in_every_position(text, value):
    for activation in (
        {"a": value, "b": value, "c": value},
        {"a": value, "b": 1, "c": "x"},
        {"a": "x", "b": value, "c": 1},
    ):
        _outcome(build_exact(parse(text)), activation)
        _outcome(compile_expr(text), activation)


@pytest.mark.parametrize(
    ("text", "value", "fragment"),
    [
        ("int(a)", HUGE_DIGITS, "integer overflow"),
        ("int(a)", "-" + HUGE_DIGITS, "integer overflow"),
        ("int(a)", "0" * 5000 + "7", None),
        ("duration(a)", HUGE_DIGITS + "s", "duration out of range"),
        ("duration(a)", "0." + HUGE_DIGITS + "s", None),
        ("duration(a)", "300000000000000h", "duration out of range"),
        ("duration(a)", "-2600000h", "duration out of range"),
        ("duration(a)", 1e300, "duration out of range"),
        ("duration(a)", math.nan, "duration out of range"),
        ("double(a)", 10**400, "out of the double range"),
        ("double(a)", "1e400", "out of the double range"),
        ("int(a)", math.inf, "out of the int range"),
        ("int(a)", math.nan, "out of the int range"),
        ("int(a)", -9223372036854775808.0, "out of the int range"),
        ("int(a)", 9223372036854775807.0, "out of the int range"),
        ("string(a)", 10**5000, "too large"),
        ("a.matches('x')", "\ud800", "not valid Unicode"),
        ("'x'.matches(a)", "\ud800", "not valid Unicode"),
        ("a == a", _nested_list(5000), "nested too deeply"),
        ("a in [a]", _nested_list(5000), "nested too deeply"),
    ],
    ids=_short_id,
)
def test_hostile_values_are_evaluation_errors(text, value, fragment):
    for evaluate in (build_exact(parse(text)), compile_expr(text)):
        if fragment is None:
            evaluate({"a": value})
            continue
        with pytest.raises(EvalError, match=fragment):
            evaluate({"a": value})


def test_a_value_that_is_no_json_is_an_evaluation_error_too():
    class Odd:
        pass

    for text in ("a == a", "size(a)", "a + 1", "a in [1]", "string(a)", "[1][a]"):
        with pytest.raises(EvalError):
            compile_expr(text)({"a": Odd()})


def test_huge_but_valid_inputs_still_work():
    assert compile_expr("int(a)")({"a": "0" * 5000 + "42"}) == 42
    assert compile_expr("int(a)")({"a": "-9223372036854775808"}) == -(2**63)
    assert compile_expr("int(a)")({"a": -9223372036854774784.0}) == -9223372036854774784
    assert compile_expr("duration(a)")({"a": "2500000h"}) == 2500000 * 3600.0
    assert compile_expr("double(a)")({"a": "inf"}) == math.inf
    assert compile_expr("string(a)")({"a": 2**64}) == "18446744073709551616"


# -- messages describe values, never quote them ------------------------------------------

SECRET = "port-S3cr3t-hunter2"
FAILING_ON_A_SECRET = [
    ("int(s)", "cannot convert a string (19 characters) to int"),
    ("double(s)", "cannot convert a string (19 characters) to double"),
    ("duration(s)", "invalid duration: a string (19 characters)"),
    ("'x'.matches(s + '(')", "invalid regular expression: a string (20 characters)"),
    ("m[s]", "no such key: a string (19 characters)"),
    ("{s: 1, s: 2}", "repeated key in map literal: a string (19 characters)"),
    ("[1][size(s)]", "index out of range: an int (list of size 1)"),
    ("s < 1", "no such overload: < on (string, int)"),
    ("s + 1", "no such overload: + on (string, int)"),
    ("s.f", "cannot select field `f` of string"),
    ("s[0]", "cannot index into string"),
    ("s ? 1 : 2", "the condition of `? :` must be a bool, got string"),
    ("s && true", "`&&` needs bool operands, got string"),
]


@pytest.mark.parametrize(("text", "message"), FAILING_ON_A_SECRET)
def test_errors_describe_the_value_without_quoting_it(text, message):
    activation = {"s": SECRET, "m": {"a": 1}}
    for evaluate in (build_exact(parse(text)), compile_expr(text)):
        with pytest.raises(EvalError) as caught:
            evaluate(activation)
        assert caught.value.message.startswith(message)
        assert "S3cr3t" not in str(caught.value)


secrets = st.from_regex(r"Zq[0-9A-Za-z_.:/-]{6,24}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(secret=secrets, other=hostile_values)
def test_no_error_message_quotes_data(secret, other):
    for text in FORMS:
        for activation in ({"a": secret, "b": other, "c": secret}, {"a": other, "b": secret, "c": other}):
            for evaluate in (build_exact(parse(text)), compile_expr(text)):
                error = _outcome(evaluate, activation)
                if isinstance(error, EvalError):
                    assert secret not in error.message, (text, error.message)
                    assert "Zq" not in error.message, (text, error.message)


def test_literal_keys_and_indexes_are_named_in_messages():
    # text the pack author wrote is no secret: naming it helps
    with pytest.raises(EvalError, match=r"^no such key: cluster$"):
        compile_expr("m['cluster']")({"m": {}})
    with pytest.raises(EvalError, match=r"^index out of range: 3 \(list of size 1\)$"):
        compile_expr("l[3]")({"l": [1]})
