"""`opsdsl compile`: check packs, build their plans, sign them, and write them with a
build manifest, reusing prior output where nothing that goes into a plan changed.

A build is all or nothing: packs are planned first (in worker processes for big trees),
and only when every pack and every policy pack in scope is free of errors, and pack
names are unique, are plans signed and written, then the manifest, last.

The manifest (`manifest.json` in the output folder) records, per pack, the source
file's sha256, the model digest, the digest of its policy scope, the plan payload's
digest, the signers' key ids and each step's source position. A pack whose source,
scope and compiler version are unchanged, and whose plan file still holds the recorded
payload with valid signatures by the requested keys, is not even parsed again.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl import __version__
from opsdsl.build.pipeline import analyse_file, empty_folders, looks_like_policy_pack, map_files, missing_paths
from opsdsl.canonical import sha256_digest
from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.lang.loader import discover, display_path
from opsdsl.lang.rules import rule

MANIFEST = "manifest.json"
PLAN_SUFFIX = ".plan.dsse.json"


@dataclass
class PackResult:
    """What happened to one pack file."""

    source: str
    status: str  # "planned" → "compiled" | "unchanged"; "reused"; "policy-pack"; "failed"
    name: str | None = None
    plan_file: str | None = None
    entry: dict[str, Any] | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # The plan's canonical bytes, zlib-compressed (level 1) while the build waits for every
    # pack: a big tree's plans need not all sit in memory in full at once.
    packed_payload: bytes | None = None
    keyids: list | None = None  # a reused plan's signers, read when it was found reusable

    @property
    def payload(self) -> bytes | None:
        return None if self.packed_payload is None else zlib.decompress(self.packed_payload)


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


def _error(source: str, code: str, message: str, span: Span | None = None, hint: str | None = None) -> PackResult:
    diagnostic = Diagnostic(code, rule(code).severity, message, span or Span(source, 1, 1), hint)
    return PackResult(source, "failed", diagnostics=[diagnostic])


def _with_lines(diagnostics: list[Diagnostic], analysis) -> list[Diagnostic]:
    source = analysis.document.source if analysis.document else None
    return [d.with_source_line(source.line(d.span.line) if source else None) for d in diagnostics]


def _step_spans(analysis) -> dict[str, dict[str, str]]:
    """Each step's source position, so run-time errors can point at source lines."""
    spans: dict[str, dict[str, str]] = {}
    for name, playbook in analysis.model.playbooks.items():
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            for i, step in enumerate(steps):
                spans.setdefault(name, {})[step.id] = str(analysis.document.span(("playbooks", name, section, i)))
    return spans


def _read_envelope(path: Path) -> dict | None:
    from opsdsl.build.signing import parse_envelope

    try:
        return parse_envelope(path.read_bytes())
    except Exception:  # a missing or damaged plan file is simply rebuilt
        return None


def _signers(envelope: dict) -> list:
    return sorted({s.get("keyid") for s in envelope["signatures"]})


def _reusable(previous: dict | None, source_digest: str, scope: str, out_dir: Path, public_keys: dict) -> list | None:
    """The prior plan's signers when it still holds what this source would compile to,
    validly signed; None otherwise."""
    if not previous or previous.get("sourceDigest") != source_digest or previous.get("scopeDigest") != scope:
        return None
    envelope = _read_envelope(out_dir / previous.get("plan", ""))
    if envelope is None:
        return None
    from opsdsl.build.signing import SignatureError, decode_base64, verify_envelope

    if sha256_digest(decode_base64(envelope["payload"])) != previous.get("payloadDigest"):
        return None
    if public_keys:
        try:
            verify_envelope(envelope, public_keys, len(public_keys))
        except SignatureError:
            return None
    return _signers(envelope)


def plan_file(
    path: Path, scope: list, scope_dig: str, out_dir: Path, previous: dict | None, public_keys: dict
) -> PackResult:
    """Check and plan one pack (or find its prior plan reusable). Writes nothing."""
    shown = display_path(path)
    try:
        source_digest = sha256_digest(path.read_bytes())
    except OSError:
        source_digest = None  # analyse_file reports why (OPS001)
    signers = _reusable(previous, source_digest, scope_dig, out_dir, public_keys) if source_digest else None
    if signers is not None:
        return PackResult(shown, "reused", previous["name"], previous["plan"], previous, keyids=signers)
    policies = tuple(p for s in scope for p in s.pack.policies)
    analysis = analyse_file(path, policies, checked=True)
    errors = [d for d in analysis.diagnostics if d.severity is Severity.ERROR]
    if errors or analysis.model is None:
        return PackResult(shown, "failed", diagnostics=_with_lines(errors, analysis))
    model = analysis.model
    if model.kind != "Pack":
        return PackResult(shown, "policy-pack", model.metadata.name)
    from opsdsl.build.compiler import CompileError, compile_pack

    try:
        plan, payload = compile_pack(model, scope)
    except CompileError as exc:
        return _error(shown, "OPS034", str(exc), analysis.document.span(("playbooks",)))
    entry = {
        "name": model.metadata.name,
        "version": model.metadata.version,
        "kind": "Pack",
        "source": shown,
        "sourceDigest": source_digest,
        "modelDigest": plan["pack"]["digest"],
        "scopeDigest": scope_dig,
        "plan": plan_path(out_dir, model.metadata.name).name,
        "payloadDigest": sha256_digest(payload),
        "spans": _step_spans(analysis),
    }
    packed = zlib.compress(payload, 1)
    return PackResult(shown, "planned", model.metadata.name, entry["plan"], entry, packed_payload=packed)


