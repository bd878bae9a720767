"""Signed plans: Ed25519 keys and DSSE envelopes, signed over PAE and verified against a threshold.

A plan ships inside a DSSE envelope (https://github.com/secure-systems-lab/dsse) so that
in-toto and securesystemslib tools can verify it too. The signature covers the payload
type as well as the payload (the pre-authentication encoding, `pae`), so a signature over
one kind of document can never be replayed as another. Trust files, which say whose keys
count and how many must sign, live in `opsdsl.build.trust`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from opsdsl.canonical import indented_json
from opsdsl.errors import OpsdslError

# cryptography's `serialization` (PEM and PKCS#8 in general, SSH keys, bcrypt, every key
# type) is imported where it is needed, not above: `opsdsl compile` signing with a plain
# PKCS#8 Ed25519 key (`_plain_ed25519_key`) never needs it.

PLAN_PAYLOAD_TYPE = "application/vnd.opsdsl.plan+json"
PASSPHRASE_ENV = "OPSDSL_KEY_PASSPHRASE"

_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})


class SignatureError(OpsdslError):
    """An envelope was refused: malformed, unsigned, untrusted, tampered with, or short of its threshold."""

    exit_code = 1


class KeyFileError(OpsdslError):
    """A key cannot be used: unreadable, not a key, not Ed25519, the wrong half, or the wrong passphrase."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Verified:
    """What a successful verification vouches for: these bytes, of this type, signed by these trusted keys."""

    payload: bytes
    payload_type: str
    keyids: tuple[str, ...]


# --- keys -------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def keyid(public_key: Ed25519PublicKey) -> str:
    """Lowercase hex SHA-256 of the 32-byte raw public key: the same key has the same id everywhere."""
    return hashlib.sha256(public_key.public_bytes_raw()).hexdigest()


def write_private_key(path: str | os.PathLike, key: Ed25519PrivateKey, passphrase: bytes | None) -> None:
    """Write `key` as PKCS#8 PEM, encrypted when a passphrase is given; the file is mode 0600 from birth."""
    from cryptography.hazmat.primitives import serialization

    if passphrase is not None and not passphrase:
        raise KeyFileError("an empty passphrase would not protect the key; give a real one or none")
    if passphrase is None:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    else:
        encryption = serialization.BestAvailableEncryption(passphrase)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    _write_file_atomic(Path(path), pem, private=True)


def write_public_key(path: str | os.PathLike, public_key: Ed25519PublicKey) -> None:
    """Write `public_key` as SubjectPublicKeyInfo PEM: what trust files and `verify --key` read."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_file_atomic(Path(path), pem, private=False)


def create_private_key(path: str | os.PathLike) -> Ed25519PrivateKey:
    """The unencrypted key at `path`, made now if there is none; safe when several processes race.

    The key is written whole to a private temp file and hard-linked into place, which fails
    if another process got there first: then its key, the one on disk, is the one returned.
    A key file is never replaced, so every process signs with the same key.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        return load_private_key(path)
    from cryptography.hazmat.primitives import serialization

    key = generate_key()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return load_private_key(path)
    finally:
        temp.unlink(missing_ok=True)
    return key


def private_key_exposure(path: str | os.PathLike) -> str | None:
    """Why the private key at `path` is not private (its mode lets others read or write it), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: loading it says so
    if mode & 0o077:
        return (
            f"private key {path} is mode {mode & 0o777:04o}: others can read it; "
            f"fix it with `chmod 600 {path}` (and consider the key exposed)"
        )
    return None


def load_private_key(path: str | os.PathLike, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file, saying plainly what is wrong when it cannot."""
    data = _read_key_file(path)
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"{path} is not a PEM key file")
    if b"PRIVATE KEY-----" not in data and b"PUBLIC KEY-----" in data:
        raise KeyFileError(f"{path} holds a public key; signing needs the private key (the file without .pub)")
    encrypted = b"ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data
    if not encrypted:
        plain = _plain_ed25519_key(data)
        if plain is not None:
            return plain
    from cryptography.hazmat.primitives import serialization

    if encrypted and passphrase is None:
        raise KeyFileError(
            f"{path} is encrypted: pass --passphrase-env VAR (VAR holding the passphrase) or set {PASSPHRASE_ENV}"
        )
    try:
        key = serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise KeyFileError(f"cannot decrypt {path}: wrong passphrase (or a damaged key file)") from exc
        raise KeyFileError(f"{path} is not a valid PEM private key: {exc}") from exc
    except (TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a usable private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds {_describe_key(key)}; opsdsl signs with Ed25519 keys (`opsdsl keygen`)")
    return key


def load_public_key(source: str | bytes | os.PathLike) -> Ed25519PublicKey:
    """Read an Ed25519 public key from PEM text (str or bytes) or from a PEM file's path."""
    if isinstance(source, bytes):
        data, where = source, "the PEM data"
    elif isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        data, where = source.encode("ascii", "replace"), "the PEM text"
    else:
        data, where = _read_key_file(source), str(source)
    if b"PRIVATE KEY-----" in data:
        raise KeyFileError(f"{where} holds a private key; give its public half (the .pub file) instead")
    if b"-----BEGIN" not in data:
        raise KeyFileError(f"{where} is not a PEM public key")
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{where} is not a valid PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where} holds {_describe_key(key)}; opsdsl verifies Ed25519 signatures only")
    return key


