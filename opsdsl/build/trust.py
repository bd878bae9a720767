"""Trust files: whose public keys may sign plans, and how many of them must, per environment.

    apiVersion: opsdsl/v1
    kind: Trust
    keys:
      - {name: alice, publicKey: "-----BEGIN PUBLIC KEY-----\\n..."}
      - {name: ci, file: keys/ci.pub}          # relative to the trust file
    environments:
      default: {threshold: 1}                   # every key
      production: {threshold: 2, keys: [alice, ci]}

A trust file is policy, so it is read strictly: an unknown field, a duplicate name or key,
or a threshold no set of signers could meet is a TrustError, never a silent default.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from opsdsl.build.signing import PLAN_PAYLOAD_TYPE, KeyFileError, Verified, keyid, load_public_key, verify_envelope
from opsdsl.errors import OpsdslError
from opsdsl.files import not_regular
from opsdsl.lang.untrusted import InputError, decode, read_bytes

API_VERSION = "opsdsl/v1"
DEFAULT_ENVIRONMENT = "default"
MAX_TRUST_BYTES = 1024 * 1024  # a trust file, or a key file it names: a few KiB in practice

_TOP_FIELDS = {"apiVersion", "kind", "keys", "environments"}
_KEY_FIELDS = {"name", "publicKey", "file", "keyid"}
_ENVIRONMENT_FIELDS = {"threshold", "keys"}


class TrustError(OpsdslError):
    """A trust file is missing or invalid: a configuration problem, not a refused plan."""

    exit_code = 2


@dataclass(frozen=True)
class TrustedKey:
    name: str
    keyid: str
    public_key: Ed25519PublicKey


@dataclass(frozen=True)
class Environment:
    """Which keys count in one environment, and how many distinct ones must have signed."""

    name: str
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class Trust:
    """A loaded trust file: keys by keyid, and the environments that choose among them."""

    path: Path
    keys: dict[str, TrustedKey]
    environments: dict[str, Environment]

    @property
    def names(self) -> dict[str, str]:
        """keyid → name, for messages."""
        return {kid: key.name for kid, key in self.keys.items()}

    def choose(self, name: str | None) -> str:
        """`name`, or the only environment when none is named; several and none named is a
        TrustError: falling back to a lax `default` when `production` wants two signers
        would quietly drop the two-person rule."""
        if name is not None:
            return name
        if len(self.environments) == 1:
            return next(iter(self.environments))
        known = ", ".join(sorted(self.environments))
        raise TrustError(f"trust file {self.path} has several environments ({known}): pass --env NAME to choose one")

    def environment(self, name: str | None = None) -> tuple[dict[str, Ed25519PublicKey], int]:
        """The trusted keys (keyid → public key) and the threshold for environment `name`
        (None: the only one; see `choose`)."""
        name = self.choose(name)
        found = self.environments.get(name)
        if found is None:
            known = ", ".join(sorted(self.environments))
            raise TrustError(f"trust file {self.path} has no environment {name!r} (it has: {known})")
        return {kid: self.keys[kid].public_key for kid in found.keyids}, found.threshold

    def verify(
        self,
        envelope: dict | bytes,
        environment: str | None = None,
        payload_types: Collection[str] = (PLAN_PAYLOAD_TYPE,),
    ) -> Verified:
        """Verify `envelope` against this file's keys and threshold for `environment`."""
        keys, threshold = self.environment(environment)
        return verify_envelope(envelope, keys, threshold, payload_types, names=self.names)


