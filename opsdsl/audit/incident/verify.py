"""Verifying an incident folder: signatures, the manifest, and that the record belongs there."""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from opsdsl.audit.incident._common import (
    _MAX_SIGNED_FILE,
    EXCERPT_FILE,
    FOLLOW_UPS_FILE,
    MANIFEST_FILE,
    MANIFEST_PAYLOAD_TYPE,
    PDF_FILE,
    RCA_FILE,
    RECORD_FILE,
    RECORD_PAYLOAD_TYPE,
    IncidentError,
    IncidentFileError,
    _describe_mode,
    _file_digest,
    _walk_files,
    kept_in_memory,
)
from opsdsl.audit.incident.followups import FOLLOW_UPS_PAYLOAD_TYPE
from opsdsl.audit.incident.pack import PLAN_DIR, check_excerpt, check_plan_files
from opsdsl.build.signing import decode_base64, pae
from opsdsl.canonical import canonical_json

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class VerifyReport:
    """What checking an incident folder or archive found; `problems` empty means intact and trusted."""

    source: str
    incident_id: str | None
    run: str | None
    signers: tuple[str, ...]
    files: tuple[str, ...]
    problems: tuple[str, ...]
    provenance: tuple[str, ...] = ()  # how the plan was verified and which key signed, as the record says
    review: dict | None = None  # the signed record's review (a person's RCA), when there is one
    pack: tuple[str, ...] = ()  # what the evidence pack holds and how it checked (ledger excerpt, plan, PDF)

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """IncidentError (exit 1) listing every problem, if there are any."""
        if self.problems:
            listed = "\n".join(f"  - {problem}" for problem in self.problems)
            raise IncidentError(f"{self.source}: incident pack failed verification:\n{listed}")


@dataclass(frozen=True)
class _Member:
    """One file of a folder or archive, as verification sees it."""

    kind: str  # "file", or what else it is ("a symlink", ...)
    digest: str | None
    data: bytes | None  # kept for record.json and manifest.json only


def verify_folder(folder: Path, trusted: Mapping[str, Ed25519PublicKey]) -> list[str]:
    """Problems found in an incident folder (empty: intact, signed by a trusted key)."""
    return list(verify_folder_report(folder, trusted).problems)


def verify_folder_report(folder: Path, trusted: Mapping[str, Ed25519PublicKey]) -> VerifyReport:
    """verify_folder's findings with who signed; IncidentFileError (exit 2) if `folder` is not a folder."""
    folder = Path(folder)
    _check_trust(trusted)
    if folder.is_symlink():
        raise IncidentFileError(f"{folder} is a symlink; give the incident folder itself")
    if not folder.is_dir():
        raise IncidentFileError(
            f"{folder}: no such incident folder" if not folder.exists() else f"{folder} is not a directory"
        )
    tree: dict[str, _Member] = {}
    for relpath, full in _walk_files(folder):
        try:
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                tree[relpath] = _Member(_describe_mode(mode), None, None)
                continue
            keep = kept_in_memory(relpath) and full.stat().st_size <= _MAX_SIGNED_FILE
            tree[relpath] = _Member("file", _file_digest(full), full.read_bytes() if keep else None)
        except OSError as exc:
            tree[relpath] = _Member(f"unreadable ({exc.strerror or exc})", None, None)
    return _verify_tree(tree, folder.name, trusted, str(folder))


def _check_trust(trusted: Mapping[str, Ed25519PublicKey]) -> None:
    if not trusted:
        raise ValueError("no trusted keys: an empty trust set verifies nothing")