# An unencrypted PKCS#8 Ed25519 private key (RFC 8410) is these 16 DER bytes, then the
# 32-byte seed: what `opsdsl keygen` writes without a passphrase.
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_PLAIN_PEM = re.compile(rb"\A-----BEGIN PRIVATE KEY-----\r?\n([A-Za-z0-9+/=\r\n]+?)\r?\n-----END PRIVATE KEY-----\s*\Z")


def _plain_ed25519_key(data: bytes) -> Ed25519PrivateKey | None:
    """The key of a file that holds exactly one unencrypted PKCS#8 Ed25519 PEM block and
    nothing else; None for anything else (which cryptography's PEM loader then reads,
    and words its errors)."""
    match = _PLAIN_PEM.match(data)
    if match is None:
        return None
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except ValueError:
        return None
    if len(der) != 48 or not der.startswith(_PKCS8_ED25519_PREFIX):
        return None
    return Ed25519PrivateKey.from_private_bytes(der[16:])


def _read_key_file(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"key file {path} does not exist") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror or exc}") from exc


def _describe_key(key: object) -> str:
    name = type(key).__name__.removeprefix("_").removesuffix("PrivateKey").removesuffix("PublicKey")
    kinds = {"RSA": "an RSA key", "EC": "an ECDSA key", "Ed448": "an Ed448 key", "DSA": "a DSA key"}
    return kinds.get(name, f"a {name or type(key).__name__} key")


def _write_file_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write through a fresh temp file and rename, so readers see the old file or the new, never half.

    A private key's temp file is created 0600 (O_EXCL, so not through a planted symlink) and
    chmod-ed to exactly 0600, so the secret is never readable by others, not even briefly.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.unlink(missing_ok=True)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            if private:
                os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


# --- base64 -----------------------------------------------------------------------------

_STANDARD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_SEXTET = {char: value for value, char in enumerate(_STANDARD)} | {"-": 62, "_": 63}

try:  # optional: pybase64's SIMD decoder is ~40x faster than binascii on plan-sized payloads
    from pybase64 import b64decode as _pybase64_decode
except ImportError:

    def _decode_standard(text: str) -> bytes:
        return binascii.a2b_base64(text, strict_mode=True)

else:

    def _decode_standard(text: str) -> bytes:
        return _pybase64_decode(text, validate=True)


