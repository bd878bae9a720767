"""`opsdsl serve --config FILE` as a user runs it: a real server on 127.0.0.1 (port 0), its
packs found in a configured folder, its params from the file's pack and environment tables
and from the command line, its token from the configured file, its checkpoints signed with
the configured passphrase-protected key; flags that override the file; errors before it
listens; and `fire` / `watch` with --param and --params-file."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_serve import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "fixtures" / "serve" / "config"
TOKEN = "config-token-7c1d"


def opsdsl(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def query(state: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(sql, args).fetchall()


def signing_key(path: Path, passphrase: bytes):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    path.chmod(0o600)
    return key


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A service folder: packs/ (the tiny pack and a policy pack beside it), a token file,
    a passphrase-protected signing key outside the state directory, and the config."""
    shutil.copytree(CONFIG / "packs", tmp_path / "packs")
    shutil.copy(CONFIG / "policies" / "guard.yaml", tmp_path / "packs" / "guard.yaml")
    (tmp_path / "token").write_text(TOKEN + "\n")
    signing_key(tmp_path / "keys" / "signing.key", b"open sesame")
    (tmp_path / "opsdsl-serve.toml").write_text(
        """
state_dir = "state"
log_format = "text"

[listen]
host = "127.0.0.1"
port = 1                # privileged: the test's --port 0 overrides it

[packs]
paths = ["packs"]
environment = "staging"

[params.tiny]
threshold = 7
targets = ["db-1"]

[params.tiny.staging]
threshold = 8

[params.tiny.production]
threshold = 99

[signing]
key = "keys/signing.key"
passphrase_env = "TEST_SERVE_PASSPHRASE"

[intake]
token_file = "token"

[limits]
max_runs = 2
drain_timeout = 10
""",
        encoding="utf-8",
    )
    return tmp_path


