"""`opsdsl.lock`: pin each pack's name, version and digest, and report drift.

The lock records, per pack, its kind, version, source path, source sha256 and model
digest. Policy packs also keep their whole checked model, so a bad policy revision can
be rolled back to the locked one (`opsdsl lock --restore NAME`; seed runbook 6.3).
`drift` compares packs on disk with the lock, and plans in a build folder with their
sources.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl import __version__
from opsdsl.canonical import sha256_digest
from opsdsl.errors import OpsdslError, Severity, UsageError
from opsdsl.lang.loader import discover, display_path

LOCK_VERSION = 1
DEFAULT_LOCK = Path("opsdsl.lock")


class LockError(OpsdslError):
    """The lock file is missing, unreadable, or names something it does not hold."""


@dataclass(frozen=True)
class Current:
    """A pack as it is on disk now."""

    name: str
    kind: str
    version: str
    source: str
    source_digest: str
    model_digest: str
    model: Any


@dataclass(frozen=True)
class Finding:
    """One drift: `kind` is changed | unversioned-change | missing | new | stale-plan | no-plan."""

    kind: str
    pack: str
    message: str


def analyse_current(paths: Sequence[Path]) -> list[Current]:
    """Check every pack under `paths`; refuse (with diagnostics) if any has errors."""
    from opsdsl.build.compiler import model_digest
    from opsdsl.build.pipeline import analyse_file

    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(str(p) for p in missing)}")
    analyses = [analyse_file(p) for p in discover(paths)]
    policies = tuple(
        p for a in analyses if a.model is not None and a.model.kind == "PolicyPack" for p in a.model.policies
    )
    analyses = [
        analyse_file(a.path, policies) if a.model is not None and a.model.kind == "Pack" else a for a in analyses
    ]
    errors = tuple(
        d.with_source_line(a.document.source.line(d.span.line) if a.document else None)
        for a in analyses
        for d in a.diagnostics
        if d.severity is Severity.ERROR
    )
    if errors:
        raise OpsdslError("packs have errors; fix them first (`opsdsl lint`)", errors)
    if not analyses:
        raise UsageError("no packs found")
    out = []
    for a in analyses:
        m = a.model
        out.append(
            Current(
                m.metadata.name,
                m.kind,
                m.metadata.version,
                display_path(a.path),
                sha256_digest(a.path.read_bytes()),
                model_digest(m),
                m,
            )
        )
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"pack names must be unique; repeated: {', '.join(dupes)}")
    return sorted(out, key=lambda c: c.name)


def lock_document(current: Sequence[Current]) -> dict[str, Any]:
    packs = {}
    for c in current:
        entry = {
            "kind": c.kind,
            "version": c.version,
            "source": c.source,
            "sourceDigest": c.source_digest,
            "modelDigest": c.model_digest,
        }
        if c.kind == "PolicyPack":
            entry["model"] = c.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        packs[c.name] = entry
    return {"lockVersion": LOCK_VERSION, "compiler": __version__, "packs": packs}


def lock_text(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def read_lock(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise LockError(f"{path}: no lock file; create one with `opsdsl lock PATH...`") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LockError(f"{path}: not a readable lock file: {exc}") from None
    if (
        not isinstance(document, dict)
        or document.get("lockVersion") != LOCK_VERSION
        or not isinstance(document.get("packs"), dict)
    ):
        raise LockError(f"{path}: not an opsdsl lock file (lockVersion {LOCK_VERSION} expected)")
    fields = ("kind", "version", "source", "sourceDigest", "modelDigest")
    for name, entry in document["packs"].items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in fields):
            raise LockError(f"{path}: the entry for `{name}` is damaged (it needs {', '.join(fields)})")
    return document


def drift(current: Sequence[Current], lock: dict[str, Any], build_dir: Path | None) -> list[Finding]:
    """What differs between the packs on disk, the lock, and the plans in `build_dir`."""
    findings: list[Finding] = []
    locked: dict[str, dict] = lock["packs"]
    now = {c.name: c for c in current}
    for name in sorted(set(locked) - set(now)):
        findings.append(
            Finding("missing", name, f"`{name}` is locked ({locked[name].get('source')}) but no longer among the packs")
        )
    for name in sorted(set(now) - set(locked)):
        findings.append(Finding("new", name, f"`{name}` ({now[name].source}) is not in the lock; run `opsdsl lock`"))
    for name in sorted(set(now) & set(locked)):
        c, entry = now[name], locked[name]
        if c.model_digest == entry.get("modelDigest"):
            continue
        if c.version == entry.get("version"):
            findings.append(
                Finding(
                    "unversioned-change",
                    name,
                    f"`{name}` {c.version} changed since it was locked, without a version bump",
                )
            )
        else:
            findings.append(
                Finding(
                    "changed",
                    name,
                    f"`{name}` changed since it was locked ({entry.get('version')} → {c.version}); run `opsdsl lock` to accept it",
                )
            )
    if build_dir is not None:
        findings.extend(plan_drift(current, build_dir))
    return findings


def plan_drift(current: Sequence[Current], build_dir: Path) -> list[Finding]:
    """Plans in `build_dir` that no longer match their pack or its policy scope."""
    from opsdsl.build.plans import plan_path
    from opsdsl.build.signing import parse_envelope

    findings = []
    scope = {c.name: c.model_digest for c in current if c.kind == "PolicyPack"}
    for c in current:
        if c.kind != "Pack":
            continue
        path = plan_path(build_dir, c.name)
        try:
            plan = json.loads(base64.b64decode(parse_envelope(path.read_bytes())["payload"]))
        except FileNotFoundError:
            findings.append(
                Finding("no-plan", c.name, f"`{c.name}` has no plan in {display_path(build_dir)}; run `opsdsl compile`")
            )
            continue
        except Exception as exc:  # any unreadable plan is drift, and says why
            findings.append(Finding("stale-plan", c.name, f"{display_path(path)} cannot be read ({exc}); rebuild it"))
            continue
        built_by = plan.get("compiler", {}).get("version")
        if built_by != __version__:
            findings.append(
                Finding(
                    "stale-plan",
                    c.name,
                    f"{display_path(path)} was built by opsdsl {built_by}, not {__version__}; rebuild it",
                )
            )
            continue
        if plan.get("pack", {}).get("digest") != c.model_digest:
            findings.append(
                Finding(
                    "stale-plan",
                    c.name,
                    f"{display_path(path)} was built from a different version of {c.source}; rebuild it",
                )
            )
            continue
        planned_scope = {p.get("name"): p.get("digest") for p in plan.get("policyPacks", ())}
        if planned_scope != scope:
            findings.append(
                Finding(
                    "stale-plan", c.name, f"{display_path(path)} was built with other policy packs in scope; rebuild it"
                )
            )
    from opsdsl.build.plans import PLAN_SUFFIX

    names = {c.name for c in current}
    for orphan in sorted(build_dir.glob(f"*{PLAN_SUFFIX}")):
        name = orphan.name[: -len(PLAN_SUFFIX)]
        if name not in names:
            findings.append(
                Finding(
                    "orphan-plan",
                    name,
                    f"{display_path(orphan)} is the plan of a pack no longer among the packs; delete it",
                )
            )
    return findings


def restore_policy_pack(lock: dict[str, Any], name: str) -> tuple[str, str]:
    """The locked revision of policy pack `name` as YAML, and where it was locked from."""
    import yaml

    entry = lock["packs"].get(name)
    if entry is None:
        raise LockError(f"`{name}` is not in the lock")
    if entry.get("kind") != "PolicyPack" or "model" not in entry:
        raise LockError(
            f"`{name}` is a {entry.get('kind')}; only policy packs can be restored from the lock (packs are restored from version control)"
        )
    model = entry["model"]
    from opsdsl.build.compiler import model_digest
    from opsdsl.lang.model import PolicyPack

    try:
        restored = PolicyPack.model_validate(model)
    except ValueError:
        raise LockError(f"the lock's copy of `{name}` is not a valid policy pack; the lock file was edited") from None
    if model_digest(restored) != entry["modelDigest"]:
        raise LockError(
            f"the lock's copy of `{name}` does not match its digest {entry['modelDigest']}; the lock file was edited"
        )
    source = Path(entry["source"])
    if source.is_absolute() or ".." in source.parts:
        raise LockError(f"the lock records `{name}` at {source}, outside the working directory; pass -o FILE")
    text = f"# Restored from opsdsl.lock: {name} {entry['version']} ({entry['modelDigest']}).\n" + yaml.safe_dump(
        model, sort_keys=False, allow_unicode=True, width=100
    )
    return text, str(source)


def render(findings: Sequence[Finding]) -> str:
    if not findings:
        return "no drift: packs match the lock" + "\n"
    return "".join(f"{f.kind:<19} {f.message}\n" for f in findings)
