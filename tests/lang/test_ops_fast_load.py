"""`load_text`'s lean path (opsdsl/lang/ops/driver.py with expressions collapsed to their
extent, no comment tokens, blanks skipped inside the scanner's match) gives exactly what
building from Lark's own tree gives: data (types and key order included), every span,
key span and expression segment, and the diagnostics; where the text does not parse, the
fallback to Lark's error recovery gives the same diagnostics as `parse_ops`."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from opsdsl.lang.ops import load_text
from opsdsl.lang.ops.convert import yaml_to_ops
from opsdsl.lang.ops.data import PackBuilder
from opsdsl.lang.ops.parser import MAX_DEPTH, _check_nesting, _lark_parser, _shallow, parse_for_data, parse_ops

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
