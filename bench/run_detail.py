"""How fast one run's detail, a page of runs and a run prefix are, with 10,000 runs in the state DB.

    python bench/run_detail.py [--runs 10000] [--samples 300] [--keep DIR]

Issue 14 asks for a run's detail at p99 < 50 ms with 10,000 runs in the state database.
This makes such a database (one real quickstart run, then its rows and ledger entries
copied under new ids, 23 entries a run: 230,000 ledger rows), and times, beside a baseline
of the bare reads the detail needs (the run row, its steps, its ledger rows, no work):

- `run_detail(store, id)` for random runs (the API's `GET /v1/runs/{id}`);
- `list_runs(store, limit=50)` and the next page by cursor (`GET /v1/runs`);
- `resolve_run(store, prefix)` with a 12-character prefix.

It prints p50/p99 in milliseconds; it asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_state(folder: Path, runs: int) -> list[str]:
    """A state dir with `runs` copies of one real quickstart run; their ids."""
    subprocess.run(
        [sys.executable, "-m", "opsdsl", "run", "--pack", str(REPO / "examples/quickstart/quickstart.yaml"),
         "--log-format", "quiet"],
        cwd=folder, check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    conn = sqlite3.connect(folder / ".opsdsl" / "state.db")
    columns = [d[0] for d in conn.execute("SELECT * FROM runs LIMIT 0").description]
    (template,) = conn.execute("SELECT * FROM runs").fetchall()
    steps = conn.execute("SELECT * FROM steps").fetchall()
    entries = conn.execute("SELECT ts, run, kind, data, prev, hash FROM ledger ORDER BY seq").fetchall()
    original = template[0]
    seq = conn.execute("SELECT MAX(seq) FROM ledger").fetchone()[0]
    ids, base = [], template[columns.index("created_at")] - runs
    rng = random.Random(14)
    conn.execute("BEGIN")
    for i in range(runs):
        run_id = f"2026{i:04d}-{rng.randrange(10**6):06d}-{rng.getrandbits(48):012x}"
        ids.append(run_id)
        row = list(template)
        row[0] = run_id
        row[columns.index("created_at")] = base + i
        marks = ", ".join("?" * len(row))
        conn.execute(f"INSERT INTO runs VALUES ({marks})", row)
        conn.executemany(
            f"INSERT INTO steps VALUES ({', '.join('?' * len(steps[0]))})", [(run_id, *s[1:]) for s in steps]
        )
        rows = []
        for ts, _run, kind, data, prev, digest in entries:
            seq += 1
            rows.append((seq, ts, run_id, kind, data.replace(original, run_id), prev, digest))
        conn.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()
    return ids


def timed(function, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        start = time.perf_counter()
        function()
        out.append((time.perf_counter() - start) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--keep", type=Path, help="Build the state in DIR and keep it.")
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="opsdsl-detail-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        ids = make_state(folder, options.runs)
        print(f"state: {options.runs:,} runs in {time.perf_counter() - started:.1f}s ({folder})", file=sys.stderr)
        from opsdsl.runtime import inspect as I
        from opsdsl.runtime.store import Store

        store = Store(folder / ".opsdsl", create=False)
        rng = random.Random(1)
        I.resolve_run(store, "latest")  # first use creates the indexes: not part of the figures

        def bare() -> None:
            run_id = rng.choice(ids)
            store.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            store.conn.execute("SELECT * FROM steps WHERE run_id = ?", (run_id,)).fetchall()
            store.conn.execute("SELECT * FROM ledger WHERE run = ? ORDER BY seq", (run_id,)).fetchall()

        def detail() -> None:
            I.run_detail(store, rng.choice(ids))

        def page() -> None:
            _items, cursor = I.list_runs(store, limit=50)
            I.list_runs(store, limit=50, cursor=cursor)

        def prefix() -> None:
            I.resolve_run(store, rng.choice(ids)[:12])

        rows = [
            ("bare reads of one run (baseline)", timed(bare, options.samples)),
            ("run_detail", timed(detail, options.samples)),
            ("list_runs: two pages of 50", timed(page, options.samples)),
            ("resolve_run: 12-character prefix", timed(prefix, options.samples)),
        ]
        print(f"| with {options.runs:,} runs | p50 ms | p99 ms |\n| --- | --- | --- |")
        for name, values in rows:
            print(f"| {name} | {p(values, 50):.2f} | {p(values, 99):.2f} |")
        store.close()
    finally:
        if options.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