def load_trust(path: str | Path) -> Trust:
    """Read and validate a trust file; every problem is a TrustError that names the file and the place."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise TrustError(f"trust file {path} does not exist")
    try:
        text = decode(read_bytes(path, f"cannot read trust file {path}", MAX_TRUST_BYTES), f"trust file {path}")
    except InputError as exc:
        raise TrustError(exc.message) from None
    try:
        if _nested_too_deep(text):
            raise TrustError(f"trust file {path} is nested too deeply to be a trust file")
        document = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        raise TrustError(f"trust file {path} is not valid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise TrustError(f"trust file {path} is nested too deeply to be a trust file") from None

    def fail(where: str, message: str) -> TrustError:
        return TrustError(f"trust file {path}: {where}: {message}")

    if not isinstance(document, dict):
        raise fail("top level", "expected a mapping with apiVersion, kind, keys and environments")
    _refuse_unknown_fields(document, _TOP_FIELDS, "top level", fail)
    if document.get("apiVersion") != API_VERSION:
        raise fail("apiVersion", f"expected {API_VERSION!r}, got {document.get('apiVersion')!r}")
    if document.get("kind") != "Trust":
        raise fail("kind", f"expected 'Trust', got {document.get('kind')!r}")
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries:
        raise fail("keys", "expected a non-empty list of {name, publicKey | file}")

    keys: dict[str, TrustedKey] = {}
    by_name: dict[str, str] = {}
    for number, entry in enumerate(entries, 1):
        trusted = _load_key_entry(entry, f"keys[{number}]", path.parent, fail)
        if trusted.name in by_name:
            raise fail(f"keys[{number}]", f"duplicate name {trusted.name!r}")
        if trusted.keyid in keys:
            raise fail(f"keys[{number}]", f"key {trusted.name!r} is the same key as {keys[trusted.keyid].name!r}")
        keys[trusted.keyid] = trusted
        by_name[trusted.name] = trusted.keyid

    raw_environments = document.get("environments")
    if raw_environments is None:
        # No environments section: one environment, `default`, any single trusted key.
        raw_environments = {DEFAULT_ENVIRONMENT: {"threshold": 1}}
    if not isinstance(raw_environments, dict) or not raw_environments:
        raise fail("environments", "expected a mapping of environment name to {threshold, keys}")
    environments = {}
    for name, spec in raw_environments.items():
        environments[name] = _load_environment(name, spec, by_name, fail)
    return Trust(path, keys, environments)


def _load_key_entry(entry: object, where: str, base: Path, fail) -> TrustedKey:
    if not isinstance(entry, dict):
        raise fail(where, "expected a mapping {name, publicKey | file}")
    _refuse_unknown_fields(entry, _KEY_FIELDS, where, fail)
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail(where, "'name' must be a non-empty string")
    where = f"key {name!r}"
    if ("publicKey" in entry) == ("file" in entry):
        raise fail(where, "give exactly one of 'publicKey' (inline PEM) or 'file' (a .pub file)")
    try:
        if "publicKey" in entry:
            if not isinstance(entry["publicKey"], str):
                raise fail(where, "'publicKey' must be PEM text")
            public_key = load_public_key(entry["publicKey"])
        else:
            if not isinstance(entry["file"], str) or not entry["file"]:
                raise fail(where, "'file' must be a path")
            problem = _key_file_problem(base / entry["file"])
            if problem is not None:  # a FIFO or a device would block: never hand it on
                raise fail(where, f"key file {base / entry['file']} is {problem}")
            public_key = load_public_key(base / entry["file"])
    except KeyFileError as exc:
        raise fail(where, exc.message) from None
    kid = keyid(public_key)
    pinned = entry.get("keyid")
    if pinned is not None and pinned != kid:
        raise fail(where, f"keyid is {kid}, not the pinned {pinned!r} (was the key file swapped?)")
    return TrustedKey(name, kid, public_key)


def _nested_too_deep(text: str, limit: int = 16) -> bool:
    """Whether the YAML nests deeper than `limit` (a trust file needs 4), found from the event
    stream before anything is composed: PyYAML composes recursively and scans deep flow
    nesting in quadratic time."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
            depth += 1
            if depth > limit:
                return True
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            depth -= 1
    return False


def _key_file_problem(path: Path) -> str | None:
    """Why `path` cannot be a key file without opening it (a FIFO, a huge file), or None;
    a missing file is left for `load_public_key` to report."""
    try:
        info = path.stat()
    except (OSError, ValueError):
        return None
    kind = not_regular(info.st_mode)
    if kind is not None:
        return f"{kind}, not a regular file"
    if info.st_size > MAX_TRUST_BYTES:
        return f"larger than {MAX_TRUST_BYTES} bytes"
    return None


def _load_environment(name: object, spec: object, by_name: Mapping[str, str], fail) -> Environment:
    if not isinstance(name, str) or not name:
        raise fail("environments", f"environment names must be non-empty strings, not {name!r}")
    where = f"environment {name!r}"
    if not isinstance(spec, dict):
        raise fail(where, "expected a mapping {threshold, keys}")
    _refuse_unknown_fields(spec, _ENVIRONMENT_FIELDS, where, fail)
    members = spec.get("keys", list(by_name))
    if not isinstance(members, list) or not members or not all(isinstance(member, str) for member in members):
        raise fail(where, "'keys' must be a non-empty list of key names")
    for member in members:
        if member not in by_name:
            raise fail(where, f"unknown key name {member!r} (known: {', '.join(by_name)})")
    if len(set(members)) != len(members):
        raise fail(where, "a key is listed twice")
    threshold = spec.get("threshold")
    if type(threshold) is not int or threshold < 1:
        raise fail(where, f"'threshold' must be an integer of at least 1, not {threshold!r}")
    if threshold > len(members):
        raise fail(where, f"threshold {threshold} is more than its {len(members)} key(s); it could never be met")
    return Environment(name, tuple(by_name[member] for member in members), threshold)


def _refuse_unknown_fields(mapping: dict, allowed: set[str], where: str, fail) -> None:
    unknown = sorted(str(field) for field in mapping if field not in allowed)
    if unknown:
        raise fail(where, f"unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping, instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float):
                    continue  # not hashable, or not a plain key: the base class reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)
