"""`load_text`'s lean path (opsdsl/lang/ops/driver.py's `parse_lean`: expressions collapsed
to their extent, no comment tokens, blanks skipped inside the scanner's match, tokens and
nodes as `Leaf`s and `Node`s, maps and lists read whole by opsdsl/lang/ops/literals.py)
gives exactly what building from Lark's own tree gives: data (types and key order
included), every span, key span and expression segment, and the diagnostics; where the
text does not parse, the fallback to Lark's error recovery gives the same diagnostics as
`parse_ops`. The lean tree itself is held to the tree Lark's builders make, token by token,
and the builder's offset-to-line arithmetic to Lark's line counter."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.lang.ops import load_text
from opsdsl.lang.ops.convert import yaml_to_ops
from opsdsl.lang.ops.data import DataBuilder, PackBuilder
from opsdsl.lang.ops.parser import (
    _NOT_BRACKETS,
    MAX_DEPTH,
    _brackets,
    _check_nesting,
    _extent_driver,
    _lark_parser,
    _shallow,
    parse_for_data,
    parse_ops,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import generate  # noqa: E402

FILES = sorted(p for p in ROOT.glob("**/*.ops") if ".venv" not in p.parts and "node_modules" not in p.parts)
SOURCES = [p.read_text(encoding="utf-8") for p in FILES]
NOISE = ["{", "}", "[", "]", ":", ",", "=", "->", '"', "step", "when", "10s", "#", "\n", "@", "'", "&&", "pack"]
NOISE += ["\\q", '"a": 1', "timeout 5s", " # note\n", "\t", "\r\n", "x", "(", ")"]


def typed(value):
    """The value with every container and scalar's type spelled out (1 vs 1.0 vs True)."""
    if isinstance(value, dict):
        return ("dict", [(typed(k), typed(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [typed(v) for v in value])
    return (type(value).__name__, repr(value))


def snapshot(document, diagnostics):
    found = [(d.code, d.severity, d.message, d.span, d.hint) for d in diagnostics]
    if document is None:
        return None, found
    return (
        typed(document.data),
        document.spans,
        document.keys,
        document.expressions,
        document.source,
        found,
    )


def reference(text: str, path: str):
    """What load_text gave before the lean path: Lark's own parse, then the builder."""
    from lark.exceptions import UnexpectedInput

    from opsdsl.lang.ops import OpsDocument
    from opsdsl.lang.source import Source

    lark, comments = _lark_parser()
    tree = None
    if not _check_nesting(text, path):
        comments.clear()
        try:
            tree = lark.parse(text)
        except UnexpectedInput:
            tree = None
        comments.clear()
    if tree is None:
        result = parse_ops(text, path)
        if result.tree is None:
            return None, result.diagnostics
        tree = result.tree
    builder = PackBuilder(path, text)
    data = builder.build(tree)
    document = OpsDocument(Source(path, text), data, None, builder.spans, builder.keys, builder.expressions)
    return document, builder.diagnostics


def same(text: str, path: str = "t.ops") -> None:
    if not text.strip():
        return
    assert snapshot(*load_text(text, path)) == snapshot(*reference(text, path))


def mutate(text: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(text))
        if rng.random() < 0.4:
            text = text[:at] + text[at + rng.randint(1, 12) :]
        else:
            text = text[:at] + rng.choice(NOISE) + text[at:]
    return text


def test_the_repository_has_ops_files():
    assert len(FILES) >= 13


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_repository_files(path: Path):
    same(path.read_text(encoding="utf-8"), path.name)


@pytest.mark.parametrize("seed", range(6))
def test_mutated_files(seed: int):
    rng = random.Random(2000 + seed)
    for _ in range(40):
        same(mutate(rng.choice(SOURCES), rng))


@pytest.mark.parametrize("index", range(0, 40, 3))
def test_generated_packs(index: int):
    """Packs like the bench's (bench/generate.py, converted with yaml_to_ops), also with
    comments, tabs and CRLF line ends, and with no final newline."""
    text = yaml_to_ops(generate.dump_pack(generate.generate_pack(index=index, steps=4 + index % 9)), "g.yaml")
    rng = random.Random(index)
    lines = text.split("\n")
    commented = "\n".join(line + (f"  # c{i} {{[(" if rng.random() < 0.3 else "") for i, line in enumerate(lines))
    for variant in (text, commented, text.replace("\n", "\r\n"), text.replace("  ", "\t"), text.rstrip()):
        same(variant)
        same("# head\n" + variant + "\n# tail")
    for _ in range(10):
        same(mutate(text, rng))


@pytest.mark.parametrize(
    "text",
    [
        'pack a version 1 owner b { description "x" description "y" }',
        'pack a version 1 owner b { labels {a: 1, a: 2, "b": 3, "b": [1, 2.5, -3e2, true, null]} }',
        'pack a version 1 owner b { description "x\\qy" }',
        'pack a version 1 owner b { description "tab\\t \\u00e9 \\"q\\"" }',
        "pack a version 1 owner b { labels " + "{a: " * 70 + "1" + "}" * 70 + " }",
        "pack a version 1 owner b { labels " + "{a: " * 30 + "1" + "}" * 30 + " }",
        "pack a version 1 owner b {}",
        "pack a version 1 owner b {}   \n\n",
        "pack a version 1 owner b {} # trailing",
        "pack a version 1 owner b { description 'single' }",
        'pack a version 1 owner b { description "x" } }',
        "pack a version 1 owner b {\n  trigger t on alert when a.b == 1 &&\n  # mid\n  c in [1, 2] { for 5m }\n}",
        'policypack p version 1 owner o { policy x deny when (a || b) && !c { message "m" } }',
        "pack",
        "@",
        # the token after a literal is lexed as in the state after its closer (shared by every
        # context of the rule), not as in the goto's: both refuse `whenx`
        'pack a version 1 owner b { playbook p severity SEV-1 { step s: x { needs ["a"]\n whenputs.x == 1 } } }',
        'pack a version 1 owner b { playbook p severity SEV-1 { step s: x { needs ["a"] when x == 1 } } }',
        "pack a version 1 owner b { playbook p severity SEV-1 { step s: x { with {a: [1, {b: []}]}timeout 5s } } }",
        'pack a version 1 owner b { labels {a: 1}description "x" param p: map = {} "d" { secret } }',
        "pack a version 1 owner b { param p: list = [] { enum [[], [1,], {a: {}},] } }",
        "pack a version 1 owner b { playbook p severity SEV-1 { step s: shell { when  } } }",
    ],
)
def test_edge_cases(text: str):
    same(text)


def test_lean_path_parses_the_bench_like_packs_and_refuses_errors():
    """The fast path is really taken for clean text, and refused for bad or too deep text."""
    text = yaml_to_ops(generate.dump_pack(generate.generate_pack(index=3, steps=5)), "g.yaml")
    assert parse_for_data(text) is not None
    assert parse_for_data(text.replace("{", "", 1)) is None
    assert parse_for_data("pack a version 1 owner b { labels " + "[" * 70 + "]" * 70 + " }") is None


def test_shallow_never_passes_a_text_the_nesting_check_refuses():
    """parse_for_data skips _check_nesting when _shallow says the brackets balance within
    MAX_DEPTH; on random bracket, quote and comment soup it is never wrong."""
    rng = random.Random(5)
    alphabet = ["{", "}", "[", "]", "(", ")", '"', "'", "#", "\n", "\\", "a", " "]
    passed = 0
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        if rng.random() < 0.3:
            depth = rng.randint(MAX_DEPTH - 4, MAX_DEPTH + 4)
            text = text + rng.choice("{[(") * depth + text + rng.choice("}])") * depth
        if _shallow(text):
            passed += 1
            assert not _check_nesting(text, "t.ops"), text
    assert passed > 1000
    assert _shallow("{" * MAX_DEPTH + "}" * MAX_DEPTH)
    assert not _shallow("{" * (MAX_DEPTH + 1) + "}" * (MAX_DEPTH + 1))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(["{", "}", "[", "]", "(", ")", '"', "'", "#", "\n", "\r", "a", " ", '"a{"', "é"]), max_size=60
    )
)
def test_brackets_of_escape_free_ascii_text_are_the_scan_s(pieces: list[str]):
    """_shallow's shortcut for ASCII text without a backslash (characters dropped, then strings
    and comments) leaves the very brackets the general scan leaves."""
    text = "".join(pieces)
    assert _brackets(text) == _NOT_BRACKETS.sub("", text)


def test_spans_built_without_the_dataclass_init_are_spans():
    import copy
    import pickle

    from opsdsl.errors import Span
    from opsdsl.lang.ops.data import _span

    made, plain = _span("f.ops", 1, 2, 3, 4), Span("f.ops", 1, 2, 3, 4)
    assert type(made) is Span
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert pickle.loads(pickle.dumps(made)) == plain and copy.deepcopy(made) == plain
    assert sorted([Span("f.ops", 1, 3), made]) == [made, Span("f.ops", 1, 3)]
    with pytest.raises(AttributeError):  # still frozen
        made.line = 5


def test_the_builder_s_spans_are_spans():
    """`DataBuilder.between` makes its Spans as `_span` does, inline: the same objects."""
    import pickle

    from opsdsl.errors import Span

    made = DataBuilder("f.ops", "ab\ncd\n").between(1, 4)
    plain = Span("f.ops", 1, 2, 2, 2)
    assert type(made) is Span and made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert pickle.dumps(made) == pickle.dumps(plain)
    with pytest.raises(AttributeError):
        made.col = 5


# -- the lean tree against Lark's builders ---------------------------------------------------

LITERAL_NOISE = ["{", "}", "[", "]", ":", ",", ",,", "{}", "[]", '"', '"a": ', "a-b:", "_k:", "true", "tru", "null"]
LITERAL_NOISE += ["1e5", "-1", "-", "1.", "01", "1x", "# c\n", "\n", "name", "with", "step", "x", "\\u00e9", "\r\n"]


def shape(node):
    """A tree as nested tuples: rule names, and each token's type, text and offsets."""
    if isinstance(node, str):
        return (node.type, str(node), node.start_pos, node.end_pos)
    return (str(node.data), [shape(child) for child in node.children])


def same_tree(text: str) -> None:
    """`parse_lean` builds what the same tables with Lark's tree builders build, or fails where
    they fail."""
    driver = _extent_driver()
    lark_tree, lean_tree = driver.parse(text), driver.parse_lean(text)
    assert (lark_tree is None) == (lean_tree is None)
    if lark_tree is not None:
        assert shape(lean_tree) == shape(lark_tree)


def test_the_lean_run_and_the_literal_reader_are_on():
    """Lark's builders and the lean plans agree on every rule (else no lean run), and the
    literal reader has states to read maps and lists in; a bench-like pack uses it."""
    driver = _extent_driver()
    assert driver.lean is not None and driver.literals is not None and driver.literal_gotos
    text = yaml_to_ops(generate.dump_pack(generate.generate_pack(index=1, steps=5)), "g.yaml")
    reads = []
    read = driver.literals.read
    try:
        driver.literals.read = lambda text, opening: reads.append(read(text, opening)) or reads[-1]
        assert driver.parse_lean(text) is not None
    finally:
        del driver.literals.read
    assert len(reads) > 5 and all(r is not None for r in reads)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_lean_tree_of_repository_files(path: Path):
    same_tree(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("seed", range(4))
def test_lean_tree_of_mutated_literals(seed: int):
    """Noise aimed at maps and lists: the literal reader reads what the loop reads, or gives
    the literal back to the loop."""
    rng = random.Random(3000 + seed)
    sources = SOURCES + [
        yaml_to_ops(generate.dump_pack(generate.generate_pack(index=i, steps=6)), "g.yaml") for i in range(3)
    ]
    for _ in range(60):
        text = rng.choice(sources)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(text))
            if rng.random() < 0.3:
                text = text[:at] + text[at + rng.randint(1, 6) :]
            else:
                text = text[:at] + rng.choice(LITERAL_NOISE) + text[at:]
        same_tree(text)
        same(text)


def test_lines_and_columns_from_offsets_are_lark_s():
    """The builder's line and column for an offset are what Lark's line counter gives each
    token (CRLF, tabs, comments, multi-line expressions included)."""
    texts = SOURCES + [t.replace("\n", "\r\n") for t in SOURCES[:3]] + [t.replace("  ", "\t") for t in SOURCES[:3]]
    texts.append("pack a version 1 owner b {\n  trigger t on alert when a &&\n  # c\n\n  b {}\n}\n")
    for text in texts:
        result = parse_ops(text, "t.ops")
        if result.tree is None:
            continue
        builder = DataBuilder("t.ops", text)
        for token in [*result.tree.scan_values(lambda _: True), *result.comments]:
            span = builder.between(token.start_pos, token.end_pos)
            assert (span.line, span.col, span.end_line, span.end_col) == (
                token.line,
                token.column,
                token.end_line,
                token.end_column,
            ), token


KEYS = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,8}", fullmatch=True),
    st.sampled_from(["name", "with", "step", "when", "in", "on", "max", "for"]),
)
BLANKS = st.sampled_from(["", " ", " ", "\n", "  # note\n", "\t", "\r\n", " #x\n  "])
SCALARS = st.one_of(
    st.sampled_from(["true", "false", "null", "0", "-0", "1.5", "-2e3", "1E+2", "9007199254740993", "1e999"]),
    st.integers(-(10**6), 10**6).map(str),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8).map(json.dumps),
)
# What makes a literal wrong, or not the reader's to read: drawn now and then.
FLAWS = st.sampled_from(['"\\q"', '"a\n"', "x", "tru", "nullx", "5m", "-", "01", "1.", "true:", ",", "", "]", "}"])


