"""`opsdsl compile`: check packs, build their plans, sign them, and write them with a
build manifest, reusing prior output where nothing that goes into a plan changed.

The manifest (`manifest.json` in the output folder) records, per pack, the source
file's sha256, the model digest, the digest of its policy scope, the plan payload's
digest, the signers' key ids and each step's source position. A pack whose source,
scope and compiler version are unchanged, and whose plan file still holds the recorded
payload signed by the requested keys, is not even parsed again.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl import __version__
from opsdsl.canonical import sha256_digest
from opsdsl.errors import Diagnostic, Severity, UsageError
from opsdsl.loader import discover, display_path
from opsdsl.pipeline import analyse_file, no_packs

MANIFEST = "manifest.json"
PLAN_SUFFIX = ".plan.dsse.json"
_POLICY_PACK = re.compile(rb"^kind:\s*['\"]?PolicyPack\b", re.MULTILINE)
PARALLEL_MIN_FILES = 16

# Signing keys for this build; set before worker processes fork, so they inherit them.
_SIGNING_KEYS: tuple = ()


@dataclass
class PackResult:
    """What happened to one pack file."""

    source: str
    status: str  # "compiled" | "unchanged" | "reused" | "failed"
    name: str | None = None
    plan_file: str | None = None
    entry: dict[str, Any] | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)


@dataclass
class BuildResult:
    packs: list[PackResult]
    policy_packs: list[dict[str, Any]]

    @property
    def diagnostics(self) -> list[Diagnostic]:
        return sorted((d for p in self.packs for d in p.diagnostics), key=Diagnostic.sort_key)

    @property
    def failed(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)


def plan_path(out_dir: Path, pack_name: str) -> Path:
    return out_dir / f"{pack_name}{PLAN_SUFFIX}"


def load_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) and manifest.get("compiler") == __version__ else {}


def _file_digest(path: Path) -> str:
    return sha256_digest(path.read_bytes())


def _step_spans(analysis) -> dict[str, dict[str, str]]:
    """Each step's source position, so run-time errors can point at source lines."""
    spans: dict[str, dict[str, str]] = {}
    for name, playbook in analysis.model.playbooks.items():
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            for i, step in enumerate(steps):
                spans.setdefault(name, {})[step.id] = str(analysis.document.span(("playbooks", name, section, i)))
    return spans


def _signed_by(envelope: dict) -> set[str]:
    return {s.get("keyid") for s in envelope.get("signatures", ())}


def _existing_envelope(path: Path) -> dict | None:
    from opsdsl.signing import parse_envelope

    try:
        return parse_envelope(path.read_bytes())
    except Exception:
        return None


def _reusable(previous: dict | None, source_digest: str, scope: str, out_dir: Path, keyids: set[str]) -> bool:
    if not previous or previous.get("sourceDigest") != source_digest or previous.get("scopeDigest") != scope:
        return False
    envelope = _existing_envelope(out_dir / previous["plan"])
    if envelope is None:
        return False
    import base64

    payload = base64.b64decode(envelope["payload"])
    return sha256_digest(payload) == previous.get("payloadDigest") and keyids <= _signed_by(envelope)


def compile_file(
    path: Path, policies: tuple, scope: list, scope_dig: str, out_dir: Path, previous: dict | None
) -> PackResult:
    """Check, compile, sign and write one pack (or reuse its prior output)."""
    from opsdsl.signing import keyid

    shown = display_path(path)
    source_digest = _file_digest(path)
    keyids = {keyid(k.public_key()) for k in _SIGNING_KEYS}
    if _reusable(previous, source_digest, scope_dig, out_dir, keyids):
        return PackResult(shown, "reused", previous["name"], previous["plan"], previous)
    analysis = analyse_file(path, policies)
    errors = [d for d in analysis.diagnostics if d.severity is Severity.ERROR]
    if errors or analysis.model is None:
        return PackResult(shown, "failed", diagnostics=_with_lines(errors, analysis))
    if analysis.model.kind != "Pack":
        return PackResult(shown, "failed")  # policy packs are compiled into every plan instead
    from opsdsl.compiler import compile_pack
    from opsdsl.signing import add_signature, envelope_bytes, sign_envelope

    plan, payload = compile_pack(analysis.model, scope)
    target = plan_path(out_dir, analysis.model.metadata.name)
    entry = {
        "name": analysis.model.metadata.name,
        "version": analysis.model.metadata.version,
        "kind": "Pack",
        "source": shown,
        "sourceDigest": source_digest,
        "modelDigest": plan["pack"]["digest"],
        "scopeDigest": scope_dig,
        "plan": target.name,
        "payloadDigest": sha256_digest(payload),
        "spans": _step_spans(analysis),
    }
    existing = _existing_envelope(target) if previous is not None else None
    if existing is not None and _payload_of(existing) == payload:
        envelope = existing
        for key in _SIGNING_KEYS:
            if keyid(key.public_key()) not in _signed_by(envelope):
                envelope = add_signature(envelope, key)
        status = "unchanged" if envelope is existing else "compiled"
    else:
        envelope = sign_envelope(payload, list(_SIGNING_KEYS))
        status = "compiled"
    if envelope is not existing:
        from opsdsl.files import write_atomic_bytes

        write_atomic_bytes(target, envelope_bytes(envelope))
    entry["keyids"] = sorted(_signed_by(envelope))
    return PackResult(shown, status, entry["name"], target.name, entry)


