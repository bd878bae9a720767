"""The compliance report's detached signature: FILE.sig.json beside FILE.pdf.

It is a signed file like an incident's manifest (audit/incident/folder.py `signed_file_bytes`:
readable JSON, each signature Ed25519 over DSSE's PAE of the payload type and the body's
RFC 8785 bytes), with its own payload type, so it can never pass for a manifest, a record
or a plan. The body names the PDF's sha256 and size, the period and the ledger entries the
report rests on; Ed25519 signatures are deterministic, so the same PDF gives the same file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.audit.compliance.figures import ComplianceReport, iso
from opsdsl.audit.incident._common import IncidentError, IncidentFileError
from opsdsl.audit.incident.folder import signed_file_bytes
from opsdsl.files import not_regular

COMPLIANCE_PAYLOAD_TYPE = "application/vnd.opsdsl.compliance-report+json"
SIGNATURE_SUFFIX = ".sig.json"
MAX_SIGNATURE_FILE = 1024 * 1024
MAX_PDF = 512 * 1024 * 1024


def signature_path(pdf: Path) -> Path:
    return pdf.with_name(pdf.name + SIGNATURE_SUFFIX)


def signature_body(pdf_name: str, data: bytes, report: ComplianceReport, signing: Mapping[str, Any] | None) -> dict:
    basis = report.basis
    return {
        "apiVersion": "opsdsl/v1",
        "kind": "ComplianceReportSignature",
        "file": pdf_name,
        "sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "since": iso(report.since),
        "until": iso(report.until),
        "incidents": len(report.incidents),
        "ledger": {
            "first_seq": basis.first_seq,
            "last_seq": basis.last_seq,
            "entries_digest": basis.digest,
            "verified": basis.verified,
            "checkpoint_seq": (basis.checkpoint or {}).get("seq"),
        },
        "signing": dict(signing or {}),
    }


def signature_bytes(body: dict, signer: Any) -> bytes:
    return signed_file_bytes(COMPLIANCE_PAYLOAD_TYPE, "signed", body, [signer])


@dataclass(frozen=True)
class ComplianceVerification:
    pdf: Path
    signature: Path
    problems: tuple[str, ...]
    signers: tuple[str, ...]
    body: dict | None
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.signers)

    def raise_for_problems(self) -> None:
        if not self.ok:
            raise IncidentError(f"{self.pdf}: compliance report NOT verified:\n  " + "\n  ".join(self.problems))

    def render(self) -> str:
        body = self.body or {}
        lines = [
            f"{self.pdf}: compliance report verified: {body.get('since')} – {body.get('until')}, "
            f"{body.get('incidents')} incident(s), signed by {', '.join(self.signers)}"
        ]
        ledger = body.get("ledger") or {}
        point = ledger.get("checkpoint_seq")
        lines.append(
            f"  rests on ledger entries {ledger.get('first_seq')}–{ledger.get('last_seq')} "
            f"({ledger.get('entries_digest')}); "
            + (f"last checkpoint at seq {point}" if point is not None else "no signed checkpoint")
            + ("" if ledger.get("verified") else "; the ledger did NOT verify when the report was made")
        )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def verify_compliance(pdf: Path, trusted: Mapping[str, Any], signature: Path | None = None) -> ComplianceVerification:
    """Check `pdf` against its detached signature (default: PDF.sig.json) and the trusted keys.

    IncidentFileError (exit 2) when either file cannot be read at all; every other problem
    (a changed byte, an untrusted or bad signature, a malformed signature file) is listed.
    """
    from cryptography.exceptions import InvalidSignature

    from opsdsl.build.signing import decode_base64, pae
    from opsdsl.canonical import canonical_json

    if not trusted:
        raise IncidentError("no trusted key: pass --key PUB or --trust FILE")
    signature = signature or signature_path(pdf)
    data = _read(pdf, MAX_PDF)
    raw = _read(signature, MAX_SIGNATURE_FILE)
    problems: list[str] = []
    notes: list[str] = []

    def refuse(problem: str) -> ComplianceVerification:
        return ComplianceVerification(pdf, signature, (*problems, problem), (), None)

    try:
        document = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        return refuse(f"{signature.name}: not valid JSON ({exc})")
    if not isinstance(document, dict) or set(document) != {"payloadType", "signed", "signatures"}:
        return refuse(f"{signature.name}: expected exactly the fields payloadType, signatures, signed")
    if document["payloadType"] != COMPLIANCE_PAYLOAD_TYPE:
        return refuse(
            f"{signature.name}: payload type {document['payloadType']!r}, expected {COMPLIANCE_PAYLOAD_TYPE!r}"
        )
    body, signatures = document["signed"], document["signatures"]
    if not isinstance(body, dict) or not isinstance(signatures, list):
        return refuse(f"{signature.name}: `signed` must be an object and `signatures` a list")
    try:
        signed = pae(COMPLIANCE_PAYLOAD_TYPE, canonical_json(body))
    except Exception as exc:  # rfc8785 refuses what JSON allows (huge integers)
        return refuse(f"{signature.name}: cannot be canonicalised ({exc})")
    good: list[str] = []
    untrusted: list[str] = []
    for entry in signatures:
        kid = entry.get("keyid") if isinstance(entry, dict) else None
        sig = entry.get("sig") if isinstance(entry, dict) else None
        if not isinstance(kid, str) or not isinstance(sig, str):
            problems.append(f"{signature.name}: a signature needs string `keyid` and `sig`")
            continue
        key = trusted.get(kid)
        if key is None:
            untrusted.append(kid)
            continue
        try:
            key.verify(decode_base64(sig), signed)
            good.append(kid)
        except (ValueError, InvalidSignature):
            problems.append(f"{signature.name}: bad signature by trusted key {kid[:16]} (changed after signing)")
    if not good and not problems:
        problems.append(
            f"{signature.name}: signed only by untrusted key(s) {', '.join(sorted(k[:16] for k in set(untrusted)))}"
            if untrusted
            else f"{signature.name}: not signed"
        )
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if body.get("sha256") != digest or body.get("size") != len(data):
        problems.append(
            f"{pdf.name}: content changed since it was signed ({digest}, {len(data)} bytes; "
            f"signed {body.get('sha256')}, {body.get('size')} bytes)"
        )
    if body.get("file") != pdf.name:
        notes.append(f"signed as {body.get('file')!r}, checked as {pdf.name!r} (renamed; the content is what counts)")
    return ComplianceVerification(
        pdf, signature, tuple(problems), tuple(sorted(set(good))) if not problems else (), body, tuple(notes)
    )


def _read(path: Path, limit: int) -> bytes:
    try:
        kind = not_regular(os.stat(path).st_mode)
        if kind:  # a FIFO or a device would block or never end
            raise IncidentFileError(f"{path} is {kind}, not a file")
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise IncidentFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise IncidentFileError(f"{path}: larger than {limit // (1024 * 1024)} MiB")
    return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return result
