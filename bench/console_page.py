"""How long the console takes to render a run page for a run of 200 steps, server-side.

    python bench/console_page.py [--steps 200] [--samples 50] [--keep DIR]

Issue 15 asks for a run page with a 200-step DAG rendered in < 300 ms server-side. This
runs a real 200-step playbook (`opsdsl run`: ten parallel chains of twenty `assert`
steps, about 800 ledger entries), then times, in process, what the server does for
`GET /console/runs/{id}` on its reader thread (`Console.run_html`: `inspect.run_detail`,
the plan, the DAG's SVG and the Jinja2 page), beside `run_detail` alone as the baseline,
and the DAG drawing alone. It prints p50/p99 in milliseconds and the page's size; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_pack(folder: Path, steps: int) -> Path:
    lines = [
        "apiVersion: opsdsl/v1",
        "kind: Pack",
        "metadata: {name: bench-console, version: 1.0.0, owner: sre}",
        "playbooks:",
        "  big:",
        "    severity: SEV-3",
        "    steps:",
    ]
    for i in range(steps):
        lines.append(f"      - id: s{i:03d}")
        lines.append("        action: assert")
        lines.append(f"        with: {{that: '1 + {i} > 0', message: step {i}}}")
        if i >= 10:
            lines.append(f"        needs: [s{i - 10:03d}]")
    path = folder / "big.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def timed(function, samples: int) -> list[float]:
    out = []
    for _ in range(samples):
        started = time.perf_counter()
        function()
        out.append((time.perf_counter() - started) * 1000)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--keep", type=Path, help="Run in DIR and keep it.")
    options = parser.parse_args()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="opsdsl-console-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pack = write_pack(folder, options.steps)
        subprocess.run(
            [sys.executable, "-m", "opsdsl", "run", "--pack", str(pack), "--playbook", "big", "--log-format", "quiet"],
            cwd=folder, check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        from opsdsl.runtime import inspect as I
        from opsdsl.runtime.people import ACTS, Person, allowed
        from opsdsl.runtime.store import Store
        from opsdsl.serve.console import draw
        from opsdsl.serve.console.views import Console, _run_and_plan

        state = folder / ".opsdsl"
        store = Store(state, create=False)
        run_id = I.resolve_run(store, "latest")
        console = Console(SimpleNamespace(options=SimpleNamespace()), SimpleNamespace(state=state))
        person = Person("alice", "approver", (), "token")
        values = {"note": None, "error": None, "form": {}, "me": person, "csrf": "x", "url": "/console/runs/x",
                  "may": {act: allowed(person, act) for act in ACTS}}  # fmt: skip
        detail, playbook = _run_and_plan(store, run_id)
        statuses = {step["id"]: step["status"] for step in detail["steps"]}
        html = console.run_html(store, run_id, person, values)
        rows = [
            ("run_detail (baseline)", timed(lambda: I.run_detail(store, run_id), options.samples)),
            ("DAG SVG alone", timed(lambda: draw.dag_svg(playbook, statuses, "t"), options.samples)),
            ("run page (run_html)", timed(lambda: console.run_html(store, run_id, person, values), options.samples)),
        ]
        print(f"run of {len(detail['steps'])} steps, {len(detail['ledger'])} ledger entries; page {len(html):,} bytes")
        print("| figure | p50 ms | p99 ms |")
        print("| --- | --- | --- |")
        for name, values_ms in rows:
            print(f"| {name} | {p(values_ms, 50):.1f} | {p(values_ms, 99):.1f} |")
        print("target: the run page < 300 ms")
    finally:
        if options.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
