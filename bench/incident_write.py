"""What writing one run's incident folder costs, one tree beside another (issue 16's worker profile).

    python bench/incident_write.py --before /tmp/wt-incident           # that tree vs this checkout
    python bench/incident_write.py --before /tmp/wt-incident --rounds 7 --reps 15
    python bench/incident_write.py --profile                          # cProfile of this checkout's write

The workload is what a worker writes at a run's end under load: a real SQLite ledger
(opsdsl.audit.ledger) holding ten runs of the sketch's SEV-2 playbook (tests/audit's
`sev2_run`, each `run.created` carrying a ~2 KiB Alertmanager event) interleaved entry by
entry as under `serve`, so the first run's excerpt spans 200 entries (~120 KB), closed by
a signed checkpoint; then `write_incident(..., plan_envelope=..., ledger=...)` of the first
run into a fresh incidents root each time (record, rca.md, plan files, ledger/excerpt.json,
manifest), evidence file in place.

Each side runs in a child process importing opsdsl from its own tree (`--before PATH`,
`--after PATH`, default this checkout), rounds alternating A B A B; each round times
`--reps` writes and reports their median wall and CPU (process time) times. Printed: the
median over all writes of each side, and the median and range of the paired ratios
(after ÷ before, round by round) — the figure to quote on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
RUNS = 10  # runs interleaved in the ledger: 10 × 20 entries = the 200-entry excerpt


def _alert(index: int) -> dict:
    """An Alertmanager-sized event (~2 KiB): what a real run.created carries."""
    return {
        "labels": {"alertname": "SqlxExecLatencyHigh", "cluster": f"eu-{index}", "severity": "page"},
        "annotations": {
            "summary": f"p95 exec latency above SLO on eu-{index}",
            "description": "Query latency regression; plans may be stale after a statistics refresh. " * 12,
            "runbook_url": "https://runbooks.example.com/sqlx/latency",
        },
        "startsAt": "2025-03-01T10:00:00Z",
        "generatorURL": "http://prometheus.example.com/graph?g0.expr=histogram_quantile%280.95%29" * 3,
        "fingerprint": f"{index:016x}",
        "value": 912,
    }


def _workload(tmp: Path):
    """(entries, checkpoint, envelope, ledger, place_evidence) of the first run; deterministic."""
    from test_evidence_pack import ledger_with, plan_envelope, run_of
    from test_incident import place_evidence, sev2_run

    envelope, digest = plan_envelope()
    runs = []
    for index in range(RUNS):
        run = sev2_run(run=f"r-{index:04d}")
        run[0]["data"] = run[0]["data"] | {"incident_id": f"INC-2025-{index:04d}", "event": _alert(index)}
        if index == 0:
            run[0]["data"]["plan_digest"] = digest
        runs.append(run)
    ledger = ledger_with(runs, tmp)
    entries = run_of(ledger, "r-0000")
    checkpoint = ledger.latest_checkpoint().to_dict()
    return entries, checkpoint, envelope, ledger, place_evidence


def measure(reps: int) -> dict:
    """In this process (opsdsl and tests/audit from the current directory): `reps` timed writes after a warm-up."""
    sys.path[:0] = [str(Path.cwd()), str(Path.cwd() / "tests" / "audit")]
    from test_incident import SIGNER

    from opsdsl.audit.incident import write_incident

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        entries, checkpoint, envelope, ledger, place_evidence = _workload(tmp)
        walls, cpus = [], []
        folder = None
        for rep in range(reps + 1):
            root = tmp / f"incidents-{rep}"
            place_evidence(root, entries)
            wall, cpu = time.perf_counter(), time.process_time()
            folder = write_incident(
                root, entries, checkpoint=checkpoint, signer=SIGNER, plan_envelope=envelope, ledger=ledger
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if rep:  # the first is the warm-up (imports, page cache)
                walls.append(wall)
                cpus.append(cpu)
        excerpt = json.loads((folder / "ledger" / "excerpt.json").read_bytes())
        from test_incident import TRUSTED

        from opsdsl.audit.incident import verify_folder

        problems = verify_folder(folder, TRUSTED)
        return {
            "wall": statistics.median(walls),
            "cpu": statistics.median(cpus),
            "entries": len(excerpt["entries"]),
            "excerpt_bytes": (folder / "ledger" / "excerpt.json").stat().st_size,
            "problems": problems,
        }


def _child(tree: Path, reps: int) -> dict:
    code = (
        "import json, sys; sys.path[:0] = [{tree!r}, {bench!r}]; import incident_write as b; "
        "print(json.dumps(b.measure({reps})))"
    ).format(tree=str(tree), bench=str(HERE / "bench"), reps=reps)
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{tree}: the measuring process failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(before: Path, after: Path, rounds: int, reps: int) -> None:
    sides: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(rounds):
        for side, tree in (("before", before), ("after", after)):
            sides[side].append(_child(tree, reps))
    for side, tree in (("before", before), ("after", after)):
        samples = sides[side]
        first = samples[0]
        print(
            f"{side:6} {tree!s:28} wall {statistics.median(s['wall'] for s in samples) * 1000:6.2f} ms  "
            f"cpu {statistics.median(s['cpu'] for s in samples) * 1000:6.2f} ms  "
            f"(excerpt {first['entries']} entries, {first['excerpt_bytes']} bytes; "
            f"verify: {'ok' if not first['problems'] else first['problems']})"
        )
    for what in ("wall", "cpu"):
        ratios = [a[what] / b[what] for a, b in zip(sides["after"], sides["before"], strict=True)]
        print(
            f"after ÷ before, {what}: median {statistics.median(ratios):.3f} "
            f"(paired {min(ratios):.3f}–{max(ratios):.3f}, {rounds} rounds × {reps} writes)"
        )


def profile(reps: int) -> None:
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    measure(reps)
    profiler.disable()
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, help="the tree to compare against (a git worktree of the old commit)")
    parser.add_argument("--after", type=Path, default=HERE)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="cProfile of --after's write instead")
    args = parser.parse_args()
    if args.profile:
        profile(args.reps)
    elif args.before is None:
        print(json.dumps(_child(args.after, args.reps)))
    else:
        compare(args.before.resolve(), args.after.resolve(), args.rounds, args.reps)


if __name__ == "__main__":
    main()