def _verify_tree(
    tree: Mapping[str, _Member], name: str, trusted: Mapping[str, Ed25519PublicKey], source: str
) -> VerifyReport:
    problems: list[str] = []
    # 1. record.json and manifest.json: present, well-formed, the right payload type, and
    #    signed by at least one trusted key (a bad signature by a trusted key is reported
    #    even when another one verifies).
    record, record_signers = _open_signed(tree, RECORD_FILE, RECORD_PAYLOAD_TYPE, "record", trusted, problems)
    manifest, manifest_signers = _open_signed(tree, MANIFEST_FILE, MANIFEST_PAYLOAD_TYPE, "manifest", trusted, problems)
    # 2. No symlinks, devices or unreadable files anywhere in the folder.
    for relpath, member in sorted(tree.items()):
        if member.kind != "file":
            problems.append(f"{relpath}: {member.kind}; an incident folder holds regular files only")
    listed: dict[str, str] = {}
    if manifest is not None:
        # 3. The manifest lists safe relative paths with sha256 digests, record.json and rca.md among them.
        files = manifest.get("files")
        if not isinstance(files, dict):
            problems.append(f"{MANIFEST_FILE}: `files` must map paths to digests")
            files = {}
        for path, digest in files.items():
            if not _safe_relpath(path) or path == MANIFEST_FILE:
                problems.append(f"{MANIFEST_FILE}: lists an unsafe or impossible path {path!r}")
            elif not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
                problems.append(f"{MANIFEST_FILE}: {path}: digest must be sha256:<64 hex digits>")
            else:
                listed[path] = digest
        for required in (RECORD_FILE, RCA_FILE):
            if required not in files:
                problems.append(f"{MANIFEST_FILE}: does not cover {required}")
        # 4. Every listed file is present with the listed digest.
        for path, digest in sorted(listed.items()):
            member = tree.get(path)
            if member is None:
                problems.append(f"{path}: listed in the manifest but missing")
            elif member.kind == "file" and member.digest != digest:
                problems.append(
                    f"{path}: content changed since the manifest was signed ({member.digest}, signed {digest})"
                )
        # 5. Nothing else: every file but manifest.json is listed.
        for path in sorted(set(tree) - set(files) - {MANIFEST_FILE}):
            problems.append(f"{path}: not in the manifest (added after signing)")
    if record is not None:
        # 6. The record belongs here: the folder is named after its incident, and the evidence
        #    the ledger recorded is in the manifest with the digest the ledger recorded.
        incident_id = record.get("incident_id")
        if incident_id != name:
            problems.append(f"{RECORD_FILE}: the record is of incident {incident_id!r} but the folder is {name!r}")
        evidence = record.get("evidence") if manifest is not None else None
        for item in evidence if isinstance(evidence, list) else []:
            if (
                isinstance(item, dict)
                and item.get("status") == "ok"
                and listed.get(item.get("path")) != item.get("sha256")
            ):
                problems.append(
                    f"{item.get('path')}: the ledger recorded {item.get('sha256')}, the manifest does not agree"
                )
    pack_lines: list[str] = []
    if record is not None and manifest is not None:
        # 7. The evidence pack: the follow-up amendment, the ledger excerpt and the plan files
        #    agree with the signed record (pack.py, followups.py).
        pack_lines = _check_pack(tree, record, trusted, problems)
    return VerifyReport(
        source=source,
        pack=tuple(pack_lines),
        incident_id=record.get("incident_id") if record else None,
        run=record.get("run") if record else None,
        signers=tuple(sorted(set(record_signers) | set(manifest_signers))),
        files=tuple(sorted(tree)),
        problems=tuple(problems),
        provenance=describe_provenance(record) if record else (),
        review=record.get("review") if record and isinstance(record.get("review"), dict) else None,
    )


def _check_pack(
    tree: Mapping[str, _Member], record: dict, trusted: Mapping[str, Ed25519PublicKey], problems: list[str]
) -> list[str]:
    """Check the evidence pack's structured files against the record; returns lines describing it."""
    lines: list[str] = []
    excerpt_member = tree.get(EXCERPT_FILE)
    if excerpt_member is None:
        lines.append("ledger excerpt: none in this folder (written before opsdsl kept one, or by a rehearsal)")
    else:
        excerpt = _json_of(excerpt_member, EXCERPT_FILE, problems)
        if excerpt is not None:
            found, summary = check_excerpt(excerpt, record, trusted)
            problems.extend(found)
            lines.append(summary if not found else f"ledger excerpt: {len(found)} problem(s)")
    plan = {path: member.data for path, member in tree.items() if path.startswith(f"{PLAN_DIR}/")}
    if plan:
        if any(data is None for data in plan.values()):
            problems.append(f"{PLAN_DIR}/: a file too large to check")
        else:
            found = check_plan_files(plan, record)
            problems.extend(found)
            packs = len(plan) - 1
            lines.append(
                f"plan: {record.get('plan_digest')} with {packs} pack file(s)" + (" (problems)" if found else "")
            )
    else:
        lines.append("plan: not in this folder")
    amendment_member = tree.get(FOLLOW_UPS_FILE)
    if amendment_member is not None:
        amendment, _ = _open_signed(tree, FOLLOW_UPS_FILE, FOLLOW_UPS_PAYLOAD_TYPE, "amendment", trusted, problems)
        if amendment is not None:
            record_member = tree.get(RECORD_FILE)
            bound = amendment.get("record")
            if record_member is None or bound != record_member.digest:
                problems.append(f"{FOLLOW_UPS_FILE}: amends record {bound}, not this record.json")
            links = amendment.get("links") if isinstance(amendment.get("links"), list) else []
            lines.append(f"follow-ups: {len(links)} opened in a tracker")
    lines.append("RCA PDF: rca.pdf" if PDF_FILE in tree else "RCA PDF: not rendered (opsdsl incident pdf)")
    return lines


