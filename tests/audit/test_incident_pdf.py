"""The RCA as PDF: rendered by WeasyPrint from the record, read back with poppler, drawn against the runbook's clocks.

Real WeasyPrint, real `pdftotext`, `pdftoppm` and `pdfinfo`; skipped, saying why, where
they are not installed (.ci/run installs them). Each PDF is rendered once per module:
a render takes about a second.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from test_incident import CHECKPOINT, SIGNER, T0, TRUSTED, place_evidence, sev2_run

from opsdsl.audit.incident import build_record, verify_folder, write_incident
from opsdsl.audit.incident.marks import incident_marks
from opsdsl.audit.incident.pdf import MAX_ROWS, render_rca_html, render_rca_pdf


def _weasyprint_problem() -> str | None:
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"WeasyPrint is not usable here ({exc}); .ci/run installs Pango"
    missing = [tool for tool in ("pdftotext", "pdftoppm", "pdfinfo") if shutil.which(tool) is None]
    return f"poppler-utils missing ({', '.join(missing)}); .ci/run installs it" if missing else None


PROBLEM = _weasyprint_problem()
needs_pdf = pytest.mark.skipif(PROBLEM is not None, reason=PROBLEM or "")

HOSTILE = '<img src=x onerror=alert(1)> & </td></tr></table><script>alert("x")</script>'


def reviewed(entries: list[dict], at: float, **fields) -> list[dict]:
    """`entries` with a person's review appended at T0 + `at`."""
    last = entries[-1]
    review = {"by": "carol", "root_cause": "stale plans", "impact": "p95 up", "follow_ups": []} | fields
    return [
        *entries,
        {"seq": last["seq"] + 1, "ts": T0 + at, "run": last["run"], "kind": "incident.reviewed", "data": review},
    ]


def pdf_text(data: bytes, tmp: Path) -> str:
    path = tmp / "rca.pdf"
    path.write_bytes(data)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout


def first_page(data: bytes, tmp: Path):
    from PIL import Image

    path = tmp / "rca.pdf"
    path.write_bytes(data)
    subprocess.run(["pdftoppm", "-r", "100", "-png", "-f", "1", "-l", "1", str(path), str(tmp / "page")], check=True)
    (png,) = tmp.glob("page*.png")
    return Image.open(io.BytesIO(png.read_bytes())).convert("RGB")


def rgb(image) -> list[tuple[int, int, int]]:
    data = image.tobytes()
    return [(data[i], data[i + 1], data[i + 2]) for i in range(0, len(data), 3)]


def reddish(image) -> int:
    return sum(1 for r, g, b in rgb(image) if r > 170 and g < 90 and b < 90)


@pytest.fixture(scope="module")
def sev2(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict, bytes]:
    """A SEV-2 run a person approved, then reviewed with hostile text: every mark in time but the RCA."""
    if PROBLEM:
        pytest.skip(PROBLEM)
    entries = reviewed(
        sev2_run(approval=True),
        30 * 3600,  # T+30h: the RCA is late
        root_cause=f"Stale plans. {HOSTILE}",
        follow_ups=[f"Pin statistics {HOSTILE}"],
    )
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
    data = render_rca_pdf(entries, record, title=f"Plan regression {HOSTILE}", summary="First.\n\nSecond.")
    return entries, record, data


@needs_pdf
def test_pdf_reads_back_with_the_rca_content(sev2, tmp_path: Path) -> None:
    _, record, data = sev2
    assert data.startswith(b"%PDF-")
    text = pdf_text(data, tmp_path)
    flat = " ".join(text.split())
    # The same content as rca.md: title, headline, steps, review, follow-ups, ledger footer.
    assert "Plan regression <img src=x onerror=alert(1)>" in flat  # hostile text is text
    assert "SEV-2 query-latency-regression on sqlx-sev2 succeeded in 4m12s after 1 retry" in flat
    for step in ("inspect", "invalidate_plans", "scale_pool", "snapshot"):
        assert step in flat
    assert "Reviewed by carol" in flat and "Stale plans." in flat
    assert '<script>alert("x")</script>' in flat
    assert "Pin statistics" in flat
    assert record["ledger"]["entries_digest"][:30] in flat.replace(" ", "")
    # The clocks: each section-8 mark and the SEV-2 response target, with its verdict.
    for label in ("T+5m", "T+10m", "T+20m", "T+60m", "T+24h", "SEV-2 < 15m"):
        assert label in flat
    assert "late: T+1d06h" in flat  # the review came at T+30h, after T+24h
    assert "met at T+1m15s" in flat  # alice's approval at T+75s acknowledged it


@needs_pdf
def test_first_page_is_drawn_and_shows_the_missed_mark(sev2, tmp_path: Path) -> None:
    _, _, data = sev2
    image = first_page(data, tmp_path)
    pixels = rgb(image)
    ink = sum(1 for r, g, b in pixels if r + g + b < 600)
    assert ink > len(pixels) * 0.01, "the first page is blank"
    assert reddish(image) > 40, "the late RCA mark is not drawn in red"


