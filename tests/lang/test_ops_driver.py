"""The lean LALR run (opsdsl/lang/ops/driver.py) gives exactly Lark's tree, tokens,
positions and comments, and gives up (None) wherever Lark raises."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from opsdsl.lang.ops.parser import _driver, _lark_parser

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted(ROOT.glob("examples/**/*.ops")) + sorted(ROOT.glob("tests/fixtures/**/*.ops"))
SOURCES = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "examples" / "ops").glob("*.ops"))]
NOISE = ["{", "}", "[", "]", ":", ",", "=", "->", '"', "step", "when", "10s", "#", "\n", "@", "'", "&&", "pack"]


def mutate(text: str, rng: random.Random) -> str:
    """A few deletions and insertions of punctuation, keywords and comment starts."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text))
        if rng.random() < 0.4:
            text = text[:at] + text[at + rng.randint(1, 12) :]
        else:
            text = text[:at] + rng.choice(NOISE) + text[at:]
    return text


def shape(node):
    if isinstance(node, Tree):
        return ("tree", str(node.data), [shape(c) for c in node.children])
    assert isinstance(node, Token)
    positions = (node.start_pos, node.line, node.column, node.end_line, node.end_column, node.end_pos)
    return ("token", node.type, node.value, str(node), *positions)


def both(text: str):
    lark, comments = _lark_parser()
    comments.clear()
    try:
        expected = shape(lark.parse(text))
    except UnexpectedInput:
        expected = None
    expected_comments = [shape(c) for c in comments]
    comments.clear()
    tree = _driver().parse(text)
    found = None if tree is None else shape(tree)
    found_comments = [shape(c) for c in comments]
    comments.clear()
    return expected, expected_comments, found, found_comments


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_same_tree_as_lark(path: Path):
    expected, expected_comments, found, found_comments = both(path.read_text(encoding="utf-8"))
    assert found == expected
    if expected is not None:
        assert found_comments == expected_comments


@pytest.mark.parametrize("seed", range(4))
def test_mutated_text_same_tree_or_none_as_lark(seed: int):
    rng = random.Random(1000 + seed)
    for _ in range(40):
        text = mutate(rng.choice(SOURCES), rng)
        expected, expected_comments, found, found_comments = both(text)
        assert found == expected
        if expected is not None:
            assert found_comments == expected_comments
