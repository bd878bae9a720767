"""The checked model (plain records, what lint builds) holds what the pydantic model
holds, field by field, on every schema-valid pack the repository has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from opsdsl.build.pipeline import analyse_file
from opsdsl.lang.checked import build_checked_model
from opsdsl.lang.loader import load_source
from opsdsl.lang.model import build_model

ROOT = Path(__file__).resolve().parents[2]
CANDIDATES = sorted(
    p
    for folder in (ROOT / "packs", ROOT / "tests" / "fixtures", ROOT / "bench")
    for pattern in ("**/*.yaml", "**/*.yml", "**/*.ops")
    for p in folder.glob(pattern)
    if not p.name.endswith((".test.yaml", ".test.yml"))
)


def _schema_valid(path: Path) -> dict | None:
    analysis = analyse_file(path, stop_after="schema")
    if analysis.document is None or analysis.diagnostics:
        return None
    return analysis.document.data


def assert_same(pydantic_value: Any, plain_value: Any, where: str = "model") -> None:
    if isinstance(pydantic_value, BaseModel):
        assert type(plain_value).__name__ == type(pydantic_value).__name__, where
        names = set(type(pydantic_value).model_fields)
        assert names == set(plain_value.__slots__), where
        for name in sorted(names):
            assert_same(getattr(pydantic_value, name), getattr(plain_value, name), f"{where}.{name}")
    elif isinstance(pydantic_value, dict):
        assert type(plain_value) is dict and list(pydantic_value) == list(plain_value), where
        for key in pydantic_value:
            assert_same(pydantic_value[key], plain_value[key], f"{where}[{key!r}]")
    elif isinstance(pydantic_value, tuple | list):
        assert type(plain_value) is type(pydantic_value) and len(plain_value) == len(pydantic_value), where
        for i, (a, b) in enumerate(zip(pydantic_value, plain_value, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert type(plain_value) is type(pydantic_value) and plain_value == pydantic_value, where


# The packs a model is built from (the fixtures of invalid packs have none to compare).
VALID = {path: data for path in CANDIDATES if (data := _schema_valid(path)) is not None}


def test_there_are_schema_valid_packs_to_compare():
    assert len(VALID) >= 10


@pytest.mark.parametrize("path", sorted(VALID), ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_model_holds_what_the_pydantic_model_holds(path: Path):
    data = VALID[path]
    assert_same(build_model(data), build_checked_model(data))


def test_defaults_and_written_nulls_match():
    text = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: d, version: 1.0.0, owner: sre}
params:
  a: {type: string}
  b: {type: string, default: null}
  c: {type: integer, default: 3, enum: [1, 3]}
playbooks:
  respond:
    severity: SEV-3
    timeout: 1h
    inputs:
      x: {type: string, from: event.labels.x, pattern: "[a-z]+"}
    steps:
      - {id: a, action: shell, with: {argv: [echo]}, retry: {attempts: 2, initial: 2s}, needs: []}
    finally:
      - {id: z, action: shell, with: {argv: [echo]}, timeout: 30s}
"""
    document, diagnostics = load_source(text, Path("d.yaml"))
    assert document is not None and not diagnostics
    plain = build_checked_model(document.data)
    assert_same(build_model(document.data), plain)
    assert [plain.params[k].required for k in "abc"] == [True, False, False]
    assert plain.playbooks["respond"].timeout == 3_600_000


def test_checked_records_are_frozen_and_compare_by_value():
    data = _schema_valid(ROOT / "packs" / "sev2.yaml")
    a, b = build_checked_model(data), build_checked_model(data)
    assert a == b and a is not b
    step = next(iter(a.playbooks.values())).steps[0]
    with pytest.raises(AttributeError):
        step.id = "other"
    assert hash(a.metadata.name) and repr(step).startswith("Step(id=")


def test_checked_records_pickle_and_copy():
    import copy
    import pickle

    for name in ("org-policies.yaml", "sev1.yaml"):
        model = build_checked_model(_schema_valid(ROOT / "packs" / name))
        assert pickle.loads(pickle.dumps(model)) == model
        assert copy.deepcopy(model) == model


def _plan_or_error(model: Any, scope: list) -> tuple[str, Any]:
    from opsdsl.build.compiler import CompileError, compile_pack

    try:
        return "plan", compile_pack(model, scope)[1]
    except CompileError as exc:
        return "error", str(exc)


