"""Ledger modes on PostgreSQL: inline chaining against the journal + sequencer (issue 16 item 3).

    python bench/ledger_modes.py                       # 8 writers, 5 s a mode, 3 rounds
    python bench/ledger_modes.py --writers 16 --seconds 10 --rounds 3

Starts a private PostgreSQL server (tests/pgserver.py: fsync on, synchronous_commit on,
on this machine's disk), then for each round runs every mode once, in turn:

- `inline`: each transaction takes the global writer lock (BEGIN IMMEDIATE), reads the
  ledger's head and appends 2 chained entries: today's PostgreSQL backend;
- `journal+lock`: the same lock, the 2 entries journaled (ledger mode `journal` as it
  ships: the lock stays for the other invariants), a sequencer process chaining;
- `journal`: plain BEGIN, no global lock, 2 entries journaled, a sequencer chaining: what
  the journal allows once the other invariants have finer locks (docs/scaleout.md).

N writer processes (`--writers`) each loop over 2-entry transactions for `--seconds`,
runs changing every 10 transactions. Printed per mode: commits/s and entries/s written
(medians of the rounds), and for the journal modes the entries the sequencer chained per
second in the same window and what was left in the journal at its end (its lag).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

MODES = ("inline", "journal+lock", "journal")


def writer(url: str, mode: str, number: int, seconds: float, start_at: float, done: multiprocessing.Queue) -> None:
    from opsdsl.audit.ledger import Ledger
    from opsdsl.runtime.database import PgConnection
    from opsdsl.runtime.sequencer import JournalLedger

    conn = PgConnection(url, application=f"bench writer {number}")
    ledger = Ledger(conn) if mode == "inline" else JournalLedger(conn)
    begin = "BEGIN" if mode == "journal" else "BEGIN IMMEDIATE"
    while time.time() < start_at:
        time.sleep(0.001)
    commits, end = 0, start_at + seconds
    while time.time() < end:
        run = f"run-{number}-{commits // 10}"
        conn.execute(begin)
        ledger.append_many(
            [("step.intent", run, {"step": "a", "n": commits}), ("step.succeeded", run, {"step": "a", "n": commits})]
        )
        conn.execute("COMMIT")
        commits += 1
    conn.close()
    done.put(commits)


def sequencer_process(url: str, key_dir: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "opsdsl", "sequencer", "--database", url, "--state-dir", key_dir],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def count(url: str, table: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE ledger, checkpoints, journal, journal_runs, journal_chained RESTART IDENTITY")


def measure(url: str, mode: str, writers: int, seconds: float, key_dir: str) -> dict[str, float]:
    reset(url)
    sequencer = None
    if mode != "inline":
        sequencer = sequencer_process(url, key_dir)
        time.sleep(1.5)  # let it start and lead
    done: multiprocessing.Queue = multiprocessing.Queue()
    start_at = time.time() + 1.0
    processes = [
        multiprocessing.Process(target=writer, args=(url, mode, n, seconds, start_at, done)) for n in range(writers)
    ]
    for process in processes:
        process.start()
    while time.time() < start_at:
        time.sleep(0.001)
    chained_before = count(url, "ledger")
    time.sleep(seconds)
    chained_after = count(url, "ledger")
    commits = sum(done.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(30)
    figures = {"commits/s": commits / seconds, "entries/s": 2 * commits / seconds}
    if sequencer is not None:
        figures["chained/s"] = (chained_after - chained_before) / seconds
        figures["journal left"] = count(url, "journal")
        deadline = time.time() + 60
        while count(url, "journal") and time.time() < deadline:
            time.sleep(0.05)
        sequencer.terminate()
        sequencer.wait(10)
        figures["ledger"] = count(url, "ledger")
        assert figures["ledger"] == 2 * commits, "the sequencer lost or duplicated entries"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")

    import pgserver

    from opsdsl.runtime.migrate import migrate

    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    with pgserver.temporary_server() as server, tempfile.TemporaryDirectory() as key_dir:
        url = server.create_database("bench_ledger")
        migrate(url)
        for round_number in range(args.rounds):
            order = modes if round_number % 2 == 0 else list(reversed(modes))
            for mode in order:
                figures = measure(url, mode, args.writers, args.seconds, key_dir)
                results[mode].append(figures)
                shown = ", ".join(f"{k} {v:,.0f}" for k, v in figures.items())
                print(f"round {round_number + 1} {mode:<13} {shown}", file=sys.stderr, flush=True)

    print(
        f"\n{args.writers} writer processes, 2-entry transactions, {args.seconds:g} s a mode, medians of {args.rounds}"
    )
    print("| mode | commits/s | entries/s | sequencer chained/s | left in journal at the end |")
    print("| --- | --- | --- | --- | --- |")
    for mode in modes:
        rows = results[mode]

        def median(key: str, rows=rows) -> str:
            values = [row[key] for row in rows if key in row]
            return f"{statistics.median(values):,.0f}" if values else "–"

        print(
            f"| {mode} | {median('commits/s')} | {median('entries/s')} | {median('chained/s')} | {median('journal left')} |"
        )


if __name__ == "__main__":
    main()
