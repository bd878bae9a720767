"""Properties: print/parse round trips, fast path == exact evaluator, and robust parsing."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.errors import EvalError
from opsdsl.lang.expr import ExprSyntaxError, compile_expr, parse, parse_template
from opsdsl.lang.expr.evaluator import build_exact
from opsdsl.lang.expr.functions import parse_duration
from opsdsl.lang.expr.nodes import (
    Binary,
    Call,
    Comprehension,
    Conditional,
    Has,
    Ident,
    Index,
    ListLit,
    Literal,
    MapLit,
    Select,
    Unary,
    walk,
)
from opsdsl.lang.expr.parser import MAX_DEPTH
from opsdsl.lang.expr.printer import unparse

# Generated code must compile silently, whatever the expression.
pytestmark = pytest.mark.filterwarnings("error::SyntaxWarning")

NAMES = ["a", "b", "m", "l", "s", "n", "x_1", "_y", "index", "nullable", "r", "i", "v", "k"]
FIELDS = ["a", "b", "c", "k", "size", "r"]
OPERATORS = ["||", "&&", "==", "!=", "<", "<=", ">", ">=", "in", "+", "-", "*", "/", "%"]
METHODS = ["size", "startsWith", "endsWith", "contains", "matches", "int", "foo"]
FUNCTIONS = ["size", "int", "double", "string", "duration", "matches", "startsWith", "bar"]
DURATIONS = ["250ms", "10s", "5m", "1h", "2d", "1h30m", "1m30s500ms", "0s"]

int_literals = st.one_of(
    st.integers(-20, 20),
    st.sampled_from([0, 1, -1, 2**63 - 1, -(2**63), 2**62, 2**32]),
).map(lambda value: Literal("int", value))
double_literals = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False).map(
    lambda value: Literal("double", abs(value))
)
leaves = st.one_of(
    int_literals,
    double_literals,
    st.text(max_size=6).map(lambda value: Literal("string", value)),
    st.sampled_from(DURATIONS).map(lambda raw: Literal("duration", parse_duration(raw), raw)),
    st.booleans().map(lambda value: Literal("bool", value)),
    st.just(Literal("null", None)),
    st.sampled_from(NAMES).map(Ident),
)


def _negatable(node):
    # `-5` parses as the literal -5, so a minus over a non-negative int literal is no tree
    # the parser builds
    return not (isinstance(node, Literal) and node.kind == "int" and node.value >= 0)


# (macro, variables, with a filter): every form the parser builds; `a` and `n` are roots too
MACRO_FORMS = [
    ("all", ("x_1",), False),
    ("all", ("index", "a"), False),
    ("exists", ("a",), False),
    ("exists", ("i", "v"), False),
    ("exists_one", ("v",), False),
    ("existsOne", ("i", "n"), False),
    ("map", ("x_1",), False),
    ("map", ("v",), True),
    ("filter", ("a",), False),
    ("transformList", ("i", "v"), False),
    ("transformList", ("i", "v"), True),
    ("transformMap", ("k", "v"), False),
    ("transformMap", ("k", "a"), True),
]


def _comprehension(form, source, body, condition):
    macro, variables, filtered = form
    return Comprehension(macro, source, variables, body, condition if filtered else None)


def _extend(children):
    small_lists = st.lists(children, max_size=2).map(tuple)
    return st.one_of(
        st.builds(_comprehension, st.sampled_from(MACRO_FORMS), children, children, children),
        st.builds(Select, children, st.sampled_from(FIELDS)),
        st.builds(Index, children, children),
        st.builds(
            lambda target, name, args: Call(name, args, target),
            children,
            st.sampled_from(METHODS),
            small_lists,
        ),
        st.builds(lambda name, args: Call(name, args), st.sampled_from(FUNCTIONS), small_lists),
        st.builds(Has, children, st.sampled_from(FIELDS)),
        st.builds(lambda operand: Unary("!", operand), children),
        st.builds(lambda operand: Unary("-", operand), children.filter(_negatable)),
        st.builds(Binary, st.sampled_from(OPERATORS), children, children),
        st.builds(Conditional, children, children, children),
        st.builds(ListLit, st.lists(children, max_size=3).map(tuple)),
        st.builds(MapLit, st.lists(st.tuples(children, children), max_size=2).map(tuple)),
    )


trees = st.recursive(leaves, _extend, max_leaves=14)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_print_parse_round_trip(tree):
    text = unparse(tree)
    expr = parse(text)
    assert expr.root == tree
    assert unparse(expr.root) == text
    for node in walk(expr.root):
        assert 0 <= node.offset <= node.end <= len(text)
        if isinstance(node, Ident):
            assert text[node.offset : node.end] == node.name


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([2**63 - 1, -(2**63), 2**62]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(st.sampled_from(FIELDS), children, max_size=3),
    ),
    max_leaves=8,
)
activations = st.dictionaries(st.sampled_from(NAMES), json_values, max_size=len(NAMES))


def outcome(evaluate, activation):
    try:
        return ("value", evaluate(activation))
    except EvalError as error:
        return ("error", error.message)


def same(a, b):
    """Equal with types and NaNs and signed zeros taken into account."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            type(key) is type(other) and same(a[key], b[other]) for key, other in zip(a, b, strict=True)
        )
    return a == b


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, activations)
def test_fast_path_agrees_with_the_exact_evaluator(tree, activation):
    expr = parse(unparse(tree))
    compiled = compile_expr(expr)
    assert compiled.__name__ == "evaluate"  # the fast path compiled, without warnings
    fast = outcome(compiled, activation)
    exact = outcome(build_exact(expr), activation)
    assert fast[0] == exact[0], (expr.text, fast, exact)
    if fast[0] == "error":
        assert fast[1] == exact[1]
    else:
        assert same(fast[1], exact[1]), (expr.text, fast, exact)


# Text built mostly from the language's own characters reaches deep into the parser.
cel_ish_text = st.text(
    alphabet=st.sampled_from(list("abmr_019x. ()[]{},:?!&|=<>+-*/%\"'\\nuUsh$@\t\n")),
    max_size=40,
)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(cel_ish_text, st.text(max_size=30)))
def test_parse_raises_only_syntax_errors(text):
    try:
        expr = parse(text)
    except ExprSyntaxError as error:
        assert 0 <= error.offset <= len(text)
        assert error.message
        return
    # whatever parses prints back to text with the same meaning
    assert parse(unparse(expr.root)).root == expr.root


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("${} ab.\"'\\+")), max_size=30))
def test_parse_template_raises_only_syntax_errors(text):
    try:
        template = parse_template(text)
    except ExprSyntaxError as error:
        assert 0 <= error.offset <= len(text)
        return
    for expr, offset in template.expressions:
        assert text[offset : offset + len(expr.text)] == expr.text


@settings(max_examples=200, deadline=None)
@given(st.integers(MAX_DEPTH + 1, 3000), st.sampled_from(["!", "-", "[", "a."]))
def test_deep_nesting_is_a_syntax_error(levels, opener):
    closer = "]" if opener == "[" else ""
    text = opener * levels + ("" if opener == "[" else "x") + closer * levels
    with pytest.raises(ExprSyntaxError):
        parse(text[:4096])
