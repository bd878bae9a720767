"""An incident folder is private (0700, files 0600) and its RCA title and summary redacted."""

from __future__ import annotations

import stat
from pathlib import Path

from test_incident import CHECKPOINT, SIGNER, sev2_run

from opsdsl.audit.incident import write_incident
from opsdsl.runtime.secrets import Redactor

SECRET = "rca-secret-3f2e1d0c9b8a"


def test_the_folder_is_0700_and_its_files_0600(tmp_path: Path) -> None:
    folder = write_incident(tmp_path / "incidents", sev2_run(), checkpoint=CHECKPOINT, signer=SIGNER)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir() if path.is_file()}
    assert modes == {"record.json": 0o600, "rca.md": 0o600, "manifest.json": 0o600}


def test_an_existing_open_folder_is_tightened(tmp_path: Path) -> None:
    first = write_incident(tmp_path / "incidents", sev2_run(), checkpoint=CHECKPOINT, signer=SIGNER)
    first.chmod(0o755)
    again = write_incident(tmp_path / "incidents", sev2_run(), checkpoint=CHECKPOINT, signer=SIGNER)
    assert stat.S_IMODE(again.stat().st_mode) == 0o700


def test_the_rca_title_and_summary_are_redacted(tmp_path: Path) -> None:
    redactor = Redactor([SECRET])
    folder = write_incident(
        tmp_path / "incidents",
        sev2_run(),
        checkpoint=CHECKPOINT,
        signer=SIGNER,
        rca={"title": f"Rotated {SECRET}", "summary": f"token {SECRET[:12]}"},
        redact=redactor.text,
    )
    rca = (folder / "rca.md").read_text()
    assert rca.startswith("# Rotated ***\n")
    assert "token ***" in rca
    assert not any(SECRET[:size] in rca for size in range(6, len(SECRET) + 1))
