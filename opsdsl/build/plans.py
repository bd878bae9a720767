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

Compile is never looser than lint about errors: a warning whose code the configuration
makes an error (`severity`, `Config.raised`) fails the build, unless an inline
`# opsdsl: ignore[CODE]` suppresses it (as lint honours it) or `ignore` names the code.
An error stays an error whatever the configuration says. A manifest entry built under
raised codes records their digest (`raisedDigest`), so a plan is reused only under the
same ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsdsl import __version__
from opsdsl.build.pipeline import analyse_file, empty_folders, looks_like_policy_pack, map_files, missing_paths
from opsdsl.canonical import indented_json, sha256_digest
from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.files import fsync_path
from opsdsl.lang.config import Config
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
    # Set when the planning worker signed the plan itself: "compiled" with the flushed
    # temporary file beside the plan file that the build renames into place, or
    # "unchanged" with none (see `_write_staged`).
    staged: str | None = None
    temp: str | None = None
    raw_payload: bytes | None = None  # the plan's bytes as planned, when asked for uncompressed

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


def _errors(analysis, raised: frozenset[str]) -> list[Diagnostic]:
    """The findings that fail a build: every error (the configuration never lowers one, nor
    does a suppression hide one), and each warning whose code is in `raised`, as an error,
    unless an inline `# opsdsl: ignore[...]` covers it (lint's suppressions)."""
    errors = [d for d in analysis.diagnostics if d.severity is Severity.ERROR]
    candidates = [d for d in analysis.diagnostics if d.severity is not Severity.ERROR and d.code in raised]
    if candidates and analysis.document is not None:
        from opsdsl.lang.suppress import suppressions

        whole, per_line = suppressions(analysis.document.source.text)
        errors += [
            d.with_severity(Severity.ERROR)
            for d in candidates
            if d.code not in whole and d.code not in per_line.get(d.span.line, ())
        ]
    return errors


def raised_digest(config: Config | None) -> str | None:
    """The digest of the warning codes `config` makes errors, or None when it raises none
    (the manifest entry then has no `raisedDigest`: its bytes are as before)."""
    raised = config.raised if config is not None else frozenset()
    return sha256_digest(",".join(sorted(raised)).encode("ascii")) if raised else None


class Rendered:
    """A manifest value rendered ahead of time, as `json.dumps(value, indent=2,
    sort_keys=True)` (zlib-compressed), by the worker that planned the pack: a big
    tree's step positions need not all sit in the build's memory as dicts at once.
    `write_manifest` splices it in, byte for byte what rendering the value there gives."""

    __slots__ = ("packed",)

    def __init__(self, value: Any) -> None:
        self.packed = zlib.compress(indented_json(value, ensure_ascii=True).encode("ascii"), 1)

    def __getstate__(self) -> bytes:
        return self.packed

    def __setstate__(self, packed: bytes) -> None:
        self.packed = packed

    @property
    def text(self) -> str:
        return zlib.decompress(self.packed).decode("ascii")

    @property
    def value(self) -> Any:
        return json.loads(self.text)


def _step_spans(analysis) -> dict[str, dict[str, str]]:
    """Each step's source position, so run-time errors can point at source lines."""
    spans: dict[str, dict[str, str]] = {}
    document = analysis.document
    for name, playbook in analysis.model.playbooks.items():
        for section, steps in (("steps", playbook.steps), ("finally", playbook.finally_)):
            if not steps:
                continue
            located = document.item_spans(("playbooks", name, section), len(steps))
            for step, span in zip(steps, located, strict=True):
                spans.setdefault(name, {})[step.id] = str(span)
    return spans


def _read_envelope(path: Path) -> dict | None:
    from opsdsl.build.signing import parse_envelope

    try:
        return parse_envelope(path.read_bytes())
    except Exception:  # a missing or damaged plan file is simply rebuilt
        return None


def _signers(envelope: dict) -> list:
    return sorted({s.get("keyid") for s in envelope["signatures"]})