def encode_base64(data: bytes) -> str:
    """Standard alphabet, padded: how opsdsl writes every payload and signature."""
    return base64.b64encode(data).decode("ascii")


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not, as DSSE asks; anything else is a ValueError.

    Stricter than `base64.b64decode`: one alphabet per string, no whitespace, padding only
    where it belongs, and unused trailing bits zero, so each byte string has few spellings.
    """
    size = len(text)
    body = size - 2 if text.endswith("==") else size - 1 if text.endswith("=") else size
    tail = body % 4
    if tail == 1 or (body != size and (size % 4 or tail == 0)) or text.find("=", 0, body) != -1:
        raise ValueError("base64 of the wrong length or with misplaced padding")
    if tail and _SEXTET.get(text[body - 1], 0) & (0x0F if tail == 2 else 0x03):
        raise ValueError("base64 with non-zero unused bits (not canonical)")
    padded = text if body != size or not tail else text + "=" * (4 - tail)
    try:
        return _decode_standard(padded)
    except ValueError:  # binascii.Error is a ValueError; so is a non-ASCII str
        pass
    if "+" in text or "/" in text or ("-" not in text and "_" not in text):
        raise ValueError("not base64 (a character outside the alphabet)")
    try:
        return _decode_standard(padded.replace("-", "+").replace("_", "/"))
    except ValueError:
        raise ValueError("not base64 (a character outside the URL-safe alphabet)") from None


# --- envelopes --------------------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: the bytes that are actually signed (lengths in bytes)."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def sign_envelope(payload: bytes, keys: Sequence[Ed25519PrivateKey], payload_type: str = PLAN_PAYLOAD_TYPE) -> dict:
    """A DSSE envelope around `payload`, signed by each of `keys` (none gives an unsigned envelope)."""
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if not isinstance(payload_type, str):
        raise TypeError(f"payload_type must be str, not {type(payload_type).__name__}")
    envelope = {"payload": encode_base64(payload), "payloadType": payload_type, "signatures": []}
    for key in keys:
        envelope = add_signature(envelope, key)
    return envelope


def add_signature(envelope: dict, key: Ed25519PrivateKey) -> dict:
    """A new envelope with `key`'s signature added; an earlier signature by the same key is replaced.

    The result is normalised (standard base64, signatures sorted by keyid), so the same
    signers in any order give the same envelope.
    """
    _check_envelope(envelope)
    payload = _decode_payload(envelope["payload"])
    signed = pae(envelope["payloadType"], payload)
    public_key = key.public_key()
    own_id = keyid(public_key)
    signatures = []
    for index, entry in enumerate(envelope["signatures"]):
        sig = _decode_field(entry["sig"], f"signature {index + 1}")
        entry_id = entry.get("keyid") or None
        if entry_id == own_id or (entry_id is None and _verifies(public_key, sig, signed)):
            continue
        signatures.append(
            {"sig": encode_base64(sig)} if entry_id is None else {"keyid": entry_id, "sig": encode_base64(sig)}
        )
    signatures.append({"keyid": own_id, "sig": encode_base64(key.sign(signed))})
    return {
        "payload": encode_base64(payload),
        "payloadType": envelope["payloadType"],
        "signatures": sorted(signatures, key=_signature_order),
    }


def sign_envelope_bytes(
    payload: bytes, keys: Sequence[Ed25519PrivateKey], payload_type: str = PLAN_PAYLOAD_TYPE
) -> tuple[dict, bytes]:
    """`sign_envelope(payload, keys)` and its `envelope_bytes`, the same envelope and the
    same bytes, built directly: the payload is encoded once, not decoded again per key,
    and the file's text is assembled around the base64 (which JSON never escapes) instead
    of being scanned. `opsdsl compile` signs every plan it builds this way."""
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if not isinstance(payload_type, str):
        raise TypeError(f"payload_type must be str, not {type(payload_type).__name__}")
    signed = pae(payload_type, payload)
    sigs: dict[str, str] = {}  # a key given twice signs once (add_signature replaces its own)
    for key in keys:
        sigs[keyid(key.public_key())] = encode_base64(key.sign(signed))
    signatures = sorted(({"keyid": k, "sig": s} for k, s in sigs.items()), key=_signature_order)
    envelope = {"payload": encode_base64(payload), "payloadType": payload_type, "signatures": signatures}
    from json.encoder import encode_basestring_ascii

    # indented_json(envelope, ensure_ascii=True) + "\n", spelled out (base64 and hex need no escapes).
    parts = ['{\n  "payload": "', envelope["payload"], '",\n  "payloadType": ', encode_basestring_ascii(payload_type)]
    if signatures:
        entries = ",\n    ".join(
            f'{{\n      "keyid": "{s["keyid"]}",\n      "sig": "{s["sig"]}"\n    }}' for s in signatures
        )
        parts.append(f',\n  "signatures": [\n    {entries}\n  ]\n}}\n')
    else:
        parts.append(',\n  "signatures": []\n}\n')
    return envelope, "".join(parts).encode("ascii")


def envelope_bytes(envelope: dict) -> bytes:
    """The envelope as a file: JSON, sorted keys, 2-space indent, trailing newline; same envelope, same bytes."""
    _check_envelope(envelope)
    ordered = {**envelope, "signatures": sorted(envelope["signatures"], key=_signature_order)}
    return (indented_json(ordered, ensure_ascii=True) + "\n").encode("ascii")


def parse_envelope(data: bytes | str) -> dict:
    """Read an envelope file strictly: a JSON object with exactly DSSE's fields, of the right types.

    The payload must be base64 too; a signature's text is left for verification to judge.
    """
    return _read_envelope(data)[0]


# Where the payload's string value starts (see _read_envelope_shortcut).
_PAYLOAD_VALUE = re.compile(r'"payload"[ \t\n\r]*:[ \t\n\r]*"')


def _read_envelope(data: bytes | str) -> tuple[dict, bytes]:
    """Parse and check an envelope, and decode its payload: (envelope, payload bytes)."""
    try:
        text = data if isinstance(data, str) else str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(f"not UTF-8 text (byte {exc.start})") from None
    return _read_envelope_shortcut(text) or _read_envelope_in_full(text)


def _read_envelope_shortcut(text: str) -> tuple[dict, bytes] | None:
    """The same as `_read_envelope_in_full`, or None when unsure, without JSON-scanning the payload.

    The payload string is nearly all of an envelope, and scanning it as JSON costs a quarter
    of an Ed25519 verify. So: cut the payload's value out of the text, parse the rest, and
    decode the value as base64. That is exact when it succeeds: base64 holds no quote,
    backslash or control character, so the cut-out text is the JSON string's value; and with
    only DSSE's field names allowed, the one place `"payload":"` can occur is the top-level
    payload key. Any failure, and the caller parses in full, which also words the errors.
    """
    found = _PAYLOAD_VALUE.search(text)
    if found is None:
        return None
    start = found.end()
    end = text.find('"', start)
    if end == -1:
        return None
    value = text[start:end]
    try:
        payload = decode_base64(value)
        envelope = _JSON.decode(text[:start] + text[end:])
        if type(envelope) is not dict or envelope.get("payload") != "":
            return None
        envelope["payload"] = value
        _check_envelope(envelope)
    except (ValueError, RecursionError, SignatureError):
        return None
    return envelope, payload


def _read_envelope_in_full(text: str) -> tuple[dict, bytes]:
    try:
        envelope = _JSON.decode(text)
    except json.JSONDecodeError as exc:
        raise _malformed(f"{exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except (_DuplicateKey, RecursionError) as exc:
        raise _malformed(str(exc) if isinstance(exc, _DuplicateKey) else "nested too deeply") from None
    _check_envelope(envelope)
    return envelope, _decode_payload(envelope["payload"])


class _DuplicateKey(ValueError):
    pass


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    # json keeps the last of two equal keys silently; another parser might keep the first,
    # and then two verifiers would disagree about what was signed.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _DuplicateKey(f"duplicate key {duplicate!r}")
    return result


_JSON = json.JSONDecoder(object_pairs_hook=_refuse_duplicate_keys)


def _check_envelope(envelope: object) -> None:
    if type(envelope) is not dict:
        raise _malformed(f"expected a JSON object, got {_json_type(envelope)}")
    if envelope.keys() != _ENVELOPE_FIELDS:
        missing = sorted(_ENVELOPE_FIELDS - envelope.keys())
        extra = sorted(envelope.keys() - _ENVELOPE_FIELDS)
        raise _malformed(f"missing field {missing[0]!r}" if missing else f"unexpected field {extra[0]!r}")
    for field, kind in (("payload", str), ("payloadType", str), ("signatures", list)):
        if type(envelope[field]) is not kind:
            raise _malformed(f"{field!r} must be {_json_type(kind())}, not {_json_type(envelope[field])}")
    for number, entry in enumerate(envelope["signatures"], 1):
        if type(entry) is not dict:
            raise _malformed(f"signature {number} must be an object, not {_json_type(entry)}")
        if "sig" not in entry or not entry.keys() <= _SIGNATURE_FIELDS:
            extra = sorted(entry.keys() - _SIGNATURE_FIELDS)
            raise _malformed(
                f"signature {number} has unexpected field {extra[0]!r}" if extra else f"signature {number} has no 'sig'"
            )
        if type(entry["sig"]) is not str or type(entry.get("keyid", "")) is not str:
            raise _malformed(f"signature {number}: 'sig' and 'keyid' must be strings")


def _malformed(reason: str) -> SignatureError:
    return SignatureError(f"not a DSSE envelope: {reason}")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _signature_order(entry: dict) -> tuple[str, str]:
    return (entry.get("keyid", ""), entry["sig"])


def _decode_payload(text: str) -> bytes:
    return _decode_field(text, "payload")


def _decode_field(text: str, what: str) -> bytes:
    try:
        return decode_base64(text)
    except ValueError as exc:
        raise _malformed(f"{what}: {exc}") from None


def _verifies(public_key: Ed25519PublicKey, sig: bytes, signed: bytes) -> bool:
    try:
        public_key.verify(sig, signed)
    except InvalidSignature:
        return False
    return True


# --- verification -----------------------------------------------------------------------


def verify_envelope(
    envelope: dict | bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    threshold: int,
    payload_types: Collection[str] = (PLAN_PAYLOAD_TYPE,),
    *,
    names: Mapping[str, str] | None = None,
) -> Verified:
    """Check that at least `threshold` distinct `trusted` keys signed this envelope, and that no
    trusted key's signature on it is bad, or raise SignatureError.

    `trusted` maps keyid to public key; `names` (keyid to a person's or system's name, from
    the trust file) only makes messages readable. Every signature is checked, so `keyids`
    lists all the trusted signers, not just the first `threshold`.
    """
    # 0. The question itself must be answerable: a threshold below one, or no trusted key
    #    at all, would "pass" without checking anything, so it is a programming error.
    if type(threshold) is not int or threshold < 1:
        raise ValueError(f"threshold must be an integer of at least 1, not {threshold!r}")
    if not trusted:
        raise ValueError("no trusted keys: an empty trust set verifies nothing")
    if threshold > len(trusted):
        raise ValueError(f"threshold {threshold} can never be met by {len(trusted)} trusted key(s)")

    # 1. A well-formed envelope: exactly DSSE's fields, each of the right type, and a
    #    payload that is base64 (standard or URL-safe, padded or not), decoded here.
    if type(envelope) is dict:
        _check_envelope(envelope)
        payload = _decode_payload(envelope["payload"])
    else:
        envelope, payload = _read_envelope(envelope)
    payload_type = envelope["payloadType"]
    signatures = envelope["signatures"]

    # 2. A payload type the caller accepts. PAE binds the type into every signature, so
    #    this refuses a genuinely signed document of another kind.
    if payload_type not in payload_types:
        expected = ", ".join(repr(kind) for kind in payload_types)
        raise SignatureError(f"payload type {payload_type!r} is not accepted (expected {expected})")

    # 3. The signed bytes: PAE of the type and the decoded payload. Signatures are decoded
    #    one by one in 4, where a garbled one counts as a bad signature, not a malformed file.
    signed = pae(payload_type, payload)

    # 4. Each signature, over PAE: a keyid selects that trusted key (an unknown keyid
    #    counts for nothing); without a keyid, each trusted key not yet counted is tried.
    if not signatures:
        raise SignatureError("plan is not signed")
    verified: dict[str, None] = {}
    unknown: list[str] = []
    failed: list[str] = []
    unmatched = 0
    for entry in signatures:
        try:
            sig = decode_base64(entry["sig"])
        except ValueError:
            sig = b""
        entry_id = entry.get("keyid") or None
        if entry_id is None:
            match = next(
                (kid for kid, key in trusted.items() if kid not in verified and _verifies(key, sig, signed)), None
            )
            if match is None:
                unmatched += 1
            else:
                verified[match] = None
            continue
        key = trusted.get(entry_id)
        if key is None:
            unknown.append(entry_id)
        elif _verifies(key, sig, signed):
            verified[entry_id] = None
        else:
            failed.append(entry_id)

    # 5. A bad signature by a trusted key refuses the envelope, however many others are
    #    good: someone changed what that key signed, or forged its name on something else.
    names = names or {}
    if failed:
        who = ", ".join(names.get(kid, kid) for kid in dict.fromkeys(failed))
        raise SignatureError(f"bad signature from key {who}")

    # 6. Count distinct keys: one key that signed twice is one signer.
    count = len(verified)

    # 7. The threshold. When it is not met, say why in the most specific terms there are.
    if count >= threshold:
        return Verified(payload, payload_type, tuple(sorted(verified)))
    if not count and unknown:
        raise SignatureError(f"signature by unknown key {', '.join(dict.fromkeys(unknown))}")
    if not count and unmatched:
        raise SignatureError("signature by unknown key: a signature without a keyid matches no trusted key")
    signers = ", ".join(sorted(names.get(kid, kid) for kid in verified)) or "no trusted key"
    raise SignatureError(
        f"threshold not met: {count} of {threshold} required trusted signatures (signed by: {signers})"
    )
