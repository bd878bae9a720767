"""The compliance report a server writes when an incident reaches the last escalation level.

As tests/serve/test_serve_escalation.py: a real `opsdsl serve` with a configuration file
(three levels, L3 told through a loopback webhook receiver), its clock moved by the test
(libfaketime), then the state directory opened as an auditor would: the PDF read back with
poppler, its signature checked by `opsdsl report verify-compliance`, the ledger entry that
names it. Skipped, saying why, without libfaketime, WeasyPrint or poppler.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kernel_api import KernelAPI
from test_serve import Server, wait_until
from test_serve_escalation import CONFIG, escalations, received, receiver  # noqa: F401 (a fixture)
from test_serve_owns_runs import PACK, Clock, cli, entries, fire, needs_faketime, status


def _pdf_problem() -> str | None:
    """As tests/audit/test_incident_pdf.py: WeasyPrint (with Pango) and poppler's tools."""
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"WeasyPrint is not usable here ({exc}); .ci/run installs Pango"
    missing = [tool for tool in ("pdftotext", "pdftoppm") if shutil.which(tool) is None]
    return f"poppler-utils missing ({', '.join(missing)}); .ci/run installs it" if missing else None


PDF_PROBLEM = _pdf_problem()
pytestmark = [needs_faketime, pytest.mark.skipif(PDF_PROBLEM is not None, reason=PDF_PROBLEM or "")]

# Section 8's levels, the last one told through its own receiver path (/legal).
LEGAL = CONFIG.replace('who = "Executives / legal"\n', 'who = "Executives / legal"\nnotifiers = ["legal"]\n').replace(
    "[escalation]",
    '[[notifiers]]\nkind = "webhook"\nname = "legal"\nurl = "{url}/legal"\n\n[escalation]',
)


@pytest.fixture
def serve(tmp_path: Path, receiver: str) -> Iterator[Callable[..., Server]]:  # noqa: F811
    api = KernelAPI().__enter__()
    config = tmp_path / "opsdsl-serve.toml"
    config.write_text(LEGAL.format(url=receiver), encoding="utf-8")
    servers: list[Server] = []

    def starter(clock: Clock) -> Server:
        args = ("--config", str(config), "--param", f"kernel_url={api.url}")
        server = Server(tmp_path, *args, pack=PACK, env=clock.env())
        servers.append(server)
        return server.start()

    yield starter
    for server in servers:
        server.close()
    api.__exit__(None, None, None)


def test_an_unacknowledged_sev1_at_l3_leaves_a_signed_compliance_report(serve, tmp_path):
    clock = Clock(tmp_path)
    server = serve(clock)
    run = fire(server, "outage")
    wait_until(lambda: escalations(server, run), what="the auto-page")
    clock.set(5 * 60 + 2)
    wait_until(lambda: len(escalations(server, run)) == 2, what="L2")
    assert "compliance_report" not in entries(server, run, "incident.escalated")[1]  # not the last level
    clock.set(10 * 60 + 4)
    wait_until(lambda: len(escalations(server, run)) == 3, what="L3")
    third = entries(server, run, "incident.escalated")[2]
    stamp = datetime.fromtimestamp(third["ts"], UTC).strftime("%Y%m%dT%H%M%SZ")
    assert third["level"] == "L3" and third["compliance_report"] == f"reports/compliance-{stamp}.pdf"

    # The intake answers while the report is rendered on its thread.
    assert server.post("/v1/events", {"name": "nothing-matches"}).status_code == 202

    (written,) = wait_until(lambda: entries(server, run, "compliance.report_written"), 90, "the report's entry")
    pdf = server.state / written["path"]
    assert written["path"] == third["compliance_report"]
    assert written["signature"] == written["path"] + ".sig.json"
    assert written["sha256"] == "sha256:" + hashlib.sha256(pdf.read_bytes()).hexdigest()
    assert written["level"] == "L3" and written["escalation_seq"] > 0
    assert written["until"] == datetime.fromtimestamp(int(third["ts"]) + 1, UTC).isoformat().replace("+00:00", "Z")
    assert status(server, run) == "paused"  # the report changes nothing about the incident

    checked = cli(server, "report", "verify-compliance", str(pdf))
    assert checked.returncode == 0, checked.stderr
    assert "compliance report verified" in checked.stdout and "1 incident(s)" in checked.stdout
    tampered = tmp_path / "tampered.pdf"
    data = bytearray(pdf.read_bytes())
    data[-40] ^= 0x01
    tampered.write_bytes(bytes(data))
    (tmp_path / "tampered.pdf.sig.json").write_bytes((server.state / written["signature"]).read_bytes())
    assert cli(server, "report", "verify-compliance", str(tampered)).returncode == 1

    text = " ".join(
        subprocess.run(
            ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
        ).stdout.split()
    )
    incident = server.query("SELECT incident_id FROM runs WHERE id = ?", run)[0][0]
    assert f"Written by opsdsl serve when incident {incident} escalated to L3, the last level." in text
    assert f"1 incident reached the last level (L3): {incident}." in text
    assert "0 were never acknowledged" not in text and "1 was never acknowledged." in text

    wait_until(lambda: received("/legal"), what="L3 to be told")
    (told,) = received("/legal")
    assert f"being written to reports/compliance-{stamp}.pdf" in told["message"]
