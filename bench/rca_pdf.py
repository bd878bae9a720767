"""What the RCA PDF costs, and whether it is byte-reproducible across processes.

    python bench/rca_pdf.py [--reps 5]

Prints, as medians (wall and CPU; the machine is shared, so CPU is the steadier figure):

- `import weasyprint` in a fresh interpreter (what the first PDF of a process pays);
- one render of the sketch's SEV-2 RCA, WeasyPrint already imported;
- write_incident without and with `pdf=True`: what rendering at a run's end would add;
- whether two fresh processes render the same bytes for the same record.

docs/decisions.md ("RCA PDFs are rendered on demand") quotes these figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "audit")]

RENDER = """
import sys, hashlib
sys.path[:0] = [{root!r}, {tests!r}]
from test_incident import CHECKPOINT, sev2_run
from opsdsl.audit.incident import build_record
from opsdsl.audit.incident.pdf import render_rca_pdf
entries = sev2_run(approval=True)
record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
print(hashlib.sha256(render_rca_pdf(entries, record, title="Plan regression")).hexdigest())
"""


def timed(function) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def child_seconds(code: str) -> tuple[float, float]:
    """(wall, user+sys CPU) of a fresh interpreter running `code`."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - wall, cpu


def median_pair(samples: list[tuple[float, float]]) -> str:
    wall = statistics.median(s[0] for s in samples)
    cpu = statistics.median(s[1] for s in samples)
    return f"{wall * 1000:8.0f} ms wall, {cpu * 1000:6.0f} ms CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    reps = parser.parse_args().reps

    from test_incident import CHECKPOINT, SIGNER, place_evidence, sev2_run

    from opsdsl.audit.incident import build_record, write_incident
    from opsdsl.audit.incident.pdf import render_rca_pdf

    base = [child_seconds("pass") for _ in range(reps)]
    imported = [child_seconds("import weasyprint") for _ in range(reps)]
    print(f"python -c pass             {median_pair(base)}")
    print(f"python -c 'import weasyprint' {median_pair(imported)}")

    entries = sev2_run(approval=True)
    record = build_record(entries, checkpoint=CHECKPOINT, evidence_dir=None)
    render_rca_pdf(entries, record)  # import and warm fonts
    renders = [timed(lambda: render_rca_pdf(entries, record)) for _ in range(reps)]
    print(f"render, imported           {median_pair(renders)}")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "incidents"
        place_evidence(root, entries)
        without = [
            timed(lambda: write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER, pdf=False))
            for _ in range(reps)
        ]
        with_pdf = [
            timed(lambda: write_incident(root, entries, checkpoint=CHECKPOINT, signer=SIGNER, pdf=True))
            for _ in range(reps)
        ]
    print(f"write_incident             {median_pair(without)}")
    print(f"write_incident, pdf=True   {median_pair(with_pdf)}  (+ the import above in a fresh process)")

    code = RENDER.format(root=str(ROOT), tests=str(ROOT / "tests" / "audit"))
    digests = {
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
        for _ in range(2)
    }
    verdict = "same bytes" if len(digests) == 1 else f"DIFFERENT bytes: {sorted(digests)}"
    print(f"two processes, same record: {verdict}")


if __name__ == "__main__":
    main()
