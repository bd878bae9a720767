"""Keys, state directories and what verification trusts (issue 13, items 1-5), end to end:
real `opsdsl` subprocesses on real state directories, checked as an auditor would."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_api import FIXTURES, ROOT, KernelAPI, Result, cli_env, opsdsl, param_args, state_db

from opsdsl.build.signing import (
    add_signature,
    encode_base64,
    envelope_bytes,
    keyid,
    load_private_key,
    load_public_key,
    parse_envelope,
)

PACK = FIXTURES / "retries.yaml"


@pytest.fixture
def api() -> Iterator[KernelAPI]:
    with KernelAPI() as server:
        yield server


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def run_pack(api: KernelAPI, state: Path, *args: str) -> Result:
    return opsdsl(
        "run", "--pack", PACK, "--state-dir", state, "--log-format", "json", *param_args(kernel_url=api.url), *args
    )


def keygen(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    made = opsdsl("keygen", "--out", path)
    assert made.code == 0, made.stderr
    return path


def compile_plan(tmp_path: Path, key: Path, version: str = "1.0.0", name: str = "build") -> Path:
    source = tmp_path / f"src-{version}" / "retries.yaml"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(PACK.read_text().replace("version: 1.0.0", f"version: {version}"))
    build = tmp_path / f"{name}-{version}"
    compiled = opsdsl("compile", source, "-o", build, "--key", key)
    assert compiled.code == 0, compiled.stdout + compiled.stderr
    (plan,) = build.glob("*.plan.dsse.json")
    return plan


def trust_file(path: Path, keys: dict[str, Path], environments: str = "") -> Path:
    lines = ["apiVersion: opsdsl/v1", "kind: Trust", "keys:"]
    lines += [f"  - {{name: {name}, file: {pub}}}" for name, pub in keys.items()]
    path.write_text("\n".join(lines) + "\n" + environments)
    return path


def record_of(result: Result) -> dict:
    return json.loads((Path(result.end["incident_folder"]) / "record.json").read_text())


def checkpoint_keyids(state: Path) -> set[str]:
    conn = state_db(state)
    try:
        return {row[0] for row in conn.execute("SELECT keyid FROM checkpoints")}
    finally:
        conn.close()


# ---- 1. the dev key is created once, and its public half is derived from it ------------------


def test_concurrent_first_runs_on_a_new_state_dir_share_one_key(api: KernelAPI, state: Path) -> None:
    command = [sys.executable, "-m", "opsdsl", "run", "--pack", str(PACK), "--state-dir", str(state)]
    command += ["--log-format", "quiet", *param_args(kernel_url=api.url)]
    processes = [
        subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(5)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 5, outputs

    assert sorted(p.name for p in (state / "keys").iterdir()) == ["dev.key", "dev.pub"]
    key = load_private_key(state / "keys" / "dev.key")
    assert keyid(load_public_key(state / "keys" / "dev.pub")) == keyid(key.public_key())
    assert checkpoint_keyids(state) == {keyid(key.public_key())}
    for record in (state / "incidents").glob("*/*/record.json"):
        assert [s["keyid"] for s in json.loads(record.read_text())["signatures"]] == [keyid(key.public_key())]
    verify = opsdsl("ledger", "verify", "--state-dir", state)
    assert verify.code == 0, verify.stdout + verify.stderr


def test_a_stored_public_key_is_never_trusted_on_its_own(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    assert run_pack(api, state).code == 0
    planted = keygen(tmp_path / "planted.key")
    (state / "keys" / "dev.pub").write_bytes(Path(f"{planted}.pub").read_bytes())

    assert run_pack(api, state).code == 0  # the run signs with dev.key and heals dev.pub
    own = load_private_key(state / "keys" / "dev.key").public_key()
    assert keyid(load_public_key(state / "keys" / "dev.pub")) == keyid(own)
    verify = opsdsl("ledger", "verify", "--state-dir", state)
    assert verify.code == 0, verify.stdout + verify.stderr


# ---- 2. production state directories ---------------------------------------------------------


@pytest.fixture
def production(tmp_path: Path, state: Path) -> dict[str, Path]:
    signing = keygen(tmp_path / "secure" / "records.key")
    release = keygen(tmp_path / "secure" / "release.key")
    made = opsdsl("init", "--production", "--signing-key", signing, "--state-dir", state)
    assert made.code == 0, made.stdout + made.stderr
    trust = trust_file(tmp_path / "secure" / "trust.yaml", {"release": Path(f"{release}.pub")})
    return {"signing": signing, "release": release, "trust": trust}


def test_production_refuses_pack_runs(api: KernelAPI, state: Path, production: dict[str, Path]) -> None:
    result = run_pack(api, state)
    assert result.code == 5, result.stdout + result.stderr
    assert "production" in result.stderr and "--plan" in result.stderr
    assert not (state / "keys" / "dev.key").exists()
    fired = opsdsl("fire", "--pack", PACK, "--state-dir", state, "-", stdin="{}")
    assert fired.code == 5, fired.stdout + fired.stderr


def test_production_signs_with_the_configured_key_and_says_how_the_plan_was_verified(
    api: KernelAPI, state: Path, tmp_path: Path, production: dict[str, Path]
) -> None:
    plan = compile_plan(tmp_path, production["release"])
    result = opsdsl(
        "run", "--plan", plan, "--trust", production["trust"], "--state-dir", state, "--log-format", "json",
        *param_args(kernel_url=api.url),
    )  # fmt: skip
    assert result.code == 0, result.stdout + result.stderr

    signing = load_private_key(production["signing"]).public_key()
    assert checkpoint_keyids(state) == {keyid(signing)}
    assert not (state / "keys" / "dev.key").exists()
    document = record_of(result)
    assert [s["keyid"] for s in document["signatures"]] == [keyid(signing)]
    record = document["record"]
    assert record["signing"] == {
        "keyid": keyid(signing),
        "key": "configured",
        "mode": "production",
    }
    verification = record["plan_verification"]
    assert verification["path"] == "plan"
    assert verification["trust"] == str(production["trust"])
    assert verification["environment"] == "default"

    archive = tmp_path / "incident.tar.gz"
    assert opsdsl("incident", "export", result.end["incident_folder"], "-o", archive).code == 0
    checked = opsdsl("incident", "verify", archive, "--key", f"{production['signing']}.pub")
    assert checked.code == 0, checked.stdout + checked.stderr
    assert f"--plan verified against trust file {production['trust']} (environment default)" in checked.stdout
    assert "production" in checked.stdout and keyid(signing)[:16] in checked.stdout
    audited = opsdsl("ledger", "verify", "--state-dir", state, "--key", f"{production['signing']}.pub")
    assert audited.code == 0, audited.stdout + audited.stderr


def test_production_refuses_a_signing_key_inside_the_state_dir(state: Path) -> None:
    key = keygen(state / "mine.key")
    made = opsdsl("init", "--production", "--signing-key", key, "--state-dir", state)
    assert made.code == 2, made.stdout + made.stderr
    assert "outside the state directory" in made.stderr


def test_a_dev_run_record_says_its_plan_was_dev_signed(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    result = run_pack(api, state)
    assert result.code == 0, result.stdout + result.stderr
    record = record_of(result)["record"]
    assert record["plan_verification"]["path"] == "pack"
    assert record["signing"]["key"] == "dev" and record["signing"]["mode"] == "development"
    archive = tmp_path / "incident.tar.gz"
    assert opsdsl("incident", "export", result.end["incident_folder"], "-o", archive, "--state-dir", state).code == 0
    checked = opsdsl("incident", "verify", archive, "--state-dir", state)
    assert checked.code == 0, checked.stdout + checked.stderr
    assert "--pack compiled and signed with the state directory's dev key" in checked.stdout


# ---- 3. ledger verify says what it trusted; a finished run needs a checkpoint ---------------


def test_ledger_verify_says_loudly_that_it_trusted_the_state_dirs_own_key(api: KernelAPI, state: Path) -> None:
    assert run_pack(api, state).code == 0
    result = opsdsl("ledger", "verify", "--state-dir", state)
    assert result.code == 0, result.stdout + result.stderr
    assert "trusting the key found in the directory being checked" in result.stdout
    assert "--key/--trust" in result.stdout


def test_a_rewritten_chain_resigned_with_a_planted_key_fails_an_audit_with_the_real_key(
    api: KernelAPI, state: Path, tmp_path: Path
) -> None:
    assert run_pack(api, state).code == 0
    real = tmp_path / "real-dev.pub"
    real.write_bytes((state / "keys" / "dev.pub").read_bytes())
    # The attacker plants a key, re-signs the head and deletes the incident folders.
    from opsdsl.audit.ledger import Ledger
    from opsdsl.build.signing import generate_key, write_private_key, write_public_key

    planted = generate_key()
    write_private_key(state / "keys" / "dev.key", planted, None)
    write_public_key(state / "keys" / "dev.pub", planted.public_key())
    conn = state_db(state)
    conn.execute("DELETE FROM checkpoints")
    Ledger(conn).checkpoint(planted)
    conn.close()
    for record in (state / "incidents").glob("*/*/record.json"):
        for item in record.parent.iterdir():  # the evidence pack has folders (plan/, ledger/)
            shutil.rmtree(item) if item.is_dir() else item.unlink()
        record.parent.rmdir()

    naive = opsdsl("ledger", "verify", "--state-dir", state)
    assert "trusting the key found in the directory being checked" in naive.stdout
    audit = opsdsl("ledger", "verify", "--state-dir", state, "--key", real)
    assert audit.code == 1, audit.stdout + audit.stderr
    assert "not trusted" in audit.stdout


def test_a_finished_run_without_a_checkpoint_is_a_finding(api: KernelAPI, state: Path) -> None:
    assert run_pack(api, state).code == 0
    conn = state_db(state)
    conn.execute("DELETE FROM checkpoints")
    conn.close()

    result = opsdsl("ledger", "verify", "--no-incidents", "--state-dir", state)
    assert result.code == 1, result.stdout + result.stderr
    assert "finished" in result.stdout and "no trusted checkpoint covers" in result.stdout


# ---- 4. plans at run time --------------------------------------------------------------------


def test_an_older_plan_is_refused_after_a_newer_one_ran(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    release = keygen(tmp_path / "keys" / "release.key")
    trust = trust_file(tmp_path / "trust.yaml", {"release": Path(f"{release}.pub")})
    old, new = compile_plan(tmp_path, release, "1.0.0"), compile_plan(tmp_path, release, "1.1.0")
    common = ("--trust", trust, "--state-dir", state, "--log-format", "json", *param_args(kernel_url=api.url))

    assert opsdsl("run", "--plan", old, *common).code == 0
    assert opsdsl("run", "--plan", new, *common).code == 0
    again = opsdsl("run", "--plan", old, *common)
    assert again.code == 5, again.stdout + again.stderr
    assert "1.0.0" in again.stderr and "1.1.0" in again.stderr


def test_env_is_required_when_the_trust_file_has_several(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    alice, bob = keygen(tmp_path / "keys" / "alice.key"), keygen(tmp_path / "keys" / "bob.key")
    trust = trust_file(
        tmp_path / "trust.yaml",
        {"alice": Path(f"{alice}.pub"), "bob": Path(f"{bob}.pub")},
        "environments:\n  default: {threshold: 1}\n  production: {threshold: 2}\n",
    )
    plan = compile_plan(tmp_path, alice)
    common = ("--trust", trust, "--state-dir", state, *param_args(kernel_url=api.url))

    forgotten = opsdsl("run", "--plan", plan, *common)
    assert forgotten.code == 2, forgotten.stdout + forgotten.stderr
    assert "--env" in forgotten.stderr and "production" in forgotten.stderr
    assert opsdsl("run", "--plan", plan, "--env", "production", *common).code == 5  # one of two signatures
    assert not api.seen()


def test_a_bad_signature_from_a_trusted_key_refuses_the_plan_even_above_the_threshold(
    api: KernelAPI, state: Path, tmp_path: Path
) -> None:
    alice, bob = keygen(tmp_path / "keys" / "alice.key"), keygen(tmp_path / "keys" / "bob.key")
    trust = trust_file(tmp_path / "trust.yaml", {"alice": Path(f"{alice}.pub"), "bob": Path(f"{bob}.pub")})
    plan = compile_plan(tmp_path, alice)
    envelope = add_signature(parse_envelope(plan.read_bytes()), load_private_key(bob))
    bob_id = keyid(load_private_key(bob).public_key())
    for entry in envelope["signatures"]:
        if entry["keyid"] == bob_id:
            entry["sig"] = encode_base64(bytes(64))
    plan.write_bytes(envelope_bytes(envelope))

    result = opsdsl("run", "--plan", plan, "--trust", trust, "--state-dir", state, *param_args(kernel_url=api.url))
    assert result.code == 5, result.stdout + result.stderr
    assert "bad signature" in result.stderr and "bob" in result.stderr
    assert not api.seen()


# ---- 5. modes --------------------------------------------------------------------------------


def test_a_world_writable_state_dir_is_made_private_with_a_warning(api: KernelAPI, state: Path) -> None:
    state.mkdir()
    os.chmod(state, 0o777)
    result = run_pack(api, state)
    assert result.code == 0, result.stdout + result.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert "0777" in result.stderr and "0700" in result.stderr


def test_a_private_key_readable_by_others_is_refused(api: KernelAPI, state: Path) -> None:
    assert run_pack(api, state).code == 0
    key = state / "keys" / "dev.key"
    os.chmod(key, 0o644)
    result = run_pack(api, state)
    assert result.code == 5, result.stdout + result.stderr
    assert f"chmod 600 {key}" in result.stderr


def test_incident_folders_outside_the_state_dir_are_private(api: KernelAPI, state: Path, tmp_path: Path) -> None:
    outside = tmp_path / "shared" / "incidents"
    outside.parent.mkdir()
    os.chmod(outside.parent, 0o755)
    result = run_pack(api, state, "--incidents-dir", str(outside))
    assert result.code == 0, result.stdout + result.stderr
    folder = Path(result.end["incident_folder"])
    assert folder.is_relative_to(outside)
    for directory in (outside, folder.parent, folder):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for item in folder.rglob("*"):
        assert stat.S_IMODE(item.stat().st_mode) in (0o600, 0o700), item


def test_a_state_dir_owned_by_someone_else_and_writable_by_others_is_refused(tmp_path: Path, monkeypatch) -> None:
    from opsdsl.runtime.store import StateError, prepare_state_dir

    folder = tmp_path / "theirs"
    folder.mkdir()
    os.chmod(folder, 0o777)
    monkeypatch.setattr(os, "geteuid", lambda: folder.stat().st_uid + 1)
    with pytest.raises(StateError, match="writable by others"):
        prepare_state_dir(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777
