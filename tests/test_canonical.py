"""Canonical JSON is RFC 8785: the fast path agrees with the reference implementation."""

from __future__ import annotations

import json

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdsl.canonical import canonical_json, indented_json, sha256_digest

KEYS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(JSON)
def test_canonical_json_matches_rfc8785(value):
    assert canonical_json(value) == rfc8785.dumps(value)


def test_key_order_is_by_utf16_code_units():
    value = {"\ue000": 1, "\U0001f600": 2, "a": 3}
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(value).index("\U0001f600".encode()) < canonical_json(value).index("\ue000".encode())


def test_numbers_follow_ecmascript():
    assert canonical_json({"a": 1e21, "b": 1e-7, "c": 0.005, "d": 250}) == b'{"a":1e+21,"b":1e-7,"c":0.005,"d":250}'


def test_digest_form():
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


# Any JSON-ish value, surrogates and non-finite floats, big integers and tuples included.
LOOSE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=1000, deadline=None)
@given(LOOSE, st.booleans())
def test_indented_json_is_the_standard_librarys_text(value, ensure_ascii):
    # plans, manifests and incident files are written with it: one byte off changes a digest
    expected = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=ensure_ascii)
    assert indented_json(value, ensure_ascii=ensure_ascii) == expected


class _Label(str):
    pass


def test_indented_json_leaves_unusual_values_to_the_library():
    for value in ({1: "a", 2: "b"}, {"a": _Label("x")}, [True, 1, 1.0, _Label("y")]):
        assert indented_json(value) == json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    with pytest.raises(TypeError):  # the library's error, not a silent str()
        indented_json({"a": object()})
    with pytest.raises(TypeError):  # keys of mixed types do not sort, as in the library
        indented_json({"a": 1, 2: 3})
