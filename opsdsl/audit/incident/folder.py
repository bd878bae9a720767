"""Writing an incident folder: record.json and rca.md, then the signed manifest.json last."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from opsdsl.audit import entries as kinds
from opsdsl.audit.incident._common import (
    EVIDENCE_DIR,
    EXCERPT_FILE,
    FOLLOW_UPS_FILE,
    MANIFEST_FILE,
    MANIFEST_PAYLOAD_TYPE,
    PDF_FILE,
    RCA_FILE,
    RECORD_FILE,
    RECORD_PAYLOAD_TYPE,
    IncidentError,
    _describe_mode,
    _file_digest,
    _walk_files,
)
from opsdsl.audit.incident.followups import (
    FOLLOW_UPS_PAYLOAD_TYPE,
    follow_up_links,
    follow_ups_amendment,
)
from opsdsl.audit.incident.pack import iter_pack_files, ledger_excerpt_bytes
from opsdsl.audit.incident.rca import (
    DEFAULT_SECTIONS,
    RCA_SECTIONS,
    rca_settings,
    render_rca,
)
from opsdsl.audit.incident.record import (
    _first,
    build_record,
    run_entries,
)
from opsdsl.build.signing import encode_base64, keyid, pae
from opsdsl.canonical import canonical_json, indented_json, sha256_digest
from opsdsl.files import make_private_dirs, write_atomic_files

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def incident_folder(root: Path, entries: Iterable[dict]) -> Path:
    """`root/{year of the run's creation, UTC}/{incident_id}`; an unsafe incident id is refused."""
    run = run_entries(entries)
    created = _first(run, kinds.RUN_CREATED)
    incident_id = created["data"].get("incident_id") or created["run"]
    if not isinstance(incident_id, str) or not _SAFE_ID.fullmatch(incident_id):
        raise IncidentError(f"incident id {incident_id!r} cannot be a folder name (letters, digits, '.', '_', '-')")
    year = datetime.fromtimestamp(float(created["ts"]), UTC).year
    return Path(root) / f"{year:04d}" / incident_id


def write_incident(
    root: Path,
    entries: list[dict],
    *,
    checkpoint: dict | None,
    signer: Ed25519PrivateKey,
    signing: dict | None = None,
    rca: dict | None = None,
    redact: Callable[[str], str] | None = None,
    pdf: bool | None = None,
    plan_envelope: bytes | None = None,
    ledger: Any = None,
) -> Path:
    """Write (or rewrite) a run's incident folder: record.json, rca.md, then manifest.json last.

    `signing` ({keyid, key: "dev" | "configured", mode}) says in the record which key signs
    it. `rca` ({title, summary, include}) overrides what the run's report.rca step asked for.
    Unknown section names are dropped rather than failing: the record matters more than
    its layout. `redact` masks secrets in the title and summary, which a step renders
    from `${{ }}` and may carry one. Each file is replaced atomically; a reader between
    two files sees an old manifest that no longer matches, which verification reports.
    The folder is 0700 and its files 0600: evidence and the record are nobody else's.

    The evidence pack (pack.py): `plan_envelope` (the signed plan the run verified) gives
    plan/; `ledger` (an opsdsl.audit.ledger.Ledger) gives ledger/excerpt.json, anchored at
    `checkpoint`. Links to follow-ups opened in a tracker (incident.follow_up_opened
    entries) go into the signed amendment follow-ups.json.
    `pdf`: True renders rca.pdf (about a second: WeasyPrint), False removes it, None keeps
    it current: re-rendered if it exists and the record or rca.md changed.
    """
    run = run_entries(entries)
    folder = incident_folder(root, run)
    if folder.is_symlink():
        raise IncidentError(f"{folder} is a symlink; an incident folder must be a real directory")
    make_private_dirs(folder)
    present = dict(_regular_files(folder))  # refuse links before writing anything, not halfway
    if signing is None:
        signing = {"keyid": keyid(signer.public_key()), "key": None, "mode": None}
    record = build_record(run, checkpoint=checkpoint, evidence_dir=folder / EVIDENCE_DIR, signing=signing)
    settings = rca_settings(run) | (rca or {})
    sections = settings.get("include", settings.get("sections"))  # the pack schema says `include`
    if not isinstance(sections, list | tuple):
        sections = DEFAULT_SECTIONS
    sections = [name for name in sections if name in RCA_SECTIONS]
    title, summary = settings.get("title"), settings.get("summary")
    title = title if isinstance(title, str) else None
    summary = summary if isinstance(summary, str) else None
    if redact is not None:
        title = redact(title) if title is not None else None
        summary = redact(summary) if summary is not None else None
    links = follow_up_links(run)
    markdown = render_rca(run, record, title=title, summary=summary, include=sections, links=links)
    record_bytes = signed_file_bytes(RECORD_PAYLOAD_TYPE, "record", record, [signer])
    markdown_bytes = markdown.encode("utf-8")
    pdf_path = folder / PDF_FILE
    changed = _read_or_none(folder / RECORD_FILE) != record_bytes or _read_or_none(folder / RCA_FILE) != markdown_bytes
    render = pdf is True or (pdf is None and pdf_path.is_file() and changed)
    rendered = None
    if render:  # before anything is written: a PDF that cannot be made leaves the folder as it was
        from opsdsl.audit.incident.pdf import render_rca_pdf

        try:
            rendered = render_rca_pdf(run, record, title=title, summary=summary, include=sections, links=links)
        except Exception:
            if pdf is True:
                raise
            # Keeping an existing PDF current must never cost the record (a run's end, a review):
            # the stale PDF goes, and `opsdsl incident pdf` says what is wrong when asked.
            rendered = None
    # Every file is written to a temporary beside it and flushed, then all are renamed in
    # order, the manifest last, and each folder is flushed once (opsdsl.files.write_atomic_files).
    # The manifest hashes the bytes about to be written and the files already there.
    written: dict[str, bytes] = dict(_pack_files(run, checkpoint, plan_envelope, ledger))
    written[RECORD_FILE] = record_bytes
    written[RCA_FILE] = markdown_bytes
    if rendered is not None:
        written[PDF_FILE] = rendered
    elif pdf is False or (pdf is None and changed):
        pdf_path.unlink(missing_ok=True)  # a PDF of another version of the record would mislead
        present.pop(PDF_FILE, None)
    if links:
        amendment = follow_ups_amendment(record, record_bytes, links)
        written[FOLLOW_UPS_FILE] = signed_file_bytes(FOLLOW_UPS_PAYLOAD_TYPE, "amendment", amendment, [signer])
    digests = {relpath: _file_digest(full) for relpath, full in present.items() if relpath not in written}
    digests |= {relpath: sha256_digest(data) for relpath, data in written.items()}
    digests.pop(MANIFEST_FILE, None)
    manifest = {"files": dict(sorted(digests.items()))}
    written[MANIFEST_FILE] = signed_file_bytes(MANIFEST_PAYLOAD_TYPE, "manifest", manifest, [signer])
    for parent in {(folder / relpath).parent for relpath in written if "/" in relpath}:
        make_private_dirs(parent)
    write_atomic_files(_changed(folder, written), mode=0o600)
    return folder


def _changed(folder: Path, files: Mapping[str, bytes]) -> list[tuple[Path, bytes]]:
    """(path, bytes) of the files whose content on disk differs (or that are missing, or not 0600):
    rewriting an unchanged incident flushes nothing to disk."""
    changed = []
    for relpath, data in files.items():
        path = folder / relpath
        try:
            status = path.lstat()
            same = (
                stat.S_ISREG(status.st_mode)
                and stat.S_IMODE(status.st_mode) == 0o600
                and status.st_size == len(data)
                and path.read_bytes() == data
            )
        except OSError:
            same = False
        if not same:
            changed.append((path, data))
    return changed


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _pack_files(
    run: list[dict], checkpoint: dict | None, plan_envelope: bytes | None, ledger: Any
) -> list[tuple[str, bytes]]:
    """The evidence pack's files: the plan and its packs, and the ledger excerpt, as far as given."""
    files = list(iter_pack_files(plan_envelope))
    if ledger is not None:
        files.append((EXCERPT_FILE, ledger_excerpt_bytes(ledger, run, checkpoint)))
    return files


