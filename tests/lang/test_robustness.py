"""Bad input of any shape ends in diagnostics, never an exception.

Mutated packs (text-level edits of the bundled packs), random expressions in every
expression position, and random values in schema-valid positions all go through the
whole front half of the pipeline: load → schema → model → checks.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.errors import Diagnostic
from opsdsl.lang.checked import build_checked_model
from opsdsl.lang.checks import Scope, Unit, run_checks
from opsdsl.lang.model import build_model
from opsdsl.lang.rules import RULES
from opsdsl.lang.schema import validate_pack
from opsdsl.lang.yaml_reader import load_text

ROOT = Path(__file__).resolve().parents[2]
PACKS = sorted((ROOT / "packs").glob("*.yaml"))
TEXTS = [p.read_text(encoding="utf-8") for p in PACKS]
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def analyse_text(text: str) -> list[Diagnostic]:
    """The pipeline as lint runs it, on text rather than a file."""
    document, diagnostics = load_text(text, "fuzz.yaml")
    if document is None or diagnostics:
        return diagnostics
    problems = validate_pack(document.data)
    if problems:
        return [Diagnostic(p.code, RULES[p.code].severity, p.message, document.span(p.path)) for p in problems]
    model = build_model(document.data)  # must never fail on schema-valid input
    return run_checks(Unit(document, model), Scope())


def assert_only_diagnostics(diagnostics: list[Diagnostic], text: str) -> None:
    lines = text.count("\n") + 2
    for d in diagnostics:
        assert d.code in RULES, d
        assert 1 <= d.span.line <= lines, d
        assert d.span.col >= 1, d
        assert d.message, d
        d.render()


EDITS = st.sampled_from(["delete", "insert", "duplicate_line", "drop_line", "indent", "dedent", "swap_lines"])
NOISE = st.text(alphabet=" :-[]{}#&*!|>'\"\t\n,?%@`$.abc019", min_size=1, max_size=6)


@st.composite
def mutated_pack(draw) -> str:
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(EDITS)
        lines = text.split("\n")
        i = draw(st.integers(0, len(lines) - 1))
        if edit == "delete" and text:
            at = draw(st.integers(0, len(text) - 1))
            text = text[:at] + text[at + draw(st.integers(1, 8)) :]
            continue
        if edit == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(NOISE) + text[at:]
            continue
        if edit == "duplicate_line":
            lines.insert(i, lines[i])
        elif edit == "drop_line":
            del lines[i]
        elif edit == "indent":
            lines[i] = "  " + lines[i]
        elif edit == "dedent":
            lines[i] = lines[i][2:]
        elif edit == "swap_lines" and i + 1 < len(lines):
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
        text = "\n".join(lines)
    return text


@FUZZ
@given(mutated_pack())
def test_mutated_packs_give_only_diagnostics(text: str):
    assert_only_diagnostics(analyse_text(text), text)


EXPRESSION_CHARS = st.text(
    alphabet="abcdeghilmnoprstuvwxyz_.()[]{}\"'!&|=<>+-*/%?:, 0123456789",
    max_size=40,
)
EXPRESSION_PIECES = st.lists(
    st.sampled_from(
        [
            "event",
            "params",
            "steps",
            "inputs",
            "run",
            "now",
            "secrets",
            "step",
            "playbook",
            ".labels",
            ".value",
            ".outputs",
            ".json",
            "[0]",
            '["k"]',
            " && ",
            " || ",
            " == ",
            " < ",
            " in ",
            "!",
            "-",
            "(",
            ")",
            "has(",
            "size(",
            ".startsWith(",
            "5m",
            "1.5",
            "42",
            '"s"',
            "true",
            "null",
            "[1, 2]",
            '{"a": 1}',
            " ? ",
            " : ",
            ",",
            "}}",
            "${{",
        ]
    ),
    max_size=12,
).map("".join)


@FUZZ
@given(st.one_of(EXPRESSION_CHARS, EXPRESSION_PIECES), st.sampled_from(["when", "dedupe", "from", "url", "policy"]))
def test_random_expressions_give_only_diagnostics(expression: str, where: str):
    text = TEXTS[1]  # sev2: triggers, hooks with dedupe, inputs, policies
    quoted = "'" + expression.replace("'", "''") + "'"
    anchors = {
        "when": "    when: ",
        "dedupe": "    dedupe: ",
        "from": "from: ",
        "url": "url: ",
        "policy": "  - id: ",
    }
    anchor = anchors[where]
    at = text.find(anchor)
    if where == "policy":
        text = text + f"  - id: fuzz\n    when: {quoted}\n    effect: deny\n    message: m\n"
        if "\npolicies:" not in text:
            text = text.replace("  - id: fuzz", "policies:\n  - id: fuzz")
    elif at >= 0:
        end = text.index("\n", at)
        value = f"{quoted}" if where != "url" else "'http://x/${{ " + expression.replace("'", "''") + " }}'"
        if where == "from":
            value = value + "}"
        text = text[: at + len(anchor)] + value + text[end:]
    assert_only_diagnostics(analyse_text(text), text)


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 10**6),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.sampled_from(
            ["5m", "0s", "shell", "high", "SEV-1", "${{ event.x }}", "${{ steps.a.outputs }}", "http.request"]
        ),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)


@FUZZ
@given(st.data())
def test_random_values_at_random_paths_give_only_diagnostics(data):
    document, _ = load_text(TEXTS[0], "sev1.yaml")
    value = copy.deepcopy(document.data)
    for _ in range(data.draw(st.integers(1, 3))):
        node = value
        while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = data.draw(st.sampled_from(keys))
            if not isinstance(node[key], (dict, list)):
                node[key] = data.draw(VALUES)
                break
            node = node[key]
        else:
            if isinstance(node, dict) and node:
                node[data.draw(st.sampled_from(list(node)))] = data.draw(VALUES)
    problems = validate_pack(value)
    if not problems:
        model = build_model(value)
        diagnostics = run_checks(Unit(document, model), Scope())
        assert_only_diagnostics(diagnostics, TEXTS[0])
        # lint's checked model (no pydantic) finds exactly what the pydantic model does
        assert run_checks(Unit(document, build_checked_model(value)), Scope()) == diagnostics
