"""The compliance report: figures from a real state directory's ledger, the PDF read back with
poppler, its detached signature, reproducibility, hostile text, an empty period, and the CLI.

Real WeasyPrint, `pdftotext` and `pdftoppm`; the PDF tests skip, saying why, where they are
not installed (.ci/run installs them). Each PDF is rendered once per module where it can be:
a render takes about two seconds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compliance_data import DAY, HOSTILE, SINCE, T0, UNTIL, incident, month, populate
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_incident_pdf import PROBLEM, needs_pdf

from opsdsl.audit.compliance import compute_compliance, render_compliance_html, verify_compliance
from opsdsl.audit.compliance.pdf import MAX_INCIDENTS
from opsdsl.audit.metrics import compute_report
from opsdsl.build.signing import keyid, write_public_key
from opsdsl.runtime.compliance import parse_when, period, state_compliance, write_state_compliance
from opsdsl.runtime.state_audit import ledger_entries
from opsdsl.runtime.state_config import dev_key

ROOT = Path(__file__).resolve().parents[2]


def as_entries(items) -> list[dict]:
    return [
        {"seq": n, "ts": ts, "run": run, "kind": kind, "data": data} for n, (ts, run, kind, data) in enumerate(items, 1)
    ]


def pdf_text(path: Path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True).stdout


def flat(text: str) -> str:
    return " ".join(text.split())


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OPSDSL_HOME": str(cwd / "no-such-home")}
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("state") / ".opsdsl"
    populate(root, checkpoint=dev_key(root))
    return root


@pytest.fixture(scope="module")
def rendered(state: Path, tmp_path_factory) -> Path:
    if PROBLEM:
        pytest.skip(PROBLEM)
    out = tmp_path_factory.mktemp("out") / "november.pdf"
    write_state_compliance(state, out, since=parse_when(SINCE, "--since"), until=parse_when(UNTIL, "--until"))
    return out


# --- figures ---------------------------------------------------------------------------


def test_the_figures_of_a_month():
    entries = as_entries(month())
    since, until = parse_when(SINCE, "--since"), parse_when(UNTIL, "--until")
    report = compute_compliance(entries, since=since, until=until)
    ids = [i.incident_id for i in report.incidents]
    assert ids == ["INC-20261110-A", "INC-20261111-B", "INC-20261112-C"]  # no dry run, child or October run
    assert report.report.overall.runs == compute_report(entries, since=since, until=until, now=until).overall.runs
    assert report.levels == ("L1", "L2", "L3")
    assert report.reached == {"L1": 3, "L2": 1, "L3": 1}
    assert [i.incident_id for i in report.reached_last] == ["INC-20261110-A"]
    # the child run's denial belongs to its incident; approvals by people counted
    assert report.people.policy_denials == 2 and report.people.approved == 1 and report.people.approvals_requested == 1
    b = report.incidents[1]
    assert (b.follow_ups_opened, b.follow_ups_listed, b.acknowledged_in_time) == (1, 2, True)
    assert report.incidents[0].acknowledged_in_time is False  # 12 min for a SEV-1
    summary = report.summary_sentences()
    assert 3 <= len(summary) <= 5
    assert summary[0].startswith("3 incidents were detected between 1 Nov 2026 and 1 Dec 2026 (UTC) (2 SEV-1, 1 SEV-2)")
    assert "2 of 3 were acknowledged by a person within their severity's response time" in summary[1]
    assert "1 incident reached the last level (L3): INC-20261110-A" in summary[2]
    assert "missed 2 (MTTA SEV-1 < 5 min; RCA within 24 h, all incidents)" in summary[3]
    assert (
        summary[4]
        == "These figures rest on 44 ledger entries (seq 1–44); the ledger could not be verified, with no signed checkpoint."
    )


def test_entries_after_the_period_are_not_read():
    """The report of a period does not change when the ledger grows after it: dates come from the data."""
    items = month()
    until = T0 + 2 * DAY  # before INC-C
    first = compute_compliance(as_entries(items), since=until - 30 * DAY, until=until)
    later = [*items, *incident("r-z", T0 + 5 * DAY, "SEV-1", "INC-LATER", ack=("local:x", 10))]
    second = compute_compliance(as_entries(later), since=until - 30 * DAY, until=until)
    assert first.to_dict() == second.to_dict()
    # INC-A's acknowledgement at +12m is inside; its RCA "now" is the period's end, not the clock
    assert first.report.overall.rca_missing == 1


def test_the_default_period_ends_at_the_midnight_after_the_last_entry():
    entries = as_entries(month())
    since, until = period(entries, None, None)
    assert until == parse_when("2026-11-14", "--until") and since == until - 30 * DAY
    assert period(entries, parse_when("2026-11-01", "--since"), None)[0] == parse_when("2026-11-01", "x")
    with pytest.raises(Exception, match="after --since"):
        period(entries, parse_when("2026-11-02", "x"), parse_when("2026-11-01", "x"))
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        parse_when("last tuesday", "--since")
    assert parse_when("2026-11-01T10:00:00Z", "x") == parse_when("2026-11-01", "x") + 36000


def test_hostile_text_is_escaped_in_the_html():
    items = incident("r-h", T0, "SEV-1", HOSTILE, pack=HOSTILE, playbook="p", ack=(HOSTILE, 60))
    report = compute_compliance(as_entries(items), since=T0 - DAY, until=T0 + DAY)
    html = render_compliance_html(report)
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html


def test_a_long_month_lists_the_incidents_that_need_an_eye_first():
    """Past MAX_INCIDENTS rows (each costs WeasyPrint time), the table keeps the late, unresolved
    and last-level incidents and counts the rest; every figure still counts them all."""
    items = []
    for number in range(MAX_INCIDENTS + 30):
        plain = number % 10 != 0  # one in ten is never acknowledged
        items += incident(
            f"r-{number}",
            T0 + number * 60,
            "SEV-2",
            f"INC-{number:04d}",
            ack=("local:bob", 60) if plain else None,
            outcome=("succeeded", 600),
        )
    report = compute_compliance(as_entries(sorted(items, key=lambda item: item[0])), since=T0, until=T0 + 30 * DAY)
    html = render_compliance_html(report)
    assert report.report.overall.runs == MAX_INCIDENTS + 30
    assert html.count('<tr><td class="code">INC-') == MAX_INCIDENTS
    assert "INC-0260" in html and "INC-0270" in html  # never acknowledged: listed though late in the month
    assert "INC-0279" not in html  # in time and resolved: counted, not listed
    assert "… and 30 more incidents not listed, each acknowledged in time and resolved" in html


def test_a_state_directory_verifies_and_names_its_checkpoint(state: Path):
    report = state_compliance(state, since=parse_when(SINCE, "x"), until=parse_when(UNTIL, "x"), signer=dev_key(state))
    basis = report.basis
    assert basis.verified is True, basis
    assert basis.verdict.startswith("ledger intact")
    assert basis.checkpoint is not None and basis.checkpoint["seq"] == basis.last_seq
    assert "the ledger verified intact, and its last signed checkpoint is at seq" in report.summary_sentences()[-1]
    assert basis.first_seq > 1  # October's run is not read


def test_a_signature_file_that_is_no_signature_is_refused(tmp_path: Path):
    """Verification reads hostile files: not JSON, deep JSON, another payload type, duplicate
    keys, a FIFO instead of the PDF. Each is a listed problem or exit 2, never a traceback."""
    from opsdsl.audit.compliance.signature import signature_body, signature_bytes
    from opsdsl.audit.incident import IncidentFileError

    key = Ed25519PrivateKey.generate()
    trusted = {keyid(key.public_key()): key.public_key()}
    report = compute_compliance(as_entries(month()), since=T0 - DAY, until=T0 + 30 * DAY)
    pdf = tmp_path / "r.pdf"
    pdf.write_bytes(b"%PDF-1.7 not really")
    sig = tmp_path / "r.pdf.sig.json"
    sig.write_bytes(signature_bytes(signature_body("r.pdf", pdf.read_bytes(), report, None), key))
    assert verify_compliance(pdf, trusted).ok

    good = json.loads(sig.read_text())
    cases = {
        "not JSON": b"{",
        "deep": b"[" * 100_000 + b"]" * 100_000,
        "manifest": json.dumps({**good, "payloadType": "application/vnd.opsdsl.manifest+json"}).encode(),
        "duplicate": sig.read_bytes().replace(b'"signatures":', b'"signed": {}, "signatures":', 1),
        "no signatures": json.dumps({**good, "signatures": []}).encode(),
        "odd signature": json.dumps({**good, "signatures": [{"keyid": 1, "sig": None}]}).encode(),
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.json"
        bad.write_bytes(data)
        result = verify_compliance(pdf, trusted, bad)
        assert not result.ok and result.problems, name

    fifo = tmp_path / "fifo.pdf"
    os.mkfifo(fifo)
    with pytest.raises(IncidentFileError, match="FIFO"):
        verify_compliance(fifo, trusted, sig)


# --- the PDF ---------------------------------------------------------------------------


@needs_pdf
def test_the_pdf_reads_back_as_the_report(rendered: Path, state: Path):
    text = flat(pdf_text(rendered))
    report = state_compliance(state, since=parse_when(SINCE, "x"), until=parse_when(UNTIL, "x"), signer=dev_key(state))
    assert text.startswith("Compliance report")
    assert "Executive summary" in text
    for sentence in report.summary_sentences():
        assert flat(sentence) in text
    for incident_id in ("INC-20261110-A", "INC-20261111-B", "INC-20261112-C"):
        assert incident_id in text
    assert "INC-DRY" not in text and "INC-OCTOBER" not in text
    for target in ("MTTA SEV-1 < 5 min", "MTTR SEV-1 < 30 min", "Auto-mitigation SEV-2 ≥ 80 %", "RCA within 24 h"):
        assert target in text
    assert "✗ missed" in text and "✓ met" in text and "– no data" in text  # words and marks, not colour alone
    assert "< 5 min" in text and "< 15 min" in text and "< 24 h" in text  # section 3's response times
    assert "reached the last level (L3)" in text
    assert "detected 2026-11-10 08:00 UTC: local:alice, 12m00s after detection." in text  # the L3 list
    assert "Last signed checkpoint seq" in text and "ledger intact" in text


@needs_pdf
def test_a_page_is_drawn(rendered: Path, tmp_path: Path):
    from PIL import Image

    subprocess.run(
        ["pdftoppm", "-r", "60", "-png", "-f", "1", "-l", "1", str(rendered), str(tmp_path / "p")], check=True
    )
    (png,) = tmp_path.glob("p*.png")
    image = Image.open(io.BytesIO(png.read_bytes())).convert("L")
    assert image.width > image.height  # landscape
    dark = sum(1 for value in image.tobytes() if value < 128)
    assert dark > 0.005 * image.width * image.height


@needs_pdf
def test_two_renders_are_the_same_bytes(rendered: Path, state: Path, tmp_path: Path):
    again = tmp_path / "november.pdf"
    write_state_compliance(state, again, since=parse_when(SINCE, "x"), until=parse_when(UNTIL, "x"))
    assert again.read_bytes() == rendered.read_bytes()
    sig = Path(str(rendered) + ".sig.json")
    assert Path(str(again) + ".sig.json").read_bytes() == sig.read_bytes()


@needs_pdf
def test_the_signature_verifies_and_fails_after_one_byte(rendered: Path, state: Path, tmp_path: Path):
    key = dev_key(state)
    trusted = {keyid(key.public_key()): key.public_key()}
    result = verify_compliance(rendered, trusted)
    assert result.ok and result.signers == (keyid(key.public_key()),)
    body = json.loads(Path(str(rendered) + ".sig.json").read_text())["signed"]
    assert body["sha256"].startswith("sha256:") and body["since"] == "2026-11-01T00:00:00Z"

    copy = tmp_path / "november.pdf"
    data = bytearray(rendered.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    Path(str(copy) + ".sig.json").write_bytes(Path(str(rendered) + ".sig.json").read_bytes())
    changed = verify_compliance(copy, trusted)
    assert not changed.ok and "content changed since it was signed" in changed.problems[0]

    other = Ed25519PrivateKey.generate().public_key()
    stranger = verify_compliance(rendered, {keyid(other): other})
    assert not stranger.ok and "untrusted" in stranger.problems[0]

    sig = tmp_path / "tampered.sig.json"
    document = json.loads(Path(str(rendered) + ".sig.json").read_text())
    document["signed"]["incidents"] = 0  # the body is signed too
    sig.write_text(json.dumps(document))
    forged = verify_compliance(rendered, trusted, sig)
    assert not forged.ok and "bad signature" in forged.problems[0]


@needs_pdf
def test_hostile_text_is_inert_in_the_pdf(tmp_path: Path):
    root = tmp_path / ".opsdsl"
    populate(root, incident("r-h", T0, "SEV-1", "INC-H", pack=HOSTILE, playbook="p" * 5000, ack=(HOSTILE, 60)))
    out = tmp_path / "h.pdf"
    write_state_compliance(root, out, since=T0 - DAY, until=T0 + DAY)
    text = pdf_text(out).replace("\u200b", "")
    assert "<img src=x" in text and '<script>alert("x' in text  # shown as text (a table cell wraps it)
    assert b"/JavaScript" not in out.read_bytes() and b"/URI" not in out.read_bytes()


@needs_pdf
def test_an_empty_period_says_no_incidents(state: Path, tmp_path: Path):
    out = tmp_path / "empty.pdf"
    write_state_compliance(state, out, since=parse_when("2025-01-01", "x"), until=parse_when("2025-02-01", "x"))
    text = flat(pdf_text(out))
    assert "No incidents were detected between 1 Jan 2025 and 1 Feb 2025 (UTC)." in text
    assert "No incidents in this period." in text
    assert "None of the runbook's 4 targets could be measured in this period." in text


# --- the CLI ---------------------------------------------------------------------------


@needs_pdf
def test_the_cli_writes_and_verifies_a_report(state: Path, tmp_path: Path):
    out = tmp_path / "nov.pdf"
    args = ("--state-dir", str(state))
    made = cli("report", *args, "--compliance-pdf", str(out), "--since", SINCE, "--until", UNTIL, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "3 incident(s)" in made.stdout and out.is_file() and Path(str(out) + ".sig.json").is_file()

    public = tmp_path / "records.pub"
    write_public_key(public, dev_key(state).public_key())
    ok = cli("report", "verify-compliance", str(out), "--key", str(public), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "compliance report verified: 2026-11-01T00:00:00Z – 2026-12-01T00:00:00Z, 3 incident(s)" in ok.stdout

    data = bytearray(out.read_bytes())
    data[100] ^= 0x20
    out.write_bytes(bytes(data))
    bad = cli("report", "verify-compliance", str(out), "--key", str(public), cwd=tmp_path)
    assert bad.returncode == 1 and "content changed since it was signed" in bad.stderr
    missing = cli("report", "verify-compliance", str(tmp_path / "none.pdf"), "--key", str(public), cwd=tmp_path)
    assert missing.returncode == 2


@needs_pdf
def test_an_unwritable_file_is_an_error_not_a_traceback(state: Path, tmp_path: Path):
    (tmp_path / "taken").write_text("a file where a folder should be")
    made = cli("report", "--state-dir", str(state), "--compliance-pdf", str(tmp_path / "taken" / "x.pdf"), cwd=tmp_path)
    assert made.returncode == 2 and "cannot write" in made.stderr and "Traceback" not in made.stderr


def test_the_report_options_still_work(state: Path, tmp_path: Path):
    args = ("--state-dir", str(state))
    text = cli("report", *args, "--since", SINCE, "--until", "2026-11-11", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("opsdsl report: 1 run detected 2026-11-01T00:00:00Z … 2026-11-11T00:00:00Z")
    as_json = cli("report", *args, "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["runs"] == 4
    wrong = cli("report", *args, "--until", "soon", cwd=tmp_path)
    assert wrong.returncode == 2 and "--until 'soon'" in wrong.stderr


def test_ledger_entries_of_the_fixture_are_real(state: Path):
    """The fixture goes through the real Store: a hash-chained ledger the report reads back."""
    entries = ledger_entries(state)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
