"""`opsdsl keygen`, `sign` and `verify` as a user runs them: files, output, exit codes 0/1/2.

Most tests drive the click commands with CliRunner; `opsdsl.cli.main.main` turns an OpsdslError
into its exit code, which `exit_code()` reproduces here. A few run the whole program, once
through `main` and once in a subprocess (`python -m opsdsl`), the latter only when
opsdsl/cli/main.py registers the commands.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import opsdsl.cli.main
from opsdsl.build.signing import (
    envelope_bytes,
    keyid,
    load_private_key,
    sign_envelope,
    write_private_key,
    write_public_key,
)
from opsdsl.cli.signing import keygen, sign, verify
from opsdsl.errors import OpsdslError

PLAN = json.dumps({"pack": "minimal", "steps": ["page", "restart"]}, sort_keys=True).encode()
KEYID = re.compile(r"^[0-9a-f]{64}$")


def invoke(command: click.Command, *args: object, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(command, [str(arg) for arg in args], env=env)


def exit_code(result: Result) -> int:
    """The exit code `opsdsl.cli.main.main` gives: an OpsdslError's own, else click's."""
    if isinstance(result.exception, OpsdslError):
        return result.exception.exit_code
    return result.exit_code


def message(result: Result) -> str:
    assert isinstance(result.exception, OpsdslError), result.output
    return result.exception.message


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """alice and bob: private keys (unencrypted) and their .pub files."""
    paths = {}
    for name, seed in (("alice", 1), ("bob", 2)):
        key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
        write_private_key(tmp_path / f"{name}.key", key, None)
        write_public_key(tmp_path / f"{name}.key.pub", key.public_key())
        paths[name] = tmp_path / f"{name}.key"
    return paths


@pytest.fixture
def envelope(tmp_path: Path) -> Path:
    """An unsigned plan envelope, as the compiler writes it."""
    path = tmp_path / "plan.dsse.json"
    path.write_bytes(envelope_bytes(sign_envelope(PLAN, [])))
    return path


def pub(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


# --- keygen -----------------------------------------------------------------------------


def test_keygen_writes_a_0600_private_key_and_a_public_key_and_prints_the_keyid(tmp_path: Path):
    out = tmp_path / "keys" / "ci.key"
    result = invoke(keygen, "--out", out)
    assert exit_code(result) == 0, result.output
    assert KEYID.match(result.stdout.strip())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert keyid(load_private_key(out).public_key()) == result.stdout.strip()
    assert pub(out).read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "not encrypted" in result.stderr


def test_keygen_refuses_to_overwrite_without_force(tmp_path: Path):
    out = tmp_path / "ci.key"
    first = invoke(keygen, "--out", out).stdout.strip()
    refused = invoke(keygen, "--out", out)
    assert exit_code(refused) == 2
    assert message(refused) == f"{out} already exists; pass --force to overwrite it"
    assert keyid(load_private_key(out).public_key()) == first
    forced = invoke(keygen, "--out", out, "--force")
    assert exit_code(forced) == 0
    assert forced.stdout.strip() != first


def test_keygen_refuses_when_only_the_public_half_exists(tmp_path: Path):
    out = tmp_path / "ci.key"
    pub(out).write_text("someone else's key")
    assert exit_code(invoke(keygen, "--out", out)) == 2
    assert not out.exists()


def test_keygen_encrypts_with_the_passphrase_from_the_named_variable(tmp_path: Path):
    out = tmp_path / "ci.key"
    result = invoke(keygen, "--out", out, "--passphrase-env", "CI_KEY_PASS", env={"CI_KEY_PASS": "s3cret"})
    assert exit_code(result) == 0
    assert out.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keyid(load_private_key(out, b"s3cret").public_key()) == result.stdout.strip()
    assert "encrypted with the passphrase in CI_KEY_PASS" in result.stderr


def test_keygen_uses_opsdsl_key_passphrase_when_set(tmp_path: Path):
    out = tmp_path / "ci.key"
    assert exit_code(invoke(keygen, "--out", out, env={"OPSDSL_KEY_PASSPHRASE": "s3cret"})) == 0
    assert keyid(load_private_key(out, b"s3cret").public_key())


def test_keygen_with_an_unset_passphrase_variable_is_a_usage_error(tmp_path: Path):
    result = invoke(keygen, "--out", tmp_path / "ci.key", "--passphrase-env", "NOT_SET_ANYWHERE")
    assert exit_code(result) == 2
    assert "NOT_SET_ANYWHERE" in message(result)
    assert not (tmp_path / "ci.key").exists()


def test_keygen_without_out_is_a_usage_error():
    assert exit_code(invoke(keygen)) == 2


# --- sign -------------------------------------------------------------------------------


def test_sign_adds_signatures_in_place_and_any_order_gives_the_same_file(keys, envelope: Path, tmp_path: Path):
    other = tmp_path / "other.dsse.json"
    other.write_bytes(envelope.read_bytes())
    first = invoke(sign, envelope, "--key", keys["alice"])
    assert exit_code(first) == 0, first.output
    alice_id = keyid(load_private_key(keys["alice"]).public_key())
    digest = hashlib.sha256(PLAN).hexdigest()
    assert first.stdout == f"signed by {alice_id}: 1 signature now (payload sha256:{digest})\n"
    assert invoke(sign, envelope, "--key", keys["bob"]).stdout.endswith(
        f": 2 signatures now (payload sha256:{digest})\n"
    )
    invoke(sign, other, "--key", keys["bob"])
    invoke(sign, other, "--key", keys["alice"])
    assert envelope.read_bytes() == other.read_bytes()
    again = invoke(sign, envelope, "--key", keys["alice"])
    assert "2 signatures now" in again.stdout
    assert envelope.read_bytes() == other.read_bytes()


def test_sign_with_an_encrypted_key(envelope: Path, tmp_path: Path):
    key_path = tmp_path / "ci.key"
    write_private_key(key_path, Ed25519PrivateKey.generate(), b"s3cret")
    refused = invoke(sign, envelope, "--key", key_path)
    assert exit_code(refused) == 2
    assert "--passphrase-env VAR" in message(refused)
    wrong = invoke(sign, envelope, "--key", key_path, "--passphrase-env", "PASS", env={"PASS": "guess"})
    assert exit_code(wrong) == 2
    assert "wrong passphrase" in message(wrong)
    signed = invoke(sign, envelope, "--key", key_path, "--passphrase-env", "PASS", env={"PASS": "s3cret"})
    assert exit_code(signed) == 0
    assert exit_code(invoke(sign, envelope, "--key", key_path, env={"OPSDSL_KEY_PASSPHRASE": "s3cret"})) == 0


def test_sign_refuses_a_file_that_is_not_an_envelope(keys, tmp_path: Path):
    garbage = tmp_path / "plan.json"
    garbage.write_bytes(PLAN)
    result = invoke(sign, garbage, "--key", keys["alice"])
    assert exit_code(result) == 1
    assert message(result).startswith("not a DSSE envelope: missing field 'payload'")
    assert garbage.read_bytes() == PLAN


def test_sign_with_a_public_key_is_a_usage_error(keys, envelope: Path):
    result = invoke(sign, envelope, "--key", pub(keys["alice"]))
    assert exit_code(result) == 2
    assert "holds a public key" in message(result)


# --- verify -----------------------------------------------------------------------------


def test_verify_with_keys(keys, envelope: Path):
    invoke(sign, envelope, "--key", keys["alice"])
    result = invoke(verify, envelope, "--key", pub(keys["alice"]), "--key", pub(keys["bob"]))
    assert exit_code(result) == 0, result.output
    assert result.stdout == f"verified: 1 of 1 signatures from trusted keys ({pub(keys['alice'])})\n"
    refused = invoke(verify, envelope, "--key", pub(keys["alice"]), "--key", pub(keys["bob"]), "--threshold", 2)
    assert exit_code(refused) == 1
    assert message(refused) == (
        f"refused: threshold not met: 1 of 2 required trusted signatures (signed by: {pub(keys['alice'])})"
    )
    invoke(sign, envelope, "--key", keys["bob"])
    both = invoke(verify, envelope, "--key", pub(keys["alice"]), "--key", pub(keys["bob"]), "--threshold", 2)
    assert exit_code(both) == 0
    assert both.stdout.startswith("verified: 2 of 2 signatures from trusted keys (")


def test_verify_refusals(keys, envelope: Path):
    alice = pub(keys["alice"])
    unsigned = invoke(verify, envelope, "--key", alice)
    assert (exit_code(unsigned), message(unsigned)) == (1, "refused: plan is not signed")
    invoke(sign, envelope, "--key", keys["bob"])
    untrusted = invoke(verify, envelope, "--key", alice)
    assert exit_code(untrusted) == 1
    assert message(untrusted).startswith("refused: signature by unknown key ")
    document = json.loads(envelope.read_text())
    document["payload"] = sign_envelope(PLAN.replace(b"restart", b"reboot"), [])["payload"]
    envelope.write_text(json.dumps(document))
    tampered = invoke(verify, envelope, "--key", pub(keys["bob"]))
    assert (exit_code(tampered), message(tampered)) == (1, f"refused: bad signature from key {pub(keys['bob'])}")
    envelope.write_text(envelope.read_text()[:40])
    truncated = invoke(verify, envelope, "--key", alice)
    assert exit_code(truncated) == 1
    assert message(truncated).startswith("refused: not a DSSE envelope: ")


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["--key", "{alice}", "--trust", "{trust}"],
        ["--key", "{alice}", "--env", "production"],
        ["--key", "{alice}", "--threshold", "2"],
        ["--key", "{alice}", "--threshold", "0"],
        ["--trust", "{trust}", "--threshold", "2"],
        ["--key", "{missing}"],
        ["--key", "{alice_private}"],
    ],
    ids=["no-keys", "key-and-trust", "env-without-trust", "threshold-above-keys", "threshold-zero",
         "threshold-with-trust", "missing-key-file", "private-key"],
)  # fmt: skip
def test_verify_usage_errors_exit_2(keys, envelope: Path, tmp_path: Path, arguments: list[str]):
    trust = tmp_path / "trust.yaml"
    trust.write_text("apiVersion: opsdsl/v1\nkind: Trust\nkeys: [{name: alice, file: alice.key.pub}]\n")
    places = {
        "alice": pub(keys["alice"]),
        "trust": trust,
        "missing": tmp_path / "no.pub",
        "alice_private": keys["alice"],
    }
    invoke(sign, envelope, "--key", keys["alice"])
    result = invoke(verify, envelope, *[argument.format(**places) for argument in arguments])
    assert exit_code(result) == 2, result.output


def test_verify_with_a_trust_file_and_environments(keys, envelope: Path, tmp_path: Path):
    trust = tmp_path / "trust.yaml"
    trust.write_text(
        "apiVersion: opsdsl/v1\nkind: Trust\n"
        "keys:\n  - {name: alice, file: alice.key.pub}\n  - {name: bob, file: bob.key.pub}\n"
        "environments:\n  default: {threshold: 1}\n  production: {threshold: 2, keys: [alice, bob]}\n"
    )
    invoke(sign, envelope, "--key", keys["alice"])
    assert invoke(verify, envelope, "--trust", trust, "--env", "default").stdout == (
        "verified: 1 of 1 signatures from trusted keys (alice)\n"
    )
    forgotten = invoke(verify, envelope, "--trust", trust)  # two environments: --env is required
    assert exit_code(forgotten) == 2 and "pass --env NAME" in message(forgotten)
    production = invoke(verify, envelope, "--trust", trust, "--env", "production")
    assert exit_code(production) == 1
    assert message(production) == "refused: threshold not met: 1 of 2 required trusted signatures (signed by: alice)"
    invoke(sign, envelope, "--key", keys["bob"])
    assert invoke(verify, envelope, "--trust", trust, "--env", "production").stdout == (
        "verified: 2 of 2 signatures from trusted keys (alice, bob)\n"
    )
    unknown_environment = invoke(verify, envelope, "--trust", trust, "--env", "staging")
    assert exit_code(unknown_environment) == 2
    assert "no environment 'staging'" in message(unknown_environment)
    trust.write_text(trust.read_text().replace("threshold: 2", "threshold: 3"))
    assert exit_code(invoke(verify, envelope, "--trust", trust, "--env", "production")) == 2


# --- the whole program ------------------------------------------------------------------


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """`opsdsl.cli.main.main` with keygen, sign and verify registered, as opsdsl/cli/main.py will register them."""
    group = click.Group(
        "opsdsl", commands={**opsdsl.cli.main.cli.commands, "keygen": keygen, "sign": sign, "verify": verify}
    )
    monkeypatch.setattr(opsdsl.cli.main, "cli", group)

    def run(*args: object) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            opsdsl.cli.main.main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return exited.value.code, captured.out, captured.err

    return run


def test_main_reports_a_refusal_on_stderr_with_exit_1(run_main, keys, envelope: Path):
    assert run_main("sign", envelope, "--key", keys["bob"])[0] == 0
    code, out, err = run_main("verify", envelope, "--key", pub(keys["alice"]))
    assert (code, out) == (1, "")
    assert err.startswith("opsdsl: error: refused: signature by unknown key ")
    assert run_main("verify", envelope, "--key", pub(keys["bob"]))[:2] == (
        0,
        f"verified: 1 of 1 signatures from trusted keys ({pub(keys['bob'])})\n",
    )
    assert run_main("verify", envelope)[0] == 2


REGISTERED = {"keygen", "sign", "verify"} <= set(opsdsl.cli.main.cli.commands)
needs_registration = pytest.mark.skipif(
    not REGISTERED, reason="opsdsl/cli/main.py does not register keygen/sign/verify yet"
)


def run(*args: object, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real console entry point, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@needs_registration
def test_subprocess_keygen_sign_verify(tmp_path: Path):
    made = run("keygen", "--out", "alice.key", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert KEYID.match(made.stdout.strip())
    assert stat.S_IMODE((tmp_path / "alice.key").stat().st_mode) == 0o600
    assert run("keygen", "--out", "alice.key", cwd=tmp_path).returncode == 2
    (tmp_path / "plan.dsse.json").write_bytes(envelope_bytes(sign_envelope(PLAN, [])))
    unsigned = run("verify", "plan.dsse.json", "--key", "alice.key.pub", cwd=tmp_path)
    assert (unsigned.returncode, unsigned.stderr) == (1, "opsdsl: error: refused: plan is not signed\n")
    signed = run("sign", "plan.dsse.json", "--key", "alice.key", cwd=tmp_path)
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.startswith(f"signed by {made.stdout.strip()}: 1 signature now")
    verified = run("verify", "plan.dsse.json", "--key", "alice.key.pub", cwd=tmp_path)
    assert (verified.returncode, verified.stdout) == (
        0,
        "verified: 1 of 1 signatures from trusted keys (alice.key.pub)\n",
    )
    assert run("verify", "plan.dsse.json", cwd=tmp_path).returncode == 2


@needs_registration
def test_subprocess_passphrase_flow(tmp_path: Path):
    env = {"CI_KEY_PASS": "s3cret"}
    assert run("keygen", "--out", "ci.key", "--passphrase-env", "CI_KEY_PASS", cwd=tmp_path, env=env).returncode == 0
    (tmp_path / "plan.dsse.json").write_bytes(envelope_bytes(sign_envelope(PLAN, [])))
    locked = run("sign", "plan.dsse.json", "--key", "ci.key", cwd=tmp_path)
    assert locked.returncode == 2
    assert "--passphrase-env VAR" in locked.stderr
    assert (
        run(
            "sign", "plan.dsse.json", "--key", "ci.key", "--passphrase-env", "CI_KEY_PASS", cwd=tmp_path, env=env
        ).returncode
        == 0
    )
    assert run("verify", "plan.dsse.json", "--key", "ci.key.pub", cwd=tmp_path).returncode == 0
