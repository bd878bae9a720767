"""ledger/excerpt.json built from the ledger's stored rows: one canonical line per entry, data spliced as hashed.

The excerpt is no longer parsed and written again; these tests hold it to what it proved
before: folders written before (an indented excerpt, a golden folder) still verify, a
changed or removed entry line is caught, and hostile data (huge strings, every kind of
unicode, deep nesting, numbers RFC 8785 writes its own way, text that looks like the
excerpt's own syntax) round-trips byte for byte and verifies.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from test_evidence_pack import ledger_with, plan_envelope, resign_manifest, run_of, served  # noqa: F401 (a fixture)
from test_incident import SIGNER, TRUSTED, place_evidence, sev2_run

from opsdsl.audit.incident import verify_folder, write_incident
from opsdsl.audit.incident.pack import check_excerpt, excerpt_bytes, ledger_excerpt, ledger_excerpt_bytes
from opsdsl.canonical import canonical_json
from opsdsl.files import write_atomic_files

# Written by write_incident at commit 1620632 (before excerpts were built from rows), from the
# `served` fixture's two interleaved runs: an indented excerpt, every data object re-serialised.
GOLDEN = Path(__file__).parent / "fixtures" / "excerpt-v1-indented" / "INC-2025-0042"
EXCERPT = Path("ledger") / "excerpt.json"


def test_a_folder_written_before_still_verifies(tmp_path: Path) -> None:
    folder = tmp_path / GOLDEN.name
    shutil.copytree(GOLDEN, folder)
    assert (folder / EXCERPT).read_text().startswith('{\n  "before": {\n    "hash": ')  # the old layout
    assert verify_folder(folder, TRUSTED) == []


def test_the_golden_excerpt_holds_what_the_new_layout_holds(tmp_path: Path) -> None:
    """The same two runs written now: the same entries and checkpoint chain, one line each."""
    first = sev2_run(run="r-0001")
    first[0]["data"] = first[0]["data"] | {"plan_digest": plan_envelope()[1]}
    other = sev2_run(run="r-0002")
    other[0]["data"] = other[0]["data"] | {"incident_id": "INC-2025-0043"}
    ledger = ledger_with([first, other], tmp_path)
    entries = run_of(ledger, "r-0001")
    new = ledger_excerpt(ledger, entries, ledger.latest_checkpoint().to_dict())
    old = json.loads((GOLDEN / EXCERPT).read_text())
    strip = ("prev", "hash")  # the checkpoint and links differ: another ledger file, signed at another time
    assert [{k: v for k, v in e.items() if k not in strip} for e in new["entries"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in old["entries"]
    ]
    assert set(new) == set(old) and new["complete"] is old["complete"] is True


def test_each_entry_is_one_canonical_line_with_the_stored_text(served) -> None:  # noqa: F811
    folder, ledger = served
    text = (folder / EXCERPT).read_text()
    lines = [line.strip().rstrip(",") for line in text.splitlines() if line.startswith('    {"data":')]
    stored = list(ledger.rows())
    assert len(lines) == len(stored) == len(json.loads(text)["entries"])
    for line, row in zip(lines, stored, strict=True):
        entry = json.loads(line)
        assert canonical_json(entry).decode() == line
        assert line.startswith('{"data":' + row.data + ',"hash":"' + row.hash.hex() + '"')


def test_the_rows_and_the_parsed_entries_give_the_same_bytes(served) -> None:  # noqa: F811
    _, ledger = served
    entries = run_of(ledger, "r-0001")
    checkpoint = ledger.latest_checkpoint().to_dict()
    written = ledger_excerpt_bytes(ledger, entries, checkpoint)
    assert excerpt_bytes(ledger_excerpt(ledger, entries, checkpoint)) == written

    class EntriesOnly:  # a ledger-like object without rows(): parsed entries, written back canonically
        def entries(self, run=None, after=0):
            return ledger.entries(run=run, after=after)

    assert ledger_excerpt_bytes(EntriesOnly(), entries, checkpoint) == written


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda lines, i: lines.__setitem__(i, lines[i].replace('"status":200', '"status":500')),
            "does not match its hash",
        ),
        (
            lambda lines, i: lines.__setitem__(i, lines[i].replace('"step":"', '"step":"x', 1)),
            "does not match its hash",
        ),
        (lambda lines, i: lines.pop(i), "follows seq"),
    ],
    ids=["data-changed", "another-field-of-data", "entry-removed"],
)
def test_a_changed_or_removed_line_is_caught(served, edit, expected: str) -> None:  # noqa: F811
    folder, _ = served
    path = folder / EXCERPT
    lines = path.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith('    {"data":') and '"status":200' in line]
    before = "".join(lines)
    edit(lines, starts[0])
    assert "".join(lines) != before
    path.write_text("".join(lines))
    resign_manifest(folder)  # even with the manifest signed again, the chain and the checkpoint tell
    problems = verify_folder(folder, TRUSTED)
    assert any(expected in problem for problem in problems), problems


HOSTILE = {
    "huge": "x" * 1_000_000 + "é",
    "unicode": "Zürich 東京 \U0001f525 \u202eevil\u202c \u2028\u2029 e\u0301 \ufeff \x7f",
    "controls": "\x00\x01\x1f\t\n\r\b\f",
    "quotes": 'a"b\\c\\"d\\\\',
    "syntax": '"}], "checkpoint": null, "complete": false, "x": [{"data": {',
    "nested": {"a": [[[[[[{"b": [1, [2, [3, {"c": None}]]]}]]]]]]},
    "deep": json.loads("[" * 300 + "]" * 300),
    "numbers": [1.7e18, 2.5e300, 1e-7, -0.5, 9007199254740991, -9007199254740991, 0.1, 1e21, 3.0],
    "\U0001f600 astral key": 1,
    "\uff61 bmp key": 2,  # sorts after the astral key in UTF-16, before it by code point
    "": "empty key",
}


def test_hostile_data_round_trips_and_verifies(tmp_path: Path) -> None:
    first = sev2_run(run="r-0001")
    first[0]["data"] = first[0]["data"] | {"event": HOSTILE}
    other = sev2_run(run="r-0002")
    other[0]["data"] = other[0]["data"] | {"incident_id": "INC-2025-0043", "event": HOSTILE}
    for entry in other[3:8]:
        entry["data"] = entry["data"] | {"outputs": HOSTILE}
    ledger = ledger_with([first, other], tmp_path)
    entries = run_of(ledger, "r-0001")
    root = tmp_path / "incidents"
    place_evidence(root, entries)
    checkpoint = ledger.latest_checkpoint().to_dict()
    folder = write_incident(root, entries, checkpoint=checkpoint, signer=SIGNER, ledger=ledger)
    assert verify_folder(folder, TRUSTED) == []
    raw = (folder / EXCERPT).read_bytes()
    excerpt = json.loads(raw)
    assert excerpt["complete"] is True and len(excerpt["entries"]) == 40
    for entry, row in zip(excerpt["entries"], ledger.rows(), strict=True):
        assert row.data.encode() in raw  # spliced as stored
        assert entry["data"] == json.loads(row.data)
    assert excerpt["entries"][0]["data"]["event"]["huge"] == HOSTILE["huge"]


def test_a_tampered_row_makes_a_folder_that_fails_verification(tmp_path: Path) -> None:
    """Text that breaks out of its entry, put in the database by someone who dropped the guard rails."""
    ledger = ledger_with([sev2_run(run="r-0001"), sev2_run(run="r-0002")], tmp_path)
    entries = run_of(ledger, "r-0001")
    conn = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
    conn.execute("DROP TRIGGER ledger_no_update")
    for seq, data in (  # entries of the other run (r-0002), which the excerpt copies
        (4, '{}], "complete": false, "x": [{"data": {}'),
        (6, '{"a": 1} , "hash": "' + "00" * 32 + '", "data": {"b": 2}'),
        (8, "not json"),
    ):
        conn.execute("UPDATE ledger SET data = ? WHERE seq = ?", (data, seq))
        root = tmp_path / f"incidents-{seq}"
        place_evidence(root, entries)
        folder = write_incident(
            root, entries, checkpoint=ledger.latest_checkpoint().to_dict(), signer=SIGNER, ledger=ledger
        )
        assert verify_folder(folder, TRUSTED) != []


def test_an_excerpt_without_its_checkpoint_checks_its_chain_only(served) -> None:  # noqa: F811
    _, ledger = served
    entries = run_of(ledger, "r-0001")
    record = json.loads((served[0] / "record.json").read_text())["record"]
    excerpt = ledger_excerpt(ledger, entries, None)
    assert excerpt["checkpoint"] is None and excerpt["entries"][-1]["seq"] == entries[-1]["seq"]
    problems, summary = check_excerpt(excerpt, record, TRUSTED)
    assert problems == [] and "no checkpoint" in summary


def test_files_are_written_atomically_together(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a").write_bytes(b"old")
    write_atomic_files([(tmp_path / "a", b"new a"), (tmp_path / "sub" / "b", b"b" * 100_000)], mode=0o600)
    assert (tmp_path / "a").read_bytes() == b"new a" and (tmp_path / "sub" / "b").read_bytes() == b"b" * 100_000
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "sub"]  # no temporaries left
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(FileNotFoundError):  # a missing folder: nothing is renamed into place
        write_atomic_files([(tmp_path / "a", b"third"), (tmp_path / "missing" / "c", b"c")])
    assert (tmp_path / "a").read_bytes() == b"new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "link", "sub"]
