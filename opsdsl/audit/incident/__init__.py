"""Incident folders: the signed record, the RCA report, the evidence and a signed manifest.

A run leaves `ROOT/{year}/{incident_id}/` holding `record.json` (what happened, computed
from the run's ledger entries alone and signed), `rca.md` (the same, for people),
`evidence/...` (written by evidence.collect) and `manifest.json` (the sha256 of every
other file, signed, written last). Signed files are readable JSON: the signature covers
DSSE's PAE of the payload type and the RFC 8785 bytes of the body, so a record signature
can never pass for a manifest's or a plan's. `verify_folder` and `verify_archive` check
all of it; `export_incident` packs a folder into a byte-for-byte reproducible tar.gz.
Layout and definitions for users: docs/incidents.md; the record's schema:
schemas/incident.schema.json.

One module per stage; everything public is importable from here:

- `record`          the record, built from one run's ledger entries (`build_record`)
- `record_builder`  the fold of entries into steps, decisions, approvals and a timeline
- `rca`             the RCA report in Markdown (`render_rca`)
- `folder`          writing and signing the folder (`write_incident`)
- `verify`          checking a folder (`verify_folder`, `VerifyReport`)
- `archive`         export to a reproducible tar.gz, and checking one (`verify_archive`)
- `_common`         file names, payload types, errors and helpers the stages share
"""

from __future__ import annotations

from opsdsl.audit.incident._common import (
    EVIDENCE_DIR,
    MANIFEST_FILE,
    MANIFEST_PAYLOAD_TYPE,
    RCA_FILE,
    RECORD_FILE,
    RECORD_PAYLOAD_TYPE,
    IncidentError,
    IncidentFileError,
    iso_time,
    json_safe,
)
from opsdsl.audit.incident.archive import export_incident, verify_archive
from opsdsl.audit.incident.folder import digest_folder, incident_folder, signed_file_bytes, write_incident
from opsdsl.audit.incident.rca import DEFAULT_SECTIONS, RCA_SECTIONS, default_title, headline, rca_settings, render_rca
from opsdsl.audit.incident.record import build_record, entries_digest, run_entries
from opsdsl.audit.incident.verify import VerifyReport, verify_folder, verify_folder_report

__all__ = [
    "DEFAULT_SECTIONS",
    "EVIDENCE_DIR",
    "MANIFEST_FILE",
    "MANIFEST_PAYLOAD_TYPE",
    "RCA_FILE",
    "RCA_SECTIONS",
    "RECORD_FILE",
    "RECORD_PAYLOAD_TYPE",
    "IncidentError",
    "IncidentFileError",
    "VerifyReport",
    "build_record",
    "default_title",
    "digest_folder",
    "entries_digest",
    "export_incident",
    "headline",
    "incident_folder",
    "iso_time",
    "json_safe",
    "rca_settings",
    "render_rca",
    "run_entries",
    "signed_file_bytes",
    "verify_archive",
    "verify_folder",
    "verify_folder_report",
    "write_incident",
]