class Serving:
    def __init__(self, site: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.log_path = site / "serve.log"
        environ = {**os.environ, "TEST_SERVE_PASSPHRASE": "open sesame", **(env or {})}
        environ.pop("OPSDSL_TOKEN", None)
        command = [sys.executable, "-m", "opsdsl", "serve", "--config", "opsdsl-serve.toml", *args]
        with open(self.log_path, "w", encoding="utf-8") as log:
            self.process = subprocess.Popen(command, cwd=site, env=environ, stdout=subprocess.DEVNULL, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8")

    def port(self) -> int:
        def listening() -> int | None:
            found = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log())
            assert found or self.process.poll() is None, f"serve exited:\n{self.log()}"
            return int(found.group(1)) if found else None

        return wait_until(listening, 60, "the listening line")

    def exit_code(self) -> int:
        """How it ended, on its own (a refusal before listening)."""
        return self.process.wait(timeout=60)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


def test_serve_with_a_config_file_runs_a_pack_found_in_its_folder(site):
    server = Serving(site, "--port", "0", "--param", "mode=loud")
    try:
        port = server.port()
        assert f"state: {site / 'state'}" in server.log()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            refused = client.post("/v1/events", json={"name": "tiny"})
            assert refused.status_code == 401  # the token is the configured file's
            response = client.post("/v1/events", json={"name": "tiny"}, headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 202, response.text
        state = site / "state"

        def finished():
            rows = query(state, "SELECT status, params FROM runs")
            return rows if rows and rows[0][0] not in ("running", "paused") else None

        ((status, params),) = wait_until(finished, 60, "the run to finish")
        assert status == "succeeded", server.log()
        # [params.tiny], then [params.tiny.staging] (the configured environment), then --param
        assert json.loads(params) == {"threshold": 8, "mode": "loud", "targets": ["db-1"]}
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert "Traceback" not in server.log()
    # the checkpoints are the configured key's: verified with its public half, not the dev key
    from cryptography.hazmat.primitives import serialization

    from opsdsl.build.signing import keyid, load_private_key

    key = load_private_key(site / "keys" / "signing.key", b"open sesame")
    keyids = {row[0] for row in query(site / "state", "SELECT keyid FROM checkpoints")}
    assert keyids == {keyid(key.public_key())}
    public = site / "signing.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    verified = opsdsl("ledger", "verify", "--state-dir", "state", "--key", str(public), cwd=site)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_serve_config_errors_stop_it_before_it_listens(site):
    config = site / "opsdsl-serve.toml"
    text = config.read_text()
    config.write_text(text.replace("[params.tiny.production]", "[params.tiny.prodution]\nmde = 1\n"))
    server = Serving(site, "--port", "0")
    assert server.exit_code() == 2
    log = server.log()
    assert "opsdsl: error: opsdsl-serve.toml:" in log
    assert "[params] tiny.prodution.mde: pack tiny declares no such param" in log
    assert "did you mean `mode`?" in log and "Traceback" not in log
    # a missing passphrase: named with the line of the setting
    config.write_text(text)
    server = Serving(site, "--port", "0", env={"TEST_SERVE_PASSPHRASE": ""})
    assert server.exit_code() == 2
    assert "[signing] passphrase_env: $TEST_SERVE_PASSPHRASE is not set or empty" in server.log()
    # the state directory moved onto the key's folder: the key is inside it
    server = Serving(site, "--port", "0", "--state-dir", "keys")
    assert server.exit_code() == 2
    assert "is inside the state directory" in server.log()


def test_fire_and_watch_take_params_and_a_params_file(tmp_path):
    pack = shutil.copy(CONFIG / "packs" / "tiny.yaml", tmp_path / "tiny.yaml")
    (tmp_path / "event.json").write_text('{"name": "tiny"}')
    (tmp_path / "params.yaml").write_text("threshold: 3\ntargets: [a, b]\nmode: loud\n")
    fired = opsdsl(
        "fire", "--pack", str(pack), "--state-dir", "s1", "--params-file", "params.yaml", "--param", "threshold=4",
        "event.json", cwd=tmp_path,
    )  # fmt: skip
    assert fired.returncode == 0, fired.stderr
    ((params,),) = query(tmp_path / "s1", "SELECT params FROM runs")
    assert json.loads(params) == {"threshold": 4, "mode": "loud", "targets": ["a", "b"]}

    watched = opsdsl(
        "watch", "--pack", str(pack), "--state-dir", "s2", "--param", "targets=[\"x\"]", cwd=tmp_path,
        stdin='{"name": "tiny"}\n',
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    ((params,),) = query(tmp_path / "s2", "SELECT params FROM runs")
    assert json.loads(params) == {"threshold": 5, "mode": "calm", "targets": ["x"]}

    unknown = opsdsl("fire", "--pack", str(pack), "--state-dir", "s3", "--param", "nope=1", "event.json", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "--param nope: no pack served declares this param" in unknown.stderr
    bad = opsdsl("fire", "--pack", str(pack), "--state-dir", "s3", "--param", "mode=shouty", "event.json", cwd=tmp_path)
    assert bad.returncode == 2 and "--param mode: 'shouty' is not one of" in bad.stderr
    assert "Traceback" not in unknown.stderr + bad.stderr


def test_a_params_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    pack = shutil.copy(CONFIG / "packs" / "tiny.yaml", tmp_path / "tiny.yaml")
    (tmp_path / "event.json").write_text('{"name": "tiny"}')
    os.mkfifo(tmp_path / "params.fifo")  # nobody writes to it: reading it would block forever
    fired = opsdsl("fire", "--pack", str(pack), "--params-file", "params.fifo", "event.json", cwd=tmp_path)
    assert fired.returncode == 2
    assert "not a regular file" in fired.stderr
    (tmp_path / "params.d").mkdir()
    fired = opsdsl("fire", "--pack", str(pack), "--params-file", "params.d", "event.json", cwd=tmp_path)
    assert fired.returncode == 2 and "Traceback" not in fired.stderr


def test_people_flags_are_checked_before_it_listens(site):
    for args, message in [
        (("--trusted-user-header", "X-Email", "--trusted-proxy", "proxy.internal"), "'proxy.internal' is neither"),
        (("--trusted-proxy", "10.0.0.1"), "--trusted-proxy needs --trusted-user-header"),
    ]:
        server = Serving(site, "--port", "0", *args)
        assert server.exit_code() == 2
        assert message in server.log() and "Traceback" not in server.log()