def _json_of(member: _Member, relpath: str, problems: list[str]) -> object:
    if member.kind != "file":
        return None
    if member.data is None:
        problems.append(f"{relpath}: larger than {_MAX_SIGNED_FILE // (1024 * 1024)} MiB")
        return None
    try:
        return json.loads(member.data, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        problems.append(f"{relpath}: not valid JSON ({exc})")
        return None


def describe_provenance(record: dict) -> tuple[str, ...]:
    """Two lines an auditor reads first: by which path the plan was verified, and which key
    signs the record; a record from a --pack run, or signed by a dev key, says so."""
    verification = record.get("plan_verification")
    verification = verification if isinstance(verification, dict) else {}
    path, trust = verification.get("path"), verification.get("trust")
    if path == "plan":
        environment = verification.get("environment") or "default"
        plan = f"plan: --plan verified against trust file {trust} (environment {environment})"
    elif path == "pack" or trust == "dev-key":
        plan = "plan: --pack compiled and signed with the state directory's dev key (not a reviewed plan)"
    else:
        plan = f"plan: verified against {trust or 'an unrecorded trust'} (path not recorded)"
    signing = record.get("signing")
    signing = signing if isinstance(signing, dict) else {}
    kid = str(signing.get("keyid") or "")[:16] or "?"
    key = {"configured": "the configured signing key", "dev": "the state directory's dev key"}.get(
        signing.get("key"), "an unrecorded key"
    )
    mode = signing.get("mode") or "unrecorded"
    return plan, f"records signed by {key} {kid} ({mode} state directory)"


def _safe_relpath(path: object) -> bool:
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path or "\0" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


def _open_signed(
    tree: Mapping[str, _Member],
    relpath: str,
    payload_type: str,
    field: str,
    trusted: Mapping[str, Ed25519PublicKey],
    problems: list[str],
) -> tuple[dict | None, list[str]]:
    """The signed body of `relpath` and the trusted keyids that signed it; problems appended."""
    member = tree.get(relpath)
    if member is None:
        problems.append(f"{relpath}: missing")
        return None, []
    if member.kind != "file":
        return None, []  # reported with the other non-files
    if member.data is None:
        problems.append(f"{relpath}: larger than {_MAX_SIGNED_FILE // (1024 * 1024)} MiB")
        return None, []
    try:
        document = json.loads(member.data, object_pairs_hook=_refuse_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        problems.append(f"{relpath}: not valid JSON ({exc})")
        return None, []
    expected = {"payloadType", field, "signatures"}
    if not isinstance(document, dict) or set(document) != expected:
        problems.append(f"{relpath}: expected exactly the fields {', '.join(sorted(expected))}")
        return None, []
    if document["payloadType"] != payload_type:
        problems.append(f"{relpath}: payload type {document['payloadType']!r}, expected {payload_type!r}")
        return None, []
    body, signatures = document[field], document["signatures"]
    if not isinstance(body, dict) or not isinstance(signatures, list):
        problems.append(f"{relpath}: `{field}` must be an object and `signatures` a list")
        return None, []
    try:
        signed = pae(payload_type, canonical_json(body))
    except Exception as exc:  # rfc8785 refuses what JSON allows (huge integers): not our record
        problems.append(f"{relpath}: cannot be canonicalised ({exc})")
        return None, []
    good: list[str] = []
    untrusted: list[str] = []
    bad = False
    for entry in signatures:
        kid = entry.get("keyid") if isinstance(entry, dict) else None
        sig = entry.get("sig") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not isinstance(sig, str):
            problems.append(f"{relpath}: a signature needs string `keyid` and `sig`")
            continue
        key = trusted.get(kid)
        if key is None:
            untrusted.append(kid)
        elif _signature_verifies(key, sig, signed):
            good.append(kid)
        else:
            bad = True
            problems.append(f"{relpath}: bad signature by trusted key {kid} (the content changed after signing)")
    if not good and not bad:
        if untrusted:
            problems.append(f"{relpath}: signed only by untrusted key(s) {', '.join(sorted(set(untrusted)))}")
        else:
            problems.append(f"{relpath}: not signed")
    return body, sorted(set(good))


def _signature_verifies(key: Ed25519PublicKey, sig: str, signed: bytes) -> bool:
    try:
        key.verify(decode_base64(sig), signed)
    except (ValueError, InvalidSignature):
        return False
    return True


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result
