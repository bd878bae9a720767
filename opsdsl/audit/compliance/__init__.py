"""The compliance report: the incidents of a period in a signed PDF, for people who will not read a ledger.

The seed runbook's section 8 gives level L3 ("Executives / Legal") a compliance report.
This package makes it from ledger entries alone:

- `figures`    what the report says (`compute_compliance`): per severity MTTA/MTTR and time
               to acknowledge against section 3's response times and section 12's targets,
               the escalations, the incidents, people's approvals and policies' denials,
               and what it rests on (the ledger's verification and last checkpoint)
- `pdf`        the PDF (`render_compliance_pdf`): WeasyPrint, as the RCA is rendered
- `signature`  the detached signature FILE.sig.json and its check (`verify_compliance`)

`write_compliance` puts the PDF and its signature on disk, each atomically. Reading a state
directory (its ledger, its verification, its signer) is runtime/compliance.py's part.
docs/incidents.md, "The compliance report", says it for users.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsdsl.audit.compliance.figures import (
    ComplianceReport,
    LedgerBasis,
    compute_compliance,
    executive_summary,
    ledger_basis,
)
from opsdsl.audit.compliance.pdf import render_compliance_html, render_compliance_pdf
from opsdsl.audit.compliance.signature import (
    COMPLIANCE_PAYLOAD_TYPE,
    ComplianceVerification,
    signature_body,
    signature_bytes,
    signature_path,
    verify_compliance,
)


@dataclass(frozen=True)
class Written:
    pdf: Path
    signature: Path
    sha256: str  # "sha256:HEX" of the PDF
    size: int


def write_compliance(
    path: Path, report: ComplianceReport, signer: Any, signing: Mapping[str, Any] | None = None
) -> Written:
    """Render `report` and write it to `path`, then its signature to PATH.sig.json (atomically, 0644:
    a report is made to be handed out). Nothing is written when rendering fails."""
    from opsdsl.audit.incident._common import IncidentFileError
    from opsdsl.audit.incident.pdf import PdfUnavailable
    from opsdsl.files import write_atomic_bytes

    try:
        data = render_compliance_pdf(report)
    except PdfUnavailable as error:
        raise PdfUnavailable(str(error).replace("the RCA", "the compliance report")) from None
    body = signature_body(path.name, data, report, signing)
    sig = signature_path(path)
    try:
        write_atomic_bytes(path, data)
        write_atomic_bytes(sig, signature_bytes(body, signer))
    except OSError as error:  # exit 2, said plainly: a folder that is not there or not ours
        raise IncidentFileError(f"cannot write {path}: {error.strerror or error}") from None
    return Written(path, sig, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


__all__ = [
    "COMPLIANCE_PAYLOAD_TYPE",
    "ComplianceReport",
    "ComplianceVerification",
    "LedgerBasis",
    "Written",
    "compute_compliance",
    "executive_summary",
    "ledger_basis",
    "render_compliance_html",
    "render_compliance_pdf",
    "signature_path",
    "verify_compliance",
    "write_compliance",
]
