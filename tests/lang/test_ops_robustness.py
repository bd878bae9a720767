"""Bad .ops input gives diagnostics, never a traceback, in bounded time."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from opsdsl.lang.ops import load_text
from opsdsl.lang.ops.convert import format_text

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p.read_text() for p in sorted((ROOT / "examples" / "ops").glob("*.ops"))]
NOISE = ["{", "}", "[", "]", ":", ",", "=", "->", '"', "step", "when", "timeout", "10s", "#", "\n", "@", "'", "&&"]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines(keepends=True)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        if choice < 0.35 and len(text) > 1:
            at = rng.randrange(len(text))
            text = text[:at] + text[at + rng.randint(1, 12) :]
        elif choice < 0.7:
            at = rng.randrange(len(text) + 1)
            text = text[:at] + rng.choice(NOISE) + text[at:]
        else:
            lines = text.splitlines(keepends=True)
            if len(lines) > 2:
                i = rng.randrange(len(lines) - 1)
                lines[i], lines[i + 1] = lines[i + 1], lines[i]
                text = "".join(lines)
    return text


@pytest.mark.parametrize("seed", range(8))
def test_mutated_sources_give_diagnostics_not_tracebacks(seed: int):
    rng = random.Random(seed)
    for _ in range(25):
        text = mutate(rng.choice(SOURCES), rng)
        document, diagnostics = load_text(text, "fuzz.ops")
        assert document is not None or diagnostics
        for d in diagnostics:
            assert d.code.startswith("OPS") and d.span.line >= 1 and d.span.col >= 1
        formatted, problems = format_text(text, "fuzz.ops")
        assert (formatted is None) == bool(problems)


@pytest.mark.parametrize("opener", ["{", "[", "("])
def test_deep_nesting_is_refused_quickly(opener: str):
    text = "pack a version 1.0.0 owner b {\n  labels " + opener * 10_000 + "\n}\n"
    started = time.perf_counter()
    document, diagnostics = load_text(text, "deep.ops")
    assert time.perf_counter() - started < 2
    assert document is None and diagnostics[0].code == "OPS005"


@pytest.mark.parametrize(
    "line",
    [
        'description "' + "a" * 1_000_000 + '"',
        "a " * 500_000,
        "when " + "x && " * 200_000 + "y",
        "@" * 1_000_000,
        "trigger t on alert when " + "event.value > 1 && " * 50_000 + "true",
    ],
    ids=["long-string", "many-words", "long-expression", "garbage", "deep-expression"],
)
def test_a_one_megabyte_line_finishes_with_a_diagnostic_or_data(line: str):
    text = "pack a version 1.0.0 owner b {\n  " + line + "\n}\n"
    started = time.perf_counter()
    document, diagnostics = load_text(text, "long.ops")
    assert time.perf_counter() - started < 20
    assert document is not None or diagnostics


def test_a_deep_expression_goes_through_lint_without_recursion_error(in_tmp: Path):
    from opsdsl.build.pipeline import analyse_file

    when = "event.value > 1 && " * 20_000 + "true"
    (in_tmp / "deep.ops").write_text(
        "pack a version 1.0.0 owner b {\n  trigger t on alert when " + when + "\n"
        '  playbook p severity SEV-4 { step s: shell { with {argv: ["true"]} } }\n}\n'
    )
    analysis = analyse_file(in_tmp / "deep.ops")
    assert any("4096" in d.message for d in analysis.diagnostics)  # the schema's limit, as in YAML


def test_empty_and_comment_only_files_are_reported():
    for text in ("", "   \n", "# only a comment\n"):
        document, diagnostics = load_text(text, "empty.ops")
        assert document is None and diagnostics[0].code == "OPS001"


def test_error_count_is_capped():
    text = "pack a version 1.0.0 owner b {\n" + "  timeout 1\n  param\n" * 200 + "}\n"
    _, diagnostics = load_text(text, "many.ops")
    assert 1 < len(diagnostics) <= 20


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("1e999", "`1e999` is not a finite number"),
        ("-1e999", "`-1e999` is not a finite number"),
        ("9007199254740992", "integer `9007199254740992` is too large for JSON"),
        ("-99999999999999999999", "integer `-99999999999999999999` is too large for JSON"),
        ("9" * 5000, "integer `99999999999999999999…` is too large for JSON"),  # past int()'s 4,300-digit limit
    ],
)
def test_a_number_a_plan_cannot_hold_is_ops006_not_a_crash(literal: str, message: str):
    # a plan is canonical JSON: an infinity or an integer beyond ±2^53 would crash the compile later
    text = f"pack p version 1.0.0 owner sre {{\n  labels {{big: {literal}}}\n}}\n"
    _document, diagnostics = load_text(text, "p.ops")
    found = [d for d in diagnostics if d.code == "OPS006"]
    assert len(found) == 1, diagnostics
    assert message in found[0].message
    assert (found[0].span.line, found[0].span.col) == (2, 16)


def test_the_largest_safe_integer_and_ordinary_floats_load_as_numbers():
    text = "pack p version 1.0.0 owner sre {\n  labels {a: 9007199254740991, b: -9007199254740991, c: 1.5e3}\n}\n"
    document, diagnostics = load_text(text, "p.ops")
    assert diagnostics == []
    assert document is not None
    assert document.data["metadata"]["labels"] == {"a": 2**53 - 1, "b": -(2**53 - 1), "c": 1500.0}
