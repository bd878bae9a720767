"""cel-go's strings extension: code points, errors on bad positions, bounded results,
messages that never quote data; through both evaluators and the checker."""

from __future__ import annotations

import pytest

from opsdsl.errors import EvalError
from opsdsl.lang.expr import RootSpec, check, compile_expr, parse
from opsdsl.lang.expr.evaluator import build_exact
from opsdsl.lang.expr.strings import MAX_RESULT_CHARACTERS


def both(text: str, activation: dict | None = None) -> list:
    outcomes = []
    for evaluate in (compile_expr(text), build_exact(parse(text))):
        try:
            outcomes.append(evaluate(activation or {}))
        except EvalError as error:
            outcomes.append(("error", error.message))
    return outcomes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'TacoCÆt'.lowerAscii()", "tacocÆt"),
        ("'tacoCαt'.upperAscii()", "TACOCαT"),
        ("' \\f\\n\\r\\t\\vtext  '.trim()", "text"),
        ("'\\u0085\\u00a0\\u1680text\\u3000'.trim()", "text"),
        ("'\\x1ctext'.trim()", "\x1ctext"),  # Go keeps U+001C, Python's strip() would not
        ("'\\u200btext'.trim()", "\u200btext"),  # a zero-width space is no white space
        ("'{0} days {0} hours'.replace('{0}', '2')", "2 days 2 hours"),
        ("'{0} days {0} hours'.replace('{0}', '2', 1)", "2 days {0} hours"),
        ("'aaa'.replace('a', 'b', -1)", "bbb"),
        ("'aaa'.replace('a', 'b', 0)", "aaa"),
        ("'ab'.replace('', '-')", "-a-b-"),
        ("'ab'.replace('', '-', 2)", "-a-b"),
        ("'a,b,c'.split(',')", ["a", "b", "c"]),
        ("'a,b,c'.split(',', 2)", ["a", "b,c"]),
        ("'a,b,c'.split(',', 0)", []),
        ("'a,b,c'.split(',', -1)", ["a", "b", "c"]),
        ("'a©c'.split('')", ["a", "©", "c"]),
        ("'abc'.split('', 2)", ["a", "bc"]),
        ("''.split(',')", [""]),
        ("['x', 'y'].join()", "xy"),
        ("['x', 'y'].join('-')", "x-y"),
        ("[].join('-')", ""),
        ("'ta©o©αT'.substring(2, 6)", "©o©α"),
        ("'tacocat'.substring(7)", ""),
        ("'ta©o©αT'.indexOf('©', 3)", 4),
        ("'tacocat'.indexOf('', 3)", 3),
        ("'tacocat'.indexOf('none')", -1),
        ("'ta©o©αT'.lastIndexOf('©')", 4),
        ("'ta©o©αT'.lastIndexOf('©', 3)", 2),
        ("'bananananana'.lastIndexOf('nana', 7)", 6),
        ("'tacocat'.lastIndexOf('')", 7),
        ("'db-1:9100'.substring(0, 'db-1:9100'.indexOf(':'))", "db-1"),
    ],
)
def test_strings_functions(text: str, expected: object) -> None:
    assert both(text) == [expected, expected]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("'tacocat'.substring(40)", "substring(): index out of range: an int (string of 7 characters)"),
        ("'tacocat'.substring(-1)", "index out of range"),
        ("'tacocat'.substring(4, 3)", "the end comes before the start"),
        ("'tacocat'.substring(0, 8)", "index out of range"),
        ("'tacocat'.indexOf('a', 30)", "indexOf(): index out of range"),
        ("'tacocat'.lastIndexOf('a', -1)", "lastIndexOf(): index out of range"),
        ("[1, 'a'].join()", "join() needs a list of strings, got an element that is an int"),
        ("'a'.replace(1, 'b')", "no such overload: replace() on int"),
        ("'a'.split(',', 1.0)", "no such overload: split() on double"),
        ("5.lowerAscii()", "no such overload: lowerAscii() on int"),
    ],
)
def test_strings_errors(text: str, fragment: str) -> None:
    for outcome in both(text):
        assert isinstance(outcome, tuple) and fragment in outcome[1], outcome


def test_replace_refuses_a_result_that_explodes() -> None:
    activation = {"s": "x" * 100_000, "t": "y" * 100}
    for outcome in both("s.replace('', t)", activation):
        assert outcome == ("error", f"replace() result too large: over {MAX_RESULT_CHARACTERS:,} characters")
    assert both("s.replace('x', t, 10).size()", activation) == [100_990, 100_990]


def test_join_refuses_a_result_that_explodes() -> None:
    activation = {"l": ["x" * 1_000_000] * 5}
    assert both("l.join()", activation)[0][1].startswith("join() result too large")


def test_messages_never_quote_the_data() -> None:
    secret = "S3cr3t-t0ken-value"
    activation = {"s": secret, "n": 10**30, "l": [secret, 1]}
    for text in ("s.substring(n)", "s.indexOf(s, 99)", "l.join(s)", "s.split(s, s)", "s.substring(3, 1)"):
        for outcome in both(text, activation):
            assert isinstance(outcome, tuple), (text, outcome)
            assert "S3cr3t" not in outcome[1] and str(10**30) not in outcome[1]


def test_checker_knows_the_optional_arguments() -> None:
    roots = {"s": RootSpec("string")}
    assert check(parse("s.substring(1) + s.substring(1, 2) + s.split(',').join()"), roots) == []
    (problem,) = check(parse("s.substring()"), roots)
    assert (problem.code, problem.message) == ("OPS023", "substring() takes 1 or 2 arguments, got 0")
    (problem,) = check(parse("s.replace('a')"), roots)
    assert problem.message == "replace() takes 2 or 3 arguments, got 1"
    (problem,) = check(parse("s.indexOf(1)"), roots)
    assert problem.code == "OPS024"
    (problem,) = check(parse("s.lowerAsci()"), roots)
    assert problem.hint == "did you mean `lowerAscii`?"
