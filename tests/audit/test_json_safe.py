"""incident's json_safe: integers RFC 8785 cannot carry become strings, in a tree that shares nothing with its input."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import given
from hypothesis import strategies as st

from opsdsl.audit.incident import json_safe

BIG = 2**53  # one past what RFC 8785 carries

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.tuples(inner, inner) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=30,
)


def reference(value: object) -> object:
    """The definition, written plainly."""
    if isinstance(value, dict):
        return {key: reference(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [reference(item) for item in value]
    if type(value) is int and abs(value) > BIG - 1:
        return str(value)
    return value


def containers(value: object) -> list[int]:
    found = []
    if isinstance(value, dict):
        found.append(id(value))
        for item in value.values():
            found += containers(item)
    elif isinstance(value, list | tuple):
        found.append(id(value))
        for item in value:
            found += containers(item)
    return found


@given(json_values)
def test_json_safe_is_its_definition_and_copies_every_container(value: object) -> None:
    safe = json_safe(value)
    assert safe == reference(value)
    assert not set(containers(safe)) & set(containers(value))


def test_big_integers_become_strings_at_any_depth_and_nothing_else_changes() -> None:
    event = {"labels": {"ns": BIG, "ok": BIG - 1, "neg": -BIG}, "values": (1.5, [True, None, -(BIG - 1)])}
    assert json_safe(event) == {
        "labels": {"ns": str(BIG), "ok": BIG - 1, "neg": str(-BIG)},
        "values": [1.5, [True, None, -(BIG - 1)]],
    }


def test_editing_the_result_never_edits_the_input() -> None:
    # A record built from ledger entries and edited later (a review) must leave the entries alone.
    data = {"event": {"labels": {"a": "1"}}, "steps": [{"outputs": {}}], "kept": OrderedDict(x=[1])}
    safe = json_safe(data)
    safe["event"]["labels"]["a"] = "changed"
    safe["steps"][0]["outputs"]["x"] = 1
    safe["kept"]["x"].append(2)
    assert data == {"event": {"labels": {"a": "1"}}, "steps": [{"outputs": {}}], "kept": OrderedDict(x=[1])}
    assert type(safe["kept"]) is dict