def _payload_of(envelope: dict) -> bytes:
    import base64

    return base64.b64decode(envelope["payload"])


def _with_lines(diagnostics: list[Diagnostic], analysis) -> list[Diagnostic]:
    source = analysis.document.source if analysis.document else None
    return [d.with_source_line(source.line(d.span.line) if source else None) for d in diagnostics]


def _compile_chunk(args: tuple) -> list[PackResult]:
    paths, policies, scope, scope_dig, out_dir, manifest = args
    by_source = {e.get("source"): e for e in manifest.get("packs", {}).values()}
    return [compile_file(p, policies, scope, scope_dig, out_dir, by_source.get(display_path(p))) for p in paths]


def compile_paths(
    paths: Sequence[Path], out_dir: Path, keys: Sequence = (), jobs: int | None = None, rebuild: bool = False
) -> BuildResult:
    """Compile every pack under `paths` into `out_dir`, with the policy packs among them in scope."""
    global _SIGNING_KEYS
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(str(p) for p in missing)}")
    files = discover(paths)
    results: list[PackResult] = []
    for path in paths:
        if path.is_dir() and not any(_under(f, path) for f in files):
            results.append(PackResult(display_path(path), "failed", diagnostics=[no_packs(path, display_path(path))]))
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {} if rebuild else load_manifest(out_dir)

    from opsdsl.compiler import ScopeEntry, model_digest, scope_digest

    policy_files = [f for f in files if _looks_like_policy_pack(f)]
    scope: list[ScopeEntry] = []
    policy_entries = []
    for path in policy_files:
        analysis = analyse_file(path)
        errors = [d for d in analysis.diagnostics if d.severity is Severity.ERROR]
        if errors or analysis.model is None:
            results.append(PackResult(display_path(path), "failed", diagnostics=_with_lines(errors, analysis)))
            continue
        model = analysis.model
        digest = model_digest(model)
        scope.append(ScopeEntry(model.metadata.name, model.metadata.version, digest, model))
        policy_entries.append(
            {
                "name": model.metadata.name,
                "version": model.metadata.version,
                "kind": model.kind,
                "source": display_path(path),
                "sourceDigest": _file_digest(path),
                "modelDigest": digest,
            }
        )
    scope_dig = scope_digest(scope)
    policies = tuple(p for s in sorted(scope, key=lambda s: s.name) for p in s.pack.policies)
    rest = [f for f in files if f not in set(policy_files)]

    _SIGNING_KEYS = tuple(keys)
    try:
        results.extend(_compile_many(rest, policies, scope, scope_dig, out_dir, manifest, jobs))
    finally:
        _SIGNING_KEYS = ()
    results.extend(_duplicate_names(results))
    result = BuildResult(results, policy_entries)
    if not result.failed:
        write_manifest(out_dir, result)
    return result


def _compile_many(files: list[Path], policies, scope, scope_dig, out_dir, manifest, jobs) -> list[PackResult]:
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(files) < PARALLEL_MIN_FILES:
        return _compile_chunk((files, policies, scope, scope_dig, out_dir, manifest))
    import multiprocessing

    from opsdsl.pipeline import warm_up

    warm_up()
    import opsdsl.compiler
    import opsdsl.graph
    import opsdsl.signing  # noqa: F401

    context = multiprocessing.get_context("fork" if hasattr(os, "fork") else "spawn")
    chunks = [files[i::jobs] for i in range(jobs)]
    with context.Pool(jobs) as pool:
        parts = pool.map(_compile_chunk, [(c, policies, scope, scope_dig, out_dir, manifest) for c in chunks])
    return sorted((r for part in parts for r in part), key=lambda r: r.source)


def _duplicate_names(results: list[PackResult]) -> list[PackResult]:
    seen: dict[str, str] = {}
    out = []
    for r in sorted(results, key=lambda r: r.source):
        if r.name is None:
            continue
        if r.name in seen:
            from opsdsl.errors import Span
            from opsdsl.rules import rule

            message = f"pack name `{r.name}` is already used by {seen[r.name]}; plans are written by pack name"
            out.append(
                PackResult(
                    r.source,
                    "failed",
                    diagnostics=[Diagnostic("OPS030", rule("OPS030").severity, message, Span(r.source, 1, 1))],
                )
            )
        else:
            seen[r.name] = r.source
    return out


def write_manifest(out_dir: Path, result: BuildResult) -> None:
    from opsdsl.files import write_atomic

    packs = {r.name: r.entry for r in result.packs if r.entry is not None and r.name is not None}
    manifest = {
        "compiler": __version__,
        "packs": dict(sorted(packs.items())),
        "policyPacks": sorted(result.policy_packs, key=lambda e: e["name"]),
    }
    write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _under(file: Path, folder: Path) -> bool:
    try:
        file.relative_to(folder)
    except ValueError:
        return False
    return True


def _looks_like_policy_pack(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return bool(_POLICY_PACK.search(handle.read(65536)))
    except OSError:
        return False