POLICY_PACKS = [data for data in VALID.values() if data.get("kind") == "PolicyPack"]


@pytest.mark.parametrize("path", sorted(VALID), ids=lambda p: str(p.relative_to(ROOT)))
def test_checked_model_dumps_digests_and_plans_as_the_pydantic_model(path: Path):
    """`opsdsl compile` plans from the checked model: its dump, digest and plan bytes must
    be the pydantic model's, byte for byte."""
    import json

    from opsdsl.build.compiler import ScopeEntry, model_digest, model_dump_full

    data = VALID[path]
    rich, plain = build_model(data), build_checked_model(data)
    expected = rich.model_dump(mode="json", by_alias=True)
    dumped = model_dump_full(plain)
    assert dumped == expected
    assert json.dumps(dumped, sort_keys=True) == json.dumps(expected, sort_keys=True)  # types too (1 vs 1.0)
    assert model_digest(plain) == model_digest(rich)
    if plain.kind == "Pack":

        def scope(build):
            models = [build(d) for d in POLICY_PACKS]
            return [ScopeEntry(m.metadata.name, m.metadata.version, model_digest(m), m) for m in models]

        assert _plan_or_error(plain, scope(build_checked_model)) == _plan_or_error(rich, scope(build_model))
        assert _plan_or_error(plain, []) == _plan_or_error(rich, [])


def test_dump_leaves_out_what_pydantic_leaves_out_and_nulls_non_finite_floats():
    text = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: d, version: 1.0.0, owner: sre}
triggers:
  t: {on: alert, threshold: {count: 3, within: 5m, per: event.labels.cluster}, for: 1m}
  u: {on: alert, threshold: {count: 2, within: 1m}}
policies:
  - {id: p, when: "true", effect: require_approval, message: m, distinct_from_requester: true}
  - {id: q, when: "true", effect: deny, message: m}
playbooks:
  respond:
    severity: SEV-3
    inputs:
      x: {type: string, from: event.labels.x}
    steps:
      - {id: a, action: shell, with: {argv: [echo]}, runner: edge,
         compensate: {action: shell, with: {argv: [undo]}, timeout: 5s}}
      - {id: b, action: shell, with: {argv: [echo]}}
    finally:
      - {id: z, action: shell, with: {argv: [echo]}}
"""
    document, diagnostics = load_source(text, Path("d.yaml"))
    assert document is not None and not diagnostics
    data = document.data
    from opsdsl.build.compiler import compile_pack, model_dump_full

    plain, rich = build_checked_model(data), build_model(data)
    dumped = model_dump_full(plain)
    assert dumped == rich.model_dump(mode="json", by_alias=True)
    assert dumped["triggers"]["t"]["threshold"]["per"] == "event.labels.cluster"
    assert "per" not in dumped["triggers"]["u"]["threshold"] and dumped["triggers"]["t"]["for"] == 60_000
    steps = dumped["playbooks"]["respond"]["steps"]
    assert steps[0]["runner"] == "edge" and "runner" not in steps[1] and "with" in steps[0]["compensate"]
    assert "finally" in dumped["playbooks"]["respond"] and dumped["apiVersion"] == "opsdsl/v1"
    assert dumped["playbooks"]["respond"]["inputs"]["x"]["from"] == "event.labels.x"
    assert [("distinct_from_requester" in p) for p in dumped["policies"]] == [True, False]
    assert compile_pack(plain, [])[1] == compile_pack(rich, [])[1]
    # A value the schema lets through in `with:` (an .ops number such as 1e999 is inf):
    # pydantic's JSON mode writes non-finite floats as null, and so must the checked dump.
    data["playbooks"]["respond"]["steps"][1]["with"] = {"argv": ["echo"], "n": float("inf"), "m": [float("nan"), 1.5]}
    plain, rich = build_checked_model(data), build_model(data)
    assert model_dump_full(plain) == rich.model_dump(mode="json", by_alias=True)
    assert model_dump_full(plain)["playbooks"]["respond"]["steps"][1]["with"] == {
        "argv": ["echo"],
        "n": None,
        "m": [None, 1.5],
    }
    # The compiler's quick dump (the pack's own values not copied) gives way to the full one.
    from opsdsl.build.compiler import _plan_dump

    assert _plan_dump(plain) == (model_dump_full(plain), True)
