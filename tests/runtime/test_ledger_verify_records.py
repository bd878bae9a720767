"""`opsdsl ledger verify` checks each incident record's ledger anchor (its run's entries, their
count and `entries_digest`) against the ledger, besides the checkpoint the record holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kernel_api import opsdsl

PACK = """apiVersion: opsdsl/v1
kind: Pack
metadata: {name: chain, version: 1.0.0, owner: tests}
playbooks:
  chain:
    severity: SEV-4
    steps:
      - {id: a, action: assert, with: {that: 'true'}}
      - {id: b, action: assert, with: {that: 'true'}}
"""


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Path, Path]:
    """A state dir with one finished run, and its record.json."""
    pack, state = tmp_path / "chain.yaml", tmp_path / "state"
    pack.write_text(PACK)
    result = opsdsl("run", "--pack", pack, "--playbook", "chain", "--state-dir", state)
    assert result.code == 0, result.stdout + result.stderr
    (record,) = sorted((state / "incidents").glob("*/*/record.json"))
    return state, record


def edit_record(path: Path, change) -> None:
    """Edit the record as an attacker without the key would (the signature no longer matches)."""
    document = json.loads(path.read_text())
    change(document["record"]["ledger"])
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def test_an_intact_record_anchored_on_hashes_verifies(finished) -> None:
    state, record = finished
    assert json.loads(record.read_text())["record"]["ledger"]["entries_digest_of"] == "hashes"
    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 0, result.stdout + result.stderr


def test_a_record_whose_digest_the_ledger_does_not_hold_is_a_finding(finished) -> None:
    state, record = finished
    edit_record(record, lambda ledger: ledger.update(entries_digest="sha256:" + "0" * 64))
    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 1, result.stdout + result.stderr
    assert "the ledger or the record changed" in result.stdout
    # Given from outside, the same record is checked too.
    alone = opsdsl("ledger", "verify", "--no-incidents", "--checkpoint", record, "--state-dir", state)
    assert alone.code == 1 and "the ledger or the record changed" in alone.stdout


def test_a_record_missing_entries_is_a_finding(finished) -> None:
    state, record = finished
    edit_record(record, lambda ledger: ledger.update(last_seq=ledger["last_seq"] + 5, entries=ledger["entries"] + 5))
    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 1 and "the ledger or the record changed" in result.stdout


def test_an_older_record_digested_by_content_still_verifies(finished) -> None:
    from opsdsl.audit.incident import entries_digest
    from opsdsl.audit.ledger import Ledger
    from opsdsl.runtime.store import read_only

    state, record = finished
    run = json.loads(record.read_text())["record"]["run"]
    with read_only(state) as conn:
        entries = [entry.to_dict() for entry in Ledger(conn).entries(run=run)]

    def as_before(ledger: dict) -> None:
        del ledger["entries_digest_of"]
        ledger["entries_digest"] = entries_digest(entries)

    edit_record(record, as_before)
    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "change",
    [
        lambda ledger: ledger.update(first_seq=[1]),
        lambda ledger: ledger.update(last_seq=2**64),
        lambda ledger: ledger.update(first_seq={"a": 1}),
        lambda ledger: ledger.update(entries="3"),
        lambda ledger: ledger.update(first_seq=True),
    ],
    ids=["list-seq", "huge-seq", "dict-seq", "text-count", "bool-seq"],
)
def test_a_malformed_record_anchor_is_a_finding_not_a_crash(finished, change) -> None:
    # Whoever can write STATE_DIR/incidents must not turn `ledger verify` (exit 1: not intact,
    # every problem named) into an internal error (exit 3) that hides the ledger's findings
    # (found in review: a list or 2**64 went straight into the SQL).
    state, record = finished
    edit_record(record, change)
    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 1, result.stdout + result.stderr
    assert "internal error" not in result.stderr
    assert "ledger anchor is malformed" in result.stdout, result.stdout
