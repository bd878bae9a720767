"""`opsdsl serve --config FILE`: the file read into a ServiceConfig, its errors (golden:
tests/fixtures/serve/config/bad/*.toml against bad.expected.txt; regenerate with
`pytest --update-golden` and read the diff), where keys are in tricky TOML, the signing
key it names (passphrase-protected, outside the state directory), params per pack and per
environment, and hostile configurations (a folder of packs that is /etc, a symlink loop,
a huge file, a params file that is a FIFO)."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

from opsdsl.errors import ConfigError, UsageError
from opsdsl.serve.config import (
    MAX_CONFIG_BYTES,
    ServiceConfig,
    load_config,
    load_signing_key,
    merged_settings,
    read_params_file,
)
from opsdsl.serve.toml_positions import key_positions

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "fixtures" / "serve" / "config"
EXAMPLE = ROOT / "examples" / "opsdsl-serve.toml"


def write(folder: Path, text: str, name: str = "opsdsl-serve.toml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def packs_here(folder: Path) -> Path:
    """A copy of the fixture packs folder (with a policy pack beside the pack) in `folder`."""
    target = folder / "packs"
    shutil.copytree(CONFIG / "packs", target)
    shutil.copy(CONFIG / "policies" / "guard.yaml", target / "guard.yaml")
    return target


# ---- a good file --------------------------------------------------------------------------


def test_a_complete_file_gives_every_field(tmp_path):
    packs_here(tmp_path)
    (tmp_path / "more").mkdir()
    shutil.copy(CONFIG / "packs" / "tiny.yaml", tmp_path / "more" / "other.yaml")
    key = tmp_path / "keys" / "signing.key"
    key.parent.mkdir()
    key.write_text("not read at load time")
    path = write(
        tmp_path,
        """
state_dir = "state"
public_url = "https://opsdsl.example.com"
log_format = "json"
escalation_url = "http://127.0.0.1:9/escalate"

[listen]
host = "127.0.0.1"
port = 0

[packs]
paths = ["packs", "more/other.yaml"]
policies = ["packs/guard.yaml"]

[params.tiny]
threshold = 7
[params.tiny.production]
mode = "loud"

[secrets]
pagerduty_key = "env:PAGERDUTY_KEY"
slack_url = "file:secrets/slack"

[signing]
key = "keys/signing.key"
passphrase_env = "SIGNING_PASSPHRASE"

[intake]
token_file = "token"
metrics_no_auth = true

[auth]
trusted_user_header = "X-Forwarded-Email"
trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]

[[notifiers]]
kind = "webhook"
url = "http://127.0.0.1:9/hook"

