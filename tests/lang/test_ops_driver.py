"""The lean LALR run (opsdsl/lang/ops/driver.py) gives exactly Lark's tree, tokens,
positions and comments, and gives up (None) wherever Lark raises; its scanners take the
tokens Lark's alternations take."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Token, Tree
from lark.exceptions import UnexpectedInput

from opsdsl.lang.ops.driver import _token_scanners
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


# -- the scanners: each terminal's group moved to the end of its branch -------------------------

# Pieces of .ops text (keywords and their prefixes, words, numbers, durations, strings,
# punctuation, blanks, comments) and odd characters (non-ASCII letters and digits, a lone
# surrogate, NUL, a byte-order mark) for drawn scanner input.
PIECES = ["step", "ste", "steps", "with", "when", "whenx", "description", "max", "max_concurrent", "true", "truex"]
PIECES += ["null", "in", "x", "a.b/c+d-e", "_k", "0", "01", "-1", "1.5", "1e3", "0x1F", "5m", "1h30m", "5min", "30s"]
PIECES += ['"a b"', '"\\"', '"\\q"', "'s'", 'r"x"', '"""t"""', "{", "}", "[", "]", "(", ")", ":", ",", "=", "->"]
PIECES += ["&&", "||", "==", "!=", "<=", ">", "!", "?", ".", "+", "-", "*", "/", "%", "#", "# c\n", "// c\n", " "]
PIECES += ["\n", "\t", "\r\n", "\f", "é", "ℌ", "٣", "\u00a0", "\ud800", "\x00", "\ufeff", "@", "$", "${{ x }}", "\\"]


def lark_scanners():
    """Every distinct scanner of Lark's contextual lexer for grammar/pack.lark."""
    lark, _ = _lark_parser()
    seen, out = set(), []
    for lexer in lark.parser.lexer.lexers.values():
        scanner = lexer.scanner
        key = tuple(t.name for t in scanner.terminals)
        if key not in seen:
            seen.add(key)
            out.append(scanner)
    return out


SCANNERS = lark_scanners()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    st.integers(0, len(SCANNERS) - 1),
    st.sampled_from(["", "(?:[ \t\r\n\f]+)*+", "(?:#[^\n]*|[ \t\r\n\f]+)*+"]),
    st.integers(0, 3),
)
def test_tagged_scanner_matches_what_lark_s_alternation_matches(text: str, index: int, prefix: str, pos: int):
    """Each state's scanner with the terminals' groups moved to the ends of their branches
    takes the same terminal over the same text as Lark's own alternation (behind the same
    skip of blanks), or fails where it fails."""
    scanner = SCANNERS[index]
    (tagged,) = _token_scanners(scanner, prefix)
    reference = [re.compile(f"{prefix}(?:{m.pattern})", m.flags) for m in scanner._mres]
    pos = min(pos, len(text))
    found = tagged.match(text, pos)
    expected = next((m for m in (r.match(text, pos) for r in reference) if m), None)
    assert (found is None) == (expected is None)
    if expected is not None:
        assert found.lastgroup == expected.lastgroup
        assert (found.start(1), found.end()) == expected.span(expected.lastgroup)


def test_every_scanner_is_tagged():
    """Lark's alternations are one regex of their terminals in order, so each is tagged."""
    for scanner in SCANNERS:
        (found,) = _token_scanners(scanner, "")
        assert "(?P<" in found.pattern and found.pattern.count(")(?P<") == len(scanner.terminals)


@pytest.mark.parametrize(
    "body",
    [
        "é" * 1_000_000,
        "descriptio" * 100_000,
        "step" * 250_000,
        "a" * 1_000_000,
        "1" * 1_000_000 + "x",
        "\ud800" * 100_000,
        "${{ " * 100_000,
        '"' + "\\" * 999_999,
        "ℌ\x00\ufeff" * 300_000,
    ],
    ids=["accents", "keyword-prefixes", "keywords", "one-word", "digits", "surrogates", "templates", "escapes", "odd"],
)
def test_hostile_text_through_the_scanners_ends_in_a_diagnostic(body: str):
    """A megabyte of one hostile run where a scanner looks: an OPS### answer (or data) in
    bounded time, no traceback."""
    from opsdsl.lang.ops import load_text

    for text in (
        "pack a version 1.0.0 owner b {\n  " + body + "\n}\n",
        "pack a version 1.0.0 owner b {\n  playbook p severity SEV-1 { step s: x { when " + body + " } }\n}\n",
    ):
        started = time.perf_counter()
        document, diagnostics = load_text(text, "hostile.ops")
        assert time.perf_counter() - started < 20
        assert document is not None or diagnostics
        assert all(d.code.startswith("OPS") for d in diagnostics)
