"""opsdsl benchmark harness: each figure beside its baseline, measured in the same run.

    python bench/run.py [--quick] [--only NAME...] [--out FILE.md] [--list] [--self-check]

Prints ONE markdown table: figure | opsdsl | baseline | ratio | target | ok.
`ratio` is always opsdsl ÷ baseline of the same quantity: for time rows (seconds, lower is
better) the target reads `≤ x`; for throughput rows (per second, higher is better) `≥ x`.

Adding a row: write `def bench_NAME(ctx) -> Row` (or a list of rows) and append it to
BENCHES at the bottom. `ctx.compare(row, opsdsl=..., baseline=...)` does the measuring:
both sides are factories returning a `Proc` (a timed process), an `InProc` (a timed Python
call) or a `Rate` (a Python loop, reported per second); a factory may raise `Unavailable`
(cell shows "n/a (reason)") or `Failed` (row marked FAIL). The samples of the two sides are
interleaved (A B A B ...) so machine noise hits both alike, and medians are reported.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
# in-process rows import opsdsl from this checkout (as `python -m opsdsl` does from the repo root)
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

import generate  # noqa: E402  (bench/generate.py, importable beside this file)

SCHEMA = REPO / "schemas" / "pack.schema.json"
TIME, RATE, MEMORY = "time", "rate", "memory"


# ============================================================================================
# Rows
# ============================================================================================


@dataclass
class Row:
    """One line of the table. `opsdsl`/`baseline` are medians: seconds (TIME) or items/s (RATE)."""

    figure: str
    kind: str  # TIME: lower is better; RATE: higher is better
    op: str  # "<=" or ">=": how ratio (opsdsl ÷ baseline) must compare with target
    target: float
    unit: str = ""  # RATE rows: what is counted, e.g. "eval/s"
    opsdsl: float | None = None
    baseline: float | None = None
    opsdsl_note: str = ""  # set instead of a value: "n/a (why)" or "FAIL (why)"
    baseline_note: str = ""
    failed: bool = False
    detail: str = ""  # spread and commands, printed under the table
    name: str = ""  # the bench's name (for --only), filled in by the runner

    @property
    def ratio(self) -> float | None:
        if self.opsdsl is None or not self.baseline:
            return None
        return self.opsdsl / self.baseline

    @property
    def ok(self) -> str:
        if self.failed:
            return "FAIL"
        r = self.ratio
        if r is None:
            return "n/a"
        good = r <= self.target if self.op == "<=" else r >= self.target
        return "yes" if good else "**no**"

    def _value(self, v: float | None, note: str) -> str:
        if v is None:
            return note or "n/a"
        if self.kind == MEMORY:
            return f"{v / 2**20:.0f} MiB"
        return fmt_seconds(v) if self.kind == TIME else fmt_rate(v, self.unit)

    def cells(self) -> list[str]:
        r = self.ratio
        op = "≤" if self.op == "<=" else "≥"
        return [
            self.figure,
            self._value(self.opsdsl, self.opsdsl_note),
            self._value(self.baseline, self.baseline_note),
            "–" if r is None else f"{r:.0f}" if r >= 100 else f"{r:.3g}",
            f"{op} {self.target:g}",
            self.ok,
        ]


def fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} µs"


def fmt_rate(r: float, unit: str = "/s") -> str:
    unit = unit or "/s"
    for scale, prefix in ((1e6, "M"), (1e3, "k")):
        if r >= scale:
            return f"{r / scale:.3g} {prefix}{unit}"
    return f"{r:.3g} {unit}"


HEADER = ["figure", "opsdsl", "baseline", "ratio (opsdsl÷baseline)", "target", "ok"]


def render_table(rows: Sequence[Row]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [line(HEADER), "| " + " | ".join(["---"] * len(HEADER)) + " |"]
    out += [line(r.cells()) for r in rows]
    return "\n".join(out)


# ============================================================================================
# What gets measured: processes, in-process calls, throughput loops
# ============================================================================================


class Unavailable(Exception):
    """The side cannot be measured (yet): the cell reads `n/a (reason)`."""


class Failed(Exception):
    """The side ran but misbehaved (bad exit code, wrong results): the row is marked FAIL."""

    def __init__(self, reason: str, output: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.output = output


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


@dataclass
class Proc:
    """A process, timed from spawn to exit, as a user runs it. Every run's exit code is checked."""

    argv: list[str]
    ok_codes: tuple[int, ...] = (0,)
    cwd: Path = REPO
    opsdsl: bool = False  # classify "not implemented yet" failures as n/a
    warmup: bool = True  # one untimed run first (pyc, page cache); also checks it works
    timeout: float = 1800.0
    kind: str = TIME
    samples_cap: int | None = None  # at most this many samples (slow baselines)

    def describe(self) -> str:
        shown = [shorten_path(a) for a in self.argv[:6]]
        more = f" … (+{len(self.argv) - 6} args)" if len(self.argv) > 6 else ""
        return " ".join(shown) + more

    def _run(self) -> float:
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                self.argv,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise Unavailable(f"{self.argv[0]} not found") from exc
        except subprocess.TimeoutExpired as exc:
            raise Failed(f"timed out after {self.timeout:.0f} s") from exc
        elapsed = time.perf_counter() - t0
        if proc.returncode not in self.ok_codes:
            raise self._failure(proc)
        return elapsed

    def _failure(self, proc: subprocess.CompletedProcess) -> Exception:
        err = proc.stderr.decode("utf-8", "replace")
        out = proc.stdout.decode("utf-8", "replace")
        rc = proc.returncode
        last = _last_line(err) or _last_line(out) or "no output"
        if self.opsdsl:
            m = re.search(r"^.*No module named '?opsdsl(\.[\w.]+)?'?$", err, re.M)
            if m:
                return Unavailable(f"opsdsl not importable: {m.group(0).strip()[:160]}")
            if "cannot be directly executed" in err:
                return Unavailable(f"opsdsl not runnable: {last}")
            if rc == 2 and re.search(r"No such command|invalid choice|No such option", err):
                return Unavailable(f"not implemented yet: {last}")
        return Failed(f"exit {rc}: {last}", output=(err + ("\n" + out if out else "")).strip())

    def prepare(self) -> None:
        if self.warmup:
            self._run()

    def sample(self) -> float:
        return self._run()


@dataclass
class InProc:
    """A Python callable timed in this process (seconds per call)."""

    fn: Callable[[], Any]
    label: str = ""
    warmup: bool = True
    kind: str = TIME
    samples_cap: int | None = None

    def describe(self) -> str:
        return self.label or getattr(self.fn, "__name__", "python")

    def prepare(self) -> None:
        if self.warmup:
            self.fn()

    def sample(self) -> float:
        t0 = time.perf_counter()
        self.fn()
        return time.perf_counter() - t0


@dataclass
class Rate:
    """Throughput: `loop(n)` does `n` rounds of `per_round` items; reported as items/s.

    The round count is calibrated in `prepare` so one sample lasts about `min_seconds`.
    """

    loop: Callable[[int], Any]
    per_round: int
    label: str = ""
    min_seconds: float = 0.25
    kind: str = RATE
    samples_cap: int | None = None
    rounds: int = 1

    def describe(self) -> str:
        return f"{self.label} ({self.rounds} rounds x {self.per_round} items per sample)"

    def prepare(self) -> None:
        n = 1
        while True:
            t0 = time.perf_counter()
            self.loop(n)
            dt = time.perf_counter() - t0
            if dt >= self.min_seconds / 4 or n >= 1 << 24:
                break
            n *= 4
        self.rounds = max(1, round(n * self.min_seconds / max(dt, 1e-9)))

    def sample(self) -> float:
        t0 = time.perf_counter()
        self.loop(self.rounds)
        dt = time.perf_counter() - t0
        return self.rounds * self.per_round / dt


Side = Proc | InProc | Rate


def shorten_path(arg: str) -> str:
    for root, name in ((str(REPO), "."), (tempfile.gettempdir(), "$TMP")):
        if arg.startswith(root + os.sep):
            return name + arg[len(root) :]
    return arg