[limits]
max_body = 65536
queue_size = 100
max_backlog_bytes = 1048576
header_timeout = 5
body_timeout = 7.5
max_connections_per_peer = 8
max_runs = 4
drain_timeout = 0
""",
    )
    config = load_config(path)
    assert config.state_dir == tmp_path / "state"
    assert (config.public_url, config.log_format) == ("https://opsdsl.example.com", "json")
    assert (config.host, config.port) == ("127.0.0.1", 0)
    # the folder gives its pack (its policy pack is a policy, not a pack), then the file named
    assert config.packs == (tmp_path / "packs" / "tiny.yaml", tmp_path / "more" / "other.yaml")
    assert config.policies == (tmp_path / "packs" / "guard.yaml",)
    assert config.params == {"tiny": {"threshold": 7, "production": {"mode": "loud"}}}
    assert config.secrets == {
        "pagerduty_key": ("env", "PAGERDUTY_KEY"),
        "slack_url": ("file", str(tmp_path / "secrets" / "slack")),
    }
    assert (config.signing_key, config.passphrase_env) == (key, "SIGNING_PASSPHRASE")
    assert (config.token_file, config.metrics_no_auth) == (tmp_path / "token", True)
    assert config.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    assert config.notifiers == ({"kind": "webhook", "url": "http://127.0.0.1:9/hook"},)
    assert config.limits["body_timeout"] == 7.5 and config.limits["drain_timeout"] == 0
    assert config.limits["max_runs"] == 4


def test_the_shipped_example_loads():
    config = load_config(EXAMPLE)
    assert config.packs, "the example serves the packs of this repository"
    assert all(p.is_file() and p.suffix in (".yaml", ".ops") for p in config.packs)
    assert config.port == 8095 and config.log_format == "json"


def test_the_shipped_examples_params_fit_the_packs_it_serves(tmp_path):
    from opsdsl.runtime.plans import plan_from_pack
    from opsdsl.runtime.secrets import Secrets
    from opsdsl.serve.config import pack_params

    config = load_config(EXAMPLE)
    plans = [plan_from_pack(pack, config.policies, tmp_path / "state") for pack in config.packs]
    values = dict(zip([p.payload["pack"]["name"] for p in plans], pack_params(
        plans, {}, Secrets(tmp_path / "state"), config, config.environment
    ), strict=True))  # fmt: skip
    assert values["sqlx-sev2"]["kernel_url"] == "http://kernel.internal:8080"  # the production table
    assert values["sqlx-sev2"]["pool_scale_step"] == 4 and values["sqlx-sev3"]["buffer_max_mb"] == 1024


def test_the_docs_show_the_shipped_example_whole():
    docs = (ROOT / "docs" / "serve.md").read_text(encoding="utf-8")
    shown = docs.split("<!-- config-example -->\n```toml\n", 1)[1].split("```", 1)[0]
    assert shown == EXAMPLE.read_text(encoding="utf-8")


def test_flags_given_override_the_file_and_the_file_overrides_defaults(tmp_path):
    config = ServiceConfig(origin=tmp_path / "f.toml", host="0.0.0.0", port=9000, limits={"max_body": 10})
    flags = {"host": "127.0.0.1", "port": 8095, "max_body": 1 << 20, "queue_size": 10_000}
    merged = merged_settings(config, flags, given=["port"])
    assert merged == {"host": "0.0.0.0", "port": 8095, "max_body": 10, "queue_size": 10_000}
    assert merged_settings(None, flags, []) == flags


# ---- errors: golden -------------------------------------------------------------------------


def test_each_kind_of_error_names_its_line_column_and_a_hint(monkeypatch, update_golden):
    monkeypatch.chdir(CONFIG)
    monkeypatch.setattr("opsdsl.serve.config._notifier_check", lambda: None)  # the announcer's own test checks it
    out = []
    for path in sorted(Path("bad").glob("*.toml")):
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        out.append(f"== {path.name}\n{caught.value.message}\n")
    text = "\n".join(out)
    golden = CONFIG / "bad.expected.txt"
    if update_golden:
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert "Traceback" not in text


def test_a_key_path_of_the_error_points_at_the_right_line_in_tricky_toml():
    text = (CONFIG / "tricky.toml").read_text(encoding="utf-8")
    tomllib.loads(text)  # valid TOML
    found = key_positions(text)
    expected = {}
    for number, line in enumerate(text.splitlines(), 1):  # each `# @ KEY.PATH COL` names where a key is
        if line.startswith("# @ "):
            path, col = line[4:].rsplit(" ", 1)
            parts = tuple(int(p) if p.isdigit() else p.strip('"') for p in path.split("|"))
            expected[parts] = (number + 1, int(col))
    assert expected
    assert {p: found.get(p) for p in expected} == expected


def test_a_notifier_the_announcer_refuses_is_an_error_at_its_key(tmp_path):
    pytest.importorskip("opsdsl.runtime.announce")
    path = write(
        tmp_path,
        '[[notifiers]]\nkind = "webhook"\nurl = "http://127.0.0.1:9/a"\n\n'
        '[[notifiers]]\nkind = "slack"\nchanel = "#ops"\nurl = "http://127.0.0.1:9/b"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message.startswith(f"{path}:7:1: [[notifiers]] #2 chanel: ")


# ---- the signing key ------------------------------------------------------------------------


def _encrypted_key(path: Path, passphrase: bytes):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)
    path.chmod(0o600)
    return key


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_passphrase_protected_key_signs_the_checkpoints(tmp_path, source):
    from opsdsl.build.signing import keyid
    from opsdsl.runtime.state_config import _CHOSEN, use_signer
    from opsdsl.runtime.store import Store

    key = _encrypted_key(tmp_path / "keys" / "signing.key", b"correct horse")
    line = 'passphrase_env = "TEST_SIGNING_PASSPHRASE"'
    if source == "file":
        (tmp_path / "keys" / "passphrase").write_text("correct horse\n")
        (tmp_path / "keys" / "passphrase").chmod(0o600)
        line = 'passphrase_file = "keys/passphrase"'
    config = load_config(write(tmp_path, f'state_dir = "state"\n[signing]\nkey = "keys/signing.key"\n{line}\n'))
    state = tmp_path / "state"
    signer = load_signing_key(config, state, {"TEST_SIGNING_PASSPHRASE": "correct horse"})
    assert keyid(signer.key.public_key()) == keyid(key.public_key())
    assert signer.describe()["key"] == "configured"
    use_signer(state, signer)
    try:
        from opsdsl.runtime.runner import Runtime

        runtime = Runtime(state)
        try:
            with runtime.store.transaction():
                runtime.store.ledger.append("test.entry", None, {"n": 1}, ts=1.0)
            checkpoint = runtime.store.ledger.checkpoint(runtime.signer)
        finally:
            runtime.close()
    finally:
        _CHOSEN.clear()
    # verified with the public half only: the checkpoint is the configured key's, not the dev key's
    from opsdsl.audit.ledger import verify_ledger

    store = Store(state, create=False)
    try:
        report = verify_ledger(store.conn, {keyid(key.public_key()): key.public_key()})
        with_dev_key_only = verify_ledger(store.conn, {})
    finally:
        store.close()
    assert checkpoint.keyid == keyid(key.public_key())
    assert report.ok and report.checkpoints == 1, report.render()
    assert not with_dev_key_only.ok
    assert not (state / "keys" / "dev.key").exists()


def test_a_wrong_or_missing_passphrase_is_refused_with_the_key_line(tmp_path):
    _encrypted_key(tmp_path / "keys" / "signing.key", b"right")
    config = load_config(
        write(tmp_path, '[signing]\nkey = "keys/signing.key"\npassphrase_env = "TEST_SIGNING_PASSPHRASE"\n')
    )
    with pytest.raises(ConfigError, match=r":3:1: \[signing\] passphrase_env: \$TEST_SIGNING_PASSPHRASE is not set"):
        load_signing_key(config, tmp_path / "state", {})
    with pytest.raises(ConfigError, match=r":2:1: \[signing\] key: cannot decrypt .*wrong passphrase"):
        load_signing_key(config, tmp_path / "state", {"TEST_SIGNING_PASSPHRASE": "wrong"})


def test_a_key_inside_the_state_directory_is_refused(tmp_path):
    _encrypted_key(tmp_path / "state" / "keys" / "signing.key", b"pw")
    text = 'state_dir = "state"\n[signing]\nkey = "state/keys/signing.key"\npassphrase_env = "P"\n'
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert ":3:1: [signing] key: " in caught.value.message
    assert "is inside the state directory" in caught.value.message
    # the state directory given on the command line instead: refused when the key is loaded
    config = load_config(write(tmp_path, text.replace('state_dir = "state"\n', "")))
    with pytest.raises(ConfigError, match="is inside the state directory"):
        load_signing_key(config, tmp_path / "state", {"P": "pw"})
    # a link outside that points inside is inside too
    (tmp_path / "link.key").symlink_to(tmp_path / "state" / "keys" / "signing.key")
    config = load_config(write(tmp_path, '[signing]\nkey = "link.key"\npassphrase_env = "P"\n'))
    with pytest.raises(ConfigError, match="is inside the state directory"):
        load_signing_key(config, tmp_path / "state", {"P": "pw"})


def test_a_key_others_can_read_is_refused(tmp_path):
    from opsdsl.runtime.state_config import KeyRefused

    _encrypted_key(tmp_path / "signing.key", b"pw").public_key()
    (tmp_path / "signing.key").chmod(0o644)
    config = load_config(write(tmp_path, '[signing]\nkey = "signing.key"\npassphrase_env = "P"\n'))
    with pytest.raises(KeyRefused, match="chmod 600"):
        load_signing_key(config, tmp_path / "state", {"P": "pw"})


# ---- params ---------------------------------------------------------------------------------


def _tiny_plan(tmp_path: Path):
    from opsdsl.runtime.plans import plan_from_pack

    return plan_from_pack(CONFIG / "packs" / "tiny.yaml", [], tmp_path / "state")


def test_params_per_pack_then_environment_then_file_then_flag(tmp_path):
    from opsdsl.runtime.secrets import Secrets
    from opsdsl.serve.config import pack_params

    plan = _tiny_plan(tmp_path)
    config = load_config(
        write(tmp_path, '[params.tiny]\nthreshold = 7\ntargets = ["a"]\n[params.tiny.prod]\nthreshold = 9\n')
    )
    secrets = Secrets(tmp_path / "state")
    assert pack_params([plan], {}, secrets)[0] == {"threshold": 5, "mode": "calm", "targets": []}
    assert pack_params([plan], {}, secrets, config)[0]["threshold"] == 7
    (values,) = pack_params([plan], {}, secrets, config, "prod")
    assert values == {"threshold": 9, "mode": "calm", "targets": ["a"]}
    assert pack_params([plan], {"threshold": "11"}, secrets, config, "prod")[0]["threshold"] == 11
    with pytest.raises(UsageError, match="--param nope: no pack served declares"):
        pack_params([plan], {"nope": "1"}, secrets, config)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[params.tinny]\nthreshold = 1\n",
            r"(?s):1:9: \[params\] tinny: no pack of this name is served\n.*did you mean `tiny`",
        ),
        (
            "[params.tiny]\nthreshhold = 1\n",
            r"(?s):2:1: \[params\] tiny.threshhold: pack tiny declares no such param\n.*`threshold`",
        ),
        ('[params.tiny]\nthreshold = "many"\n', r":2:1: \[params\] tiny.threshold: 'many' is not an integer"),
        ('[params.tiny.prod]\nmode = "shouty"\n', r":2:1: \[params\] tiny.prod.mode: \"shouty\" is not one of"),
        ("[params.tiny]\nthreshold = 1979-05-27\n", r":2:1: \[params\] tiny.threshold: must be a integer"),
    ],
)
def test_a_bad_param_in_the_file_names_its_line(tmp_path, text, expected):
    from opsdsl.runtime.secrets import Secrets
    from opsdsl.serve.config import pack_params

    plan = _tiny_plan(tmp_path)
    config = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=expected):
        pack_params([plan], {}, Secrets(tmp_path / "state"), config, "prod")


def test_a_params_file_in_yaml_json_and_toml(tmp_path):
    write(tmp_path, "threshold: 7\ntargets: [a, b]\nmode: loud\n", "p.yaml")
    write(tmp_path, '{"threshold": 7, "flag": true}', "p.json")
    write(tmp_path, "threshold = 7\nmap = {a = 1}\n", "p.toml")
    assert read_params_file(tmp_path / "p.yaml") == {"threshold": "7", "targets": '["a", "b"]', "mode": "loud"}
    assert read_params_file(tmp_path / "p.json") == {"threshold": "7", "flag": "true"}
    assert read_params_file(tmp_path / "p.toml") == {"threshold": "7", "map": '{"a": 1}'}
    for name, text, problem in [
        ("list.yaml", "- a\n- b\n", "a mapping of param names to values, not an array"),
        ("empty.yaml", "threshold:\n", "'threshold': a param's value is a string, number, boolean, list or map"),
        ("date.toml", "when = 1979-05-27\n", "'when': a param's value is a string"),
        ("bad.toml", "threshold = \n", "bad.toml:1:13: not valid TOML"),
        ("bad.json", '{"a": ', "not valid YAML or JSON"),
    ]:
        with pytest.raises(UsageError) as caught:
            read_params_file(write(tmp_path, text, name))
        assert problem in caught.value.message, caught.value.message


# ---- attacks --------------------------------------------------------------------------------


def test_packs_pointed_at_etc_are_refused_with_a_message(tmp_path):
    path = write(tmp_path, '[packs]\npaths = ["/etc"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = caught.value.message
    assert message.startswith(f"{path}:2:10: [packs] paths.0: /etc")
    assert any(
        why in message
        for why in ("is not an opsdsl pack", "holds no pack", "not a folder of packs", "Permission denied")
    ), message


def test_a_folder_of_too_many_files_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr("opsdsl.serve.config.MAX_FOLDER_ENTRIES", 50)
    for n in range(60):
        (tmp_path / "big" / f"d{n}").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds more than 50 files and folders; it is not a folder of packs"):
        load_config(write(tmp_path, '[packs]\npaths = ["big"]\n'))


def test_a_symlink_loop_is_refused_and_a_looping_folder_is_not_followed(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(ConfigError, match=r":2:10: \[packs\] paths.0: a: Too many levels of symbolic links"):
        load_config(write(tmp_path, '[packs]\npaths = ["a"]\n'))
    packs = packs_here(tmp_path)
    (packs / "loop").symlink_to(packs)  # a folder that contains itself
    config = load_config(write(tmp_path, '[packs]\npaths = ["packs"]\n'))
    assert config.packs == (packs / "tiny.yaml",)


def test_a_huge_config_is_refused_unread(tmp_path):
    path = tmp_path / "huge.toml"
    with path.open("w") as handle:
        handle.write('state_dir = "x"\n')
        handle.write("# " + "x" * 80 + "\n" * 1)
        handle.write(("# padding " + "y" * 100 + "\n") * (MAX_CONFIG_BYTES // 100))
    with pytest.raises(ConfigError, match=r"larger than 1024 KiB"):
        load_config(path)
    long_line = write(tmp_path, "a = " + "[" * 300 + "]" * 300 + "\n", "long.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(long_line)
    first, shown, _hint = caught.value.message.splitlines()
    assert first == f"{long_line}:1:1: a: unknown key" and len(shown) < 200 and shown.endswith("…")
    deep = write(tmp_path, "a = " + "[" * 5000 + "]" * 5000 + "\n", "deep.toml")
    with pytest.raises(ConfigError) as caught:
        load_config(deep)
    assert "deep.toml" in caught.value.message


def test_a_config_or_params_file_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"a named pipe \(FIFO\), not a regular file"):
        load_config(fifo)
    with pytest.raises(UsageError, match=r"a named pipe \(FIFO\), not a regular file"):
        read_params_file(fifo)
    with pytest.raises(UsageError, match=r"not a regular file|Is a directory"):
        read_params_file(tmp_path)


def test_a_params_file_with_yaml_aliases_is_refused(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + n)}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}, *{chr(97 + n)}]\n" for n in range(8)
    )
    with pytest.raises(UsageError, match="aliases"):
        read_params_file(write(tmp_path, bomb, "bomb.yaml"))


@pytest.mark.parametrize("url", ["postgresql://opsdsl@db:5432/opsdsl", "postgres://db/x", "sqlite"])
def test_the_database_may_be_named_in_the_file(tmp_path, url):
    assert load_config(write(tmp_path, f'database = "{url}"\n')).database == url


@pytest.mark.parametrize("value", ['"mysql://root@db/x"', '"/var/lib/opsdsl/state.db"', "5432"])
def test_a_database_that_is_not_a_postgresql_url_is_an_error_at_its_line(tmp_path, value):
    path = write(tmp_path, f'state_dir = "s"\ndatabase = {value}\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert ":2:" in str(raised.value.message) + "".join(d.render() for d in raised.value.diagnostics)


def test_serve_takes_the_database_from_the_file_unless_the_flag_names_one(tmp_path, monkeypatch, minimal_pack):
    """Precedence: --database, then the file's `database`, then $OPSDSL_DATABASE."""
    from click.testing import CliRunner

    from opsdsl.cli.main import cli

    monkeypatch.setenv("OPSDSL_DATABASE", "sqlite")
    config = write(tmp_path, 'database = "postgresql://nobody@127.0.0.1:1/from_the_file"\n')
    pack = tmp_path / "pack.yaml"
    pack.write_text(minimal_pack)
    serve = ["serve", "--config", str(config), "--pack", str(pack), "--insecure-no-auth", "--port", "0"]
    serve += ["--state-dir", str(tmp_path / "state")]
    result = CliRunner().invoke(cli, serve)
    assert "from_the_file" in str(result.exception) + result.output
    assert os.environ["OPSDSL_DATABASE"] == "postgresql://nobody@127.0.0.1:1/from_the_file"
    flagged = CliRunner().invoke(cli, [*serve, "--database", "postgresql://nobody@127.0.0.1:1/from_the_flag"])
    assert "from_the_flag" in str(flagged.exception) + flagged.output
