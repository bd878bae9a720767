"""Parsing: literals, precedence, positions, references, syntax errors and limits."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opsdsl.errors import ExpressionError
from opsdsl.lang.expr import Expression, ExprSyntaxError, parse
from opsdsl.lang.expr.nodes import (
    Binary,
    Call,
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
from opsdsl.lang.expr.printer import unparse
from opsdsl.resources import read_text

REPO = Path(__file__).resolve().parents[2]


def lit(kind, value):
    return Literal(kind, value)


def ident(name):
    return Ident(name)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("0", "int", 0),
        ("42", "int", 42),
        ("0x1F", "int", 31),
        ("0XfF", "int", 255),
        ("-9223372036854775808", "int", -(2**63)),
        ("9223372036854775807", "int", 2**63 - 1),
        ("1.5", "double", 1.5),
        ("1e3", "double", 1000.0),
        ("2.5E-2", "double", 0.025),
        (".5", "double", 0.5),
        ('"a\\nb\\tc\\r\\\\\\"\\\'"', "string", "a\nb\tc\r\\\"'"),
        ("'single \"quoted\"'", "string", 'single "quoted"'),
        ('"\\u00e9\\x41\\101\\U0001F600"', "string", "éAA\U0001f600"),
        ('r"C:\\temp\\new"', "string", "C:\\temp\\new"),
        ("R'\\d+'", "string", "\\d+"),
        ('"""two\nlines"""', "string", "two\nlines"),
        ('"\\a\\b\\f\\v\\`\\?"', "string", "\a\b\f\v`?"),
        ('""', "string", ""),
        ("true", "bool", True),
        ("false", "bool", False),
        ("null", "null", None),
        ("250ms", "duration", 0.25),
        ("10s", "duration", 10.0),
        ("5m", "duration", 300.0),
        ("1h", "duration", 3600.0),
        ("2d", "duration", 172800.0),
        ("1h30m", "duration", 5400.0),
        ("1m30s500ms", "duration", 90.5),
    ],
)
def test_literals(text, kind, value):
    root = parse(text).root
    assert root == Literal(kind, value)
    assert type(root.value) is type(value)


def test_duration_is_one_token_not_a_number_and_a_name():
    assert parse("x > 5m").root == Binary(">", ident("x"), lit("duration", 300.0))
    assert parse("[5m]").root == ListLit((lit("duration", 300.0),))


def test_keywords_are_not_names_but_prefixes_are():
    assert parse("index").root == ident("index")
    assert parse("nullable || trueish").root == Binary("||", ident("nullable"), ident("trueish"))


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("a || b && c", "a || b && c"),
        ("(a || b) && c", "(a || b) && c"),
        ("a + b * c", "a + b * c"),
        ("(a + b) * c", "(a + b) * c"),
        ("a - b - c", "a - b - c"),
        ("a - (b - c)", "a - (b - c)"),
        ("a < b == c", "a < b == c"),
        ("a + b < c * d && e", "a + b < c * d && e"),
        ("!a && b", "!a && b"),
        ("!(a && b)", "!(a && b)"),
        ("-a.b", "-a.b"),
        ("a ? b : c ? d : e", "a ? b : c ? d : e"),
        ("(a ? b : c) ? d : e", "(a ? b : c) ? d : e"),
        ("a || b ? c : d", "a || b ? c : d"),
        ("x in [1, 2] && y", "x in [1, 2] && y"),
        ("a.b[0].c(d)", "a.b[0].c(d)"),
        ("(a + b).size()", "(a + b).size()"),
        ("--5", "--5"),
        ("- 5", "-5"),
        ("-(5)", "-5"),
        ('{"a": 1, 2: [3],}', '{"a": 1, 2: [3]}'),
        ("[1, 2,]", "[1, 2]"),
        ("f()", "f()"),
        ("a // a comment\n && b", "a && b"),
    ],
)
def test_precedence_and_grouping(text, shape):
    assert unparse(parse(text).root) == shape


def test_tree_shapes():
    assert parse("a.b.c").root == Select(Select(ident("a"), "b"), "c")
    assert parse('a["k"][0]').root == Index(Index(ident("a"), lit("string", "k")), lit("int", 0))
    assert parse("x.startsWith('p')").root == Call("startsWith", (lit("string", "p"),), ident("x"))
    assert parse("size(x)").root == Call("size", (ident("x"),))
    assert parse("has(a.b.c)").root == Has(Select(ident("a"), "b"), "c")
    assert parse("has(a, b)").root == Call("has", (ident("a"), ident("b")))
    assert parse("!-x").root == Unary("!", Unary("-", ident("x")))
    assert parse("a ? b : c").root == Conditional(ident("a"), ident("b"), ident("c"))
    assert parse("{}").root == MapLit(())
    assert parse("[]").root == ListLit(())


def test_positions():
    text = 'event.labels.name.startsWith("x") && size(l) > 5m'
    root = parse(text).root
    for node in walk(root):
        assert 0 <= node.offset <= node.end <= len(text)
    call = root.left
    assert text[call.offset : call.end] == 'event.labels.name.startsWith("x")'
    assert text[call.name_offset :].startswith("startsWith")
    name = call.target
    assert text[name.field_offset : name.end] == "name"
    assert text[root.right.offset : root.right.end] == "size(l) > 5m"
    assert text[root.right.right.offset : root.right.right.end] == "5m"
    negative = parse("x + -12").root.right
    assert (negative.offset, negative.end) == (4, 7)


def test_references_are_maximal_member_chains():
    expr = parse(
        'steps.inspect.outputs.json.p95_ms > params.slo && event.labels["cluster"].size() > 0'
        " && has(steps.scale.outputs) && items[0].name == x"
    )
    found = [(ref.root, ref.path) for ref in expr.references()]
    assert found == [
        ("steps", ("inspect", "outputs", "json", "p95_ms")),
        ("params", ("slo",)),
        ("event", ("labels", "cluster")),
        ("steps", ("scale", "outputs")),
        ("items", ()),
        ("x", ()),
    ]
    first = expr.references()[0]
    assert expr.text[first.offset : first.end] == "steps.inspect.outputs.json.p95_ms"
    assert first.dotted == "steps.inspect.outputs.json.p95_ms"


def test_functions_lists_calls_with_arity_and_offset():
    expr = parse('size(a) > 1 && a.startsWith("x") && has(a.b) && foo(1, 2, 3)')
    assert expr.functions() == (
        ("size", 1, 0),
        ("startsWith", 1, 17),
        ("has", 1, 36),
        ("foo", 3, 48),
    )


def test_parse_is_memoised_and_expressions_compare_by_text():
    assert parse("a + 1") is parse("a + 1")
    assert parse("a + 1") == Expression("a + 1", parse("a+1").root)
    assert hash(parse("a")) == hash("a")
    assert parse("a + 1").root == parse("a+1").root  # positions take no part in equality


@pytest.mark.parametrize(
    ("text", "offset", "message", "hint"),
    [
        ("", 0, "empty expression", "write an expression"),
        ("a +", 3, "unexpected end of expression", "expected an operand such as a name"),
        ("(a", 2, "unexpected end of expression", "expected `)`"),
        ("a)", 1, "unexpected `)`", "unmatched closing bracket"),
        ("a b", 2, "unexpected name `b`", "missing an operator"),
        ("a = b", 2, "unexpected character `=`", "use `==`"),
        ("a & b", 2, "unexpected character `&`", "use `&&`"),
        ("a and b", 2, "unexpected name `and`", "use `&&`"),
        ("not a", 4, "unexpected name `a`", None),
        ("[1 2]", 3, "unexpected number `2`", "missing `,` between list items"),
        ("f(a b)", 4, "unexpected name `b`", "missing `,` between arguments"),
        ('{"a" 1}', 5, "unexpected number `1`", "missing `:`"),
        ("a.", 2, "unexpected end of expression", "a field name must follow `.`"),
        ("a.1", 2, "unexpected number `1`", "a field name must follow `.`"),
        ('"abc', 0, "unterminated string", "close the string"),
        ('x == "a\\qb"', 7, "bad escape \\q in string", "valid escapes"),
        ('"\\uD800"', 1, "invalid code point", None),
        ("5min", 1, "unexpected name `min`", "durations are whole numbers with units"),
        ("1.5h", 3, "unexpected name `h`", "durations are whole numbers with units"),
        ("9223372036854775808", 0, "integer literal out of range", "signed 64-bit"),
        ("0x8000000000000000", 0, "integer literal out of range", None),
        ("1e999", 0, "double literal out of range", None),
        ("has(a)", 4, "has() needs a field selection", "has(a.b)"),
        ("${{ x }}", 0, "unexpected character `$`", "templates"),
        ("[,]", 1, "unexpected `,`", "expected `]` or an operand"),
        ("a ? b", 5, "unexpected end of expression", "expected `:`"),
    ],
)
def test_syntax_errors(text, offset, message, hint):
    with pytest.raises(ExprSyntaxError) as caught:
        parse(text)
    error = caught.value
    assert error.offset == offset
    assert message in error.message
    if hint is not None:
        assert hint in error.hint
    assert error.text == text


def test_syntax_error_is_an_expression_error_that_pickles_and_points():
    with pytest.raises(ExprSyntaxError) as caught:
        parse("a &&\n  (b ||")
    error = caught.value
    assert isinstance(error, ExpressionError)
    assert error.context == "  (b ||\n       ^"
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.message, clone.offset, clone.hint, clone.text) == (
        error.message,
        error.offset,
        error.hint,
        error.text,
    )
    assert "offset 12" in str(error)


def test_length_limit():
    with pytest.raises(ExprSyntaxError, match="too long"):
        parse("a" * 4097)
    parse("a" * 4096)


def test_depth_limit_is_checked_and_fast():
    started = time.perf_counter()
    with pytest.raises(ExprSyntaxError):
        parse("(" * 10_000)
    with pytest.raises(ExprSyntaxError, match="nests too deeply"):
        parse("[" * 2000 + "]" * 2000)
    with pytest.raises(ExprSyntaxError, match="nests too deeply"):
        parse("!" * 3000 + "a")
    with pytest.raises(ExprSyntaxError, match="nests too deeply"):
        parse(" + ".join(["a"] * 1000))
    assert time.perf_counter() - started < 5
    parse("[" * 60 + "]" * 60)
    parse("(" * 1000 + "a" + ")" * 1000)  # grouping adds no node, so no depth


def test_non_text_is_a_type_error():
    with pytest.raises(TypeError):
        parse(5)  # type: ignore[arg-type]


def test_grammar_is_read_from_the_checkout():
    assert read_text("grammar/expr.lark") == (REPO / "grammar" / "expr.lark").read_text()
    with pytest.raises(FileNotFoundError, match=r"no/such\.file"):
        read_text("no/such.file")


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_is_cheap_and_does_not_load_lark():
    result = _run("import sys, opsdsl.lang.expr; print('lark' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_works_without_a_writable_cache_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _run(
        # `a.in`: a keyword as a field name, which the fast parser leaves to Lark
        "from opsdsl.lang.expr import parse; print(parse('a.in > 1').root.op)",
        XDG_CACHE_HOME=str(blocker),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ">"


def test_grammar_cache_is_written_and_reused(tmp_path):
    code = "import sys; from opsdsl.lang.expr import parse; print(parse('a.in > 1').root.op, 'lark' in sys.modules)"
    for _ in range(2):
        result = _run(code, XDG_CACHE_HOME=str(tmp_path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == [">", "True"]
    assert list((tmp_path / "opsdsl").glob("expr-*.lark-cache"))


def test_grammar_is_read_from_an_installed_package(tmp_path):
    # the wheel layout: no grammar/ beside the package, the data under opsdsl/_data/
    site = tmp_path / "site"
    shutil.copytree(REPO / "opsdsl", site / "opsdsl", ignore=shutil.ignore_patterns("__pycache__"))
    data = site / "opsdsl" / "_data" / "grammar"
    data.mkdir(parents=True)
    shutil.copy(REPO / "grammar" / "expr.lark", data / "expr.lark")
    result = subprocess.run(
        [sys.executable, "-c", "from opsdsl.lang.expr import parse; print(parse('a.in in [1]').root.op)"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "in"
