"""`bench/serve_load.py` on two versions of opsdsl, interleaved: is the intake as fast as before?

    python bench/serve_compare.py --base /tmp/base               # a checkout of the old version
    python bench/serve_compare.py --base /tmp/base --rounds 3 --rate 60 --seconds 60

Each round runs the load once against the old version (`--base`, a checkout: its `opsdsl`
package is put first on PYTHONPATH) and once against this one, alternating which goes
first, so that the machine's noise hits both alike. Prints the medians and the paired
ratios (this ÷ base, per round) of accepted requests per second, intake latency p50 and
p99 (client side), and completed runs per minute.

Make the checkout with `git worktree add /tmp/base COMMIT` (remove it after with
`git worktree remove /tmp/base`).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURES = {
    "accepted/s": (r"\| 2xx \| \d+ \((\d+) accepted/s\)", False),
    "p50 ms": (r"intake latency p50 / p99 / max \(2xx, client side\) \| ([\d.]+) / [\d.]+ / [\d.]+ ms", True),
    "p99 ms": (r"intake latency p50 / p99 / max \(2xx, client side\) \| [\d.]+ / ([\d.]+) / [\d.]+ ms", True),
    "runs/min": (r"\| runs completed per minute \| (\d+)", False),
}


def measure(checkout: Path | None, args: argparse.Namespace) -> dict[str, float]:
    env = dict(os.environ)
    if checkout is not None:
        env["PYTHONPATH"] = f"{checkout}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [sys.executable, str(HERE / "serve_load.py"), "--rate", str(args.rate), "--seconds", str(args.seconds)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.seconds + 1200)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"serve_load.py failed ({'base' if checkout else 'this'}): exit {done.returncode}")
    found = {}
    for name, (pattern, _) in FIGURES.items():
        match = re.search(pattern, done.stdout)
        if match is None:
            sys.stderr.write(done.stdout)
            raise SystemExit(f"no `{name}` in serve_load.py's output")
        found[name] = float(match.group(1))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="a checkout of the version to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=60)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args(argv)
    if not (args.base / "opsdsl" / "__init__.py").is_file():
        raise SystemExit(f"--base {args.base}: not a checkout of opsdsl (no opsdsl/__init__.py)")
    base: list[dict[str, float]] = []
    this: list[dict[str, float]] = []
    for round_ in range(args.rounds):
        order = [(args.base, base), (None, this)]
        if round_ % 2:
            order.reverse()
        for checkout, into in order:
            into.append(measure(checkout, args))
            print(f"round {round_ + 1}: {'base' if checkout else 'this'} {into[-1]}", file=sys.stderr)
    print(f"## intake at {args.rate:g} req/s for {args.seconds:g} s: this vs base ({args.base}), {args.rounds} rounds")
    print()
    print("| figure | this (median) | base (median) | ratio this÷base | paired ratios min…max |")
    print("| --- | --- | --- | --- | --- |")
    for name in FIGURES:
        mine = [r[name] for r in this]
        theirs = [r[name] for r in base]
        paired = [a / b for a, b in zip(mine, theirs, strict=True) if b]
        ratio = statistics.median(mine) / statistics.median(theirs) if statistics.median(theirs) else float("nan")
        spread = f"{min(paired):.2f}…{max(paired):.2f}" if paired else "n/a"
        print(f"| {name} | {statistics.median(mine):g} | {statistics.median(theirs):g} | {ratio:.2f} | {spread} |")
    print()
    print("Latency rows: lower is better (ratio ≤ 1 is no worse); throughput rows: higher is better.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
