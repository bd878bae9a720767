"""Where a run's plan comes from: a pack compiled and signed with the state directory's dev
key (`run --pack`, refused in a production state directory), or a signed plan verified
against a trust file (`run --plan`). Either way the runtime executes the verified payload,
never the source, and the run records which path it came by."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.errors import OpsdslError, UsageError
from opsdsl.runtime.state_config import DEV_KEY, dev_key, read_config  # noqa: F401  (DEV_KEY re-exported)

EXIT_REFUSED = 5


class RunRefused(OpsdslError):
    """The run did not start: bad signature, untrusted plan, missing input (exit 5)."""

    exit_code = EXIT_REFUSED


@dataclass
class VerifiedPlan:
    envelope: bytes
    payload: dict[str, Any]
    digest: str
    keyids: list[str]
    trust: str  # "dev-key" or the trust file
    path: str = "plan"  # "plan": --plan verified against a trust file; "pack": --pack signed with the dev key
    environment: str | None = None  # the trust file's environment (path "plan")

    def verification(self) -> dict[str, Any]:
        """What plan.verified records: which keys, which trust, by which path."""
        return {"keyids": self.keyids, "trust": self.trust, "path": self.path, "environment": self.environment}


def policy_scope(pack: Path, policies: Sequence[Path] | None) -> list[Path]:
    """The policy packs a `--pack` runs with: those named, else those beside the pack file."""
    from opsdsl.build.pipeline import looks_like_policy_pack

    if not pack.is_file():
        raise UsageError(f"--pack {pack}: no such file")
    if policies is not None:
        return list(policies)
    return [
        p
        for p in sorted(pack.parent.iterdir())
        if p != pack and p.suffix in (".yaml", ".yml", ".ops") and looks_like_policy_pack(p)
    ]


def lint_config() -> Any:
    """The lint configuration `opsdsl compile` would use here (the nearest `.opsdsl.toml` or
    `[tool.opsdsl]` from the working directory): a pack run with --pack fails on what its
    `severity` table makes an error, as `opsdsl lint` and `opsdsl compile` fail it."""
    from opsdsl.lang.config import find_config, load_config

    return load_config(find_config(Path.cwd()))


def plan_from_pack(pack: Path, policies: Sequence[Path] | None, state: Path) -> VerifiedPlan:
    """Compile and sign `pack` with the dev key; policy packs beside it are in scope unless
    `policies` names them explicitly."""
    from opsdsl.build.plans import compile_paths

    if read_config(state).production:
        raise RunRefused(
            f"--pack {pack}: {state} is a production state directory, where only reviewed plans run:"
            " compile and sign it (`opsdsl compile`, `opsdsl sign`) and run it with --plan SIGNED_PLAN"
        )
    policies = policy_scope(pack, policies)
    key = dev_key(state)
    out = state / "plans" / pack.stem  # one build folder per pack: builds of other packs never prune it
    result = compile_paths([pack, *policies], out, keys=[key], config=lint_config())
    if result.failed:
        raise RunRefused(f"{pack} has errors; nothing was run", tuple(result.diagnostics))
    entry = next(p for p in result.packs if p.plan_file and p.status in ("compiled", "unchanged", "reused"))
    envelope = (out / entry.plan_file).read_bytes()
    verified = _verify(envelope, {_keyid(key): key.public_key()}, 1, "dev-key")
    verified.path = "pack"
    return verified


def plan_from_file(path: Path, trust_file: Path | None, environment: str | None, state: Path) -> VerifiedPlan:
    """Read a signed plan and verify it against the trust file (default STATE/trust.yaml), in
    `environment` (None: the trust file's only environment; with several, --env is required)."""
    from opsdsl.build.trust import load_trust

    if trust_file is None and state.is_dir():
        from opsdsl.runtime.store import prepare_state_dir

        prepare_state_dir(state)  # STATE/trust.yaml counts only in a folder nobody else can write
    trust_file = trust_file or (state / "trust.yaml")
    if not trust_file.exists():
        raise RunRefused(
            f"no trust file to verify {path} against: pass --trust FILE, or write {trust_file}"
            " (see docs/signing.md#trust-files)"
        )
    try:
        envelope = path.read_bytes()
    except OSError as error:
        raise UsageError(f"--plan {path}: {error.strerror}") from None
    trust = load_trust(trust_file)
    environment = trust.choose(environment)
    keys, threshold = trust.environment(environment)
    verified = _verify(envelope, keys, threshold, str(trust_file), trust.names)
    verified.environment = environment
    return verified


def plan_for_dry_run(
    pack: Path | None,
    plan_file: Path | None,
    policies: Sequence[Path] | None,
    trust: Path | None,
    environment: str | None,
    state: Path,
) -> dict[str, Any]:
    """The plan payload a run would execute, obtained without writing anything in `state`."""
    import tempfile

    from opsdsl.build.plans import compile_paths

    if plan_file is not None:
        return plan_from_file(plan_file, trust, environment, state).payload
    assert pack is not None
    policies = policy_scope(pack, policies)
    with tempfile.TemporaryDirectory(prefix="opsdsl-dry-run-") as scratch:
        result = compile_paths([pack, *policies], Path(scratch), config=lint_config())
        if result.failed:
            raise RunRefused(f"{pack} has errors; nothing was run", tuple(result.diagnostics))
        entry = next(p for p in result.packs if p.plan_file and p.status in ("compiled", "unchanged", "reused"))
        return json.loads(_payload_of((Path(scratch) / entry.plan_file).read_bytes()))


def _verify(envelope: bytes, keys: Mapping, threshold: int, trust: str, names: Mapping | None = None) -> VerifiedPlan:
    from opsdsl.build.signing import PLAN_PAYLOAD_TYPE, SignatureError, parse_envelope, verify_envelope
    from opsdsl.canonical import sha256_digest

    try:
        verified = verify_envelope(parse_envelope(envelope), keys, threshold, names=names)
    except SignatureError as error:
        raise RunRefused(f"plan refused: {error.message}") from None
    if verified.payload_type != PLAN_PAYLOAD_TYPE:
        raise RunRefused(f"plan refused: payload type {verified.payload_type!r} is not a plan")
    payload = json.loads(verified.payload)
    return VerifiedPlan(envelope, payload, sha256_digest(verified.payload), sorted(verified.keyids), trust)


def _keyid(key) -> str:
    from opsdsl.build.signing import keyid

    return keyid(key.public_key())


def _payload_of(envelope: bytes) -> bytes:
    from opsdsl.build.signing import decode_base64, parse_envelope

    return decode_base64(parse_envelope(envelope)["payload"])
