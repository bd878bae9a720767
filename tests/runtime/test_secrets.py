"""Secret values: where they come from, and that they are masked everywhere we write."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsdsl.errors import UsageError
from opsdsl.runtime.secrets import MASK, Redactor, SecretError, Secrets, parse_references


def test_lookup_order_reference_then_environment_then_file(tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("from-file\n")
    secrets = Secrets(tmp_path)
    assert secrets["token"] == "from-file"  # trailing newline dropped
    monkeypatch.setenv("OPSDSL_SECRET_TOKEN", "from-env")
    assert Secrets(tmp_path)["token"] == "from-env"
    monkeypatch.setenv("VAULT_TOKEN", "from-reference")
    assert Secrets(tmp_path, parse_references(["token=env:VAULT_TOKEN"]))["token"] == "from-reference"
    other = tmp_path / "elsewhere"
    other.write_text("from-reference-file")
    assert Secrets(tmp_path, parse_references([f"token=file:{other}"]))["token"] == "from-reference-file"


def test_missing_secret_says_how_to_provide_it(tmp_path):
    with pytest.raises(SecretError) as caught:
        Secrets(tmp_path).require("pagerduty_key")
    assert "OPSDSL_SECRET_PAGERDUTY_KEY" in caught.value.message
    assert "--secret pagerduty_key=env:" in caught.value.message


def test_names_cannot_escape_the_secrets_folder(tmp_path):
    (tmp_path / "outside").write_text("x")
    assert "../outside" not in Secrets(tmp_path)


@pytest.mark.parametrize("spec", ["token", "token=vault:x", "=env:X", "token=env:"])
def test_bad_references_are_usage_errors(spec):
    with pytest.raises(UsageError):
        parse_references([spec])


def test_resolved_values_join_the_redactor(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSDSL_SECRET_API", "s3cr3t-value")
    secrets = Secrets(tmp_path)
    secrets.require("api")
    assert secrets.redactor.text("Bearer s3cr3t-value!") == f"Bearer {MASK}!"
    assert secrets.redactor.bytes(b"xx s3cr3t-value yy") == b"xx *** yy"
    data = {"headers": {"Authorization": "s3cr3t-value"}, "list": ["a", "s3cr3t-value"], "n": 3}
    assert secrets.redactor.data(data) == {"headers": {"Authorization": MASK}, "list": ["a", MASK], "n": 3}


def test_longer_secrets_are_masked_first():
    redactor = Redactor(["abc", "abcdef"])
    assert redactor.text("abcdef") == MASK


@given(st.text(min_size=1), st.text(), st.text())
def test_a_secret_never_survives_redaction(secret, before, after):
    redactor = Redactor([secret])
    assert secret not in redactor.text(before + secret + after) or secret in MASK


def test_a_secret_file_that_is_a_fifo_or_not_utf8_is_an_error_not_a_hang(tmp_path):
    import os

    from opsdsl.runtime.secrets import SecretError, _read_secret_file

    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    with pytest.raises(SecretError, match="named pipe"):
        _read_secret_file(fifo)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SecretError, match="not UTF-8"):
        _read_secret_file(binary)
    assert _read_secret_file(tmp_path / "missing") is None
