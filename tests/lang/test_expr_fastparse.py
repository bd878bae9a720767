"""The hand-written parser (`opsdsl.lang.expr.fastparse`) builds exactly Lark's tree,
positions included, or declines; it never accepts text Lark rejects."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_expr_properties import trees

from opsdsl.lang.expr.fastparse import parse_fast
from opsdsl.lang.expr.nodes import Node
from opsdsl.lang.expr.parser import _BUILDER, _lark_parser
from opsdsl.lang.expr.printer import unparse

REPO = Path(__file__).resolve().parents[2]


def dump(value: Any) -> Any:
    """Everything of a tree, positions included (node equality leaves positions out)."""
    if isinstance(value, Node):
        return (type(value).__name__, tuple((k, dump(v)) for k, v in sorted(vars(value).items())))
    if isinstance(value, tuple | list):
        return tuple(dump(v) for v in value)
    if isinstance(value, float) and value != value:
        return "nan"
    return (type(value).__name__, value)


def lark_tree(text: str) -> Any:
    try:
        return dump(_lark_parser().parse(text))
    except Exception as exc:  # a syntax error, or the builder's complaint
        return ("error", type(exc).__name__)


def agree(text: str) -> bool:
    """Asserts agreement; True when the fast parser answered."""
    fast = parse_fast(text, _BUILDER)
    if fast is None:
        return False
    assert dump(fast) == lark_tree(text), text
    return True


def _strings_in_python(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _strings_in_yaml(value: Any) -> list[str]:
    if isinstance(value, str):
        out = [value]
        start = value.find("${{")
        while start >= 0:  # template holes too
            stop = value.find("}}", start)
            if stop < 0:
                break
            out.append(value[start + 3 : stop])
            start = value.find("${{", stop)
        return out
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings_in_yaml(k), *_strings_in_yaml(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in_yaml(v)]
    return []


def corpus() -> list[str]:
    """Every string in the expression tests, and every string of every YAML file in the
    repository (packs, examples, fixtures): expressions, templates' holes, and other text."""
    texts: set[str] = set()
    for path in sorted((REPO / "tests" / "lang").glob("test_expr*.py")):
        texts.update(_strings_in_python(path))
    for folder in ("packs", "examples", "tests", "docs"):
        for path in sorted((REPO / folder).rglob("*.y*ml")):
            try:
                for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                    texts.update(_strings_in_yaml(document))
            except (yaml.YAMLError, UnicodeDecodeError):
                continue
    return sorted(t for t in texts if t.strip() and len(t) <= 4096)


def test_agrees_with_lark_on_every_string_in_the_repository():
    texts = corpus()
    assert len(texts) > 500
    answered = sum(agree(text) for text in texts)
    assert answered > 200  # it answers for the common case


@pytest.mark.parametrize(
    "text",
    [
        'event.labels.alertname == "SqlxExecLatencyHigh" && event.value > params.slo_p95_ms',
        "a ? b : c ? d : e",
        "-5",
        "--5",
        "-a.b",
        "1.size()",
        "[1, 2,]",
        "{a: 1, 'b': 2,}",
        "{a ? b : c : d}",
        "f()",
        "a.b(c, d)[0].e",
        "r'\\d+' + '''x\ny''' + \"\\u00e9\"",
        "1h30m > 90s && 0x1F == 31 && 1e3 == 1000.0 && .5 < 1",
        "x // comment\n  > 1",
        "e.all(x, x > 0) && e.map(k, v, v + 1).size() == 2",
        "has(a.b)",
    ],
)
def test_well_formed_text_is_read_without_lark(text: str):
    assert agree(text)


@pytest.mark.parametrize(
    "text",
    [
        "a.in",  # a keyword after `.` is a field name to Lark's contextual lexer
        "a.true",
        "in == 1",
        "a inb",
        "a ? b ? c : d : e",
        "f(a,)",
        "has(a)",  # the builder's own error
        "'\\q'",
        "5min",
        "a = b",
        "(" * 150 + "a" + ")" * 150,
        "!" * 300 + "a",
    ],
)
def test_unsure_or_wrong_text_goes_to_lark(text: str):
    assert parse_fast(text, _BUILDER) is None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_agrees_with_lark_on_printed_trees(tree):
    assert agree(unparse(tree))


PIECES = ["in", "true", "null", ".", "5", "m", "s", "x", " ", "//", "\n", '"', "'", "r", ",", "(", ")", "[", "]"]
PIECES += ["{", "}", ":", "?", "!", "-", "=", "<", "&&", "||", "e3", "0x", "\\", "\t", "é", "٣", "_"]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(PIECES), st.booleans()), max_size=4))
def test_agrees_with_lark_on_mangled_text(tree, edits):
    text = unparse(tree)
    for at, piece, delete in edits:
        at %= len(text) + 1
        text = text[:at] + text[at + 1 :] if delete and at < len(text) else text[:at] + piece + text[at:]
    if text.strip():
        agree(text)