def signed_file_bytes(payload_type: str, field: str, body: dict, signers: Sequence[Ed25519PrivateKey]) -> bytes:
    """`{payloadType, <field>: body, signatures}` as indented JSON; each sig over PAE(type, RFC 8785 body)."""
    signed = pae(payload_type, canonical_json(body))
    signatures = sorted(
        ({"keyid": keyid(key.public_key()), "sig": encode_base64(key.sign(signed))} for key in signers),
        key=lambda item: item["keyid"],
    )
    document = {"payloadType": payload_type, field: body, "signatures": signatures}
    return (indented_json(document) + "\n").encode("utf-8")


def digest_folder(folder: Path) -> dict[str, str]:
    """`{relative/path: "sha256:HEX"}` of every file but manifest.json, sorted; links are refused."""
    return {relpath: _file_digest(full) for relpath, full in _regular_files(folder) if relpath != MANIFEST_FILE}


def _regular_files(folder: Path) -> list[tuple[str, Path]]:
    """Every file below `folder`, sorted; IncidentError at the first symlink or special file."""
    found = []
    for relpath, full in _walk_files(folder):
        mode = full.lstat().st_mode
        if not stat.S_ISREG(mode):
            raise IncidentError(f"{full} is {_describe_mode(mode)}; an incident folder holds regular files only")
        found.append((relpath, full))
    return sorted(found)
