"""The schema stage: our compiled validator agrees with jsonschema and locates problems."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from conftest import MINIMAL_PACK
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.lang.schema import compile_schema, validate_pack
from opsdsl.lang.yaml_reader import load_text
from opsdsl.resources import read_text

SCHEMA = json.loads(read_text("schemas/pack.schema.json"))
REFERENCE = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_valid_draft_2020_12_with_descriptions_everywhere():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert "description" in prop or (
                    "$ref" in prop and "description" in SCHEMA["$defs"][prop["$ref"].split("/")[-1]]
                ), f"{where}.{name}"
            for key, value in node.items():
                if key != "if":  # conditions select a branch; editors do not show them
                    walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(SCHEMA, "$")


def test_minimal_pack_is_valid(minimal_pack):
    doc, _ = load_text(minimal_pack, "m.yaml")
    assert validate_pack(doc.data) == []
    assert REFERENCE.is_valid(doc.data)


def problems_of(text: str):
    doc, diags = load_text(text, "p.yaml")
    assert diags == []
    return validate_pack(doc.data)


def test_misspelt_key_gets_did_you_mean_at_the_key(minimal_pack):
    found = problems_of(minimal_pack.replace("timeout: 10s", "timout: 10s"))
    assert [(p.code, p.path[-1], p.hint, p.at) for p in found] == [
        ("OPS011", "timout", "did you mean `timeout`?", "key")
    ]


def test_missing_key_points_at_the_mapping(minimal_pack):
    found = problems_of(minimal_pack.replace("        action: http.request\n", ""))
    assert [(p.code, p.path) for p in found] == [("OPS012", ("playbooks", "respond", "steps", 0))]


def test_wrong_type_suggests_quoting(minimal_pack):
    found = problems_of(minimal_pack.replace("version: 1.0.0", "version: 1.0"))
    assert [(p.code, p.hint) for p in found] == [("OPS010", 'quote it: "1.0"')]


def test_action_inputs_are_checked_per_action(minimal_pack):
    found = problems_of(minimal_pack.replace("{method: GET,", "{method: FETCH,"))
    assert [(p.code, p.path[-1]) for p in found] == [("OPS013", "method")]
    shell = minimal_pack.replace("action: http.request", "action: shell")
    found = problems_of(shell)
    assert sorted(p.code for p in found) == ["OPS011", "OPS011", "OPS012"]  # method, url unknown; argv missing


def test_policy_pack_branch(minimal_pack):
    text = "apiVersion: opsdsl/v1\nkind: PolicyPack\nmetadata: {name: org, version: 1.0.0, owner: sec}\npolicies: []\n"
    assert [(p.code, p.path) for p in problems_of(text)] == [("OPS013", ("policies",))]


def test_unsupported_keywords_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        compile_schema({"type": "object", "dependentRequired": {"a": ["b"]}})


# Differential: for documents near the valid ones, our validator and jsonschema agree on
# validity. Mutations replace, delete or add values at random paths of a valid pack.

BASE = load_text(MINIMAL_PACK, "m.yaml")[0].data
BASE["policies"] = [{"id": "p1", "when": "true", "effect": "deny", "message": "m"}]
BASE["playbooks"]["respond"]["steps"].append(
    {
        "id": "n",
        "action": "notify",
        "with": {"kind": "pagerduty", "routing_key": "${{ secrets.k }}", "message": "x"},
        "retry": {"attempts": 2},
    }
)

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 200),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        [
            "",
            "x",
            "5m",
            "0s",
            "SEV-2",
            "GET",
            "shell",
            "wait",
            "pagerduty",
            "opsdsl/v1",
            "Pack",
            "PolicyPack",
            "1.0.0",
            "a b",
            "high",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(["id", "action", "with", "x", "url", "argv", "duration", "count"]), inner, max_size=3
        ),
    ),
    max_leaves=6,
)


def all_paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from all_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from all_paths(value, (*prefix, i))


PATHS = list(all_paths(BASE))[1:]


@st.composite
def mutated(draw):
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = doc
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["replace", "delete", "add"]))
            if action == "replace":
                parent[path[-1]] = draw(VALUES)
            elif action == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.sampled_from(["timeout", "bogus", "needs", "risk", "with", "when", "for"]))] = draw(
                    VALUES
                )
        except (KeyError, IndexError, TypeError):
            continue
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_validator_agrees_with_jsonschema(document):
    ours = validate_pack(document)
    assert (ours == []) == REFERENCE.is_valid(document), (ours, [e.message for e in REFERENCE.iter_errors(document)])


def test_anchored_patterns_refuse_a_trailing_newline(minimal_pack):
    found = problems_of(minimal_pack.replace("name: minimal,", 'name: "minimal\\n",'))
    assert [(p.code, p.path) for p in found] == [("OPS013", ("metadata", "name"))]