def _reusable(
    previous: dict | None, source_digest: str, scope: str, out_dir: Path, public_keys: dict, raised: str | None = None
) -> list | None:
    """The prior plan's signers when it still holds what this source would compile to,
    validly signed, and was checked under the same raised codes; None otherwise."""
    if not previous or previous.get("sourceDigest") != source_digest or previous.get("scopeDigest") != scope:
        return None
    if previous.get("raisedDigest") != raised:
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
    path: Path,
    scope: list,
    scope_dig: str,
    out_dir: Path,
    previous: dict | None,
    public_keys: dict,
    compress: bool = True,
    config: Config | None = None,
) -> PackResult:
    """Check and plan one pack (or find its prior plan reusable). Writes nothing. The plan's
    bytes are kept compressed, or in `raw_payload` when not `compress`."""
    shown = display_path(path)
    try:
        source_digest = sha256_digest(path.read_bytes())
    except OSError:
        source_digest = None  # analyse_file reports why (OPS001)
    raised = raised_digest(config)
    signers = _reusable(previous, source_digest, scope_dig, out_dir, public_keys, raised) if source_digest else None
    if signers is not None:
        return PackResult(shown, "reused", previous["name"], previous["plan"], previous, keyids=signers)
    policies = tuple(p for s in scope for p in s.pack.policies)
    # Warnings are not reported; the rules that can only warn run only when `config` raises a code.
    analysis = analyse_file(path, policies, checked=True, errors_only=True, config=config if raised else None)
    errors = _errors(analysis, config.raised if raised else frozenset())
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
        "spans": Rendered(_step_spans(analysis)),
    }
    if raised is not None:
        entry["raisedDigest"] = raised
    if not compress:
        return PackResult(shown, "planned", model.metadata.name, entry["plan"], entry, raw_payload=payload)
    packed = zlib.compress(payload, 1)
    return PackResult(shown, "planned", model.metadata.name, entry["plan"], entry, packed_payload=packed)


# The keys the planning workers sign with: set by compile_paths just before the workers
# fork, which hands them over (a private key cannot be pickled, and need not travel).
_SIGNING_KEYS: tuple = ()
STAGERS = 4  # threads per planning worker writing signed plans and flushing them to disk


def _plan_chunk(args: tuple) -> list[PackResult]:
    paths, scope, scope_dig, out_dir, manifest, public_bytes, key_count, nonce, owner, *more = args
    config = more[0] if more else None  # the configuration (`compile_paths`), when there is one
    by_source = {e.get("source"): e for e in manifest.get("packs", {}).values() if isinstance(e, dict)}
    public_keys = {}
    if by_source and public_bytes:  # only a prior plan's signatures need checking
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        from opsdsl.build.signing import keyid

        for raw in public_bytes:
            key = Ed25519PublicKey.from_public_bytes(raw)
            public_keys[keyid(key)] = key
    # A worker that did not fork from compile_paths (a spawn start) has no keys: the build
    # signs and writes its plans afterwards instead.
    keys = _SIGNING_KEYS if len(_SIGNING_KEYS) == key_count else None
    if keys is None:
        results = []
        for path in paths:
            _check_owner(owner)
            previous = by_source.get(display_path(path)) if by_source else None
            results.append(plan_file(path, scope, scope_dig, out_dir, previous, public_keys, config=config))
        return results
    # Each plan is signed here, as it is planned: signing is quick and holds the GIL, so
    # threads would only take turns with the planning. A plan that changed goes to a few
    # threads that write it to a temporary file while the next packs are planned; once the
    # chunk is planned, every temporary file is flushed to disk at once (`_sync_staged`),
    # and only then reported, so the build renames into place only files whose bytes are on
    # disk, and only when every pack is clean. The threads start with the first changed
    # plan: a rebuild that changes nothing starts none (nor imports concurrent.futures).
    results, staging = [], []
    pool = None
    ok = False
    try:
        try:
            for path in paths:
                _check_owner(owner)
                previous = by_source.get(display_path(path)) if by_source else None
                result = plan_file(
                    path, scope, scope_dig, out_dir, previous, public_keys, compress=False, config=config
                )
                results.append(result)
                if result.status != "planned":
                    continue
                payload, result.raw_payload = result.raw_payload, None
                target = out_dir / result.plan_file
                status, result.keyids, data = _signed(target, payload, keys)
                if data is None:
                    result.staged = status
                    continue
                if pool is None:
                    from concurrent.futures import ThreadPoolExecutor

                    pool = ThreadPoolExecutor(max_workers=STAGERS)
                staging.append((result, status, pool.submit(_write_staged, target, data, nonce)))
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
            for result, status, future in staging:
                if future.exception() is None:
                    result.staged, result.temp = status, future.result()
        for _, _, future in staging:
            if future.exception() is not None:
                raise future.exception()
        _sync_staged([result.temp for result, _, _ in staging])
        ok = True
    finally:
        if not ok:
            discard_staged(results)
    return results


