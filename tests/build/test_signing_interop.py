"""Interop with securesystemslib's DSSE: each side verifies what the other signs, unchanged.

securesystemslib matches signatures to keys by keyid, so its key objects are given opsdsl's
keyid (sha256 of the raw public key) rather than its own default (a hash of its JSON form).
"""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.build.signing import (
    PLAN_PAYLOAD_TYPE,
    SignatureError,
    envelope_bytes,
    keyid,
    sign_envelope,
    verify_envelope,
)

pytest.importorskip("securesystemslib")
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import VerificationError
from securesystemslib.signer import CryptoSigner, SSlibKey

PLAN = json.dumps({"pack": "minimal", "steps": ["page", "restart"]}, sort_keys=True).encode()
ALICE = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
BOB = Ed25519PrivateKey.from_private_bytes(b"\x02" * 32)


def sslib_key(private_key: Ed25519PrivateKey) -> SSlibKey:
    public_key = private_key.public_key()
    return SSlibKey.from_crypto(public_key, keyid=keyid(public_key))


def sslib_envelope(data: bytes) -> Envelope:
    return Envelope.from_dict(json.loads(data))


def test_securesystemslib_verifies_what_we_sign():
    data = envelope_bytes(sign_envelope(PLAN, [ALICE, BOB]))
    envelope = sslib_envelope(data)
    assert envelope.payload == PLAN
    assert envelope.payload_type == PLAN_PAYLOAD_TYPE
    accepted = envelope.verify([sslib_key(ALICE), sslib_key(BOB)], 2)
    assert set(accepted) == {keyid(ALICE.public_key()), keyid(BOB.public_key())}


def test_securesystemslib_refuses_what_we_refuse():
    document = sign_envelope(PLAN, [ALICE])
    document["payload"] = sign_envelope(PLAN.replace(b"restart", b"reboot"), [])["payload"]
    with pytest.raises(SignatureError, match="bad signature"):
        verify_envelope(document, {keyid(ALICE.public_key()): ALICE.public_key()}, 1)
    with pytest.raises(VerificationError):
        sslib_envelope(envelope_bytes(document)).verify([sslib_key(ALICE)], 1)


def test_we_verify_what_securesystemslib_signs():
    envelope = Envelope(PLAN, PLAN_PAYLOAD_TYPE, {})
    envelope.sign(CryptoSigner(ALICE, sslib_key(ALICE)))
    envelope.sign(CryptoSigner(BOB, sslib_key(BOB)))
    data = json.dumps(envelope.to_dict()).encode()
    trusted = {keyid(key.public_key()): key.public_key() for key in (ALICE, BOB)}
    verified = verify_envelope(data, trusted, 2)
    assert verified.payload == PLAN
    assert verified.keyids == tuple(sorted(trusted))


def test_securesystemslib_default_keyids_are_unknown_to_us_unless_left_out():
    envelope = Envelope(PLAN, PLAN_PAYLOAD_TYPE, {})
    signature = envelope.sign(CryptoSigner(ALICE))  # securesystemslib's own keyid
    trusted = {keyid(ALICE.public_key()): ALICE.public_key()}
    with pytest.raises(SignatureError, match=f"signature by unknown key {signature.keyid}"):
        verify_envelope(envelope.to_dict(), trusted, 1)
    document = envelope.to_dict()
    document["signatures"] = [{"sig": entry["sig"]} for entry in document["signatures"]]
    assert verify_envelope(document, trusted, 1).payload == PLAN
