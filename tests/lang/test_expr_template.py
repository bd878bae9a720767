"""`${{ }}` templates: parsing, offsets, escapes and rendering."""

from __future__ import annotations

import pytest

from opsdsl.errors import EvalError
from opsdsl.lang.expr import ExprSyntaxError, parse, parse_template

ACTIVATION = {
    "params": {"url": "http://127.0.0.1:8080", "argv": ["a", "b"], "n": 3, "ratio": 1.5},
    "inputs": {"cluster": "eu-1", "nothing": None, "labels": {"k": "v"}},
    "steps": {"inspect": {"outputs": {"json": {"p95_ms": 312}}}},
}


def test_expressions_and_their_offsets():
    text = "GET ${{ params.url }}/v1?c=${{inputs.cluster}}"
    template = parse_template(text)
    assert [(expr.text, offset) for expr, offset in template.expressions] == [
        ("params.url", 8),
        ("inputs.cluster", 30),
    ]
    for expr, offset in template.expressions:
        assert text[offset : offset + len(expr.text)] == expr.text
    assert template.expressions[0][0] is parse("params.url")
    assert not template.is_literal


def test_render_concatenates_with_string_conversion():
    template = parse_template(
        "GET ${{ params.url }}/v1/latency?cluster=${{ inputs.cluster }}&n=${{ params.n }}"
        "&r=${{ params.ratio }}&t=${{ 5m }}&ok=${{ params.n > 2 }}"
    )
    assert template.render(ACTIVATION) == ("GET http://127.0.0.1:8080/v1/latency?cluster=eu-1&n=3&r=1.5&t=300&ok=true")


def test_a_lone_expression_renders_its_raw_value():
    assert parse_template("${{ params.argv }}").render(ACTIVATION) == ["a", "b"]
    assert parse_template("${{ params.n }}").render(ACTIVATION) == 3
    assert parse_template("${{ inputs.nothing }}").render(ACTIVATION) is None
    assert parse_template("${{ steps.inspect.outputs.json }}").render(ACTIVATION) == {"p95_ms": 312}
    # any surrounding text makes it a string
    assert parse_template(" ${{ params.n }}").render(ACTIVATION) == " 3"
    assert parse_template("${{ params.n }}${{ params.n }}").render(ACTIVATION) == "33"


def test_null_lists_and_maps_in_text():
    template = parse_template("a=${{ params.argv }} n=${{ inputs.nothing }} m=${{ inputs.labels }} x=${{ [1.5, 'é'] }}")
    assert template.render(ACTIVATION) == 'a=["a","b"] n=null m={"k":"v"} x=[1.5,"é"]'


def test_literal_templates():
    for text in ["", "plain", "cost: $5", "a } b }} c", "${ not an expression }"]:
        template = parse_template(text)
        assert template.is_literal
        assert template.expressions == ()
        assert template.render({}) == text
        assert template.literal == text


def test_escaped_opening():
    template = parse_template("echo $${{ literal }} and ${{ params.n }}")
    assert template.render(ACTIVATION) == "echo ${{ literal }} and 3"
    assert parse_template("$${{").render({}) == "${{"
    assert parse_template("$${{ x }}").is_literal


def test_braces_and_strings_inside_expressions():
    assert parse_template('${{ {"a": {"b": 1}}.a.b }}').render({}) == 1
    assert parse_template('x${{ "}}" + "{" }}y').render({}) == "x}}{y"
    assert parse_template("x${{ '}}' }}y").render({}) == "x}}y"
    assert parse_template('x${{ "\\"}}" }}y').render({}) == 'x"}}y'
    assert parse_template("x${{ r'\\' }}y").render({}) == "x\\y"


def test_unterminated_and_empty_expressions():
    with pytest.raises(ExprSyntaxError) as caught:
        parse_template("GET ${{ params.url")
    assert (caught.value.offset, caught.value.message) == (4, "unterminated `${{`")
    assert caught.value.hint == "close the expression with `}}`"
    with pytest.raises(ExprSyntaxError, match="empty"):
        parse_template("a ${{  }} b")


def test_syntax_errors_are_located_in_the_whole_string():
    text = "GET ${{ params.url }}/x?c=${{ inputs. }}"
    with pytest.raises(ExprSyntaxError) as caught:
        parse_template(text)
    error = caught.value
    assert error.text == text
    assert text[error.offset :].startswith(" }}")  # right after `inputs.`
    assert "field name" in error.hint

    with pytest.raises(ExprSyntaxError) as caught:
        parse_template("${{ a && }}")
    assert caught.value.offset == 8


def test_render_errors_name_the_expression():
    template = parse_template("c=${{ inputs.missing }}")
    with pytest.raises(EvalError, match=r"in `\$\{\{ inputs.missing \}\}`: no such key: missing"):
        template.render(ACTIVATION)


def test_parse_template_is_memoised():
    assert parse_template("a ${{ b }}") is parse_template("a ${{ b }}")


def test_lists_that_cannot_be_json_are_evaluation_errors_not_crashes():
    import math

    import pytest

    from opsdsl.errors import EvalError
    from opsdsl.lang.expr import parse_template

    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for value in (deep, [math.nan], {"x": math.inf}, [10**5000]):
        with pytest.raises(EvalError):
            parse_template("v=${{ a }}").render({"a": value})