def _check_owner(owner: int) -> None:
    """Stop a planning worker whose build has gone (killed outright, so it could neither
    stop the worker nor remove what it staged): the worker then removes its own staged
    files on the way out instead of staging the rest of its packs for no one."""
    if os.getpid() != owner and os.getppid() != owner:
        raise SystemExit(1)


# A staged plan's name: `.NAME.plan.dsse.json.PID.TOKEN.NONCE.tmp`, NONCE being the build's
# (see `_write_staged`). Also matched: `.NAME.plan.dsse.json.PID.TOKEN.tmp`, as d2e296c staged them.
_STAGED = re.compile(r"\.[^/]+\.plan\.dsse\.json\.([0-9]{1,10})\.[0-9a-f]{8}(?:\.[0-9a-f]{16})?\.tmp")


def _running(pid: int) -> bool:
    """Whether process `pid` runs (it may be another user's); a zombie (killed, its exit not
    yet collected, as under a container's init that reaps late or never) does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        pass  # EPERM: another user's
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True  # no /proc: exists is all one can tell
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def _remove_staged(out_dir: Path, nonce: str | None = None) -> None:
    """Remove the staged plans in `out_dir`: the build's own (`nonce`), whichever worker
    staged them, or else those an earlier build left behind (killed before it could remove
    them), unless the worker that staged one still runs (another build into `out_dir`).
    Only regular files named as `_write_staged` names them; links are not followed."""
    try:
        entries = list(os.scandir(out_dir))
    except OSError:
        return
    for entry in entries:
        match = _STAGED.fullmatch(entry.name)
        if match is None:
            continue
        if nonce is not None and not entry.name.endswith(f".{nonce}.tmp"):
            continue
        if nonce is None and _running(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def discard_staged(results: list[PackResult]) -> None:
    """Remove the temporary files of plans staged for a build that will not write them."""
    for result in results:
        if result.temp is not None:
            Path(result.temp).unlink(missing_ok=True)
            result.temp = None


def _policy_scope(
    files: list[Path], config: Config | None = None
) -> tuple[list, list[dict], list[PackResult], list[Path]]:
    """Analyse the files that look like policy packs: the real ones form the scope."""
    from opsdsl.build.compiler import ScopeEntry, model_digest

    raised = config.raised if config is not None else frozenset()
    scope, entries, failures, packs = [], [], [], []
    for path in files:
        analysis = analyse_file(path, checked=True, errors_only=True, config=config if raised else None)
        errors = _errors(analysis, raised)
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
    exclude: Sequence[str] | None = None,
    config: Config | None = None,
) -> BuildResult:
    """Compile every pack under `paths` into `out_dir`, with the policy packs among them in
    scope. `config` (lint's configuration) gives the `exclude` globs unless `exclude` is
    given, and the warning codes it makes errors fail the build too (`Config.raised`)."""
    global _SIGNING_KEYS

    missing_paths(paths)
    if exclude is None:
        exclude = config.exclude if config is not None else ()
    files = discover(paths, exclude)
    results = [PackResult(d.span.file, "failed", diagnostics=[d]) for d in empty_folders(paths, files)]
    manifest = {} if rebuild else load_manifest(out_dir)
    public_bytes = tuple(k.public_key().public_bytes_raw() for k in keys)

    # 1. The policy scope: files that look like policy packs, confirmed by their model.
    hinted = [f for f in files if looks_like_policy_pack(f)]
    scope, policy_entries, failures, hinted_packs = _policy_scope(hinted, config)
    results += failures
    rest = [f for f in files if f not in set(hinted) or f in set(hinted_packs)]

    # 2. Plan every pack; the workers also sign each plan and stage it (see `_write_staged`). A
    #    file that turns out to be a policy pack after all widens the scope, and the packs
    #    are planned again with it.
    #    A build removes every file it staged unless it completes, whatever stops it: a
    #    failed pack, an exception in a worker, Ctrl-C, or SIGTERM (see `_terminate_as_exit`);
    #    a build killed outright leaves them to the next build, which removes them first.
    import secrets

    created = _make_folder(out_dir)
    if not created:
        _remove_staged(out_dir)
    nonce = secrets.token_hex(8)
    planned: list[PackResult] = []
    written = False
    _SIGNING_KEYS = tuple(keys)
    restore = _terminate_as_exit()
    try:
        planned = _plan_packs(
            rest, scope, policy_entries, results, out_dir, manifest, public_bytes, len(keys), jobs, nonce, config
        )
        results += planned
        results += _scope_problems(policy_entries, scope)
        results += _duplicate_names(results)
        for entry in policy_entries:
            entry.pop("nameSpan", None)
        result = BuildResult(results, policy_entries)
        if result.failed:
            return result  # all or nothing: no plan is written from a failed build (finally: staged files go)

        # 3. Put the staged plans in place; sign and write any plan a worker did not stage,
        #    keeping signatures already on an identical payload. Each plan is written
        #    atomically and flushed to disk before it replaces the old one.
        unstaged = []
        for pack in planned:
            if pack.status != "planned":
                continue
            if pack.staged is None:
                unstaged.append(pack)
                continue
            if pack.temp is not None:
                os.replace(pack.temp, out_dir / pack.plan_file)
                pack.temp = None
            pack.status = pack.staged
        if unstaged:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(WRITERS, len(unstaged))) as pool:
                done = list(pool.map(lambda p: _sign_and_write(out_dir / p.plan_file, p.payload, keys), unstaged))
            for pack, (status, signers) in zip(unstaged, done, strict=True):
                pack.status, pack.keyids, pack.packed_payload = status, signers, None
        written = True
    finally:
        restore()
        _SIGNING_KEYS = ()
        discard_staged(planned)
        if not written:
            _remove_staged(out_dir, nonce)  # also what workers staged that never reported back
            for folder in created:  # innermost first: a failed first build leaves no folder behind
                with contextlib.suppress(OSError):
                    folder.rmdir()
    for pack in results:
        if pack.entry is not None and pack.status in ("compiled", "unchanged", "reused"):
            pack.entry["keyids"] = pack.keyids if pack.keyids is not None else []
    write_manifest(out_dir, result, manifest)
    fsync_path(out_dir, directory=True)  # the renames (plans, then the manifest) durable: one flush for them all
    return result


def _plan_packs(
    rest: list[Path],
    scope: list,
    policy_entries: list[dict],
    results: list[PackResult],
    out_dir: Path,
    manifest: dict,
    public_bytes: tuple,
    key_count: int,
    jobs: int | None,
    nonce: str,
    config: Config | None = None,
) -> list[PackResult]:
    """Plan (and stage) `rest` until no file among them turns out to be a policy pack."""
    from opsdsl.build.compiler import scope_digest

    while True:
        scope.sort(key=lambda s: (s.name, s.digest))
        scope_dig = scope_digest(scope)
        shared = (scope, scope_dig, out_dir, manifest, public_bytes, key_count, nonce, os.getpid(), config)
        planned = map_files(_plan_chunk, rest, shared, jobs, warm_in_workers=True)
        late = {str(Path(r.source)) for r in planned if r.status == "policy-pack"}
        if not late:
            return planned
        discard_staged(planned)
        more, entries, late_failures, _ = _policy_scope([p for p in rest if display_path(p) in late], config)
        scope += more
        policy_entries += entries
        results += late_failures
        rest = [p for p in rest if display_path(p) not in late]


def _make_folder(out_dir: Path) -> list[Path]:
    """Make `out_dir` and any missing parent; the folders made, innermost first."""
    made, folder = [], out_dir
    while not folder.is_dir() and folder.parent != folder:
        made.append(folder)
        folder = folder.parent
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except BaseException:
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return made


def _terminate_as_exit():
    """While a build runs, SIGTERM (`timeout`, a CI runner, a supervisor) raises SystemExit
    in it, so its clean-up runs as for Ctrl-C: a function restoring the handler before.
    Only the main thread can, and only when no one else set a handler for SIGTERM."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return lambda: None
    except (AttributeError, ValueError):
        return lambda: None

    def terminated(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL)


WRITERS = 8  # threads signing and writing plans (mostly waiting on the disk)


def _sign_and_write(target: Path, payload: bytes, keys: Sequence) -> tuple[str, list]:
    """Sign `payload` into `target`: "unchanged" when the file already holds exactly
    that envelope, else "compiled"; and the envelope's signers."""
    from opsdsl.files import write_atomic_bytes

    status, signers, data = _signed(target, payload, keys)
    if data is not None:
        write_atomic_bytes(target, data)
    return status, signers


def _write_staged(target: Path, data: bytes, nonce: str) -> str:
    """Write a planning worker's signed plan `data` to a new temporary file beside `target`,
    for the build to rename into place once every pack is clean (and `_sync_staged` has
    flushed it to disk): the temporary file's name."""
    import secrets

    # The build's `nonce` in the name: the build removes every file it staged, even one
    # whose worker it never heard back from, and no other build's (see `_remove_staged`).
    temp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{nonce}.tmp")
    # O_EXCL | O_NOFOLLOW: never write through a file or symlink someone planted there.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return str(temp)


SYNCERS = 16  # threads flushing a worker's staged plans to disk together (see `_sync_staged`)


def _sync_staged(temps: list[str]) -> None:
    """Flush the staged plans `temps` to disk, many at a time: concurrent fsyncs share the
    file system's journal commits, where one per plan, spread over the planning, each
    waited for a commit of its own."""
    if not temps:
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(SYNCERS, len(temps))) as pool:
        list(pool.map(fsync_path, temps))


