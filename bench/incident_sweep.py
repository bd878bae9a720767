"""What one incident-sweep pass costs over a state of many finished runs (runtime/incident_sweep.py).

    python bench/incident_sweep.py                      # SQLite, 10,000 runs, 5 rounds
    python bench/incident_sweep.py --database postgresql://USER@HOST/DB --runs 10000

The state: `--runs` finished runs (run rows only), ended one per `--spacing` seconds up to
now, each with a folder holding a record.json (the steady state: nothing to write). Timed,
`--rounds` times each, alternating (`--history N` adds N runs that ended a month ago, rows
only: outside every window, as a long-lived state's older runs are):

- `startup`: IncidentSweep.startup(), a new sweep, the last 7 days (every run here);
- `periodic`: IncidentSweep.periodic() 60 s after a pass, the runs ended in that minute
  plus the margin (the last ~120 s of runs), on the `runs_finished` index;
- `query-index` / `query-noindex` (with --ab-index, SQLite): the periodic pass's query
  alone, on the index and with the table scanned (`NOT INDEXED`), A B A B.

Each figure is the pass's wall time: opening its Runtime (a connection), the query, one
lstat per run, closing. Printed: the median and range of each, and what a pass looked at.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))


def build(state: Path, runs: int, spacing: float, now: float, history: int = 0) -> None:
    from opsdsl.runtime import store as S

    store = S.Store(state)
    rows = []
    root = state / "incidents" / "2026"
    for index in range(-history, runs):
        incident = f"INC-bench-{index:07d}"
        folder = root / incident
        if index >= 0:
            folder.mkdir(parents=True)
            (folder / "record.json").write_text("{}\n")
        # the history: runs that ended a month ago and more (outside every window), no folder
        ended = now - (runs - index) * spacing if index >= 0 else now - 30 * 86400 + index
        rows.append(
            S.RunRow(
                id=f"run-{index:07d}",
                incident_id=incident,
                pack="p",
                playbook="b",
                severity="SEV-3",
                status=S.SUCCEEDED,
                phase="steps",
                created_at=ended - 5,
                updated_at=ended,
                finished_at=ended,
                envelope=b"{}",
                plan_digest="d",
                trust="dev",
                params={},
                inputs={},
                event={},
                hook=None,
                trig=None,
                escalate=None,
                parent_run=None,
                parent_step=None,
                incident_dir=str(folder),
                error=None,
                owner_pid=None,
            )
        )
    with store.transaction():
        for row in rows:
            store.insert_run(row)
    store.close()


def window_query(state: Path, indexed: bool) -> int:
    """The periodic pass's query alone (SQLite), on the index or made to scan the table."""
    import sqlite3

    from opsdsl.runtime.incident_sweep import EVERY, MARGIN

    conn = sqlite3.connect(state / "state.db")
    hint = "" if indexed else " NOT INDEXED"
    high = time.time() - EVERY
    rows = conn.execute(
        f"SELECT id, incident_dir, finished_at, lease_until, status FROM runs{hint}"
        " WHERE finished_at >= ? AND finished_at <= ?",
        (high - EVERY - MARGIN, high),
    ).fetchall()
    conn.close()
    return len(rows)


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between two runs' ends")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", default=None)
    parser.add_argument("--ab-index", action="store_true")
    parser.add_argument("--history", type=int, default=0, help="runs ended a month ago and more, without folders")
    args = parser.parse_args()
    if args.database:
        os.environ["OPSDSL_DATABASE"] = args.database
    else:
        os.environ.pop("OPSDSL_DATABASE", None)
    from opsdsl.runtime import incident_sweep as sweep_module
    from opsdsl.runtime.incident_sweep import IncidentSweep

    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        state = Path(tmp) / "state"
        now = time.time()
        build(state, args.runs, args.spacing, now, args.history)
        times: dict[str, list[float]] = {"startup": [], "periodic": []}
        if args.ab_index and not args.database:
            times |= {"query-index": [], "query-noindex": []}
        looked: dict[str, int] = {}
        for _ in range(args.rounds):
            for name in list(times):
                if name.startswith("query"):
                    took, count = timed(lambda name=name: window_query(state, name == "query-index"))
                    times[name].append(took)
                    looked[name] = count
                    continue
                sweep = IncidentSweep(state, state / "incidents", grace=sweep_module.EVERY)
                if name == "startup":
                    took, report = timed(sweep.startup)
                else:
                    sweep.high = time.time() - 2 * sweep_module.EVERY  # the last pass, a minute before this one
                    took, report = timed(sweep.periodic)
                times[name].append(took)
                looked[name] = report.looked
                assert not report.written and not report.refused, report
        for name, values in times.items():
            print(
                f"{name:18} looked at {looked[name]:6d} runs: median {statistics.median(values) * 1000:8.1f} ms"
                f"  (range {min(values) * 1000:.1f}-{max(values) * 1000:.1f} ms, {len(values)} rounds)"
            )


if __name__ == "__main__":
    main()
