"""Differential test against cel-python, the reference CEL implementation in Python.

Expressions are generated well-typed over the overlap of the two languages: ints, strings,
bools and lists of ints; arithmetic, comparisons, `&&`/`||`/`!`, `? :`, `in`, size() and
the string methods. Durations are ours alone. Areas where cel-python (0.5) departs from
the CEL spec are left out, each with a note:

- heterogeneous equality and ordering (`1 == 1.0`, `1 < 1.5`, `[1] == ["a"]`): cel-python
  still raises "no matching overload", as CEL did before 2022; the spec now defines them.
- `true == 1` and `true < 1`: cel-python's BoolType is a Python int and answers them.
- `-9223372036854775808 % -1`: cel-python returns 0; cel-go and we report an overflow, so
  `%` is generated with a divisor other than -1.
- `("a" + "b").contains("a")`: cel-python's concatenation returns a plain Python str that
  lacks `contains`, so string methods are called on literals and names only.
"""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.errors import EvalError
from opsdsl.lang.expr import compile_expr, parse
from opsdsl.lang.expr.nodes import Binary, Call, Conditional, Ident, ListLit, Literal, Unary
from opsdsl.lang.expr.printer import unparse

celpy = pytest.importorskip("celpy")
celtypes = pytest.importorskip("celpy.celtypes")

ACTIVATION = {"i": 7, "j": -3, "big": 2**63 - 1, "s": "héllo", "t": "", "p": True, "l": [1, 2, 3]}


def _lit(kind):
    return lambda value: Literal(kind, value)


int_leaves = st.one_of(
    st.integers(-20, 20).map(_lit("int")),
    st.sampled_from([2**63 - 1, -(2**63), 2**62, 2**32]).map(_lit("int")),
    st.sampled_from(["i", "j", "big"]).map(Ident),
)
string_leaves = st.one_of(
    st.text(alphabet="abé ", max_size=3).map(_lit("string")),
    st.sampled_from(["s", "t"]).map(Ident),
)
bool_leaves = st.one_of(st.booleans().map(_lit("bool")), st.just(Ident("p")))
list_leaves = st.one_of(
    st.lists(int_leaves, max_size=3).map(lambda items: ListLit(tuple(items))),
    st.just(Ident("l")),
)


def _not_folded(node):
    return not (isinstance(node, Literal) and node.value >= 0)


@functools.cache
def ints(depth: int):
    if depth == 0:
        return int_leaves
    sub, cond = ints(depth - 1), bools(depth - 1)
    divisors = st.integers(-5, 5).filter(lambda n: n != -1).map(_lit("int"))
    positive = sub.map(lambda n: Binary("+", Binary("*", n, n), Literal("int", 1)))  # n*n + 1
    return st.one_of(
        int_leaves,
        st.builds(Binary, st.sampled_from(["+", "-", "*", "/"]), sub, sub),
        st.builds(lambda a, b: Binary("%", a, b), sub, st.one_of(divisors, positive)),
        st.builds(lambda a: Unary("-", a), sub.filter(_not_folded)),
        st.builds(Conditional, cond, sub, sub),
        st.builds(lambda x: Call("size", (x,)), st.one_of(lists(depth - 1), strings(depth - 1))),
        st.builds(lambda x: Call("size", (), x), strings(depth - 1)),
    )


@functools.cache
def strings(depth: int):
    if depth == 0:
        return string_leaves
    sub = strings(depth - 1)
    return st.one_of(
        string_leaves,
        st.builds(lambda a, b: Binary("+", a, b), sub, sub),
        st.builds(Conditional, bools(depth - 1), sub, sub),
    )


@functools.cache
def lists(depth: int):
    if depth == 0:
        return list_leaves
    sub = lists(depth - 1)
    return st.one_of(
        list_leaves,
        st.builds(lambda a, b: Binary("+", a, b), sub, sub),
        st.lists(ints(depth - 1), max_size=3).map(lambda items: ListLit(tuple(items))),
    )


@functools.cache
def bools(depth: int):
    if depth == 0:
        return bool_leaves
    sub, number, text = bools(depth - 1), ints(depth - 1), strings(depth - 1)
    compare = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
    return st.one_of(
        bool_leaves,
        st.builds(Binary, compare, number, number),
        st.builds(Binary, compare, text, text),
        st.builds(Binary, st.sampled_from(["==", "!=", "<", ">"]), sub, sub),
        st.builds(Binary, st.sampled_from(["&&", "||"]), sub, sub),
        st.builds(lambda a: Unary("!", a), sub),
        st.builds(lambda a, b: Binary("in", a, b), number, lists(depth - 1)),
        st.builds(lambda a, b: Binary("==", a, b), lists(depth - 1), lists(depth - 1)),
        st.builds(
            lambda name, a, b: Call(name, (b,), a),
            st.sampled_from(["startsWith", "endsWith", "contains"]),
            string_leaves,  # see the module note on concatenation
            text,
        ),
        st.builds(Conditional, sub, sub, sub),
    )


def from_cel(value):
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.IntType):
        return int(value)
    if isinstance(value, str):  # StringType, or a plain str from concatenation
        return str(value)
    if isinstance(value, list):
        return [from_cel(item) for item in value]
    raise AssertionError(f"unexpected cel-python value {value!r}")


# cel-python raises the recursion limit when it first builds a program; do that now, not
# inside a Hypothesis test (which would warn that it cannot restore the limit).
ENVIRONMENT = celpy.Environment()
ENVIRONMENT.program(ENVIRONMENT.compile("1 + 1")).evaluate({})


def cel_python(text):
    program = ENVIRONMENT.program(ENVIRONMENT.compile(text))
    activation = {name: celpy.json_to_cel(value) for name, value in ACTIVATION.items()}
    result = program.evaluate(activation)
    if isinstance(result, celpy.CELEvalError):
        return ("error", None)
    return ("value", from_cel(result))


def ours(text):
    try:
        return ("value", compile_expr(parse(text))(ACTIVATION))
    except EvalError:
        return ("error", None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(ints(3), bools(3), strings(2), lists(2)))
def test_agrees_with_cel_python(tree):
    text = unparse(tree)
    try:
        expected = cel_python(text)
    except celpy.CELEvalError:
        expected = ("error", None)
    got = ours(text)
    assert got == expected, text
    if got[0] == "value":
        assert type(got[1]) is type(expected[1]), text


@pytest.mark.parametrize(
    "text",
    [
        "7 / -2 == -3 && -7 % 3 == -1 && 7 % -3 == 1",
        "9223372036854775807 + 1 > 0",
        "-9223372036854775808 / -1 > 0",
        "(1 / 0 > 1) || true",
        "false && (1 / 0 > 1)",
        "size('héllo') == 5 && 'héllo'.startsWith('hé')",
        "[1, 2] + [3] == [1, 2, 3] && 2 in [1, 2]",
        "'abc' < 'abd' && !(1 > 2) ? 1 : 2",
    ],
)
def test_known_cases_agree(text):
    try:
        expected = cel_python(text)
    except celpy.CELEvalError:
        expected = ("error", None)
    assert ours(text) == expected
