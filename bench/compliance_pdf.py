"""What the compliance report PDF costs, and whether it is byte-reproducible across processes.

    python bench/compliance_pdf.py [--reps 3] [--incidents 3,100,500]

For each size, a state directory with that many incidents in one month (copies of the
test fixture's three, tests/audit/compliance_data.py, written through the real Store), then
medians (wall and CPU; the machine is shared, so CPU is the steadier figure) of one
`write_state_compliance` (ledger read, verification, figures, render, signature) in a fresh
process, WeasyPrint's import included: what `opsdsl report --compliance-pdf` and the
server's thread pay. Then whether two fresh processes wrote the same bytes.

docs/incidents.md ("The compliance report") quotes these figures.
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

WRITE = """
import sys, hashlib, time, resource
sys.path[:0] = [{root!r}]
from pathlib import Path
from opsdsl.runtime.compliance import write_state_compliance, parse_when
start = time.perf_counter()
written = write_state_compliance(Path({state!r}), Path({out!r}),
    since=parse_when("2026-11-01", "x"), until=parse_when("2026-12-01", "x"))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(time.perf_counter() - start, usage.ru_utime + usage.ru_stime, written.sha256)
"""


def make_state(root: Path, incidents: int) -> None:
    from compliance_data import DAY, T0, incident, populate

    items = []
    for number in range(incidents):
        t0 = T0 + (number % 19) * DAY + number * 7.0
        kind = number % 3
        if kind == 0:
            items += incident(
                f"r-{number}",
                t0,
                "SEV-1",
                f"INC-{number:05d}",
                levels=(("L1", 6), ("L2", 300), ("L3", 600)),
                ack=("local:alice", 720),
                outcome=("failed", 2400),
            )
        elif kind == 1:
            items += incident(
                f"r-{number}",
                t0,
                "SEV-2",
                f"INC-{number:05d}",
                levels=(("L1", 6),),
                ack=("local:bob", 180),
                approval=("local:carol", 200),
                deny=True,
                outcome=("succeeded", 1200),
                review=("local:erin", 7200, 2),
                opened=1,
            )
        else:
            items += incident(f"r-{number}", t0, "SEV-3", f"INC-{number:05d}", outcome=("succeeded", 900))
    items.sort(key=lambda item: item[0])
    populate(root, items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--incidents", default="3,100,500")
    args = parser.parse_args()
    print("| incidents | wall (median) | CPU (median) | same bytes in two processes |")
    print("|---:|---:|---:|---|")
    for size in (int(n) for n in args.incidents.split(",")):
        with tempfile.TemporaryDirectory() as folder:
            state = Path(folder) / ".opsdsl"
            make_state(state, size)
            walls, cpus, digests = [], [], set()
            for rep in range(args.reps):
                out = Path(folder) / f"r{rep}.pdf"
                code = WRITE.format(root=str(ROOT), state=str(state), out=str(out))
                started = time.perf_counter()
                result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                _inner, cpu, digest = result.stdout.split()
                walls.append(time.perf_counter() - started)
                cpus.append(float(cpu))
                digests.add(digest)
            print(
                f"| {size} | {statistics.median(walls):.2f} s | {statistics.median(cpus):.2f} s | "
                f"{'yes' if len(digests) == 1 else 'NO: ' + str(len(digests)) + ' digests'} |"
            )


if __name__ == "__main__":
    main()
