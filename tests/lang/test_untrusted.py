"""Reading hostile input: regular files only, bounded, UTF-8, JSON the ledger can record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdsl.canonical import canonical_json
from opsdsl.lang.untrusted import MAX_DEPTH, InputError, json_problem, parse_json, read_bytes, read_json


def test_special_files_are_refused_without_being_opened(tmp_path: Path):
    os.mkfifo(tmp_path / "pipe")  # opening it would block
    (tmp_path / "zero").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    expected = {
        "pipe": "a named pipe (FIFO), not a regular file",
        "zero": "a character device, not a regular file",
        ".": "a directory, not a regular file",
        "loop": "Too many levels of symbolic links",
        "missing": "No such file or directory",
    }
    for name, says in expected.items():
        with pytest.raises(InputError) as caught:
            read_bytes(tmp_path / name, f"--event {name}")
        assert caught.value.message == f"--event {name}: {says}"
        assert caught.value.exit_code == 2


def test_size_utf8_and_depth_limits(tmp_path: Path):
    path = tmp_path / "event.json"
    path.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match="larger than 100 bytes"):
        read_bytes(path, "e", limit=100)
    path.write_bytes(b'{"a":\n"\xff"}')
    with pytest.raises(InputError, match=r"e: not UTF-8 \(byte 7, line 2\)"):
        read_json(path, "e")
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(InputError, match=f"nested deeper than {MAX_DEPTH} levels"):
        read_json(path, "e")
    path.write_bytes(b"\xef\xbb\xbf" + b'{"a": [1, 2.5, "\\u00e9"]}')  # a BOM is dropped
    assert read_json(path, "e") == {"a": [1, 2.5, "é"]}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("NaN", "NaN is not a JSON number"),
        ("[-Infinity]", "-Infinity is not a JSON number"),
        ("1e400", "1e400 is out of range"),
        ("9" * 5000, "not JSON: Exceeds the limit"),
        (str(2**53), f"integer {2**53} is out of range"),
        ('"\\udc80"', "lone UTF-16 surrogate"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper than"),
        ("{", "not JSON: Expecting property name"),
    ],
)
def test_json_the_ledger_cannot_record_is_refused(text: str, says: str):
    with pytest.raises(InputError) as caught:
        parse_json(text, "x")
    assert says in caught.value.message


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(value=JSON)
def test_what_parse_json_accepts_the_ledger_can_record(value):
    try:
        text = json.dumps(value)
    except ValueError:
        return
    try:
        parsed = parse_json(text, "x")
    except InputError:
        assert json_problem(value) is not None or "NaN" in text or "Infinity" in text
        return
    canonical_json(parsed)  # never raises for what was accepted
