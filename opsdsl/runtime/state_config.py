"""A state directory's mode, and the key that signs its checkpoints and incident records.

Development (the default): `run --pack` compiles and signs plans with the state directory's
own dev key (`keys/dev.key`, made on first use), and the same key signs checkpoints and
records. Production (`opsdsl init --production --signing-key PATH`, written to
`STATE/config.json`): `--pack` is refused, only signed plans verified against a trust file
run, and checkpoints and records are signed with a key kept outside the state directory.
The private key is the one truth: its public half is always derived from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.errors import OpsdslError, UsageError

CONFIG_FILE = "config.json"
DEV_KEY = "keys/dev.key"
DEVELOPMENT, PRODUCTION = "development", "production"
_FIELDS = {"apiVersion", "kind", "mode", "signing_key", "passphrase_env", "public_key"}


class KeyRefused(OpsdslError):
    """A signing key that must not be used: readable by others, or missing (exit 5, like a refused run)."""

    exit_code = 5


@dataclass(frozen=True)
class StateConfig:
    mode: str = DEVELOPMENT
    signing_key: Path | None = None
    passphrase_env: str | None = None
    public_key: str | None = None  # PEM of the signing key's public half, for `ledger verify`'s default

    @property
    def production(self) -> bool:
        return self.mode == PRODUCTION


@dataclass(frozen=True)
class Signer:
    """The key that signs a state directory's checkpoints and records, and what it is."""

    key: Any  # Ed25519PrivateKey
    role: str  # "dev" (the state directory's own) or "configured" (kept outside it)
    mode: str

    def describe(self) -> dict[str, str]:
        """What an incident record says about who signed it."""
        from opsdsl.build.signing import keyid

        return {"keyid": keyid(self.key.public_key()), "key": self.role, "mode": self.mode}


def read_config(state: Path) -> StateConfig:
    """STATE/config.json, or the development default when there is none."""
    path = state / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return StateConfig()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as error:
        raise UsageError(f"{path} is not JSON: {error}") from None
    if not isinstance(data, dict) or data.get("kind") != "StateConfig" or not set(data) <= _FIELDS:
        raise UsageError(f"{path} is not an opsdsl state config (see docs/runtime.md#production-state-directories)")
    mode = data.get("mode")
    if mode not in (DEVELOPMENT, PRODUCTION):
        raise UsageError(f"{path}: mode must be {DEVELOPMENT!r} or {PRODUCTION!r}, not {mode!r}")
    key = data.get("signing_key")
    if mode == PRODUCTION and not isinstance(key, str):
        raise UsageError(f"{path}: a production state directory needs signing_key (a path outside it)")
    return StateConfig(mode, Path(key) if key else None, data.get("passphrase_env"), data.get("public_key"))


def write_production_config(state: Path, signing_key: Path, passphrase_env: str | None) -> StateConfig:
    """Make `state` a production state directory signing with `signing_key` (checked now)."""
    from cryptography.hazmat.primitives import serialization

    from opsdsl.files import write_atomic_bytes
    from opsdsl.runtime.store import prepare_state_dir

    key_path = signing_key.resolve()
    root = state.resolve()
    if key_path.is_relative_to(root):
        raise UsageError(
            f"--signing-key {signing_key} is inside the state directory {state}: keep it outside the state"
            " directory, where whoever can write the state cannot replace it"
        )
    prepare_state_dir(state)
    config = StateConfig(PRODUCTION, key_path, passphrase_env)
    key = _load(key_path, passphrase_env)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    document = {
        "apiVersion": "opsdsl/v1",
        "kind": "StateConfig",
        "mode": PRODUCTION,
        "signing_key": str(key_path),
        "passphrase_env": passphrase_env,
        "public_key": pem.decode("ascii"),
    }
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    write_atomic_bytes(state / CONFIG_FILE, text.encode("utf-8"), mode=0o600)
    return config


# The key `opsdsl serve --config` names ([signing] in its file, loaded and checked by
# opsdsl.serve.config): for the rest of the process, every Runtime over that state
# directory signs with it. Set before the service starts; never set by other commands.
_CHOSEN: dict[Path, Signer] = {}


def use_signer(state: Path, chosen: Signer) -> None:
    """Sign `state`'s checkpoints and records with `chosen` in this process (see _CHOSEN)."""
    _CHOSEN[state.resolve()] = chosen


def signer(state: Path) -> Signer:
    """The key that signs `state`'s checkpoints and records: the one this process was told
    to use (`use_signer`), else the configured one in production, else the dev key (created
    atomically on first use, in a private state directory)."""
    chosen = _CHOSEN.get(state.resolve())
    if chosen is not None:
        return chosen
    config = read_config(state)
    if config.production:
        assert config.signing_key is not None
        return Signer(_load(config.signing_key, config.passphrase_env), "configured", PRODUCTION)
    return Signer(dev_key(state), "dev", DEVELOPMENT)


def dev_key(state: Path):
    """The state directory's own Ed25519 key, made on first use (also when several processes
    make it at once: one key wins, all use it); `keys/dev.pub` is rewritten from it whenever
    it does not match, so a planted or stale public key never counts."""
    from opsdsl.build.signing import create_private_key, keyid, load_public_key, write_public_key
    from opsdsl.runtime.store import prepare_state_dir

    prepare_state_dir(state)
    path = state / DEV_KEY
    path.parent.mkdir(mode=0o700, exist_ok=True)
    _refuse_exposed(path)
    key = create_private_key(path)
    public = path.with_suffix(".pub")
    try:
        matches = keyid(load_public_key(public)) == keyid(key.public_key())
    except OpsdslError:
        matches = False  # missing, damaged or another key: derived again below
    if not matches:
        write_public_key(public, key.public_key())
    return key


def state_public_key(state: Path) -> tuple[Any, str] | None:
    """The public key a state directory says signs it, and where it came from, or None:
    derived from the dev key when it can be read, else the configured or stored public half."""
    from opsdsl.build.signing import load_private_key, load_public_key

    config = read_config(state)
    if config.production and config.public_key:
        return load_public_key(config.public_key), f"the public key in {state / CONFIG_FILE}"
    path = state / DEV_KEY
    if path.is_file() and os.access(path, os.R_OK):
        return load_private_key(path).public_key(), f"the dev key {path}"
    public = path.with_suffix(".pub")
    if public.is_file():
        return load_public_key(public), f"the public key {public}"
    return None


def _load(path: Path, passphrase_env: str | None):
    from opsdsl.build.signing import PASSPHRASE_ENV, load_private_key

    _refuse_exposed(path)
    variable = passphrase_env or PASSPHRASE_ENV
    value = os.environ.get(variable)
    if passphrase_env and not value:
        raise UsageError(f"the signing key's passphrase is read from ${passphrase_env}, which is not set or empty")
    return load_private_key(path, os.fsencode(value) if value else None)


def _refuse_exposed(path: Path) -> None:
    from opsdsl.build.signing import private_key_exposure

    problem = private_key_exposure(path)
    if problem is not None:
        raise KeyRefused(problem)