@needs_pdf
def test_same_record_same_bytes_dates_from_the_record(sev2, tmp_path: Path) -> None:
    entries, record, data = sev2
    again = render_rca_pdf(entries, record, title=f"Plan regression {HOSTILE}", summary="First.\n\nSecond.")
    assert again == data
    path = tmp_path / "rca.pdf"
    path.write_bytes(data)
    info = subprocess.run(["pdfinfo", "-isodates", str(path)], check=True, capture_output=True, text=True).stdout
    assert "CreationDate:    2025-03-01T10:00:05Z" in info  # the run's creation, not the clock
    assert "ModDate:         2025-03-02T16:00:00Z" in info  # the review, the record's last change


def test_html_template_escapes_everything_from_the_run() -> None:
    entries = reviewed(sev2_run(outcome="failed"), 600, root_cause=HOSTILE, impact=HOSTILE, follow_ups=[HOSTILE])
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
    key = __import__("opsdsl.audit.incident.followups", fromlist=["follow_up_key"]).follow_up_key
    links = {key(item): {"url": "javascript:alert(1)"} for item in record["follow_ups"]}
    html = render_rca_html(
        entries, record, title=HOSTILE, summary=HOSTILE, include=["timeline", "context"], links=links
    )
    assert "<script>" not in html and "<img" not in html and "onerror=alert(1)>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "javascript:" not in html  # a link that is not http(s) is not made a link


def test_marks_of_an_unacknowledged_sev1_that_recovered_late() -> None:
    entries = sev2_run()
    entries[0]["data"] = entries[0]["data"] | {"severity": "SEV-1"}
    entries[-1]["ts"] = T0 + 1500  # run.finished (succeeded) at T+25m: recovery after T+20m
    marks, response = incident_marks(entries)
    verdicts = {mark.key: mark.status for mark in marks}
    assert verdicts == {
        "detection": "met",
        "triage": "met",
        "mitigation": "met",
        "recovery": "late",
        "report": "met",
        "rca": "open",  # the entries end at T+25m: the 24 h are not over
    }
    assert response is not None and response.label == "SEV-1 < 5m"
    assert response.status == "missed"  # no person acknowledged, and the entries run past 5 minutes
    assert response.verdict == "missed: not reached"


def test_a_huge_record_is_cut_in_the_pdf_not_in_the_record() -> None:
    entries = sev2_run()
    last = entries[-1]
    extra = [
        {
            "seq": last["seq"] + 1 + i,
            "ts": T0 + 260 + i,
            "run": last["run"],
            "kind": "step.skipped",
            "data": {"step": f"s{i}", "when": "x" * 50},
        }
        for i in range(MAX_ROWS + 500)
    ]
    entries = [*entries, *extra]
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
    html = render_rca_html(entries, record)
    assert f"… and {len(record['timeline']) - MAX_ROWS} more" in html
    assert html.count('<td class="t">') == MAX_ROWS


@needs_pdf
def test_write_incident_keeps_the_pdf_current_and_in_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "incidents"
    entries = sev2_run()
    place_evidence(root, entries)
    folder = write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER)
    assert not (folder / "rca.pdf").exists()  # runs do not render it: it is on demand
    write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER, pdf=True)
    first = (folder / "rca.pdf").read_bytes()
    manifest = (folder / "manifest.json").read_text()
    assert '"rca.pdf": "sha256:' in manifest
    assert verify_folder(folder, TRUSTED) == []
    # Unchanged record: the PDF is kept as it is. A new review: it is rendered again.
    write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER)
    assert (folder / "rca.pdf").read_bytes() == first
    write_incident(root, reviewed(entries, 3600), checkpoint=CHECKPOINT, signer=SIGNER)
    assert (folder / "rca.pdf").read_bytes() != first
    assert "Reviewed by carol" in " ".join(pdf_text((folder / "rca.pdf").read_bytes(), tmp_path).split())
    assert verify_folder(folder, TRUSTED) == []
    # Tampering with the PDF is caught like any file.
    data = bytearray((folder / "rca.pdf").read_bytes())
    data[len(data) // 2] ^= 1
    (folder / "rca.pdf").write_bytes(bytes(data))
    assert any(problem.startswith("rca.pdf: content changed") for problem in verify_folder(folder, TRUSTED))
    # pdf=False removes it.
    write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER, pdf=False)
    assert not (folder / "rca.pdf").exists() and verify_folder(folder, TRUSTED) == []


@needs_pdf
def test_a_review_of_twenty_thousand_characters_in_one_word_renders(tmp_path: Path) -> None:
    entries = reviewed(sev2_run(), 600, root_cause="A" * 20_000)
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
    text = pdf_text(render_rca_pdf(entries, record), tmp_path)
    assert text.count("A") >= 20_000  # wrapped across lines and pages, none of it lost