def _signed(target: Path, payload: bytes, keys: Sequence) -> tuple[str, list, bytes | None]:
    """The envelope `target` should hold: ("unchanged", signers, None) when it already
    holds exactly that, else ("compiled", signers, its bytes)."""
    from opsdsl.build.signing import add_signature, decode_base64, envelope_bytes, sign_envelope_bytes

    try:
        current = target.read_bytes()
    except OSError:
        current = None
    # Signing is deterministic: when the file holds only these keys' signatures on this
    # payload, a fresh envelope comes out byte-identical and the file need not be read as JSON.
    envelope, data = sign_envelope_bytes(payload, keys)
    if current == data:
        return "unchanged", _signers(envelope), None
    existing = _read_bytes_envelope(current)
    if existing is not None and decode_base64(existing["payload"]) == payload and existing["signatures"]:
        envelope = existing
        for key in keys:
            envelope = add_signature(envelope, key)  # deterministic: a valid signature comes out identical
        data = envelope_bytes(envelope)
        if current == data:
            return "unchanged", _signers(envelope), None
    return "compiled", _signers(envelope), data


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
    from opsdsl.files import write_atomic_stream

    packs = {r.name: r.entry for r in result.packs if r.entry is not None and r.name is not None}
    manifest = {
        "compiler": __version__,
        "packs": dict(sorted(packs.items())),
        "policyPacks": sorted(result.policy_packs, key=lambda e: e["name"]),
    }
    write_atomic_stream(out_dir / MANIFEST, lambda handle: handle.writelines(_manifest_parts(manifest)))
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


def _manifest_parts(manifest: dict[str, Any]) -> Iterator[bytes]:
    """`json.dumps(manifest, indent=2, sort_keys=True) + "\\n"`, piece by piece, with each
    pack's `Rendered` values spliced in where rendering them in place would put them."""
    import secrets

    token = secrets.token_hex(8)
    splices: list[Rendered] = []
    packs = {}
    for name, entry in manifest["packs"].items():
        swapped = dict(entry)
        for key, value in entry.items():
            if isinstance(value, Rendered):
                swapped[key] = f"\x00{token}:{len(splices)}\x00"  # rendered as "\u0000TOKEN:N\u0000"
                splices.append(value)
        packs[name] = swapped
    text = indented_json({**manifest, "packs": packs}, ensure_ascii=True) + "\n"
    # A value of a pack entry sits three levels deep: manifest → packs → name → value.
    indent = "\n" + "  " * 3
    pieces = re.split(f'"\\\\u0000{token}:([0-9]+)\\\\u0000"', text)
    for i, piece in enumerate(pieces):
        yield (splices[int(piece)].text.replace("\n", indent) if i % 2 else piece).encode("ascii")
