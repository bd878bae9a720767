"""`opsdsl lock`, `opsdsl drift` and restoring a locked policy pack."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def opsdsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsdsl", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "packs", tmp_path / "packs")
    result = opsdsl("lock", "packs/", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "locked 5 packs in opsdsl.lock\n"
    return tmp_path


def test_lock_pins_name_version_and_digests(tree: Path):
    lock = json.loads((tree / "opsdsl.lock").read_text())
    assert sorted(lock["packs"]) == ["sqlx-org-policies", "sqlx-sev1", "sqlx-sev2", "sqlx-sev3", "sqlx-sev4"]
    entry = lock["packs"]["sqlx-sev2"]
    assert entry["kind"] == "Pack" and entry["version"] == "4.0.0" and entry["source"] == "packs/sev2.yaml"
    assert entry["modelDigest"].startswith("sha256:") and entry["sourceDigest"].startswith("sha256:")
    assert "model" in lock["packs"]["sqlx-org-policies"]  # kept for rollback


def test_no_drift_then_an_edit_without_version_bump(tree: Path):
    assert opsdsl("drift", "packs/", "--no-build", cwd=tree).returncode == 0
    path = tree / "packs" / "sev2.yaml"
    path.write_text(path.read_text().replace("default: 250", "default: 300", 1))
    result = opsdsl("drift", "packs/", "--no-build", cwd=tree)
    assert result.returncode == 1
    assert (
        result.stdout == "unversioned-change  `sqlx-sev2` 4.0.0 changed since it was locked, without a version bump\n"
    )


def test_reformatting_is_not_drift(tree: Path):
    path = tree / "packs" / "sev3.yaml"
    path.write_text("# reformatted\n" + path.read_text().replace("  ", "  ", 1) + "\n\n")
    assert opsdsl("drift", "packs/", "--no-build", cwd=tree).returncode == 0


def test_version_bump_new_and_missing_packs(tree: Path):
    (tree / "packs" / "sev4.yaml").unlink()
    path = tree / "packs" / "sev1.yaml"
    path.write_text(
        path.read_text()
        .replace("version: 4.0.0", "version: 4.1.0", 1)
        .replace("name: sqlx-sev1", "name: sqlx-sev1b", 1)
    )
    result = opsdsl("drift", "packs/", "--no-build", cwd=tree)
    assert result.returncode == 1
    kinds = [line.split()[0] for line in result.stdout.splitlines()]
    assert kinds == ["missing", "missing", "new"]


def test_a_bad_policy_revision_rolls_back_to_the_locked_one(tree: Path):
    policies = tree / "packs" / "org-policies.yaml"
    original = policies.read_text()
    policies.write_text(original.replace("effect: require_approval", "effect: allow", 1))
    assert opsdsl("drift", "packs/", "--no-build", cwd=tree).returncode == 1
    restored = opsdsl("lock", "--restore", "sqlx-org-policies", cwd=tree)
    assert restored.returncode == 0, restored.stderr
    assert opsdsl("drift", "packs/", "--no-build", cwd=tree).returncode == 0
    assert opsdsl("lint", "packs/", cwd=tree).returncode == 0


def test_only_policy_packs_restore(tree: Path):
    result = opsdsl("lock", "--restore", "sqlx-sev2", cwd=tree)
    assert result.returncode == 1
    assert "only policy packs can be restored" in result.stderr


def test_missing_lock_is_a_clear_error(tmp_path: Path):
    shutil.copytree(ROOT / "packs", tmp_path / "packs")
    result = opsdsl("drift", "packs/", cwd=tmp_path)
    assert result.returncode == 1
    assert "no lock file; create one with `opsdsl lock PATH...`" in result.stderr


def test_restore_refuses_a_tampered_lock(tree: Path):
    lock = json.loads((tree / "opsdsl.lock").read_text())
    lock["packs"]["sqlx-org-policies"]["model"]["policies"][0]["effect"] = "allow"
    (tree / "opsdsl.lock").write_text(json.dumps(lock))
    result = opsdsl("lock", "--restore", "sqlx-org-policies", cwd=tree)
    assert result.returncode == 1 and "does not match its digest" in result.stderr


def test_restore_refuses_to_write_outside_the_working_directory(tree: Path):
    lock = json.loads((tree / "opsdsl.lock").read_text())
    lock["packs"]["sqlx-org-policies"]["source"] = "../escape.yaml"
    (tree / "opsdsl.lock").write_text(json.dumps(lock))
    result = opsdsl("lock", "--restore", "sqlx-org-policies", cwd=tree)
    assert result.returncode == 1 and "outside the working directory" in result.stderr
    assert not (tree.parent / "escape.yaml").exists()


def test_a_damaged_lock_entry_is_a_clear_error(tree: Path):
    lock = json.loads((tree / "opsdsl.lock").read_text())
    lock["packs"]["sqlx-sev1"] = "garbage"
    (tree / "opsdsl.lock").write_text(json.dumps(lock))
    result = opsdsl("drift", "packs/", "--no-build", cwd=tree)
    assert result.returncode == 1 and "the entry for `sqlx-sev1` is damaged" in result.stderr
