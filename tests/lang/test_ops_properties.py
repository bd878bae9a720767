"""Round trips as properties: model → .ops → model, model → YAML → .ops → YAML → model, and
`fmt` idempotent, for packs generated from the bundled packs and bench/generate.py."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.build.compiler import model_digest
from opsdsl.lang.loader import is_pack_file, load_file
from opsdsl.lang.model import build_model
from opsdsl.lang.ops import load_text as load_ops
from opsdsl.lang.ops.convert import format_text, ops_to_yaml, yaml_to_ops
from opsdsl.lang.ops.emit import to_ops, to_yaml
from opsdsl.lang.schema import validate_pack
from opsdsl.lang.yaml_reader import load_text as load_yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import generate  # noqa: E402

BUNDLED = [load_file(p)[0].data for p in sorted((ROOT / "packs").glob("*.yaml")) if is_pack_file(p)]
NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True)
POOLS = st.one_of(st.from_regex(r"[a-z][a-z0-9_-]{0,62}", fullmatch=True), st.sampled_from(["step", "runner", "true"]))
DURATIONS = st.builds(lambda n, u: f"{n}{u}", st.integers(1, 59), st.sampled_from(["s", "m"]))
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
SCALARS = st.one_of(
    TEXT, st.integers(-(2**53) + 1, 2**53 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans()
)
WITH_VALUES = st.recursive(
    st.one_of(SCALARS, st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=12,
)
COMMENTS = st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\n\r", exclude_categories=("Cs",))))


@st.composite
def packs(draw) -> dict:
    """A schema-valid pack: a bundled or generated one, with names, durations, optional keys
    and `with:` values varied."""
    if draw(st.booleans()):
        data = copy.deepcopy(draw(st.sampled_from(BUNDLED)))
    else:
        data = generate.plain(generate.generate_pack(index=draw(st.integers(0, 50)), steps=draw(st.integers(1, 8))))
    if data["kind"] == "PolicyPack":
        return data
    data["metadata"]["name"] = draw(st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True))
    if draw(st.booleans()):
        data["metadata"]["description"] = draw(TEXT)
    for hook in (data.get("hooks") or {}).values():
        if draw(st.booleans()):
            hook["cooldown"] = draw(DURATIONS)
        elif "cooldown" in hook and draw(st.booleans()):
            del hook["cooldown"]
    for playbook in data["playbooks"].values():
        for step in playbook["steps"] + playbook.get("finally", []):
            if draw(st.booleans()):
                step["timeout"] = draw(DURATIONS)
            if draw(st.booleans()):
                step["name"] = draw(TEXT)
            if step["action"] == "shell" and draw(st.booleans()):
                step["with"]["env"] = draw(st.dictionaries(NAMES, TEXT, max_size=3))
            if step["action"] == "http.request" and draw(st.booleans()):
                step["with"]["json"] = draw(WITH_VALUES)
            if draw(st.booleans()):
                step["continue_on_error"] = draw(st.booleans())
            if draw(st.booleans()):
                step["runner"] = draw(POOLS)
    return data


def digest(data: dict) -> str:
    return model_digest(build_model(data))


RELAXED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RELAXED
@given(packs())
def test_model_to_ops_to_model_is_the_identity(data: dict):
    assert validate_pack(data) == []
    text, problems = format_text(to_ops(data), "p.ops")
    assert problems == []
    document, diagnostics = load_ops(text, "p.ops")
    assert diagnostics == []
    assert digest(document.data) == digest(data)


@RELAXED
@given(packs())
def test_model_to_yaml_to_ops_to_yaml_to_model_is_the_identity(data: dict):
    yaml_text = to_yaml(data)
    ops_text = yaml_to_ops(yaml_text, "p.yaml")
    again = ops_to_yaml(ops_text, "p.ops")
    document, diagnostics = load_yaml(again, "p.yaml")
    assert diagnostics == []
    assert digest(document.data) == digest(data)
    assert ops_to_yaml(yaml_to_ops(again, "p.yaml"), "p.ops") == again  # the text settles after one cycle


@RELAXED
@given(packs(), COMMENTS, st.randoms(use_true_random=False))
def test_fmt_is_idempotent_and_keeps_comments(data: dict, comments: list[str], rng):
    lines = to_ops(data).splitlines()
    for comment in comments:
        lines.insert(rng.randrange(1, len(lines)), "# " + comment)
    source = "\n".join(lines) + "\n"
    once, problems = format_text(source, "p.ops")
    assert problems == [], source
    twice, _ = format_text(once, "p.ops")
    assert twice == once
    for comment in comments:
        assert ("# " + comment).rstrip() in once
    assert digest(load_ops(once, "p.ops")[0].data) == digest(data)


@pytest.mark.parametrize(
    "text", ["with {a: 1, b: [1, 2.5, -3e-05, true, null]}", 'with {"key with space": {x: "é\\n"}}']
)
def test_literals_round_trip_exactly(text: str):
    source = f"pack a version 1.0.0 owner b {{ playbook p severity SEV-4 {{ step s: x {{ {text} }} }} }}"
    document, _ = load_ops(source, "p.ops")
    data = document.data
    again, _ = load_ops(format_text(to_ops(data), "p.ops")[0], "p.ops")
    assert again.data == data