def flawed(draw) -> bool:
    return draw(st.integers(0, 99)) == 0


@st.composite
def literal_text(draw, depth: int = 0) -> str:
    """Map and list text, mostly well formed: blanks and comments between tokens, trailing
    commas, keys that spell keywords (or true/false/null, now and then), and the odd flaw."""
    blank = draw(BLANKS)
    if flawed(draw):
        return blank + draw(FLAWS)
    if depth > 2 or draw(st.integers(0, 2)) == 0:
        return blank + draw(SCALARS)
    is_map = draw(st.booleans())
    items = []
    for _ in range(draw(st.integers(0, 3))):
        value = draw(literal_text(depth + 1))
        if is_map:
            key = draw(st.sampled_from(["true", "null", "1", ""]) if flawed(draw) else KEYS)
            key = json.dumps(key) if draw(st.integers(0, 3)) == 0 else key
            items.append(f"{draw(BLANKS)}{key}{draw(BLANKS)}:{value}")
        else:
            items.append(value)
    separator = draw(st.sampled_from([",,", " ", ";"])) if flawed(draw) else draw(st.sampled_from([",", ", ", ",\n"]))
    trailing = draw(st.sampled_from(["", "", ",", " ,\n"]))
    inside = separator.join(items) + (trailing if items else "")
    opening, closing = ("{", "}") if is_map else ("[", "]")
    return f"{blank}{opening}{inside}{draw(BLANKS)}{closing}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(literal_text(), st.sampled_from(["labels", "with", "param", "needs"]))
def test_generated_literals(literal: str, where: str):
    """Hypothesis-drawn maps and lists where a pack holds literals: the same tree as the loop,
    the same data, spans and diagnostics as the reference."""
    if where == "labels":
        text = f"pack a version 1 owner b {{ labels {{k: {literal}}} }}"
    elif where == "param":
        text = f"pack a version 1 owner b {{ param p: map = {literal} }}"
    else:
        literal = f"{{k: {literal}}}" if where == "with" else f"[{literal}]"
        text = f"pack a version 1 owner b {{ playbook p severity SEV-1 {{ step s: http {{ {where} {literal} }} }} }}"
    same_tree(text)
    same(text)


def test_without_lean_plans_loading_takes_lark_s_tokens_and_trees(monkeypatch):
    """Should Lark's builders ever not match the lean plans, `parse_lean` is `parse`, and
    loading gives the same documents and diagnostics."""
    monkeypatch.setattr(_extent_driver(), "lean", None)
    for text in SOURCES[:4]:
        assert parse_for_data(text) is not None
        same(text)
    same("pack a version 1 owner b { labels {a: 1, a: 2} }")