def _plan_chunk(args: tuple) -> list[PackResult]:
    paths, scope, scope_dig, out_dir, manifest, public_bytes = args
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from opsdsl.build.signing import keyid

    public_keys = {}
    for raw in public_bytes:
        key = Ed25519PublicKey.from_public_bytes(raw)
        public_keys[keyid(key)] = key
    by_source = {e.get("source"): e for e in manifest.get("packs", {}).values() if isinstance(e, dict)}
    return [plan_file(p, scope, scope_dig, out_dir, by_source.get(display_path(p)), public_keys) for p in paths]


def _policy_scope(files: list[Path]) -> tuple[list, list[dict], list[PackResult], list[Path]]:
    """Analyse the files that look like policy packs: the real ones form the scope."""
    from opsdsl.build.compiler import ScopeEntry, model_digest

    scope, entries, failures, packs = [], [], [], []
    for path in files:
        analysis = analyse_file(path, checked=True)
        errors = [d for d in analysis.diagnostics if d.severity is Severity.ERROR]
        if errors or analysis.model is None:
            failures.append(PackResult(display_path(path), "failed", diagnostics=_with_lines(errors, analysis)))
            continue
        model = analysis.model
        if model.kind != "PolicyPack":
            packs.append(path)
            continue
        digest = model_digest(model)
        scope.append(ScopeEntry(model.metadata.name, model.metadata.version, digest, model))
        entries.append(
            {
                "name": model.metadata.name,
                "version": model.metadata.version,
                "kind": model.kind,
                "source": display_path(path),
                "sourceDigest": sha256_digest(path.read_bytes()),
                "modelDigest": digest,
                "nameSpan": analysis.document.span(("metadata", "name")),
            }
        )
    return scope, entries, failures, packs


def _scope_problems(entries: list[dict], scope: list) -> list[PackResult]:
    """Policy packs must have unique names, and their policies unique ids."""
    problems = []
    seen: dict[str, str] = {}
    for entry in sorted(entries, key=lambda e: e["source"]):
        if entry["name"] in seen:
            problems.append(
                _error(
                    entry["source"],
                    "OPS030",
                    f"policy pack name `{entry['name']}` is already used by {seen[entry['name']]}",
                    entry["nameSpan"],
                )
            )
        seen.setdefault(entry["name"], entry["source"])
    ids: dict[str, str] = {}
    for item in scope:
        for policy in item.pack.policies:
            if policy.id in ids and ids[policy.id] != item.name:
                problems.append(
                    _error(
                        next(e["source"] for e in entries if e["name"] == item.name),
                        "OPS030",
                        f"policy id `{policy.id}` is used by policy packs `{ids[policy.id]}` and `{item.name}`",
                    )
                )
            ids.setdefault(policy.id, item.name)
    return problems


def _duplicate_names(results: list[PackResult]) -> list[PackResult]:
    seen: dict[str, str] = {}
    out = []
    for r in sorted(results, key=lambda r: r.source):
        if r.name is None or r.status not in ("planned", "reused"):
            continue
        if r.name in seen:
            out.append(
                _error(
                    r.source,
                    "OPS030",
                    f"pack name `{r.name}` is already used by {seen[r.name]}",
                    hint="plans are written by pack name, so names must be unique",
                )
            )
        else:
            seen[r.name] = r.source
    return out


