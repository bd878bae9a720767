"""The compile stage: plans are canonical, deterministic and complete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from opsdsl.build.compiler import ScopeEntry, build_plan, model_digest, plan_bytes
from opsdsl.build.graph import GraphError, PlaybookGraph
from opsdsl.canonical import canonical_json
from opsdsl.lang.loader import is_pack_file
from opsdsl.lang.model import build_model
from opsdsl.lang.yaml_reader import load_text
from opsdsl.resources import read_text

ROOT = Path(__file__).resolve().parents[2]
PLAN_SCHEMA = jsonschema.Draft202012Validator(json.loads(read_text("schemas/plan.schema.json")))


def model_of(text: str):
    document, diagnostics = load_text(text, "p.yaml")
    assert diagnostics == []
    return build_model(document.data)


def pack_models() -> tuple[list, list[ScopeEntry]]:
    models = [model_of(p.read_text()) for p in sorted((ROOT / "packs").glob("*.yaml")) if is_pack_file(p)]
    scope = [
        ScopeEntry(m.metadata.name, m.metadata.version, model_digest(m), m) for m in models if m.kind == "PolicyPack"
    ]
    return [m for m in models if m.kind == "Pack"], scope


def test_bundled_plans_match_the_plan_schema():
    packs, scope = pack_models()
    for pack in packs:
        PLAN_SCHEMA.validate(build_plan(pack, scope))


def test_plan_bytes_are_canonical_and_repeatable():
    packs, scope = pack_models()
    first = [plan_bytes(build_plan(p, scope)) for p in packs]
    again = [plan_bytes(build_plan(p, list(reversed(scope)))) for p in reversed(packs)]
    assert first == list(reversed(again))
    for data in first:
        assert data == canonical_json(json.loads(data))


def test_reformatting_a_pack_leaves_its_model_digest_and_plan_unchanged(minimal_pack: str):
    reformatted = "# a comment\n" + minimal_pack.replace(
        "metadata: {name: minimal, version: 1.0.0, owner: sre}",
        "metadata:\n  owner: sre\n  version: '1.0.0'\n  name: minimal",
    ).replace("cooldown: 10m", "cooldown: 600s")
    a, b = model_of(minimal_pack), model_of(reformatted)
    assert model_digest(a) == model_digest(b)
    assert plan_bytes(build_plan(a, [])) == plan_bytes(build_plan(b, []))
    changed = model_of(minimal_pack.replace("cooldown: 10m", "cooldown: 11m"))
    assert model_digest(changed) != model_digest(a)


def test_a_written_null_default_differs_from_no_default(minimal_pack: str):
    with_null = minimal_pack.replace('default: "http://127.0.0.1:8080"', "default: null")
    without = minimal_pack.replace(', default: "http://127.0.0.1:8080"', "")
    assert model_digest(model_of(with_null)) != model_digest(model_of(without))


GRAPH_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: graphs, version: 1.0.0, owner: sre}
playbooks:
  respond:
    severity: SEV-2
    steps:
      - {id: a, action: wait, with: {duration: 1s}}
      - {id: b, action: wait, with: {duration: 1s}}
      - {id: c, needs: [], action: shell, with: {argv: [x]}, risk: high, compensate: {action: shell, with: {argv: [undo]}}}
      - {id: d, needs: [b, c], action: http.request, with: {url: "http://x/", method: POST}}
    finally:
      - {id: rca, action: report.rca, with: {title: T}}
      - {id: note, action: notify, with: {url: "http://x/", message: m}}
"""


def test_graph_edges_order_and_entries():
    playbook = model_of(GRAPH_PACK).playbooks["respond"]
    graph = PlaybookGraph(playbook)
    graph.validate()
    data = graph.serialize()
    assert data["entry"] == ["a", "c"]
    assert data["order"] == ["a", "b", "c", "d", "rca", "note"]
    assert data["edges"] == [
        {"from": "a", "to": "b", "kind": "sequence"},
        {"from": "b", "to": "d", "kind": "needs"},
        {"from": "c", "to": "c.compensate", "kind": "compensates"},
        {"from": "c", "to": "d", "kind": "needs"},
        {"from": "d", "to": "rca", "kind": "finally"},
        {"from": "rca", "to": "note", "kind": "sequence"},
    ]


def test_nodes_carry_resolved_settings():
    plan = build_plan(model_of(GRAPH_PACK), [])
    nodes = {n["id"]: n for n in plan["playbooks"]["respond"]["nodes"]}
    assert [n for n in nodes] == sorted(nodes)
    assert nodes["a"]["timeout"] is None and nodes["a"]["idempotent"] is True
    assert nodes["c"]["timeout"] == 600_000 and nodes["c"]["idempotent"] is False
    assert nodes["c"]["compensation"] == "c.compensate"
    assert nodes["c.compensate"] == {
        "id": "c.compensate",
        "section": "compensation",
        "for": "c",
        "action": "shell",
        "with": {"argv": ["undo"]},
        "timeout": 600_000,
        "retry": {"attempts": 1, "backoff": "fixed", "initial": 0, "max": 0, "jitter": False},
        "idempotent": False,
    }
    assert nodes["d"]["timeout"] == 30_000 and nodes["d"]["idempotent"] is False  # a POST
    assert nodes["note"]["section"] == "finally" and nodes["note"]["idempotent"] is False


def test_plans_carry_the_policies_in_scope_with_their_origin():
    packs, scope = pack_models()
    plan = build_plan(packs[1], scope)
    assert {p["origin"] for p in plan["policies"]} <= {plan["pack"]["name"], scope[0].name}
    assert {p.id for p in scope[0].pack.policies} <= {p["id"] for p in plan["policies"] if p["origin"] == scope[0].name}
    assert plan["policyPacks"] == [{"name": scope[0].name, "version": scope[0].version, "digest": scope[0].digest}]


def test_a_cycle_is_refused_by_the_graph():
    text = GRAPH_PACK.replace("{id: a, action", "{id: a, needs: [d], action")
    with pytest.raises(GraphError, match="cycle"):
        PlaybookGraph(model_of(text).playbooks["respond"]).validate()


def test_plans_are_identical_from_another_directory(tmp_path: Path):
    shutil.copytree(ROOT / "packs", tmp_path / "elsewhere")
    a = [plan_bytes(build_plan(p, s)) for p, s in [(p, pack_models()[1]) for p in pack_models()[0]]]
    elsewhere = sorted((tmp_path / "elsewhere").glob("*.yaml"), reverse=True)
    models = [model_of(p.read_text()) for p in elsewhere if is_pack_file(p)]
    scope = [
        ScopeEntry(m.metadata.name, m.metadata.version, model_digest(m), m) for m in models if m.kind == "PolicyPack"
    ]
    b = sorted(plan_bytes(build_plan(m, scope)) for m in models if m.kind == "Pack")
    assert sorted(a) == b


def test_compile_pack_bytes_equal_the_reference_canonical_form():
    import rfc8785

    from opsdsl.build.compiler import compile_pack

    packs, scope = pack_models()
    for pack in packs:
        plan, data = compile_pack(pack, scope)
        assert data == rfc8785.dumps(plan)
