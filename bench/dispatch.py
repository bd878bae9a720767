"""Runner pools' capacity alone (issue 16 "Speed": ≥ 200 dispatched steps/s): how fast two
`opsdsl runner --pool bench` processes work off a queue of dispatch rows, on a private
PostgreSQL, beside the floor of the same database (a bare psycopg loop), in the same run.

    python bench/dispatch.py                                   # 2000 rows, http and refused, 3 rounds
    python bench/dispatch.py --rows 1000 --rounds 1 --variants http
    python bench/dispatch.py --rev HEAD                        # opsdsl from an export of a commit

What it does:

1. Starts a private PostgreSQL (tests/pgserver.py: fsync and synchronous_commit on) and a
   loopback HTTP target (a process of its own that counts requests per Idempotency-Key,
   as bench/scaleout.py's).
2. For each round and variant, a fresh database (`opsdsl db migrate`), then N dispatch
   rows written exactly as a worker writes them: `Dispatcher.enqueue` of
   opsdsl.runtime.dispatch inside `store.transaction()` (a worker writes one in each
   step's intent transaction; here 100 share one, which changes no row). They are written
   to a parked pool; two runners start on pool `bench`, work off WARM rows first (their
   first steps import and load what later ones reuse), then one UPDATE moves every other
   row to `bench` (t0, the database clock). The figure is rows done ÷
   (last `finished_at` − t0), with each runner's CPU (/proc, user + system) over that time.
   Variants: `http` — each step an idempotent `http.request` to the target (afterwards:
   every key applied exactly once); `refused` — an action no runner has (there is no
   dispatchable no-op: `log`/`assert` run in the driver), so each row is claimed,
   refused by the executor and written `failed`: the runner's own cost without an action.
3. The floor: the same number of rows worked off by two threads of a bare psycopg loop,
   each row one claim transaction (SELECT … FOR UPDATE SKIP LOCKED LIMIT 1, UPDATE, COMMIT)
   and one result UPDATE: what the database gives to one-row-at-a-time claims.
4. Prints a markdown table of medians over the rounds, with the load average.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # pgserver
sys.path.insert(0, str(HERE))  # scaleout: the target, processes and /proc CPU

from scaleout import Proc, _spy, clean_env, cpu_seconds, summarize, target_get, target_main  # noqa: E402

VARIANTS = ("http", "refused")
PARKED = "bench-parked"
BATCH = 100  # rows per enqueue transaction
WARM = 100  # rows each measurement works off first, unmeasured: a runner's first steps import and load


# ---- the enqueue (run with the measured source on sys.path: `--enqueue`) -----------------------


def enqueue(url: str, state: Path, rows: int, variant: str, target: int) -> None:
    from opsdsl.runtime.actions.base import ActionRequest
    from opsdsl.runtime.dispatch import Dispatcher
    from opsdsl.runtime.store import Store

    store = Store(state, database=url)
    node = {"runner": PARKED, "idempotent": True}
    action = "http.request" if variant == "http" else "bench.no-such-action"
    dispatcher = Dispatcher(store, node)  # as the scheduler makes it: before the intent's transaction
    try:
        for start in range(0, rows, BATCH):
            with store.transaction():
                for n in range(start, min(rows, start + BATCH)):
                    run = f"bench-{n:06d}"
                    inputs: dict[str, Any] = {"method": "POST", "url": f"http://127.0.0.1:{target}/act"}
                    inputs["json"] = {"seq": str(n)}
                    request = ActionRequest(
                        run_id=run,
                        step_id="act",
                        action=action,
                        inputs=inputs,
                        attempt=1,
                        idempotency_key=f"{run}:act",
                        timeout=10.0,
                        severity="SEV-4",
                        playbook="handle",
                        pack="bench-dispatch",
                    )
                    dispatcher.enqueue(request)
    finally:
        store.close()


# ---- the floor: a bare psycopg loop ------------------------------------------------------------


def floor(url: str, threads: int = 2) -> tuple[float, int]:
    """(rows/s, rows) of `threads` bare loops over the queued rows of pool `bench`."""
    import psycopg

    done = [0] * threads

    def loop(index: int) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while True:
                with conn.transaction():
                    row = conn.execute(
                        "SELECT id FROM dispatch WHERE pool = 'bench' AND state = 'queued' ORDER BY id LIMIT 1"
                        " FOR UPDATE SKIP LOCKED"
                    ).fetchone()
                    if row is None:
                        return
                    conn.execute(
                        "UPDATE dispatch SET state = 'claimed', claimant = %s, claim_epoch = claim_epoch + 1,"
                        " lease_until = extract(epoch FROM clock_timestamp()) + 30,"
                        " claimed_at = extract(epoch FROM clock_timestamp()) WHERE id = %s",
                        (f"floor{index}", row[0]),
                    )
                conn.execute(
                    "UPDATE dispatch SET state = 'done', result = '{}', finished_at = extract(epoch FROM"
                    " clock_timestamp()) WHERE id = %s AND claimant = %s AND state = 'claimed'",
                    (row[0], f"floor{index}"),
                )
                done[index] += 1

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE dispatch SET pool = 'bench' WHERE pool = %s", (PARKED,))
    started = time.perf_counter()
    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    took = time.perf_counter() - started
    return sum(done) / took, sum(done)


# ---- one measurement ---------------------------------------------------------------------------


def fresh_database(ctx: dict[str, Any], label: str) -> tuple[str, Path]:
    name = f"bench_dispatch_{label}_{ctx['counter']}"
    ctx["counter"] += 1
    url = ctx["pg"].create_database(name)
    env = {**clean_env(), "PYTHONPATH": str(ctx["source"])}
    migrated = subprocess.run(
        [sys.executable, "-m", "opsdsl", "db", "migrate", "--database", url],
        cwd=ctx["source"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if migrated.returncode != 0:
        raise SystemExit(f"opsdsl db migrate exited {migrated.returncode}: {migrated.stderr}")
    state = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=ctx["work"]))
    queued = subprocess.run(
        [sys.executable, __file__, "--enqueue", url, str(state / "state"), str(ctx["rows"] + WARM), label,
         str(ctx["target_port"])],
        cwd=ctx["source"], env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if queued.returncode != 0:
        raise SystemExit(f"enqueue exited {queued.returncode}: {queued.stderr[-3000:]}")
    return url, state


def measure(variant: str, args: argparse.Namespace, ctx: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    url, work = fresh_database(ctx, variant)
    env = clean_env()
    runners: list[Proc] = []
    if variant == "http":
        target_get(ctx["target_port"], "/reset")
    try:
        for n in (1, 2):
            runner = Proc(
                f"runner{n}",
                ["runner", "--pool", "bench", "--database", url, "--state-dir", str(work / "state"), "--id",
                 f"r{n}", "--concurrency", str(args.concurrency)],
                work, env, ctx["source"],
            )  # fmt: skip
            runners.append(runner)
        for runner in runners:
            runner.wait_for(r"runner r\d: pool bench")
        with psycopg.connect(url, autocommit=True) as conn:  # the warm-up
            (warm,) = conn.execute(
                "WITH moved AS (UPDATE dispatch SET pool = 'bench' WHERE id IN (SELECT id FROM dispatch"
                " WHERE pool = %s ORDER BY id LIMIT %s) RETURNING id) SELECT max(id) FROM moved",
                (PARKED, WARM),
            ).fetchone()
            wait_done(conn, time.monotonic() + args.timeout)
        time.sleep(0.5)  # both idle and polling
        cpu_before = [cpu_seconds(r.process.pid) for r in runners]
        spy = None
        if args.profile and (Path(sys.executable).parent / "py-spy").exists():  # CPU time of runner1
            spy = threading.Thread(
                target=_spy, args=(Path(sys.executable).parent / "py-spy", runners[0], work, args.profile, False)
            )
            spy.start()
        with psycopg.connect(url, autocommit=True) as conn:
            (t0,) = conn.execute(
                "UPDATE dispatch SET pool = 'bench' WHERE pool = %s RETURNING extract(epoch FROM clock_timestamp())",
                (PARKED,),
            ).fetchone()
            left = wait_done(conn, time.monotonic() + args.timeout)
            cpu_after = [cpu_seconds(r.process.pid) for r in runners]
            (last,) = conn.execute("SELECT max(finished_at) FROM dispatch WHERE id > %s", (warm,)).fetchone()
            by_state = dict(conn.execute("SELECT state, count(*) FROM dispatch WHERE id > %s GROUP BY state", (warm,)))
            by_runner = dict(
                conn.execute(
                    "SELECT claimant, count(*) FROM dispatch WHERE finished_at IS NOT NULL AND id > %s GROUP BY claimant",
                    (warm,),
                )
            )
        if spy is not None:
            spy.join()
            found = work.parent / f"profile-{work.name}-runner1.txt"
            if found.exists():
                print(summarize(found), file=sys.stderr)
        finished = by_state.get("done", 0) + by_state.get("failed", 0)
        took = float(last) - float(t0)
        cpu_ms = [
            1000 * (after - before) / max(1, by_runner.get(f"r{n}", 0))
            for n, (before, after) in enumerate(zip(cpu_before, cpu_after, strict=True), 1)
        ]
        result: dict[str, Any] = {
            "variant": variant,
            "rows": finished,
            "unfinished": left,
            "steps_s": finished / took,
            "cpu_ms_step": statistics.mean(cpu_ms),
            "by_runner": by_runner,
            "states": by_state,
        }
        if variant == "http":
            counted = target_get(ctx["target_port"], "/count")
            result["target"] = counted
            if counted["requests"] != counted["keys"] or counted["keys"] > args.rows + WARM:
                result["problem"] = f"target saw {counted} for {args.rows + WARM} rows (a key applied twice)"
        if by_state.get("done" if variant == "http" else "failed", 0) != args.rows:
            result["problem"] = f"rows by state {by_state}"
        return result
    finally:
        for runner in runners:
            runner.stop()


def wait_done(conn: Any, deadline: float) -> int:
    """Wait until no row is queued or claimed (or the deadline); how many still are."""
    while True:
        (left,) = conn.execute(
            "SELECT count(*) FROM dispatch WHERE pool = 'bench' AND state IN ('queued', 'claimed')"
        ).fetchone()
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def measure_floor(ctx: dict[str, Any]) -> dict[str, Any]:
    url, _ = fresh_database(ctx, "refused")  # the rows' form does not matter to the loop
    rate, rows = floor(url)
    return {"variant": "floor", "rows": rows, "steps_s": rate}


# ---- the table ---------------------------------------------------------------------------------


def table(results: list[dict], args: argparse.Namespace, loads: list[float], head: str) -> str:
    floors = [r["steps_s"] for r in results if r["variant"] == "floor"]
    base = statistics.median(floors) if floors else float("nan")
    lines = [
        f"### bench/dispatch.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {head}",
        "",
        f"{args.rows} rows, two runners (--concurrency {args.concurrency}), {args.rounds} round(s), medians;"
        f" load average {statistics.median(loads):.1f} (min {min(loads):.1f}, max {max(loads):.1f}); 2 cores.",
        "",
        "| variant | steps/s | × floor | CPU ms/step/runner | rounds (steps/s) |",
        "|---|---:|---:|---:|---|",
    ]
    for variant in ("floor", *args.variants):
        found = [r for r in results if r["variant"] == variant]
        if not found:
            continue
        rate = statistics.median(r["steps_s"] for r in found)
        cpu = statistics.median(r["cpu_ms_step"] for r in found) if "cpu_ms_step" in found[0] else None
        spread = ", ".join(f"{r['steps_s']:.0f}" for r in found)
        lines.append(
            f"| {variant} | {rate:.0f} | {rate / base:.2f} | {'' if cpu is None else f'{cpu:.2f}'} | {spread} |"
        )
    problems = [f"{r['variant']}: {r['problem']}" for r in results if r.get("problem")]
    if problems:
        lines += ["", "Problems: " + "; ".join(problems)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="dispatch rows per measurement (default 2000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {', '.join(VARIANTS)}")
    parser.add_argument("--concurrency", type=int, default=16, help="--concurrency of each runner (default 16)")
    parser.add_argument("--timeout", type=float, default=300, help="most seconds per measurement (default 300)")
    parser.add_argument("--rev", help="run opsdsl from an export of this commit (e.g. HEAD), not the working tree")
    parser.add_argument("--profile", type=float, default=0, help="py-spy record SECONDS of runner1's CPU")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (runner logs)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument(
        "--enqueue", nargs=5, metavar=("URL", "STATE", "ROWS", "VARIANT", "PORT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.enqueue:
        sys.path.insert(0, os.getcwd())  # the measured source (cwd), before any installed opsdsl
        url, state, rows, variant, port = args.enqueue
        enqueue(url, Path(state), int(rows), variant, int(port))
        return 0
    args.variants = args.variants.split(",")
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variant {sorted(set(args.variants) - set(VARIANTS))}")

    import pgserver

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # the finally blocks stop the runners, the target and PostgreSQL

    signal.signal(signal.SIGTERM, stop)
    work = Path(tempfile.mkdtemp(prefix="opsdsl-dispatch-"))
    os.chmod(work, 0o755)
    queue: multiprocessing.Queue = multiprocessing.Queue()
    target = multiprocessing.Process(target=target_main, args=(queue,), daemon=True)
    target.start()
    ctx: dict[str, Any] = {"work": work, "target_port": queue.get(timeout=30), "counter": 0, "rows": args.rows}
    git = ["git", "-C", str(ROOT)]
    if args.rev:
        export = work / "source"
        export.mkdir()
        archive = subprocess.run([*git, "archive", args.rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive.stdout, check=True)
        ctx["source"] = export
        head = subprocess.run([*git, "rev-parse", "--short", args.rev], capture_output=True, text=True).stdout.strip()
    else:
        ctx["source"] = ROOT
        head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        head += " + working tree"
    results: list[dict] = []
    loads: list[float] = []
    try:
        with pgserver.temporary_server() as server:
            ctx["pg"] = server
            for round_number in range(args.rounds):
                order = args.variants if round_number % 2 == 0 else list(reversed(args.variants))
                for variant in ["floor", *order]:
                    loads.append(os.getloadavg()[0])
                    print(f"round {round_number + 1} {variant} (load {loads[-1]:.1f}) ...", file=sys.stderr, flush=True)
                    found = measure_floor(ctx) if variant == "floor" else measure(variant, args, ctx)
                    results.append(found)
                    print(f"  {json.dumps(found, default=str)}", file=sys.stderr, flush=True)
    finally:
        target.terminate()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(table(results, args, loads, head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
