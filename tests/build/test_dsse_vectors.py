"""DSSE conformance: the protocol's test vectors, accepted and rejected as labelled.

The vectors (tests/fixtures/dsse-vectors.json, a copy of shared/testdata/dsse-vectors.json)
name their keys "A" and "B", RFC 8032 Ed25519 test keys given by seed; our verifier takes
any string as a keyid, so the trusted set maps those labels to the keys built from the seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.build.signing import SignatureError, decode_base64, pae, verify_envelope

VECTORS = json.loads((Path(__file__).parents[1] / "fixtures" / "dsse-vectors.json").read_text(encoding="utf-8"))
KEYS = {
    label: Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key["seed"])) for label, key in VECTORS["keys"].items()
}

# In this vector the envelope claims another type than was signed; its "pae" field is the
# PAE of what the signature covers, i.e. of the original type.
SIGNED_TYPE = {"payload-type-swapped": "application/vnd.in-toto+json"}


def by_id(vector: dict) -> str:
    return vector["id"]


def test_the_seeds_give_the_listed_public_keys():
    for label, key in KEYS.items():
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert raw.hex() == VECTORS["keys"][label]["public"]


def test_every_vector_is_covered():
    assert len(VECTORS["vectors"]) == 9
    assert {vector["expect"] for vector in VECTORS["vectors"]} == {"accept", "reject"}


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=by_id)
def test_pae(vector: dict):
    envelope = vector["envelope"]
    payload = decode_base64(envelope["payload"])
    signed_type = SIGNED_TYPE.get(vector["id"], envelope["payloadType"])
    assert pae(signed_type, payload).hex() == vector["pae"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=by_id)
def test_verdict(vector: dict):
    trusted = {label: KEYS[label].public_key() for label in vector["trustedKeys"]}
    arguments = (vector["envelope"], trusted, vector["threshold"], vector["supportedPayloadTypes"])
    if vector["expect"] == "accept":
        verified = verify_envelope(*arguments)
        assert verified.payload == decode_base64(vector["envelope"]["payload"])
        assert verified.payload_type == vector["envelope"]["payloadType"]
        assert len(verified.keyids) >= vector["threshold"]
    else:
        with pytest.raises(SignatureError):
            verify_envelope(*arguments)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=by_id)
def test_verdict_is_the_same_from_the_file(vector: dict):
    trusted = {label: KEYS[label].public_key() for label in vector["trustedKeys"]}
    data = json.dumps(vector["envelope"], indent=1).encode()
    arguments = (data, trusted, vector["threshold"], vector["supportedPayloadTypes"])
    if vector["expect"] == "accept":
        assert verify_envelope(*arguments).payload == decode_base64(vector["envelope"]["payload"])
    else:
        with pytest.raises(SignatureError):
            verify_envelope(*arguments)


def test_rejections_are_for_the_labelled_reason():
    vectors = {vector["id"]: vector for vector in VECTORS["vectors"]}
    reasons = {
        "payload-type-swapped": "bad signature from key A",
        "empty-payload-type": "payload type '' is not accepted",
        "threshold-two-one-key-twice": "threshold not met: 1 of 2 required trusted signatures (signed by: A)",
    }
    assert set(reasons) == {vector_id for vector_id, vector in vectors.items() if vector["expect"] == "reject"}
    for vector_id, reason in reasons.items():
        vector = vectors[vector_id]
        trusted = {label: KEYS[label].public_key() for label in vector["trustedKeys"]}
        with pytest.raises(SignatureError) as caught:
            verify_envelope(vector["envelope"], trusted, vector["threshold"], vector["supportedPayloadTypes"])
        assert caught.value.message.startswith(reason), vector_id