# ============================================================================================
# Context: workloads, commands, and the compare() that measures a row
# ============================================================================================


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.reps: int = args.reps or (2 if args.quick else 5)
        self.reps_short: int = args.reps_short or (5 if args.quick else 20)
        self.slow_cap: int = 1 if args.quick else 3
        self.tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="opsdsl-bench-"))
        self.notes: list[str] = []
        self.current = ""  # the bench being run (names its rows)

    def log(self, msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    # --- workloads -------------------------------------------------------------------------

    @cached_property
    def packs_dir(self) -> Path:
        d = self.tmp / f"packs-{self.args.packs}x{self.args.steps}-s{self.args.seed}"
        if not (d / ".complete").exists():
            t0 = time.perf_counter()
            generate.write_packs(d, self.args.packs, self.args.steps, self.args.seed)
            (d / ".complete").write_text("ok\n")
            self.log(f"generated {self.args.packs} packs in {time.perf_counter() - t0:.1f} s")
        files = sorted(d.glob("*.yaml"))
        size = sum(p.stat().st_size for p in files)
        self.notes.append(
            f"workload: {len(files)} packs x {self.args.steps} steps, seed {self.args.seed}, "
            f"{size / 1024 / max(1, len(files)):.1f} KiB avg, {size / 2**20:.1f} MiB total"
        )
        return d

    @cached_property
    def pack_files(self) -> list[str]:
        return [str(p) for p in sorted(self.packs_dir.glob("*.yaml"))]

    @cached_property
    def small_pack(self) -> Path:
        d = self.tmp / "small"
        d.mkdir(parents=True, exist_ok=True)
        path = d / "pack.yaml"
        path.write_text(generate.dump_pack(generate.small_pack(self.args.seed)))
        return path

    # --- commands --------------------------------------------------------------------------

    @cached_property
    def opsdsl_argv(self) -> list[str]:
        """How a user runs opsdsl: the console script if installed (beside this Python first,
        so a pyenv/asdf shim's own start-up is not counted), else `python -m opsdsl`."""
        via = self.args.via
        if via in ("auto", "script"):
            script = find_script("opsdsl")
            if script:
                self.notes.append(f"opsdsl run as the console script {script}")
                return [script]
            if via == "script":
                raise Unavailable("no `opsdsl` console script (pip install -e .)")
        self.notes.append(f"opsdsl run as `{shorten_path(sys.executable)} -m opsdsl` (cwd .)")
        return [sys.executable, "-m", "opsdsl"]

    def opsdsl(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> Proc:
        return Proc([*self.opsdsl_argv, *args], ok_codes=ok_codes, opsdsl=True)

    def check_jsonschema(self, files: Sequence[str], **kw: Any) -> Proc:
        exe = find_script("check-jsonschema")
        if not exe:
            raise Unavailable("install check-jsonschema")
        return Proc([exe, "--schemafile", str(SCHEMA), *files], **kw)

    def python_pass(self) -> Proc:
        return Proc([sys.executable, "-c", "pass"])

    # --- measuring -------------------------------------------------------------------------

    def compare(
        self,
        row: Row,
        *,
        opsdsl: Callable[[], Side],
        baseline: Callable[[], Side],
        reps: int | None = None,
    ) -> Row:
        """Measure both sides, interleaved, and fill `row` with their medians."""
        reps = reps or self.reps
        row.name = row.name or self.current
        live: dict[str, Side] = {}
        for which, make in (("opsdsl", opsdsl), ("baseline", baseline)):
            try:
                side = make()
                side.prepare()
                self.log(f"{row.name}: {which}: {side.describe()}")
                live[which] = side
            except (Unavailable, Failed) as exc:
                self._mark(row, which, exc)
        samples: dict[str, list[float]] = {k: [] for k in live}
        for i in range(reps):
            for which, side in list(live.items()):
                cap = side.samples_cap if side.samples_cap is not None else reps
                if i >= cap:
                    continue
                try:
                    samples[which].append(side.sample())
                except (Unavailable, Failed) as exc:
                    self._mark(row, which, exc)
                    del live[which]
                    continue
                # a side slower than 15 s a run gets at most `slow_cap` samples
                first_is_slow = i == 0 and side.kind == TIME and samples[which][0] > 15
                if first_is_slow and side.samples_cap is None:
                    side.samples_cap = self.slow_cap
        parts = []
        for which, vals in samples.items():
            if not vals or getattr(row, f"{which}_note"):
                continue
            med = statistics.median(vals)
            setattr(row, which, med)
            fmt = fmt_seconds if row.kind == TIME else (lambda v: fmt_rate(v, row.unit))
            spread = f"{fmt(min(vals))}…{fmt(max(vals))}" if len(vals) > 1 else "single run"
            parts.append(f"{which} n={len(vals)} {spread}")
        pairs = [
            o / b
            for o, b in zip(samples.get("opsdsl", []), samples.get("baseline", []), strict=False)
            if b and not row.opsdsl_note and not row.baseline_note
        ]
        if len(pairs) > 1:  # ratios of samples taken side by side: how much noise moved them
            parts.append(f"paired ratios {min(pairs):.3g}…{max(pairs):.3g}")
        row.detail = "; ".join(parts)
        return row

    def _mark(self, row: Row, which: str, exc: Exception) -> None:
        if isinstance(exc, Failed):
            row.failed = True
            setattr(row, f"{which}_note", f"FAIL ({exc.reason})")
            print(f"\n[bench] {row.name}: {which} FAILED: {exc.reason}", file=sys.stderr)
            if exc.output:
                text = exc.output if len(exc.output) < 6000 else exc.output[-6000:]
                print(text, file=sys.stderr)
        else:
            setattr(row, f"{which}_note", f"n/a ({exc})")
            self.log(f"{row.name}: {which}: n/a ({exc})")
        setattr(row, which, None)


def find_script(name: str) -> str | None:
    """A console script: the one installed beside this interpreter first, then PATH."""
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        cand = Path(d) / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return shutil.which(name)


# ============================================================================================
# The benchmarks. Add a row: write a function here and append it to BENCHES.
# ============================================================================================


def bench_lint500_vs_cjs(ctx: Ctx) -> Row:
    """Wall time of `opsdsl lint DIR` vs check-jsonschema on the same files (one process)."""
    return ctx.compare(
        Row(f"lint {ctx.args.packs} packs vs check-jsonschema", TIME, "<=", 0.2),
        opsdsl=lambda: ctx.opsdsl("lint", str(ctx.packs_dir), ok_codes=(0, 1)),
        baseline=lambda: ctx.check_jsonschema(ctx.pack_files, warmup=False),
    )


def bench_lint500_vs_pyyaml(ctx: Ctx) -> Row:
    """Wall time of `opsdsl lint DIR` vs reading + parsing the same files with CSafeLoader."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)

    def parse_all() -> None:
        for path in ctx.pack_files:
            with open(path, "rb") as f:
                yaml.load(f, Loader=loader)

    def baseline() -> InProc:
        if loader is None:
            raise Unavailable("PyYAML built without libyaml")
        return InProc(parse_all, label=f"in-process yaml.load(CSafeLoader) x {ctx.args.packs}")

    return ctx.compare(
        Row(f"lint {ctx.args.packs} packs vs PyYAML CLoader parse", TIME, "<=", 2.0),
        opsdsl=lambda: ctx.opsdsl("lint", str(ctx.packs_dir), ok_codes=(0, 1)),
        baseline=baseline,
    )


def bench_version_vs_python(ctx: Ctx) -> Row:
    """Start-up cost: `opsdsl --version` vs a bare `python -c pass`."""
    return ctx.compare(
        Row("opsdsl --version (process) vs python -c pass", TIME, "<=", 8),
        opsdsl=lambda: ctx.opsdsl("--version"),
        baseline=ctx.python_pass,
        reps=ctx.reps_short,
    )


def bench_lint1_vs_python(ctx: Ctx) -> Row:
    """`opsdsl lint FILE` on one small pack vs a bare `python -c pass`."""
    return ctx.compare(
        Row("lint one small pack (process) vs python -c pass", TIME, "<=", 8),
        opsdsl=lambda: ctx.opsdsl("lint", str(ctx.small_pack), ok_codes=(0, 1)),
        baseline=ctx.python_pass,
        reps=ctx.reps_short,
    )


def bench_lint1_vs_cjs(ctx: Ctx) -> Row:
    """`opsdsl lint FILE` on one small pack vs check-jsonschema on that file."""
    return ctx.compare(
        Row("lint one small pack (process) vs check-jsonschema", TIME, "<=", 0.4),
        opsdsl=lambda: ctx.opsdsl("lint", str(ctx.small_pack), ok_codes=(0, 1)),
        baseline=lambda: ctx.check_jsonschema([str(ctx.small_pack)]),
        reps=ctx.reps_short,
    )


# --- expression evaluation ------------------------------------------------------------------

# (CEL text, the same thing as a hand-written Python lambda over the activation dict)
EXPRESSIONS: list[tuple[str, Callable[[dict], bool]]] = [
    (
        'event.labels.alertname == "SqlxExecLatencyHigh" && event.value > params.slo_p95_ms',
        lambda a: (
            a["event"]["labels"]["alertname"] == "SqlxExecLatencyHigh"
            and a["event"]["value"] > a["params"]["slo_p95_ms"]
        ),
    ),
    (
        "steps.inspect.outputs.json.p95_ms > params.slo_p95_ms",
        lambda a: a["steps"]["inspect"]["outputs"]["json"]["p95_ms"] > a["params"]["slo_p95_ms"],
    ),
    (
        'has(event.labels.cluster) && event.labels.cluster.startsWith("prod-")',
        lambda a: "cluster" in a["event"]["labels"] and a["event"]["labels"]["cluster"].startswith("prod-"),
    ),
    (
        "size(event.alerts) > 2 || event.value * 2 >= 500",
        lambda a: len(a["event"]["alerts"]) > 2 or a["event"]["value"] * 2 >= 500,
    ),
    (
        'event.labels.severity in ["critical", "page"] && !(event.labels.service in params.excluded_services)',
        lambda a: (
            a["event"]["labels"]["severity"] in ("critical", "page")
            and a["event"]["labels"]["service"] not in a["params"]["excluded_services"]
        ),
    ),
    (
        'step.risk == "high" && run.severity != "SEV-1"',
        lambda a: a["step"]["risk"] == "high" and a["run"]["severity"] != "SEV-1",
    ),
]


def make_activations(seed: int, n: int = 64) -> list[dict]:
    """Varied, deterministic activations (ints for numbers, so CEL has no int/double mixing)."""
    rng = random.Random(seed)
    acts = []
    for _ in range(n):
        labels = {
            "alertname": rng.choice(["SqlxExecLatencyHigh", "HTTP5xxRateHigh", "NodeDiskPressure"]),
            "severity": rng.choice(["critical", "page", "warning", "info"]),
            "service": rng.choice(generate.SERVICES),
        }
        if rng.random() < 0.7:
            labels["cluster"] = rng.choice(generate.CLUSTERS)
        acts.append(
            {
                "event": {
                    "labels": labels,
                    "value": rng.randint(0, 600),
                    "alerts": [{"status": "firing"}] * rng.randint(0, 5),
                },
                "params": {
                    "slo_p95_ms": rng.choice([150, 250, 300]),
                    "excluded_services": rng.sample(generate.SERVICES, 3),
                },
                "steps": {"inspect": {"outputs": {"json": {"p95_ms": rng.randint(50, 900)}}}},
                "step": {"risk": rng.choice(["low", "medium", "high"])},
                "run": {"severity": rng.choice(["SEV-1", "SEV-2", "SEV-3"])},
            }
        )
    return acts


def _calls_loop(calls: list[tuple[Callable[[Any], Any], Any]]) -> Callable[[int], None]:
    def loop(rounds: int) -> None:
        for _ in range(rounds):
            for fn, act in calls:
                fn(act)

    return loop


def opsdsl_evaluator(text: str) -> Callable[[dict], Any]:
    """Compile `text` with opsdsl and return the fastest callable taking an activation dict.

    The one place that knows opsdsl's expression API; adjust here if it changes.
    """
    try:
        from opsdsl.lang.expr import compile_expr, parse
    except ImportError as exc:
        raise Unavailable(f"opsdsl.expr: {exc}") from exc
    compiled = compile_expr(parse(text))
    for candidate in (compiled, getattr(compiled, "evaluate", None)):
        if callable(candidate):
            return candidate
    raise Unavailable(f"compile_expr returned {type(compiled).__name__}, not callable")


def _as_bool(v: Any) -> Any:
    return bool(v) if isinstance(v, (bool, int)) else repr(v)


class ExprSuite:
    """Shared by the expression rows: expressions, activations, and checked callables."""

    def __init__(self, seed: int) -> None:
        self.acts = make_activations(seed)
        self.expected = [[_as_bool(fn(a)) for a in self.acts] for _, fn in EXPRESSIONS]

    def _check(self, who: str, fns: list[Callable[[Any], Any]], acts: list[Any]) -> None:
        for i, ((text, _), fn) in enumerate(zip(EXPRESSIONS, fns, strict=True)):
            for j, act in enumerate(acts):
                try:
                    got = _as_bool(fn(act))
                except Exception as exc:
                    got = f"{type(exc).__name__}: {exc}"
                if got != self.expected[i][j]:
                    raise Failed(
                        f"{who} disagrees with the Python lambda on {text!r}",
                        output=f"activation {j}: {json.dumps(self.acts[j])}\n"
                        f"{who}: {got!r}, lambda: {self.expected[i][j]!r}",
                    )

    def per_round(self) -> int:
        return len(EXPRESSIONS) * len(self.acts)

    def lambdas(self) -> Rate:
        calls = [(fn, a) for _, fn in EXPRESSIONS for a in self.acts]
        return Rate(_calls_loop(calls), self.per_round(), "hand-written Python lambdas")

    def opsdsl(self) -> Rate:
        try:
            fns = [opsdsl_evaluator(text) for text, _ in EXPRESSIONS]
        except Unavailable:
            raise
        except Exception as exc:
            raise Failed(f"compiling: {type(exc).__name__}: {exc}") from exc
        self._check("opsdsl", fns, self.acts)
        calls = [(fn, a) for fn in fns for a in self.acts]
        return Rate(_calls_loop(calls), self.per_round(), "opsdsl.expr compiled callables")

    def cel(self) -> Rate:
        try:
            import celpy
        except ImportError as exc:
            raise Unavailable("install cel-python") from exc
        env = celpy.Environment()
        progs = [env.program(env.compile(text)) for text, _ in EXPRESSIONS]
        # activations converted once, outside the timing (conservative: cel gets faster)
        cel_acts = [{k: celpy.json_to_cel(v) for k, v in a.items()} for a in self.acts]
        fns = [p.evaluate for p in progs]
        self._check("cel-python", fns, cel_acts)
        calls = [(fn, a) for fn in fns for a in cel_acts]
        return Rate(_calls_loop(calls), self.per_round(), "cel-python Program.evaluate")


def _expr_suite(ctx: Ctx) -> ExprSuite:
    if not hasattr(ctx, "_expr_suite"):
        ctx._expr_suite = ExprSuite(ctx.args.seed)  # type: ignore[attr-defined]
    return ctx._expr_suite  # type: ignore[attr-defined]


def bench_expr_vs_lambda(ctx: Ctx) -> Row:
    """Evaluations/s of opsdsl-compiled expressions vs the same logic as Python lambdas."""
    s = _expr_suite(ctx)
    return ctx.compare(
        Row("expression eval vs Python lambdas", RATE, ">=", 0.25, unit="eval/s"),
        opsdsl=s.opsdsl,
        baseline=s.lambdas,
    )


def bench_expr_vs_cel(ctx: Ctx) -> Row:
    """Evaluations/s of opsdsl-compiled expressions vs cel-python's interpreter."""
    s = _expr_suite(ctx)
    return ctx.compare(
        Row("expression eval vs cel-python", RATE, ">=", 100, unit="eval/s"),
        opsdsl=s.opsdsl,
        baseline=s.cel,
    )


# Macros over an Alertmanager group of 100 alerts: the same logic as Python any()/all() and
# comprehensions over the dicts. The critical alert, if any, sits anywhere (or nowhere), so
# exists() scans on average most of the list.
MACRO_EXPRESSIONS: list[tuple[str, Callable[[dict], Any]]] = [
    (
        'event.alerts.exists(a, a.labels.severity == "critical")',
        lambda c: any(a["labels"]["severity"] == "critical" for a in c["event"]["alerts"]),
    ),
    (
        "event.alerts.all(a, a.labels.cluster == event.commonLabels.cluster)",
        lambda c: all(a["labels"]["cluster"] == c["event"]["commonLabels"]["cluster"] for a in c["event"]["alerts"]),
    ),
    (
        'event.alerts.filter(a, a.status == "firing").map(a, a.labels.instance)',
        lambda c: [a["labels"]["instance"] for a in [a for a in c["event"]["alerts"] if a["status"] == "firing"]],
    ),
    (
        'event.alerts.map(a, a.labels.severity != "info", a.labels.instance)',
        lambda c: [a["labels"]["instance"] for a in c["event"]["alerts"] if a["labels"]["severity"] != "info"],
    ),
]


def make_alert_groups(seed: int, groups: int = 16, size: int = 100) -> list[dict]:
    rng = random.Random(seed + 19)
    acts = []
    for _ in range(groups):
        cluster = rng.choice(generate.CLUSTERS)
        critical_at = rng.choice([None, rng.randrange(size)])
        alerts = [
            {
                "status": rng.choice(["firing", "firing", "resolved"]),
                "labels": {
                    "alertname": "NodeDiskPressure",
                    "severity": "critical" if i == critical_at else rng.choice(["warning", "info", "page"]),
                    "cluster": cluster if rng.random() < 0.98 else rng.choice(generate.CLUSTERS),
                    "instance": f"node-{i}:9100",
                },
            }
            for i in range(size)
        ]
        acts.append({"event": {"alerts": alerts, "commonLabels": {"cluster": cluster}}})
    return acts


def bench_expr_macro_vs_python(ctx: Ctx) -> Row:
    """Evaluations/s of macros over a 100-element list vs Python any()/all()/comprehensions."""
    acts = make_alert_groups(ctx.args.seed)
    per_round = len(MACRO_EXPRESSIONS) * len(acts)

    def python() -> Rate:
        calls = [(fn, a) for _, fn in MACRO_EXPRESSIONS for a in acts]
        return Rate(_calls_loop(calls), per_round, "Python any()/all()/comprehensions")

    def opsdsl() -> Rate:
        fns = [opsdsl_evaluator(text) for text, _ in MACRO_EXPRESSIONS]
        for (text, reference), fn in zip(MACRO_EXPRESSIONS, fns, strict=True):
            for act in acts:
                if fn(act) != reference(act):
                    raise Failed(f"opsdsl disagrees with Python on {text!r}")
        calls = [(fn, a) for fn in fns for a in acts]
        return Rate(_calls_loop(calls), per_round, "opsdsl.expr compiled macros")

    return ctx.compare(
        Row("macro over a 100-element list vs Python any()/comprehension", RATE, ">=", 0.2, unit="eval/s"),
        opsdsl=opsdsl,
        baseline=python,
    )


# --- compile, sign, verify ---------------------------------------------------------------


def _signing_key(ctx: Ctx) -> Path:
    key = ctx.tmp / "bench.key"
    if not key.exists():
        from opsdsl.build.signing import generate_key, write_private_key

        write_private_key(key, generate_key(), None)
    return key


def bench_compile500_vs_lint(ctx: Ctx) -> Row:
    """Wall time of a clean `opsdsl compile DIR --key K` (check, plan, sign, write) vs `opsdsl lint DIR`."""
    out = ctx.tmp / "build-clean"
    return ctx.compare(
        Row(f"compile+sign {ctx.args.packs} packs vs lint", TIME, "<=", 1.3),
        opsdsl=lambda: ctx.opsdsl(
            "compile", str(ctx.packs_dir), "-o", str(out), "--key", str(_signing_key(ctx)), "--rebuild"
        ),
        baseline=lambda: ctx.opsdsl("lint", str(ctx.packs_dir), ok_codes=(0, 1)),
    )


def bench_recompile500_vs_lint(ctx: Ctx) -> Row:
    """An incremental `opsdsl compile` of the unchanged tree (every plan reused) vs `opsdsl lint DIR`."""
    out = ctx.tmp / "build-incremental"
    return ctx.compare(
        Row(f"re-compile {ctx.args.packs} unchanged packs vs lint", TIME, "<=", 0.5),
        opsdsl=lambda: ctx.opsdsl("compile", str(ctx.packs_dir), "-o", str(out), "--key", str(_signing_key(ctx))),
        baseline=lambda: ctx.opsdsl("lint", str(ctx.packs_dir), ok_codes=(0, 1)),
    )


def _peak_rss(argv: list[str]) -> float:
    """Peak resident memory (bytes) of a command and the worker processes it waits for."""
    code = (
        "import resource, subprocess, sys; "
        "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode; "
        "print(r, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    rc, kib = done.stdout.split()
    if int(rc) not in (0, 1):
        raise Failed(f"exit {rc}: {' '.join(argv[:3])}")
    return float(kib) * 1024


@dataclass
class Memory:
    """Peak RSS of a process (bytes), sampled like a time."""

    argv: list[str]
    kind: str = MEMORY
    samples_cap: int | None = 1

    def describe(self) -> str:
        return "peak RSS of " + " ".join(shorten_path(a) for a in self.argv[:6])

    def prepare(self) -> None:
        return None

    def sample(self) -> float:
        return _peak_rss(self.argv)


def bench_compile500_memory(ctx: Ctx) -> Row:
    """Peak memory (largest process) of a clean 500-pack compile vs the same tree's lint."""
    out = ctx.tmp / "build-memory"
    key = str(_signing_key(ctx))
    return ctx.compare(
        Row(f"peak memory: compile {ctx.args.packs} packs vs lint", MEMORY, "<=", 1.5),
        opsdsl=lambda: Memory(
            [*ctx.opsdsl_argv, "compile", str(ctx.packs_dir), "-o", str(out), "--key", key, "--rebuild"]
        ),
        baseline=lambda: Memory([*ctx.opsdsl_argv, "lint", str(ctx.packs_dir)]),
        reps=1,
    )


class VerifySuite:
    """10,000 signed plans in memory, verified in one process."""

    def __init__(self, ctx: Ctx, count: int = 10_000) -> None:
        try:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            from opsdsl.build.compiler import build_plan, plan_bytes
            from opsdsl.build.signing import envelope_bytes, keyid, pae, sign_envelope
            from opsdsl.lang.loader import load_file
            from opsdsl.lang.model import build_model
        except ImportError as exc:
            raise Unavailable(f"opsdsl.signing: {exc}") from exc
        files = ctx.pack_files[:100]
        payloads = [plan_bytes(build_plan(build_model(load_file(Path(f))[0].data), [])) for f in files]
        keys = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(count // len(payloads) + 1)]
        self.trusted = {keyid(k.public_key()): k.public_key() for k in keys}
        self.envelopes = []
        self.raw = []
        for i in range(count):
            key, payload = keys[i // len(payloads)], payloads[i % len(payloads)]
            self.envelopes.append(envelope_bytes(sign_envelope(payload, [key])))
            self.raw.append(
                (
                    key.public_key(),
                    key.sign(pae("application/vnd.opsdsl.plan+json", payload)),
                    pae("application/vnd.opsdsl.plan+json", payload),
                )
            )
        self.count = count
        self.avg_payload = sum(len(p) for p in payloads) / len(payloads)

    def opsdsl(self) -> Rate:
        from opsdsl.build.signing import verify_envelope

        trusted, envelopes = self.trusted, self.envelopes

        def loop(rounds: int) -> None:
            for _ in range(rounds):
                for data in envelopes:
                    verify_envelope(data, trusted, 1)

        return Rate(
            loop,
            self.count,
            f"opsdsl.signing.verify_envelope over {self.count} envelopes (~{self.avg_payload / 1024:.0f} KiB payloads)",
            min_seconds=1.0,
        )

    def raw_verify(self) -> Rate:
        raw = self.raw

        def loop(rounds: int) -> None:
            for _ in range(rounds):
                for public, sig, signed in raw:
                    public.verify(sig, signed)

        return Rate(loop, self.count, "cryptography Ed25519PublicKey.verify on the same PAE bytes", min_seconds=1.0)


def bench_verify10k_vs_raw(ctx: Ctx) -> Row:
    """Envelopes verified per second (parse, decode, PAE, key lookup, verify) vs raw Ed25519 verifies."""
    suite = VerifySuite(ctx)
    return ctx.compare(
        Row("verify 10,000 signed plans vs raw Ed25519 verify", RATE, ">=", 0.8, unit="plans/s"),
        opsdsl=suite.opsdsl,
        baseline=suite.raw_verify,
        reps=3,
    )


def bench_ops500_vs_pyyaml(ctx: Ctx) -> Row:
    """Parsing .ops packs (to data with positions) vs loading the same packs' YAML with CSafeLoader."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", None)
    try:
        from opsdsl.lang.ops import load_text
        from opsdsl.lang.ops.convert import yaml_to_ops
    except ImportError as exc:
        raise Unavailable(f"opsdsl.ops: {exc}") from exc
    folder = ctx.tmp / f"ops-{ctx.args.packs}x{ctx.args.steps}-s{ctx.args.seed}"
    if not folder.exists():  # converted once, outside the timing
        folder.mkdir(parents=True)
        for path in ctx.pack_files:
            source = Path(path)
            (folder / (source.stem + ".ops")).write_text(yaml_to_ops(source.read_text(), source.name))
    ops_files = sorted(folder.glob("*.ops"))
    yaml_files = ctx.pack_files

    def parse_ops(rounds: int) -> None:
        for _ in range(rounds):
            for path in ops_files:
                document, diagnostics = load_text(path.read_text(encoding="utf-8"), path.name)
                if document is None:
                    raise Failed(f"{path.name}: {diagnostics[0].message}")

    def parse_yaml(rounds: int) -> None:
        for _ in range(rounds):
            for path in yaml_files:
                with open(path, "rb") as f:
                    yaml.load(f, Loader=loader)

    def baseline() -> Rate:
        if loader is None:
            raise Unavailable("PyYAML built without libyaml")
        return Rate(parse_yaml, len(yaml_files), f"yaml.load(CSafeLoader) over {len(yaml_files)} files", 1.0)

    return ctx.compare(
        Row(f"parse {ctx.args.packs} .ops packs vs PyYAML CLoader", RATE, ">=", 0.5, unit="files/s"),
        opsdsl=lambda: Rate(parse_ops, len(ops_files), f"opsdsl.ops.load_text over {len(ops_files)} files", 1.0),
        baseline=baseline,
        reps=3,
    )


# --- the audit ledger -------------------------------------------------------------------

LEDGER_ENTRIES = 100_000


def _intent_like(rng: random.Random, i: int) -> tuple[str, str, dict]:
    """A step.intent-like entry (run, kind, data) whose canonical JSON is 200-400 bytes."""
    run = f"run-{i // 40:05d}-{rng.randrange(16**6):06x}"
    step = f"{rng.choice(['inspect', 'drain', 'restart', 'scale', 'notify'])}_{rng.randrange(30)}"
    data = {
        "step": step,
        "attempt": 1 + (rng.random() < 0.1),
        "action": rng.choice(["http.post", "k8s.rollout_restart", "shell.run", "slack.post"]),
        "with": {
            "url": f"http://kernel.internal:8080/api/v1/clusters/{rng.choice(generate.CLUSTERS)}/{step}",
            "reason": "p95 latency above SLO " * rng.randint(1, 6),
            "drain": rng.random() < 0.5,
        },
        "idempotency_key": f"{run}:{step}:1",
        "timeout": rng.choice([30, 60, None]),
    }
    return run, "step.intent", data


def _ledger_db(ctx: Ctx) -> tuple[Path, dict]:
    """A state database with LEDGER_ENTRIES entries and a checkpoint at the end, built once."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from opsdsl.audit.ledger import Ledger, open_database
        from opsdsl.build.signing import keyid
    except ImportError as exc:
        raise Unavailable(f"opsdsl.ledger: {exc}") from exc
    key = Ed25519PrivateKey.from_private_bytes(bytes([42]) * 32)
    trusted = {keyid(key.public_key()): key.public_key()}
    path = ctx.tmp / f"ledger-{LEDGER_ENTRIES}.db"
    if not path.exists():
        t0 = time.perf_counter()
        rng = random.Random(ctx.args.seed)
        conn = open_database(path)
        ledger = Ledger(conn)
        conn.execute("BEGIN IMMEDIATE")
        for i in range(LEDGER_ENTRIES):
            run, kind, data = _intent_like(rng, i)
            ledger.append(kind, run, data, ts=1_716_000_000 + i * 0.731)
        conn.execute("COMMIT")
        ledger.checkpoint(key)
        size = conn.execute("SELECT avg(length(data)), min(length(data)), max(length(data)) FROM ledger").fetchone()
        conn.close()
        ctx.log(f"built a {LEDGER_ENTRIES}-entry ledger in {time.perf_counter() - t0:.1f} s")
        ctx.notes.append(
            f"ledger_verify: {LEDGER_ENTRIES} step.intent-like entries, data {size[1]}–{size[2]} bytes "
            f"(avg {size[0]:.0f}), one checkpoint at the end, {path.stat().st_size / 2**20:.0f} MiB file"
        )
    return path, trusted


def bench_ledger_verify(ctx: Ctx) -> Row:
    """`verify_path` over a 100,000-entry ledger vs the floor: SELECT the rows and sha256 the same bytes."""
    import hashlib
    import sqlite3

    path, trusted = _ledger_db(ctx)

    def opsdsl() -> Rate:
        from opsdsl.audit.ledger import verify_path

        def loop(rounds: int) -> None:
            for _ in range(rounds):
                report = verify_path(path, trusted)
                if not report.ok or report.entries != LEDGER_ENTRIES:
                    raise Failed(f"ledger does not verify: {report.render()}")

        return Rate(loop, LEDGER_ENTRIES, f"opsdsl.ledger.verify_path over {LEDGER_ENTRIES} entries", 1.0)

    def floor() -> Rate:
        from opsdsl.audit.ledger import ENTRY_DOMAIN

        def loop(rounds: int) -> None:
            # The same rows, read the fastest way (text as bytes), the same preimage, one sha256 each.
            conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
            conn.text_factory = bytes
            sha256, join = hashlib.sha256, b"".join
            query = "SELECT seq, ts, run, kind, data, prev, hash FROM ledger ORDER BY seq"
            for _ in range(rounds):
                for seq, ts, run, kind, data, prev, _hash in conn.execute(query):
                    parts = (ENTRY_DOMAIN, prev, seq.to_bytes(8, "big"), repr(ts).encode())
                    sha256(join((*parts, b"\0", run or b"", b"\0", kind, b"\0", data))).digest()
            conn.close()

        return Rate(loop, LEDGER_ENTRIES, "SELECT the same columns + hashlib.sha256 of the same bytes", 1.0)

    return ctx.compare(
        Row(f"ledger verify {LEDGER_ENTRIES:,} entries vs SELECT + sha256", RATE, ">=", 0.3, unit="entries/s"),
        opsdsl=opsdsl,
        baseline=floor,
        reps=3 if ctx.quick else 5,
    )


def bare_insert_rate(path: str | os.PathLike, n: int) -> float:
    """Single-row INSERT + COMMIT transactions per second into a fresh table of `path`.

    The floor under any durable step: the state database's pragmas (WAL, synchronous=FULL,
    explicit BEGIN IMMEDIATE ... COMMIT) and a ledger-sized row (~300 bytes of text and two
    32-byte blobs), with nothing else: no hashing, no JSON, no reading the head.
    """
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bare_insert"
            " (seq INTEGER PRIMARY KEY, ts REAL, run TEXT, kind TEXT, data TEXT, prev BLOB, hash BLOB)"
        )
        data = json.dumps({"step": "restart", "with": {"reason": "p95 latency above SLO " * 12}})
        blob = bytes(32)
        t0 = time.perf_counter()
        for i in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO bare_insert (ts, run, kind, data, prev, hash) VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), f"run-{i}", "step.intent", data, blob, blob),
            )
            conn.execute("COMMIT")
        return n / (time.perf_counter() - t0)
    finally:
        conn.close()


RUN_STEPS = 1000


def bench_run_steps(ctx: Ctx) -> list[Row]:
    """A 1,000-step chain of no-op `assert` steps through the full runtime path (render, policy
    gate with the org policies in scope, hash-chained ledger, step state, incident record at
    the end) vs the floor: bare single-row INSERT + COMMIT transactions, same pragmas, same file
    system. The same on PostgreSQL (a private server, tests/pgserver.py: fsync and
    synchronous_commit on) vs bare INSERT + COMMIT there; n/a where no server binary exists."""
    try:
        from opsdsl.runtime import runner
    except ImportError as exc:
        raise Unavailable(f"opsdsl.runtime: {exc}") from exc
    folder = ctx.tmp / "run-steps"
    folder.mkdir(exist_ok=True)
    pack = folder / "chain.yaml"
    steps = "\n".join(f"      - {{id: s{i}, action: assert, with: {{that: 'true'}}}}" for i in range(RUN_STEPS))
    pack.write_text(
        "apiVersion: opsdsl/v1\nkind: Pack\nmetadata: {name: chain, version: 1.0.0, owner: bench}\n"
        f"playbooks:\n  chain:\n    severity: SEV-4\n    steps:\n{steps}\n"
    )
    shutil.copy(REPO / "packs" / "org-policies.yaml", folder / "org-policies.yaml")
    rows = [_run_steps_sqlite(ctx, folder, pack, runner)]
    rows.append(_run_steps_postgres(ctx, folder, pack, runner))
    return rows


def _run_steps_opsdsl(folder: Path, pack: Path, runner: Any, state: Path, database: str | None, label: str) -> Rate:
    import asyncio

    from opsdsl.runtime.secrets import Secrets

    saved = os.environ.get("OPSDSL_DATABASE")
    if database is not None:
        os.environ["OPSDSL_DATABASE"] = database
    else:
        os.environ.pop("OPSDSL_DATABASE", None)
    try:
        plan = runner.plan_from_pack(pack, None, state)
        if not plan.payload["policies"]:
            raise Failed("the org policies were not in scope")
        runtime = runner.Runtime(state)
    finally:
        if saved is None:
            os.environ.pop("OPSDSL_DATABASE", None)
        else:
            os.environ["OPSDSL_DATABASE"] = saved
    secrets = Secrets(state)

    def loop(rounds: int) -> None:
        for _ in range(rounds):
            run = runtime.create_run(plan, runner.Selection("chain"), {}, {}, {}, secrets)
            outcome = asyncio.run(runtime.drive(run, secrets))
            if outcome.status != "succeeded":
                raise Failed(f"run {run.id} {outcome.status}: {outcome.error}")

    return Rate(loop, RUN_STEPS, f"opsdsl runtime: {RUN_STEPS}-step assert chain, gate + ledger + state{label}", 1.0)


def _run_steps_sqlite(ctx: Ctx, folder: Path, pack: Path, runner: Any) -> Row:
    import sqlite3

    def floor() -> Rate:
        conn = sqlite3.connect(folder / "floor.db", isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, ts REAL, kind TEXT, data TEXT)")
        data = json.dumps({"step": "s1", "outputs": {}, "attempts": 1})

        def loop(rounds: int) -> None:
            for _ in range(rounds * RUN_STEPS):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (ts, kind, data) VALUES (?, ?, ?)", (time.time(), "step.succeeded", data))
                conn.execute("COMMIT")

        return Rate(loop, RUN_STEPS, "bare INSERT + COMMIT, WAL, synchronous=FULL", 1.0)

    return ctx.compare(
        Row(f"runtime {RUN_STEPS}-step playbook vs bare SQLite commits", RATE, ">=", 0.5, unit="steps/s"),
        opsdsl=lambda: _run_steps_opsdsl(folder, pack, runner, folder / "state", None, ""),
        baseline=floor,
        reps=3 if ctx.quick else 5,
    )


def _run_steps_postgres(ctx: Ctx, folder: Path, pack: Path, runner: Any) -> Row:
    row = Row(f"runtime {RUN_STEPS}-step playbook vs bare PostgreSQL commits", RATE, ">=", 0.5, unit="steps/s")
    sys.path.insert(0, str(REPO / "tests"))  # pgserver: the tests' private PostgreSQL
    try:
        import pgserver
    finally:
        sys.path.remove(str(REPO / "tests"))
    why = pgserver.why_not()
    try:
        import psycopg
    except ImportError:
        why = why or "psycopg is not installed (pip install 'opsdsl[postgres]')"
    if why is not None:

        def unavailable() -> Rate:
            raise Unavailable(why)

        return ctx.compare(row, opsdsl=unavailable, baseline=unavailable, reps=1)
    from opsdsl.runtime.migrate import migrate

    with pgserver.temporary_server() as server:
        database = server.create_database("run_steps")
        migrate(database)
        floor_url = server.create_database("run_steps_floor")

        def floor() -> Rate:
            conn = psycopg.connect(floor_url, autocommit=True)
            conn.execute("CREATE TABLE IF NOT EXISTS t (seq BIGSERIAL PRIMARY KEY, ts FLOAT8, kind TEXT, data TEXT)")
            data = json.dumps({"step": "s1", "outputs": {}, "attempts": 1})

            def loop(rounds: int) -> None:
                for _ in range(rounds * RUN_STEPS):
                    conn.execute("BEGIN")
                    conn.execute(
                        "INSERT INTO t (ts, kind, data) VALUES (%s, %s, %s)", (time.time(), "step.succeeded", data)
                    )
                    conn.execute("COMMIT")

            return Rate(loop, RUN_STEPS, "bare BEGIN/INSERT/COMMIT over TCP, fsync + synchronous_commit on", 1.0)

        return ctx.compare(
            row,
            opsdsl=lambda: _run_steps_opsdsl(folder, pack, runner, folder / "state-pg", database, " (PostgreSQL)"),
            baseline=floor,
            reps=3 if ctx.quick else 5,
        )


TRIGGER_PACKS, TRIGGER_EVENTS = 100, 5000


def bench_triggers(ctx: Ctx) -> Row:
    """Trigger evaluation of 100 packs (3 triggers each: a plain condition, a count window, a
    `for:` duration) over a stream of metric events, in process, vs a hand-written Python
    predicate doing the same checks with the same window bookkeeping (the floor)."""
    from collections import deque

    try:
        from opsdsl.runtime.triggers import TriggerEngine
    except ImportError as exc:
        raise Unavailable(f"opsdsl.runtime.triggers: {exc}") from exc
    plans, params = [], []
    for i in range(TRIGGER_PACKS):
        name = f"sqlx_metric_{i % 20}"
        plans.append(
            {
                "pack": {"name": f"pack{i}"},
                "triggers": {
                    "breach": {"on": "metric", "when": f'event.name == "{name}" && event.value > params.limit'},
                    "spike": {
                        "on": "metric",
                        "when": f'event.name == "{name}" && event.labels.cluster in ["eu1", "eu2"]',
                        "threshold": {"count": 50, "within": 300_000},
                    },
                    "slow": {"on": "metric", "when": f'event.name == "{name}" && event.value > 250', "for": 300_000},
                },
            }
        )
        params.append({"limit": 100 + i})
    rng = random.Random(ctx.args.seed)
    events = [
        {
            "kind": "metric",
            "name": f"sqlx_metric_{rng.randrange(25)}",
            "value": rng.uniform(0, 400),
            "labels": {"cluster": rng.choice(["eu1", "eu2", "us1"])},
        }
        for _ in range(TRIGGER_EVENTS)
    ]

    def opsdsl() -> Rate:
        def loop(rounds: int) -> None:
            for _ in range(rounds):
                engine = TriggerEngine(plans, params)
                for n, event in enumerate(events):
                    engine.observe(event, n * 0.1)

        return Rate(loop, TRIGGER_EVENTS, f"TriggerEngine.observe, {TRIGGER_PACKS} packs x 3 triggers")

    def floor() -> Rate:
        names = [f"sqlx_metric_{i % 20}" for i in range(TRIGGER_PACKS)]
        limits = [100 + i for i in range(TRIGGER_PACKS)]

        def loop(rounds: int) -> None:
            for _ in range(rounds):
                windows = [deque() for _ in names]
                since: list[dict] = [{} for _ in names]
                fired: list[set] = [set() for _ in names]
                for n, event in enumerate(events):
                    now = n * 0.1
                    if event.get("kind") != "metric":
                        continue
                    series = f"{event['name']}|{event['labels']}"
                    for i, name in enumerate(names):
                        hit = event["name"] == name
                        _ = hit and event["value"] > limits[i]
                        if hit and event["labels"]["cluster"] in ("eu1", "eu2"):
                            window = windows[i]
                            window.append(now)
                            while window and window[0] <= now - 300:
                                window.popleft()
                            if len(window) >= 50:
                                window.clear()
                        if hit and event["value"] > 250:
                            start = since[i].setdefault(series, now)
                            if now - start >= 300 and series not in fired[i]:
                                fired[i].add(series)
                        else:
                            since[i].pop(series, None)
                            fired[i].discard(series)

        return Rate(loop, TRIGGER_EVENTS, "hand-written Python predicates and windows")

    return ctx.compare(
        Row(f"trigger evaluation, {TRIGGER_PACKS} packs, vs hand-written Python", RATE, ">=", 0.25, unit="events/s"),
        opsdsl=opsdsl,
        baseline=floor,
        reps=3 if ctx.quick else 5,
    )


PACK_TEST_CASES = 1000


def _pack_test_suite(folder: Path) -> Path:
    """The bundled packs beside their test cases (packs/*.test.yaml) replicated, in order, to
    PACK_TEST_CASES cases: test files of at most 50 cases each, written as JSON (valid YAML)."""
    from opsdsl.lang.loader import load_file

    packs = folder / "packs"
    if packs.exists():
        shutil.rmtree(packs)
    packs.mkdir(parents=True)
    pool: list[tuple[str, dict, dict]] = []
    for path in sorted((REPO / "packs").glob("*.yaml")):
        if path.name.endswith(".test.yaml"):
            document, problems = load_file(path)
            if document is None or problems:
                raise Failed(f"{path.name} does not load: {problems[0].message if problems else '?'}")
            head = {k: v for k, v in document.data.items() if k != "cases"}
            pool += [(path.name.removesuffix(".test.yaml"), head, case) for case in document.data["cases"]]
        else:
            shutil.copy(path, packs / path.name)
    if not pool:
        raise Unavailable("no packs/*.test.yaml yet")
    files: dict[str, list[tuple[dict, list[dict]]]] = {}
    for i in range(PACK_TEST_CASES):
        stem, head, case = pool[i % len(pool)]
        chunks = files.setdefault(stem, [])
        if not chunks or len(chunks[-1][1]) == 50:
            chunks.append((head, []))
        chunks[-1][1].append({**case, "name": f"{case['name']} #{i}"})
    for stem, chunks in files.items():
        for n, (head, cases) in enumerate(chunks):
            text = json.dumps({**head, "cases": cases}, indent=1)
            (packs / f"{stem}-{n:02}.test.yaml").write_text(text + "\n")
    return packs


def bench_pack_tests(ctx: Ctx) -> Row:
    """`opsdsl test` in process (the session API) on 1,000 cases of the bundled packs' tests, vs
    the runs those cases start through the runtime as `opsdsl run` drives them, minus real
    actions: `Runtime` with a no-op executor that returns `{}`, durable SQLite (fsync), incident
    records and checkpoints, and nobody answering approvals. Both sides count cases per second
    (a case that starts no run costs the baseline nothing). The baseline runs on the rehearsal's
    virtual-time loop only so that `wait: 5m` steps do not sleep. With empty outputs a run fails
    at the first `when:` that reads an output, and stops at the first approval, so the baseline
    does less work than the rehearsal (the detail line says how many steps each side started)."""
    try:
        from opsdsl.rehearsal import run_tests
        from opsdsl.rehearsal.clock import VirtualClock, run_virtual
        from opsdsl.rehearsal.facts import run_facts
        from opsdsl.runtime import runner
        from opsdsl.runtime.actions import EXECUTOR_ACTIONS
        from opsdsl.runtime.secrets import Secrets
    except ImportError as exc:
        raise Unavailable(f"opsdsl.rehearsal: {exc}") from exc
    folder = ctx.tmp / "pack-tests"
    suite = _pack_test_suite(folder)
    session = run_tests([suite])  # also the warm-up: imports, and what runs each case starts
    if session.cases != PACK_TEST_CASES or not session.ok:
        bad = [f"{c.name}: {c.status}" for f in session.files for c in f.cases if c.status != "passed"][:3]
        raise Failed(f"{session.cases} cases, not all passed: {bad}")
    runs = []  # (pack file, playbook, params, inputs, event) of each run a case started
    for result in session.files:
        for case in result.cases:
            for facts in case.observed.runs:
                created = facts.entries[0]["data"]
                runs.append((result.pack, created["playbook"], created["params"], created["inputs"], created["event"]))
    started = sum(len(r.started) for f in session.files for c in f.cases for r in c.observed.runs)

    class NoOpExecutor:
        def knows(self, action: str) -> bool:
            return action in EXECUTOR_ACTIONS

        async def execute(self, request: Any, context: Any) -> dict[str, Any]:
            return {}

    state = folder / "state"
    shutil.rmtree(state, ignore_errors=True)
    plans = {pack: runner.plan_from_pack(Path(pack), None, state) for pack in sorted({r[0] for r in runs})}
    (state / "secrets").mkdir(parents=True, exist_ok=True)
    (state / "secrets" / "pagerduty_key").write_text("not-a-real-routing-key")
    clock = VirtualClock.at(None)
    runtime = runner.Runtime(state, executor=NoOpExecutor(), clock=clock.now)
    secrets = Secrets(state)
    last_round: list[tuple[str, str, str]] = []  # (run id, pack, playbook) of the last baseline round

    async def start_and_drive(pack: str, playbook: str, params: dict, inputs: dict, event: dict) -> tuple:
        run = runtime.create_run(plans[pack], runner.Selection(playbook), params, inputs, event, secrets)
        await runtime.drive(run, secrets)
        return run.id, pack, playbook

    def opsdsl() -> Rate:
        def loop(rounds: int) -> None:
            for _ in range(rounds):
                result = run_tests([suite])
                if not result.ok:
                    raise Failed("a case failed")

        return Rate(loop, PACK_TEST_CASES, f"run_tests on {PACK_TEST_CASES} cases in {len(session.files)} files", 1.0)

    def baseline() -> Rate:
        def loop(rounds: int) -> None:
            for _ in range(rounds):
                last_round[:] = [run_virtual(start_and_drive(*run), clock) for run in runs]

        return Rate(loop, PACK_TEST_CASES, f"Runtime + no-op executor: the {len(runs)} runs those cases start", 1.0)

    row = ctx.compare(
        Row(
            f"opsdsl test: {PACK_TEST_CASES:,} pack-test cases vs their runs through the runtime",
            RATE,
            ">=",
            0.5,
            unit="cases/s",
        ),
        opsdsl=opsdsl,
        baseline=baseline,
        reps=3 if ctx.quick else 5,
    )
    baseline_started = sum(
        len(
            run_facts(
                [e.to_dict() for e in runtime.store.ledger.entries(run=run_id)], plans[pack].payload["playbooks"][book]
            ).started
        )
        for run_id, pack, book in last_round
    )
    runtime.close()
    row.detail += f"; {len(runs)} runs a round; steps started a round: rehearsal {started}, baseline {baseline_started}"
    return row


BENCHES: tuple[Callable[[Ctx], Row | list[Row]], ...] = (
    bench_lint500_vs_cjs,
    bench_lint500_vs_pyyaml,
    bench_version_vs_python,
    bench_lint1_vs_python,
    bench_lint1_vs_cjs,
    bench_expr_vs_lambda,
    bench_expr_vs_cel,
    bench_expr_macro_vs_python,
    bench_compile500_vs_lint,
    bench_recompile500_vs_lint,
    bench_compile500_memory,
    bench_verify10k_vs_raw,
    bench_ops500_vs_pyyaml,
    bench_ledger_verify,
    bench_run_steps,
    bench_triggers,
    bench_pack_tests,
)


def bench_name(fn: Callable) -> str:
    return fn.__name__.removeprefix("bench_")


# ============================================================================================
# Runner
# ============================================================================================


def run_benches(ctx: Ctx, selected: Sequence[Callable[[Ctx], Row | list[Row]]]) -> list[Row]:
    rows: list[Row] = []
    for fn in selected:
        name = ctx.current = bench_name(fn)
        t0 = time.perf_counter()
        try:
            result = fn(ctx)
        except Exception as exc:
            import traceback

            traceback.print_exc()
            result = Row(name, TIME, "<=", 0, failed=True, opsdsl_note=f"FAIL (harness: {exc})")
        for row in result if isinstance(result, list) else [result]:
            row.name = row.name or name
            rows.append(row)
            ctx.log(f"{name}: done in {time.perf_counter() - t0:.1f} s -> {row.cells()}")
    return rows


def environment_notes(ctx: Ctx) -> list[str]:
    try:
        load = "load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = "load avg n/a"
    return [
        f"{time.strftime('%Y-%m-%d %H:%M')}; Python {platform.python_version()} "
        f"({shorten_path(sys.executable)}); {os.cpu_count()} CPUs; {load} at the end",
        f"repetitions: {ctx.reps} per big process/in-process figure (at most {ctx.slow_cap} "
        f"when one run takes > 15 s), {ctx.reps_short} per short process; medians reported",
    ]


def select(names: Sequence[str] | None) -> list[Callable[[Ctx], Row | list[Row]]]:
    if not names:
        return list(BENCHES)
    chosen = []
    for fn in BENCHES:
        n = bench_name(fn)
        if any(fnmatch.fnmatch(n, pat) or pat in n for pat in names):
            chosen.append(fn)
    if not chosen:
        known = ", ".join(bench_name(f) for f in BENCHES)
        raise SystemExit(f"--only {' '.join(names)}: no such bench (known: {known})")
    return chosen


def report(ctx: Ctx, rows: Sequence[Row]) -> str:
    lines = [render_table(rows), ""]
    lines.append(
        "ratio = opsdsl ÷ baseline. Time rows (s): lower is better, target `≤`. "
        "Throughput rows (/s): higher is better, target `≥`."
    )
    for note in [*ctx.notes, *environment_notes(ctx)]:
        lines.append(f"- {note}")
    for r in rows:
        if r.detail:
            lines.append(f"- {r.name}: {r.detail}")
    return "\n".join(lines) + "\n"


def self_check(ctx: Ctx) -> int:
    """Generator checks, plus the harness's own plumbing on tiny workloads."""
    ok = generate.self_check(packs=20 if ctx.quick else 40, seed=ctx.args.seed, out=sys.stdout)
    # the table machinery
    r = Row("t", TIME, "<=", 0.2, opsdsl=1.0, baseline=10.0)
    assert r.ok == "yes" and r.cells()[3] == "0.1", r.cells()
    r = Row("t", RATE, ">=", 100, unit="eval/s", opsdsl=2e6, baseline=1e4)
    assert r.ok == "yes" and r.cells()[1] == "2 Meval/s", r.cells()
    r = Row("t", TIME, "<=", 8, opsdsl_note="n/a (x)", baseline=0.05)
    assert r.ok == "n/a" and r.cells()[3] == "–"

    # the failure paths of Proc: a bad exit fails the row; "not there yet" is n/a
    def outcome(code: str, opsdsl: bool = True) -> str:
        try:
            Proc([sys.executable, "-c", code], opsdsl=opsdsl).sample()
        except Unavailable as exc:
            return f"n/a ({exc})"
        except Failed as exc:
            return f"FAIL ({exc.reason})"
        return "ok"

    err = "import sys; sys.stderr.write({!r}); sys.exit({})"
    cases = [
        (err.format("boom\n", 3), "FAIL (exit 3: boom)"),
        (err.format("Error: No such command 'lint'.\n", 2), "n/a (not implemented yet"),
        ("import opsdsl_nope", "FAIL (exit 1: ModuleNotFoundError"),
        (err.format("ModuleNotFoundError: No module named 'opsdsl'\n", 1), "n/a (opsdsl not"),
        ("pass", "ok"),
    ]
    for code, want in cases:
        got = outcome(code)
        if not got.startswith(want):
            print(f"self-check: Proc({code!r}) -> {got!r}, expected {want!r}...")
            ok = False
    # the expression baselines agree with each other (lambda vs cel-python)
    suite = ExprSuite(ctx.args.seed)
    try:
        suite.cel()
        print(
            f"self-check: {len(EXPRESSIONS)} expressions x {len(suite.acts)} activations: "
            "cel-python agrees with the lambdas"
        )
    except Unavailable as exc:
        print(f"self-check: cel-python n/a ({exc})")
    except Failed as exc:
        print(f"self-check: {exc.reason}\n{exc.output}")
        ok = False
    # check-jsonschema accepts the small pack and a few generated packs
    d = ctx.tmp / "selfcheck"
    paths = generate.write_packs(d, 5, ctx.args.steps, ctx.args.seed)
    try:
        p = ctx.check_jsonschema([str(ctx.small_pack), *map(str, paths)], warmup=False)
        p.sample()
        print("self-check: check-jsonschema accepts the generated packs")
    except Unavailable as exc:
        print(f"self-check: check-jsonschema n/a ({exc})")
    except Failed as exc:
        print(f"self-check: check-jsonschema rejects generated packs: {exc.reason}\n{exc.output}")
        ok = False
    # informational: does opsdsl's own linter find the generated packs clean?
    try:
        lint = ctx.opsdsl("lint", str(ctx.small_pack), *map(str, paths), ok_codes=(0,))
        lint.sample()
        print("self-check: opsdsl lint finds the generated packs clean (exit 0)")
    except Unavailable as exc:
        print(f"self-check: opsdsl lint n/a ({exc})")
    except Failed as exc:
        print(f"self-check: note: opsdsl lint on generated packs: {exc.reason}\n{exc.output[-3000:]}")
    print(f"self-check: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def compile_bytecode(ctx: Ctx) -> None:
    """Write opsdsl's bytecode first, as a regular (non-editable) install does.

    An editable install under PYTHONDONTWRITEBYTECODE=1 (set on this machine) would
    otherwise recompile every module in every timed process, and the start-up rows
    would measure Python's compiler rather than opsdsl.
    """
    try:
        import opsdsl
    except ImportError:
        return
    import compileall

    compileall.compile_dir(Path(opsdsl.__file__).parent, quiet=1)
    ctx.notes.append("opsdsl bytecode compiled before timing (as a wheel install does)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="opsdsl benchmarks: each figure beside its baseline, measured in the same run."
    )
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (for a smoke run)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="bench names or globs (see --list)")
    ap.add_argument("--out", metavar="FILE.md", help="also write the table and notes here")
    ap.add_argument("--list", action="store_true", help="list the bench names and exit")
    ap.add_argument("--self-check", action="store_true", help="check generator and harness")
    ap.add_argument("--packs", type=int, default=500, help="packs in the big workload (500)")
    ap.add_argument("--steps", type=int, default=generate.DEFAULT_STEPS, help="steps per pack")
    ap.add_argument("--seed", type=int, default=generate.DEFAULT_SEED)
    ap.add_argument("--reps", type=int, help="repetitions for big figures (default 5, quick 2)")
    ap.add_argument("--reps-short", type=int, help="repetitions for short processes (20/5)")
    ap.add_argument(
        "--via",
        choices=["auto", "script", "module"],
        default="auto",
        help="run opsdsl as the console script or `python -m opsdsl` (auto: script if found)",
    )
    ap.add_argument("--workdir", help="generate workloads here (kept) instead of a temp dir")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a row misses its target, too")
    args = ap.parse_args(argv)

    if args.list:
        for fn in BENCHES:
            print(f"{bench_name(fn):24} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    ctx = Ctx(args)
    compile_bytecode(ctx)
    try:
        if args.self_check:
            return self_check(ctx)
        rows = run_benches(ctx, select(args.only))
        text = report(ctx, rows)
        print(text, end="")
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        if any(r.failed for r in rows):
            return 1
        if args.strict and any(r.ok == "**no**" for r in rows):
            return 1
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(ctx.tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
