"""The YAML source stage: positions for every node, and refusals as diagnostics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsdsl.errors import Span
from opsdsl.lang.loader import MAX_FILE_BYTES, discover, load_file, read_source
from opsdsl.lang.yaml_reader import load_text


def codes(diagnostics) -> list[str]:
    return [d.code for d in diagnostics]


def test_every_value_and_key_has_a_position():
    doc, diags = load_text("a:\n  b: [1, two]\n  c: {d: true}\n", "f.yaml")
    assert diags == []
    assert doc.data == {"a": {"b": [1, "two"], "c": {"d": True}}}
    assert doc.span(("a", "b", 1)) == Span("f.yaml", 2, 10, 2, 13)
    assert doc.key_span(("a", "c")) == Span("f.yaml", 3, 3, 3, 4)
    assert doc.span(("a", "c", "d")).line == 3


def test_yaml_1_2_core_schema_keeps_on_and_no_as_strings():
    doc, _ = load_text("on: alert\nNO: no\nyes: y\nv: 1.0.0\nt: true\nn: null\nx: 0x1f\nf: 2.5\n", "f.yaml")
    assert doc.data == {"on": "alert", "NO": "no", "yes": "y", "v": "1.0.0", "t": True, "n": None, "x": 31, "f": 2.5}


def test_duplicate_key_points_at_second_occurrence():
    _, diags = load_text("a: 1\nb: 2\na: 3\n", "f.yaml")
    assert codes(diags) == ["OPS003"]
    assert (diags[0].span.line, diags[0].span.col) == (3, 1)
    assert "first defined at line 1" in diags[0].message


@pytest.mark.parametrize("key", ["1", "true", "null", "2.5", "[a, b]"])
def test_non_string_keys_are_refused(key):
    _, diags = load_text(f"{key}: x\n", "f.yaml")
    assert codes(diags) == ["OPS004"]


def test_alias_bomb_is_refused_quickly():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [" + ", ".join(f"*{prev}" for _ in range(10)) + "]")
    _, diags = load_text("\n".join(lines) + "\n", "bomb.yaml")
    assert codes(diags) == ["OPS005"]


def test_small_aliases_are_expanded():
    doc, diags = load_text("base: &b {x: 1}\nother: *b\n", "f.yaml")
    assert diags == []
    assert doc.data["other"] == {"x": 1}


def test_recursive_alias_hits_the_depth_limit():
    _, diags = load_text("a: &a [*a]\n", "f.yaml")
    assert codes(diags) == ["OPS005"]


def test_deep_nesting_is_refused():
    _, diags = load_text("a: " + "[" * 100 + "]" * 100 + "\n", "f.yaml")
    assert codes(diags) == ["OPS005"]


def test_custom_tags_and_merge_keys_are_refused():
    _, diags = load_text("a: !!python/object:os.system x\n", "f.yaml")
    assert codes(diags) == ["OPS006"]
    _, diags = load_text("base: &b {x: 1}\nother:\n  <<: *b\n", "f.yaml")
    assert codes(diags) == ["OPS006"]


def test_syntax_error_is_located_with_a_hint():
    _, diags = load_text("a:\n\tb: 1\n", "f.yaml")
    assert codes(diags) == ["OPS002"]
    assert diags[0].span.line == 2
    assert "tabs" in diags[0].hint


def test_multiple_documents_are_refused():
    _, diags = load_text("a: 1\n---\nb: 2\n", "f.yaml")
    assert codes(diags) == ["OPS002"]
    assert diags[0].hint == "put one pack per file"


def test_empty_binary_invalid_utf8_and_huge_files(tmp_path: Path):
    cases = {
        "empty.yaml": b"",
        "comments.yaml": b"# nothing here\n",
        "binary.yaml": b"\x7fELF\x00\x00\x01",
        "latin1.yaml": b"name: caf\xe9\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        doc, diags = load_file(tmp_path / name)
        assert doc is None and codes(diags) == ["OPS001"], name
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)
    doc, diags = load_file(huge)
    assert doc is None and "MiB" in diags[0].message


def test_discover_finds_yaml_and_yml_recursively_skipping_tests_and_hidden(tmp_path: Path):
    for name in ["a.yaml", "sub/b.yml", "sub/c.test.yaml", ".hidden.yaml", ".git/d.yaml", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x: 1\n")
    found = [p.relative_to(tmp_path).as_posix() for p in discover([tmp_path])]
    assert found == ["a.yaml", "sub/b.yml"]
    assert [p.name for p in discover([tmp_path], exclude=["sub/*"])] == ["a.yaml"]


def test_discover_skips_fifos_sockets_and_devices_in_folders_without_opening_them(tmp_path: Path):
    import socket

    (tmp_path / "a.yaml").write_text("x: 1\n")
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "null.yaml").symlink_to("/dev/null")
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(str(tmp_path / "sock.yaml"))
        found = [p.name for p in discover([tmp_path])]
    finally:
        server.close()
    assert found == ["a.yaml", "loop.yaml"]  # the loop is kept: reading it reports why it cannot be read
    doc, diags = load_file(tmp_path / "loop.yaml")
    assert doc is None and diags[0].message.startswith("cannot read file: ")


@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_a_named_special_file_is_refused_without_being_opened(tmp_path: Path, kind: str):
    path = tmp_path / "pack.yaml"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block: the test would hang
    elif kind == "device":
        path.symlink_to("/dev/zero")  # reading it would never end
    else:
        path.mkdir()
    doc, diags = read_source(path)
    assert doc is None and codes(diags) == ["OPS001"]
    assert diags[0].message.startswith("not a regular file (a ")
    assert diags[0].hint == "packs are regular files"


def test_expression_span_maps_offsets_inside_plain_quoted_and_block_scalars():
    text = 'a: x + y\nb: "x + y"\nc: |\n  first\n  x + y\n'
    doc, _ = load_text(text, "f.yaml")
    assert doc.expression_span(("a",), 4).col == 8
    assert doc.expression_span(("b",), 4).col == 9
    span = doc.expression_span(("c",), len("first\n") + 4)
    assert (span.line, span.col) == (5, 7)


def test_exclude_globs_recurse_with_double_star(tmp_path: Path):
    for name in ["packs/a.yaml", "packs/legacy/b.yaml", "packs/legacy/2023/c.yaml", "packs/x/old.yaml"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x: 1\n")
    found = [
        p.relative_to(tmp_path).as_posix() for p in discover([tmp_path / "packs"], exclude=["legacy/**", "old.yaml"])
    ]
    assert found == ["packs/a.yaml"]


def test_numbers_json_cannot_carry_are_refused():
    for text in ("a: 123456789012345678901234567890\n", "a: .inf\n", "a: -.Inf\n", "a: .nan\n"):
        _, diags = load_text(text, "f.yaml")
        assert codes(diags) == ["OPS006"], text
    _, diags = load_text("a: 9007199254740991\nb: 1.5e300\n", "f.yaml")
    assert diags == []


def test_a_nul_byte_is_reported_where_it_is(tmp_path: Path):
    """Issue 13 #17: a NUL far into the file points at its line and column, not line 1."""
    lines = [f"# line {n}" for n in range(1, 64)] + ["description: ab\x00cd", "x: " + "y" * 9000]
    path = tmp_path / "nul.yaml"
    path.write_bytes("\n".join(lines).encode())
    _, diagnostics = read_source(path)
    (diagnostic,) = diagnostics
    assert diagnostic.code == "OPS001"
    assert (diagnostic.span.line, diagnostic.span.col) == (64, 16)
    assert "NUL" in diagnostic.message


def test_a_nul_byte_past_the_first_8_kib_is_still_refused(tmp_path: Path):
    path = tmp_path / "late.yaml"
    path.write_bytes(b"a: " + b"b" * 9000 + b"\nc: caf\xc3\xa9\x00\n")
    _, diagnostics = read_source(path)
    (diagnostic,) = diagnostics
    assert (diagnostic.span.line, diagnostic.span.col) == (2, 8)


def test_invalid_utf8_points_at_its_column(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nname: caf\xe9\n")
    _, diagnostics = read_source(path)
    (diagnostic,) = diagnostics
    assert (diagnostic.span.line, diagnostic.span.col) == (2, 10)


def test_item_spans_are_the_spans_of_each_item_found_in_one_lookup():
    text = "a:\n  - x: 1\n  - y: 2\n  -   z\nb: [1, 2]\n"
    document, diagnostics = load_text(text, "f.yaml")
    assert not diagnostics
    for path, count in ((("a",), 3), (("a",), 5), (("b",), 2), (("missing",), 2), (("a", 0), 1), ((), 0)):
        assert document.item_spans(path, count) == [document.span((*path, i)) for i in range(count)]
    assert document.item_spans(("a",), 3)[2] == Span("f.yaml", 4, 7, 4, 8)