@needs_pdf
def test_cli_incident_pdf_then_export_and_verify(tmp_path: Path) -> None:
    from kernel_api import FIXTURES, KernelAPI, opsdsl, param_args, shell_params

    state = tmp_path / "state"
    with KernelAPI() as api:
        result = opsdsl(
            "run", "--pack", FIXTURES / "driver_failure.yaml", "--state-dir", state, "--log-format", "json",
            *param_args(**shell_params(api)),
        )  # fmt: skip
    assert result.code == 0, result.stderr
    folder = Path(result.end["incident_folder"])
    record_before = (folder / "record.json").read_bytes()
    made = opsdsl("incident", "pdf", folder.name, "--state-dir", state)
    assert made.code == 0, made.stderr
    assert (folder / "record.json").read_bytes() == record_before  # the PDF is added, the record unchanged
    text = " ".join(pdf_text((folder / "rca.pdf").read_bytes(), tmp_path).split())
    assert folder.name in text and "driver-connection-failure" in text and "T+24h" in text
    archive = tmp_path / "inc.tar.gz"
    assert opsdsl("incident", "export", folder.name, "-o", archive, "--state-dir", state).code == 0
    verified = opsdsl("incident", "verify", archive, "--state-dir", state)
    assert verified.code == 0, verified.stdout + verified.stderr
    assert "RCA PDF: rca.pdf" in verified.stdout and "chained to checkpoint" in verified.stdout
    missing = opsdsl("incident", "pdf", "INC-nope", "--state-dir", state)
    assert missing.code == 2 and "no incident" in missing.stderr and "Traceback" not in missing.stderr


def test_a_failed_run_missed_recovery_for_good() -> None:
    marks, response = incident_marks(sev2_run(outcome="failed"))  # finished failed at T+4m12s
    verdicts = {mark.key: mark.status for mark in marks}
    assert verdicts["recovery"] == "missed"  # it ended: it will never be validated
    assert verdicts["rca"] == "open"  # a person can still review it within 24 h
    assert response is not None and response.status == "open"  # and acknowledge it within 15 min


def test_keeping_a_pdf_current_never_costs_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder with a PDF, rewritten where WeasyPrint fails: the record is written, the stale PDF goes."""
    import opsdsl.audit.incident.pdf as pdf
    from opsdsl.audit.incident.pdf import PdfUnavailable

    root = tmp_path / "incidents"
    entries = sev2_run()
    place_evidence(root, entries)
    folder = write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER)
    (folder / "rca.pdf").write_bytes(b"%PDF-1.7 stale")  # as if rendered before

    def broken(*_args, **_kwargs):
        raise PdfUnavailable("cannot render the RCA as PDF: no Pango here")

    monkeypatch.setattr(pdf, "render_rca_pdf", broken)
    write_incident(root, reviewed(entries, 600), checkpoint=CHECKPOINT, signer=SIGNER)
    assert not (folder / "rca.pdf").exists()
    assert "Reviewed by carol" in (folder / "rca.md").read_text()
    assert verify_folder(folder, TRUSTED) == []
    with pytest.raises(PdfUnavailable, match="no Pango"):
        write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER, pdf=True)


@needs_pdf
def test_the_renderer_fetches_nothing(tmp_path: Path) -> None:
    """Even markup that escaped the template could not read a local file or reach the network."""
    from opsdsl.audit.incident.pdf import pdf_bytes

    stylesheet = tmp_path / "local.css"  # WeasyPrint's default fetcher would read it: "xLEAKED" in the text
    stylesheet.write_text("p::after { content: 'LEAKED' }")
    html = (
        f'<p>x</p><link rel="stylesheet" href="file://{stylesheet}"><img src="file://{stylesheet}">'
        '<link rel="stylesheet" href="http://127.0.0.1:9/x.css">'
    )
    data = pdf_bytes(html, title="t", created=None, modified=None, identifier=b"x")
    assert "LEAKED" not in pdf_text(data, tmp_path)


def test_an_escalation_is_on_the_timeline_and_in_the_pdf_html() -> None:
    entries = sev2_run()
    last = entries[-1]
    escalated = {
        "level": "L2",
        "index": 2,
        "of": 3,
        "who": "Engineering leads <script>",
        "notifiers": ["email"],
        "reason": "not acknowledged within 15m",
        "severity": "SEV-2",
        "incident_id": "INC-2025-0042",
        "response_seconds": 900,
    }
    entries = [
        *entries,
        {"seq": last["seq"] + 1, "ts": T0 + 901, "run": last["run"], "kind": "incident.escalated", "data": escalated},
    ]
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
    assert any(
        item["summary"].startswith("Escalated to L2 (Engineering leads <script>)") for item in record["timeline"]
    )
    html = render_rca_html(entries, record)
    assert "Escalated to L2 (Engineering leads &lt;script&gt;)" in html
