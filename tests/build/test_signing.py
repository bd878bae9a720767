"""Signing: keys on disk, DSSE envelopes, the verification checklist, tampering, and trust files.

Real Ed25519 keys and real files throughout; nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from opsdsl.build import signing
from opsdsl.build.signing import (
    PLAN_PAYLOAD_TYPE,
    KeyFileError,
    SignatureError,
    Verified,
    add_signature,
    decode_base64,
    envelope_bytes,
    keyid,
    load_private_key,
    load_public_key,
    pae,
    parse_envelope,
    sign_envelope,
    sign_envelope_bytes,
    verify_envelope,
    write_private_key,
    write_public_key,
)
from opsdsl.build.trust import TrustError, load_trust
from opsdsl.errors import OpsdslError

PLAN = json.dumps({"pack": "minimal", "steps": [{"id": "restart", "action": "http.post"}]}, sort_keys=True).encode()


def seeded_key(byte: int) -> Ed25519PrivateKey:
    """A fixed key, so that failures reproduce byte for byte."""
    return Ed25519PrivateKey.from_private_bytes(bytes([byte]) * 32)


ALICE, BOB, MALLORY = seeded_key(1), seeded_key(2), seeded_key(3)
ALICE_ID, BOB_ID, MALLORY_ID = (keyid(key.public_key()) for key in (ALICE, BOB, MALLORY))


def trusted(*keys: Ed25519PrivateKey) -> dict:
    return {keyid(key.public_key()): key.public_key() for key in keys}


def refusal(envelope, keys: dict, threshold: int = 1, **kwargs) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_envelope(envelope, keys, threshold, **kwargs)
    return caught.value.message


# --- keys -------------------------------------------------------------------------------


def test_keyid_is_the_sha256_of_the_raw_public_key():
    raw = ALICE.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert hashlib.sha256(raw).hexdigest() == ALICE_ID
    assert len({ALICE_ID, BOB_ID, MALLORY_ID}) == 3


def test_private_key_file_is_0600_pkcs8_even_under_a_permissive_umask(tmp_path: Path):
    path = tmp_path / "keys" / "alice.key"
    old_umask = os.umask(0)
    try:
        write_private_key(path, ALICE, None)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert keyid(load_private_key(path).public_key()) == ALICE_ID
    assert not list(path.parent.glob(".*.tmp"))


def test_overwriting_a_readable_file_leaves_it_0600(tmp_path: Path):
    path = tmp_path / "alice.key"
    path.write_text("old")
    path.chmod(0o644)
    write_private_key(path, ALICE, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passphrase_round_trip_and_its_errors(tmp_path: Path):
    path = tmp_path / "alice.key"
    write_private_key(path, ALICE, b"correct horse")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keyid(load_private_key(path, b"correct horse").public_key()) == ALICE_ID
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_private_key(path, b"battery staple")
    with pytest.raises(KeyFileError) as caught:
        load_private_key(path)
    assert "--passphrase-env VAR" in caught.value.message
    assert "OPSDSL_KEY_PASSPHRASE" in caught.value.message
    assert caught.value.exit_code == 2
    with pytest.raises(KeyFileError, match="empty passphrase"):
        write_private_key(path, ALICE, b"")


def test_an_unencrypted_key_loads_even_when_a_passphrase_is_set(tmp_path: Path):
    path = tmp_path / "alice.key"
    write_private_key(path, ALICE, None)
    assert keyid(load_private_key(path, b"set in the environment").public_key()) == ALICE_ID


def test_public_key_round_trip_from_path_str_and_bytes(tmp_path: Path):
    path = tmp_path / "alice.pub"
    write_public_key(path, ALICE.public_key())
    pem = path.read_text()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    for source in (path, str(path), pem, pem.encode()):
        assert keyid(load_public_key(source)) == ALICE_ID


def _pem(key) -> bytes:
    if hasattr(key, "private_bytes"):
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, not a key\n", "is not a PEM key file"),
        (_pem(ALICE.public_key()), "holds a public key; signing needs the private key"),
        (_pem(rsa.generate_private_key(65537, 2048)), "holds an RSA key; opsdsl signs with Ed25519"),
        (_pem(ec.generate_private_key(ec.SECP256R1())), "holds an ECDSA key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "is not a valid PEM private key"),
    ],
    ids=["text", "public-key", "rsa", "ecdsa", "garbled"],
)
def test_load_private_key_says_what_is_wrong(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError, match=message):
        load_private_key(path)


def test_load_public_key_says_what_is_wrong(tmp_path: Path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_key(tmp_path / "missing.pub")
    with pytest.raises(KeyFileError, match="holds a private key; give its public half"):
        load_public_key(_pem(ALICE))
    with pytest.raises(KeyFileError, match="holds an RSA key; opsdsl verifies Ed25519"):
        load_public_key(_pem(rsa.generate_private_key(65537, 2048).public_key()))
    with pytest.raises(KeyFileError, match="is not a PEM public key"):
        load_public_key(b"ssh-ed25519 AAAA")


# --- envelopes --------------------------------------------------------------------------


def test_pae_matches_the_dsse_specification_example():
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert pae("", b"") == b"DSSEv1 0  0 "
    assert pae("tÿpe", b"x") == "DSSEv1 5 tÿpe 1 x".encode()


def test_envelope_file_is_sorted_indented_and_ends_with_a_newline():
    data = envelope_bytes(sign_envelope(PLAN, [ALICE]))
    document = json.loads(data)
    assert data == (json.dumps(document, sort_keys=True, indent=2) + "\n").encode()
    assert list(document) == ["payload", "payloadType", "signatures"]
    assert base64.b64decode(document["payload"]) == PLAN
    assert document["signatures"][0]["keyid"] == ALICE_ID


@pytest.mark.parametrize(
    "keys", [[], [ALICE], [BOB, ALICE], [ALICE, BOB, ALICE]], ids=["unsigned", "one", "two", "one-twice"]
)
@pytest.mark.parametrize("payload", [b"", PLAN, bytes(range(256)) * 40], ids=["empty", "plan", "binary"])
@pytest.mark.parametrize("payload_type", [PLAN_PAYLOAD_TYPE, 'application/x-"\u00e9\u2028'])
def test_sign_envelope_bytes_is_sign_envelope_then_envelope_bytes(keys, payload: bytes, payload_type: str):
    envelope, data = sign_envelope_bytes(payload, keys, payload_type)
    assert envelope == sign_envelope(payload, keys, payload_type)
    assert data == envelope_bytes(sign_envelope(payload, keys, payload_type))


def test_signing_order_does_not_change_the_file():
    one_way = envelope_bytes(add_signature(sign_envelope(PLAN, [ALICE]), BOB))
    other_way = envelope_bytes(add_signature(sign_envelope(PLAN, [BOB]), ALICE))
    assert one_way == other_way == envelope_bytes(sign_envelope(PLAN, [BOB, ALICE]))
    ids = [entry["keyid"] for entry in json.loads(one_way)["signatures"]]
    assert ids == sorted(ids)


def test_signing_again_replaces_and_never_duplicates():
    envelope = sign_envelope(PLAN, [ALICE, BOB])
    again = add_signature(envelope, ALICE)
    assert again == envelope
    assert len(again["signatures"]) == 2


def test_signing_again_also_replaces_the_same_keys_signature_without_a_keyid():
    envelope = sign_envelope(PLAN, [ALICE, BOB])
    keyless = {**envelope, "signatures": [{"sig": entry["sig"]} for entry in envelope["signatures"]]}
    bob_sig = next(entry["sig"] for entry in envelope["signatures"] if entry["keyid"] == BOB_ID)
    assert add_signature(keyless, ALICE)["signatures"] == [
        {"sig": bob_sig},
        next(entry for entry in envelope["signatures"] if entry["keyid"] == ALICE_ID),
    ]


def test_add_signature_returns_a_new_envelope():
    envelope = sign_envelope(PLAN, [ALICE])
    before = json.dumps(envelope)
    signed = add_signature(envelope, BOB)
    assert json.dumps(envelope) == before
    assert len(signed["signatures"]) == 2


def test_an_unsigned_envelope_can_be_made_and_then_signed():
    unsigned = sign_envelope(PLAN, [])
    assert unsigned["signatures"] == []
    assert verify_envelope(add_signature(unsigned, ALICE), trusted(ALICE), 1).payload == PLAN


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Expecting value"),
        ("[]", "expected a JSON object, got an array"),
        ('{"payloadType": "t", "signatures": []}', "missing field 'payload'"),
        ('{"payload": "", "payloadType": "t", "signatures": [], "extra": 1}', "unexpected field 'extra'"),
        ('{"payload": 1, "payloadType": "t", "signatures": []}', "'payload' must be a string, not a number"),
        ('{"payload": "", "payloadType": null, "signatures": []}', "'payloadType' must be a string, not null"),
        ('{"payload": "", "payloadType": "t", "signatures": {}}', "'signatures' must be an array"),
        ('{"payload": "", "payloadType": "t", "signatures": ["x"]}', "signature 1 must be an object"),
        ('{"payload": "", "payloadType": "t", "signatures": [{"keyid": "k"}]}', "signature 1 has no 'sig'"),
        ('{"payload": "", "payloadType": "t", "signatures": [{"sig": "", "cert": ""}]}', "unexpected field 'cert'"),
        ('{"payload": "", "payloadType": "t", "signatures": [{"sig": 5}]}', "'sig' and 'keyid' must be strings"),
        ('{"payload": "", "payload": "", "payloadType": "t", "signatures": []}', "duplicate key 'payload'"),
        ('{"payload": "%%%", "payloadType": "t", "signatures": []}', "payload: not base64"),
        ('{"payload": "QQ=", "payloadType": "t", "signatures": []}', "misplaced padding"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_parse_envelope_is_strict(text: str, reason: str):
    with pytest.raises(SignatureError) as caught:
        parse_envelope(text.encode())
    assert caught.value.message.startswith("not a DSSE envelope: ")
    assert reason in caught.value.message


def test_parse_envelope_refuses_bytes_that_are_not_utf8():
    with pytest.raises(SignatureError, match="not a DSSE envelope: not UTF-8"):
        parse_envelope(b'{"payload": "\xff"}')


# --- base64 -----------------------------------------------------------------------------


@given(st.binary(max_size=64))
def test_base64_every_dsse_spelling_decodes(data: bytes):
    standard = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    for spelling in (standard, urlsafe, standard.rstrip("="), urlsafe.rstrip("=")):
        assert decode_base64(spelling) == data


@pytest.mark.parametrize(
    "text",
    ["Q", "QQ=", "QQ===", "QUJD=", "QUJD==", "=QQ=", "QQ==QQ==", "Q Q=", "QQ==\n", "QR==", "QUI=x", "a+b_", "QQé="],
)
def test_base64_refuses_what_is_not_one_canonical_spelling(text: str):
    with pytest.raises(ValueError):
        decode_base64(text)


# --- verification -----------------------------------------------------------------------


def test_verified_names_the_payload_its_type_and_all_trusted_signers():
    envelope = envelope_bytes(sign_envelope(PLAN, [ALICE, BOB, MALLORY]))
    verified = verify_envelope(envelope, trusted(ALICE, BOB), 1)
    assert verified == Verified(PLAN, PLAN_PAYLOAD_TYPE, tuple(sorted([ALICE_ID, BOB_ID])))
    with pytest.raises(AttributeError):
        verified.payload = b"other"  # type: ignore[misc]


def test_a_dict_and_its_file_verify_the_same():
    envelope = sign_envelope(PLAN, [ALICE])
    assert verify_envelope(envelope, trusted(ALICE), 1) == verify_envelope(envelope_bytes(envelope), trusted(ALICE), 1)


def test_refusals_say_why():
    signed = envelope_bytes(sign_envelope(PLAN, [ALICE]))
    assert refusal(envelope_bytes(sign_envelope(PLAN, [])), trusted(ALICE)) == "plan is not signed"
    assert refusal(signed, trusted(BOB)) == f"signature by unknown key {ALICE_ID}"
    assert refusal(signed, trusted(ALICE, BOB), 2, names={ALICE_ID: "alice"}) == (
        "threshold not met: 1 of 2 required trusted signatures (signed by: alice)"
    )
    other_type = envelope_bytes(sign_envelope(PLAN, [ALICE], payload_type="application/vnd.in-toto+json"))
    assert refusal(other_type, trusted(ALICE)) == (
        "payload type 'application/vnd.in-toto+json' is not accepted (expected 'application/vnd.opsdsl.plan+json')"
    )
    assert verify_envelope(other_type, trusted(ALICE), 1, ("application/vnd.in-toto+json",)).payload == PLAN


def test_a_payload_swapped_under_a_signature_is_a_bad_signature_named_by_the_trust_file():
    envelope = sign_envelope(PLAN, [ALICE])
    swapped = {**envelope, "payload": base64.b64encode(PLAN.replace(b"restart", b"destroy")).decode()}
    assert refusal(swapped, trusted(ALICE), names={ALICE_ID: "alice"}) == "bad signature from key alice"
    assert refusal(swapped, trusted(ALICE)) == f"bad signature from key {ALICE_ID}"


def test_a_garbled_signature_counts_as_bad_not_as_a_malformed_file():
    envelope = sign_envelope(PLAN, [ALICE])
    garbled = {**envelope, "signatures": [{"keyid": ALICE_ID, "sig": "not base64!"}]}
    assert refusal(garbled, trusted(ALICE)) == f"bad signature from key {ALICE_ID}"


def test_a_bad_signature_by_a_trusted_key_refuses_even_when_the_threshold_is_met():
    envelope = sign_envelope(PLAN, [ALICE, BOB])
    envelope["signatures"] = [
        entry if entry["keyid"] != BOB_ID else {**entry, "sig": signing.encode_base64(bytes(64))}
        for entry in envelope["signatures"]
    ]
    assert refusal(envelope, trusted(ALICE, BOB), 1, names={BOB_ID: "bob"}) == "bad signature from key bob"
    # A key nobody trusts may sign what it likes: it counts for nothing either way.
    assert verify_envelope(envelope, trusted(ALICE), 1).keyids == (ALICE_ID,)


def test_one_key_signing_twice_is_one_signer():
    envelope = sign_envelope(PLAN, [ALICE])
    twice = {**envelope, "signatures": envelope["signatures"] * 2}
    assert verify_envelope(twice, trusted(ALICE, BOB), 1).keyids == (ALICE_ID,)
    assert refusal(twice, trusted(ALICE, BOB), 2).startswith("threshold not met: 1 of 2 required")
    keyless_twice = {**envelope, "signatures": [{"sig": envelope["signatures"][0]["sig"]}] * 2}
    assert refusal(keyless_twice, trusted(ALICE, BOB), 2).startswith("threshold not met: 1 of 2 required")


def test_signatures_without_keyids_are_tried_against_every_trusted_key():
    envelope = sign_envelope(PLAN, [ALICE, BOB])
    keyless = {**envelope, "signatures": [{"sig": entry["sig"]} for entry in envelope["signatures"]]}
    assert verify_envelope(keyless, trusted(MALLORY, ALICE, BOB), 2).keyids == tuple(sorted([ALICE_ID, BOB_ID]))
    assert refusal(keyless, trusted(MALLORY)).startswith("signature by unknown key")


def test_an_unknown_keyid_is_not_tried_against_other_keys():
    envelope = sign_envelope(PLAN, [ALICE])
    relabelled = {
        **envelope,
        "signatures": [{"keyid": "a-label-we-do-not-know", "sig": envelope["signatures"][0]["sig"]}],
    }
    assert refusal(relabelled, trusted(ALICE)) == "signature by unknown key a-label-we-do-not-know"


def test_threshold_and_trust_set_mistakes_are_programming_errors():
    envelope = envelope_bytes(sign_envelope(PLAN, [ALICE]))
    for threshold in (0, -1, True, 1.0):
        with pytest.raises(ValueError, match="threshold must be an integer"):
            verify_envelope(envelope, trusted(ALICE), threshold)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty trust set"):
        verify_envelope(envelope, {}, 1)
    with pytest.raises(ValueError, match="can never be met"):
        verify_envelope(envelope, trusted(ALICE), 2)


def test_signature_errors_pickle_and_carry_exit_code_1():
    error = pickle.loads(pickle.dumps(SignatureError("plan is not signed")))
    assert isinstance(error, OpsdslError)
    assert (error.message, error.exit_code) == ("plan is not signed", 1)


# --- tampering --------------------------------------------------------------------------

BASE64_CHARACTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="


def _string_value_spans(data: bytes) -> list[range]:
    """Byte ranges of the payload and sig string values in an envelope file."""
    spans = []
    for marker in (b'"payload": "', b'"sig": "'):
        start = data.find(marker)
        while start != -1:
            begin = start + len(marker)
            spans.append(range(begin, data.index(b'"', begin)))
            start = data.find(marker, begin)
    return spans


def _assert_refused_or_unchanged(data: bytes, keys: dict, threshold: int) -> str:
    try:
        verified = verify_envelope(data, keys, threshold)
    except SignatureError:
        return "refused"
    assert (verified.payload, verified.payload_type) == (PLAN, PLAN_PAYLOAD_TYPE), data
    return "unchanged"


@pytest.mark.parametrize("signers", [(ALICE,), (ALICE, BOB)], ids=["one-signer", "two-signers"])
def test_no_single_byte_change_yields_another_payload(signers):
    original = envelope_bytes(sign_envelope(PLAN, list(signers)))
    keys, threshold = trusted(*signers), len(signers)
    in_strings = {position for span in _string_value_spans(original) for position in span}
    outcomes = {"refused": 0, "unchanged": 0}
    for position, byte in enumerate(original):
        replacements = {byte ^ 0x01, byte ^ 0x20, byte ^ 0x80}
        if position in in_strings:
            replacements |= set(BASE64_CHARACTERS)
        for replacement in replacements - {byte}:
            mutated = original[:position] + bytes([replacement]) + original[position + 1 :]
            outcomes[_assert_refused_or_unchanged(mutated, keys, threshold)] += 1
    assert outcomes["refused"] > 10 * outcomes["unchanged"]


def test_every_truncation_is_refused_as_not_an_envelope():
    original = envelope_bytes(sign_envelope(PLAN, [ALICE]))
    for length in range(len(original)):
        if original[:length].strip() == original.strip():
            assert verify_envelope(original[:length], trusted(ALICE), 1).payload == PLAN
            continue
        assert refusal(original[:length], trusted(ALICE)).startswith("not a DSSE envelope: "), length


def test_inserted_or_deleted_bytes_never_yield_another_payload():
    original = envelope_bytes(sign_envelope(PLAN, [ALICE]))
    for position in range(len(original) + 1):
        _assert_refused_or_unchanged(original[:position] + original[position + 1 :], trusted(ALICE), 1)
        for inserted in (b" ", b"A", b"=", b'"', b"\\"):
            _assert_refused_or_unchanged(original[:position] + inserted + original[position:], trusted(ALICE), 1)


def _outcome(read, data: bytes):
    try:
        return read(data.decode("utf-8", "surrogateescape"))
    except SignatureError as exc:
        return exc.message


def test_the_parsing_shortcut_reads_our_own_envelopes():
    for signers in ([], [ALICE], [ALICE, BOB]):
        text = envelope_bytes(sign_envelope(PLAN, signers)).decode()
        shortcut = signing._read_envelope_shortcut(text)
        assert shortcut is not None
        assert shortcut == signing._read_envelope_in_full(text)


def test_the_parsing_shortcut_agrees_with_parsing_in_full_under_every_single_byte_change():
    original = envelope_bytes(sign_envelope(PLAN, [ALICE, BOB]))
    for position, byte in enumerate(original):
        for replacement in {byte ^ 0x01, byte ^ 0x02, byte ^ 0x20, ord('"'), ord("\\")} - {byte}:
            text = (original[:position] + bytes([replacement]) + original[position + 1 :]).decode()
            shortcut = signing._read_envelope_shortcut(text)
            if shortcut is not None:
                assert shortcut == signing._read_envelope_in_full(text), text


envelope_layouts = st.fixed_dictionaries(
    {
        "indent": st.sampled_from([None, 0, 1, 2, "\t"]),
        "sort_keys": st.booleans(),
        "separators": st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]),
        "ensure_ascii": st.booleans(),
    }
)
tricky_keys = st.sampled_from(['x"payload', "payload", "payloadType", "sig", "keyid", "payload\\"])


@given(
    layout=envelope_layouts,
    payload=st.binary(max_size=40),
    extra=st.lists(st.tuples(st.sampled_from(["top", "signature"]), tricky_keys, st.text(max_size=8)), max_size=2),
)
@settings(max_examples=300, deadline=None)
def test_the_parsing_shortcut_agrees_with_parsing_in_full_on_odd_layouts(layout, payload, extra):
    document = sign_envelope(payload, [ALICE], payload_type='a"payload":"x')
    for where, key, value in extra:
        target = document if where == "top" else document["signatures"][0]
        target[key] = base64.b64encode(value.encode()).decode()
    text = json.dumps(document, **layout)
    shortcut = signing._read_envelope_shortcut(text)
    try:
        in_full = signing._read_envelope_in_full(text)
    except SignatureError:
        assert shortcut is None
        return
    assert shortcut in (None, in_full)


# --- trust files ------------------------------------------------------------------------


@pytest.fixture
def trust_dir(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    write_public_key(tmp_path / "keys" / "ci.pub", BOB.public_key())
    alice_pem = _pem(ALICE.public_key()).decode()
    (tmp_path / "trust.yaml").write_text(
        "apiVersion: opsdsl/v1\n"
        "kind: Trust\n"
        "keys:\n"
        f"  - {{name: alice, publicKey: {json.dumps(alice_pem)}}}\n"
        "  - {name: ci, file: keys/ci.pub}\n"
        "environments:\n"
        "  default: {threshold: 1}\n"
        "  production: {threshold: 2, keys: [alice, ci]}\n"
    )
    return tmp_path


def test_trust_file_keys_and_environments(trust_dir: Path):
    trust = load_trust(trust_dir / "trust.yaml")
    assert {key.name: kid for kid, key in trust.keys.items()} == {"alice": ALICE_ID, "ci": BOB_ID}
    keys, threshold = trust.environment("production")
    assert (sorted(keys), threshold) == (sorted([ALICE_ID, BOB_ID]), 2)
    assert trust.environment("default")[1] == 1
    # Two environments and none named: no quiet fallback to the laxer `default`.
    with pytest.raises(TrustError, match="several environments \\(default, production\\): pass --env NAME"):
        trust.environment()
    with pytest.raises(TrustError, match="has no environment 'staging' \\(it has: default, production\\)"):
        trust.environment("staging")


def test_trust_file_two_person_rule(trust_dir: Path):
    trust = load_trust(trust_dir / "trust.yaml")
    alice_only = envelope_bytes(sign_envelope(PLAN, [ALICE]))
    assert trust.verify(alice_only, "default").keyids == (ALICE_ID,)
    with pytest.raises(SignatureError) as caught:
        trust.verify(alice_only, "production")
    assert caught.value.message == "threshold not met: 1 of 2 required trusted signatures (signed by: alice)"
    both = envelope_bytes(sign_envelope(PLAN, [ALICE, BOB]))
    assert trust.verify(both, "production").keyids == tuple(sorted([ALICE_ID, BOB_ID]))
    tampered = {**sign_envelope(PLAN, [ALICE]), "payload": base64.b64encode(b"{}").decode()}
    with pytest.raises(SignatureError, match=r"^bad signature from key alice$"):
        trust.verify(tampered, "default")


def test_trust_file_without_environments_trusts_any_one_key(tmp_path: Path):
    write_public_key(tmp_path / "alice.pub", ALICE.public_key())
    (tmp_path / "trust.yaml").write_text("apiVersion: opsdsl/v1\nkind: Trust\nkeys: [{name: alice, file: alice.pub}]\n")
    assert load_trust(tmp_path / "trust.yaml").environment("default") == ({ALICE_ID: ALICE.public_key()}, 1)


def test_trust_file_keyid_pin_catches_a_swapped_key_file(tmp_path: Path):
    write_public_key(tmp_path / "alice.pub", MALLORY.public_key())
    (tmp_path / "trust.yaml").write_text(
        f"apiVersion: opsdsl/v1\nkind: Trust\nkeys: [{{name: alice, file: alice.pub, keyid: {ALICE_ID}}}]\n"
    )
    with pytest.raises(TrustError, match="was the key file swapped"):
        load_trust(tmp_path / "trust.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("production: {threshold: 2, keys: [alice, ci]}", "production: {threshold: 2, keys: [alice, bob]}"),
            "environment 'production': unknown key name 'bob'",
        ),
        (("production: {threshold: 2,", "production: {threshold: 3,"), "threshold 3 is more than its 2 key"),
        (("default: {threshold: 1}", "default: {threshold: 0}"), "'threshold' must be an integer of at least 1"),
        (("default: {threshold: 1}", "default: {threshold: yes}"), "'threshold' must be an integer"),
        (("default: {threshold: 1}", "default: {}"), "'threshold' must be an integer"),
        (("keys: [alice, ci]", "keys: [alice, alice]"), "a key is listed twice"),
        (("keys: [alice, ci]", "keys: []"), "'keys' must be a non-empty list"),
        (("{name: ci,", "{name: alice,"), "keys[2]: duplicate name 'alice'"),
        (("file: keys/ci.pub", "file: keys/alice.pub"), "keys/alice.pub does not exist"),
        (("default: {threshold: 1}", "default: {threshold: 1, quorum: 2}"), "unknown field 'quorum'"),
        (("kind: Trust", "kind: Trust\nowner: sre"), "top level: unknown field 'owner'"),
        (("kind: Trust", "kind: Policy"), "kind: expected 'Trust'"),
        (("apiVersion: opsdsl/v1", "apiVersion: opsdsl/v2"), "apiVersion: expected 'opsdsl/v1'"),
        (("{name: ci, file: keys/ci.pub}", "{name: ci}"), "give exactly one of 'publicKey'"),
        (
            ("default: {threshold: 1}", "default: {threshold: 1}\n  default: {threshold: 2}"),
            "found duplicate key 'default'",
        ),
    ],
)
def test_trust_file_mistakes_are_configuration_errors(trust_dir: Path, change: tuple[str, str], message: str):
    path = trust_dir / "trust.yaml"
    old, new = change
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(TrustError) as caught:
        load_trust(path)
    assert message in caught.value.message
    assert caught.value.exit_code == 2
    assert str(path) in caught.value.message


def test_trust_file_duplicate_keys_under_two_names(trust_dir: Path):
    path = trust_dir / "trust.yaml"
    path.write_text(
        path.read_text().replace(
            "{name: ci, file: keys/ci.pub}", "{name: ci, file: keys/ci.pub}\n  - {name: ci2, file: keys/ci.pub}"
        )
    )
    with pytest.raises(TrustError, match="key 'ci2' is the same key as 'ci'"):
        load_trust(path)


def test_missing_trust_file(tmp_path: Path):
    with pytest.raises(TrustError, match="does not exist"):
        load_trust(tmp_path / "trust.yaml")


def _plain_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_a_plain_ed25519_key_loads_without_cryptographys_pem_loader(tmp_path: Path):
    """`load_private_key` reads an unencrypted PKCS#8 Ed25519 key itself (compile need not
    import cryptography's serialization); it must be the very key cryptography reads."""
    for i in range(20):
        key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"%d" % i).digest())
        pem = _plain_pem(key)
        for variant in (pem, pem.replace(b"\n", b"\r\n"), pem + b"\n\n"):
            path = tmp_path / f"k{i}.key"
            path.write_bytes(variant)
            os.chmod(path, 0o600)
            assert signing._plain_ed25519_key(variant) is not None
            loaded = load_private_key(path)
            expected = serialization.load_pem_private_key(variant, None)
            assert loaded.private_bytes_raw() == expected.private_bytes_raw() == key.private_bytes_raw()
    # Anything else is left to cryptography's loader (and its error messages).
    pem = _plain_pem(ALICE)
    for other in (
        b"junk\n" + pem,
        pem + b"-----BEGIN PRIVATE KEY-----\n",
        pem.replace(b"MC4CAQAw", b"MC4CAQEw"),  # another DER version
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    ):
        assert signing._plain_ed25519_key(other) is None


def test_compile_signing_imports_no_serialization(tmp_path: Path):
    import subprocess
    import sys

    path = tmp_path / "k.key"
    path.write_bytes(_plain_pem(ALICE))
    os.chmod(path, 0o600)
    code = (
        "import sys; from opsdsl.build.signing import load_private_key, sign_envelope, keyid; "
        f"k = load_private_key({str(path)!r}); sign_envelope(b'x', [k]); keyid(k.public_key()); "
        "print('cryptography.hazmat.primitives.serialization' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