def compile_paths(
    paths: Sequence[Path],
    out_dir: Path,
    keys: Sequence = (),
    jobs: int | None = None,
    rebuild: bool = False,
    exclude: Sequence[str] = (),
) -> BuildResult:
    """Compile every pack under `paths` into `out_dir`, with the policy packs among them in scope."""
    from opsdsl.build.compiler import scope_digest

    missing_paths(paths)
    files = discover(paths, exclude)
    results = [PackResult(d.span.file, "failed", diagnostics=[d]) for d in empty_folders(paths, files)]
    manifest = {} if rebuild else load_manifest(out_dir)
    public_bytes = tuple(k.public_key().public_bytes_raw() for k in keys)

    # 1. The policy scope: files that look like policy packs, confirmed by their model.
    hinted = [f for f in files if looks_like_policy_pack(f)]
    scope, policy_entries, failures, hinted_packs = _policy_scope(hinted)
    results += failures
    rest = [f for f in files if f not in set(hinted) or f in set(hinted_packs)]

    # 2. Plan every pack. A file that turns out to be a policy pack after all widens the
    #    scope, and the packs are planned again with it.
    while True:
        scope.sort(key=lambda s: (s.name, s.digest))
        scope_dig = scope_digest(scope)
        planned = map_files(_plan_chunk, rest, (scope, scope_dig, out_dir, manifest, public_bytes), jobs)
        late = [Path(r.source) for r in planned if r.status == "policy-pack"]
        if not late:
            break
        more, entries, late_failures, _ = _policy_scope([p for p in rest if display_path(p) in {str(x) for x in late}])
        scope += more
        policy_entries += entries
        results += late_failures
        rest = [p for p in rest if display_path(p) not in {str(x) for x in late}]
    results += planned
    results += _scope_problems(policy_entries, scope)
    results += _duplicate_names(results)
    for entry in policy_entries:
        entry.pop("nameSpan", None)
    result = BuildResult(results, policy_entries)
    if result.failed:
        return result  # all or nothing: no plan is written from a failed build

    # 3. Sign and write, keeping signatures already on an identical payload. Each plan is
    #    written atomically and flushed to disk on its own; a few threads wait on those
    #    flushes side by side (the disk groups them), and each payload is held in full
    #    only while its plan is signed.
    out_dir.mkdir(parents=True, exist_ok=True)
    planned = [pack for pack in results if pack.status == "planned"]
    if planned:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(WRITERS, len(planned))) as pool:
            done = list(pool.map(lambda pack: _sign_and_write(out_dir / pack.plan_file, pack.payload, keys), planned))
        for pack, (status, signers) in zip(planned, done, strict=True):
            pack.status, pack.keyids, pack.packed_payload = status, signers, None
    for pack in results:
        if pack.entry is not None and pack.status in ("compiled", "unchanged", "reused"):
            pack.entry["keyids"] = pack.keyids if pack.keyids is not None else []
    write_manifest(out_dir, result, manifest)
    return result


WRITERS = 8  # threads signing and writing plans (mostly waiting on the disk)


def _sign_and_write(target: Path, payload: bytes, keys: Sequence) -> tuple[str, list]:
    """Sign `payload` into `target`: "unchanged" when the file already holds exactly
    that envelope, else "compiled"; and the envelope's signers."""
    from opsdsl.build.signing import add_signature, decode_base64, envelope_bytes, sign_envelope
    from opsdsl.files import write_atomic_bytes

    try:
        current = target.read_bytes()
    except OSError:
        current = None
    # Signing is deterministic: when the file holds only these keys' signatures on this
    # payload, a fresh envelope comes out byte-identical and the file need not be read as JSON.
    envelope = sign_envelope(payload, keys)
    data = envelope_bytes(envelope)
    if current == data:
        return "unchanged", _signers(envelope)
    existing = _read_bytes_envelope(current)
    if existing is not None and decode_base64(existing["payload"]) == payload and existing["signatures"]:
        envelope = existing
        for key in keys:
            envelope = add_signature(envelope, key)  # deterministic: a valid signature comes out identical
        data = envelope_bytes(envelope)
        if current == data:
            return "unchanged", _signers(envelope)
    write_atomic_bytes(target, data)
    return "compiled", _signers(envelope)


def _read_bytes_envelope(data: bytes | None) -> dict | None:
    from opsdsl.build.signing import parse_envelope

    if data is None:
        return None
    try:
        return parse_envelope(data)
    except Exception:  # a damaged plan file is simply rebuilt
        return None


def write_manifest(out_dir: Path, result: BuildResult, previous: dict[str, Any]) -> None:
    """Write the manifest last, and remove plans of packs that are no longer built here."""
    from opsdsl.files import write_atomic

    packs = {r.name: r.entry for r in result.packs if r.entry is not None and r.name is not None}
    manifest = {
        "compiler": __version__,
        "packs": dict(sorted(packs.items())),
        "policyPacks": sorted(result.policy_packs, key=lambda e: e["name"]),
    }
    write_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    current = {e["plan"] for e in packs.values()}
    for name, entry in previous.get("packs", {}).items():
        stale = entry.get("plan") if isinstance(entry, dict) else None
        if (
            isinstance(stale, str)
            and stale not in current
            and stale == Path(stale).name
            and stale.endswith(PLAN_SUFFIX)
            and name not in packs
        ):
            (out_dir / stale).unlink(missing_ok=True)
