"""opsdsl.runtime.inspect through its Python API (what the operator API calls), on a real
state database: run references, paging, filters, hostile cursors, escaping."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from opsdsl.errors import UsageError
from opsdsl.runtime import inspect as I
from opsdsl.runtime import store as S


def _row(run_id: str, created: float, **fields) -> S.RunRow:
    values = dict(
        id=run_id,
        incident_id=f"INC-{run_id}",
        pack="pack-a",
        playbook="book",
        severity="SEV-3",
        status=S.SUCCEEDED,
        phase="steps",
        created_at=created,
        updated_at=created,
        finished_at=created + 1,
        envelope=b"{}",
        plan_digest="sha256:0",
        trust="dev-key",
        params={},
        inputs={},
        event={},
        hook=None,
        trig=None,
        escalate=None,
        parent_run=None,
        parent_step=None,
        incident_dir="x",
        error=None,
        owner_pid=None,
    )
    values.update(fields)
    return S.RunRow(**values)


@pytest.fixture
def store(tmp_path: Path):
    store = S.Store(tmp_path / "state")
    yield store
    store.close()


def _add(store: S.Store, *rows: S.RunRow) -> None:
    with store.transaction():
        for row in rows:
            store.insert_run(row)


def test_resolve_run_full_id_prefix_latest(store: S.Store):
    _add(
        store,
        _row("20261201-100000-aaaaaaaaaaaa", 100.0),
        _row("20261201-100001-bbbbbbbbbbbb", 101.0),
        _row("20261201-100002-cccccccccccc", 102.0, parent_run="20261201-100001-bbbbbbbbbbbb"),
    )
    assert I.resolve_run(store, "20261201-100000-aaaaaaaaaaaa") == "20261201-100000-aaaaaaaaaaaa"
    assert I.resolve_run(store, "20261201-100001") == "20261201-100001-bbbbbbbbbbbb"
    assert I.resolve_run(store, "latest") == "20261201-100001-bbbbbbbbbbbb"  # the sub-run is newer, not top-level
    with pytest.raises(UsageError, match="several runs") as raised:
        I.resolve_run(store, "2026")
    assert "20261201-100000-aaaaaaaaaaaa" in raised.value.message


@pytest.mark.parametrize(
    "text",
    ["%", "%%%%", "____", "2026%", "2026_1201", "' OR '1'='1", '"; DROP TABLE runs; --', "\x00abc\x00", "\udcff" * 5,
     "2026\U0010ffff", "x" * 1_000_000, "\x1b[2J\x1b]0;t\x07"],
)  # fmt: skip
def test_hostile_references_never_match_and_never_echo_raw(store: S.Store, text: str):
    _add(store, _row("20261201-100000-aaaaaaaaaaaa", 100.0), _row("20261201-100001-bbbbbbbbbbbb", 101.0))
    with pytest.raises(UsageError) as raised:
        I.resolve_run(store, text)
    message = raised.value.message
    assert len(message) < 300 and "\x1b" not in message and "\x00" not in message
    assert store.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2


def test_no_runs_no_latest(store: S.Store):
    with pytest.raises(UsageError, match="no runs"):
        I.resolve_run(store, "latest")


def test_paging_visits_every_run_once_even_with_equal_times(store: S.Store):
    rows = [_row(f"20261201-100000-{i:012x}", 100.0 + i // 7) for i in range(123)]
    _add(store, *rows)
    seen, cursor, pages = [], None, 0
    while True:
        items, cursor = I.list_runs(store, limit=10, cursor=cursor)
        seen += [item["id"] for item in items]
        pages += 1
        if cursor is None:
            break
    assert pages == 13 and len(seen) == 123 and len(set(seen)) == 123
    expected = [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]
    assert seen == expected


def test_filters(store: S.Store):
    _add(
        store,
        _row("20261201-100000-000000000001", 100.0, pack="a", severity="SEV-1", status=S.PAUSED),
        _row("20261201-100000-000000000002", 200.0, pack="b", playbook="other", status=S.FAILED),
        _row("20261201-100000-000000000003", 300.0, pack="a%", severity="SEV-1"),
    )
    with store.transaction():
        store.insert_steps("20261201-100000-000000000001", ["ask", "go"])
        store.conn.execute("UPDATE steps SET status = ? WHERE step_id = 'ask'", (S.AWAITING_APPROVAL,))

    def ids(**filters):
        return [item["id"][-1] for item in I.list_runs(store, **filters)[0]]

    assert ids() == ["3", "2", "1"]
    assert ids(pack="a") == ["1"]  # exact: `a%` is another pack, not a pattern
    assert ids(pack="a%") == ["3"]
    assert ids(severity="SEV-1", since=150) == ["3"]
    assert ids(playbook="other", status=S.FAILED) == ["2"]
    assert I.list_runs(store, status=S.PAUSED)[0][0]["pending_approvals"] == ["ask"]
    for bad in ({"status": "exploded"}, {"limit": 0}, {"limit": True}, {"since": float("nan")}, {"since": "x"}):
        with pytest.raises(UsageError):
            I.list_runs(store, **bad)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    ["", "!!!!", "x" * 10_000, "é", _b64(b"not json"), _b64(b"[1]"), _b64(b'{"a": 1}'), _b64(b'["x", "id"]'),
     _b64(b"[NaN, \"id\"]"), _b64(b"[1e999, \"id\"]"), _b64(b"[true, \"id\"]"), _b64(b"[1, 2]"), _b64(b"[1, \"\"]"),
     _b64(b"[" * 5000), _b64(json.dumps([1, "x" * 1000]).encode())],
)  # fmt: skip
def test_hostile_cursors_are_usage_errors(store: S.Store, cursor: str):
    _add(store, _row("20261201-100000-aaaaaaaaaaaa", 100.0))
    with pytest.raises(UsageError, match="bad cursor"):
        I.list_runs(store, cursor=cursor)


def test_a_cursor_round_trips():
    assert I.decode_cursor(I.encode_cursor(1796633098.3332555, "20261201-100000-aaaaaaaaaaaa")) == (
        1796633098.3332555,
        "20261201-100000-aaaaaaaaaaaa",
    )


def test_escape_leaves_text_and_escapes_controls():
    assert I.escape("naïve café 日本 ✓ → …") == "naïve café 日本 ✓ → …"
    assert I.escape("a\x1b[31mb\x07\x9b\u202e\u200b\ufeff\n\t\r\x7f") == (
        "a\\x1b[31mb\\x07\\x9b\\u202e\\u200b\\ufeff\\n\\t\\r\\x7f"
    )
    assert I.escape("\ud800") == "\\ud800"


def test_parse_since():
    assert I.parse_since("2h", now=10_000) == 10_000 - 7200
    assert I.parse_since("2026-11-27") == I.parse_since("2026-11-27T00:00:00Z")
    assert I.parse_since("2026-11-27T01:00:00+01:00") == I.parse_since("2026-11-27T00:00:00")
    for bad in ("", "yesterday", "-1h", "1y", "2026-02-30", "9" * 100):
        with pytest.raises(UsageError, match="--since"):
            I.parse_since(bad)


def test_a_run_whose_plan_cannot_be_read_still_shows(store: S.Store):
    run_id = "20261201-100000-aaaaaaaaaaaa"
    _add(store, _row(run_id, 100.0, envelope=b"not a signed plan", params={"token": "***"}))
    with store.transaction():
        store.insert_steps(run_id, ["b", "a"])
        store.ledger.append("run.created", run_id, {"params": {"token": "***"}, "inputs": {}, "event": {}})
    detail = I.run_detail(store, run_id)
    assert [step["id"] for step in detail["steps"]] == ["a", "b"]
    assert detail["params"] == {"token": "***"} and len(detail["ledger"]) == 1
    assert "run " + run_id in I.render_detail(detail)
