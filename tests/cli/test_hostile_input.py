"""Hostile input never crashes the command line: every command, fed random bytes, non-UTF-8,
huge or deeply nested files, FIFOs, devices, directories and symlink loops where a file is
expected, hostile events and hostile option values, returns (no hang) with an exit code in
{0, 1, 2, 4, 5}, says something when it fails, and never shows a traceback or "internal
error" (exit 3 is a bug in opsdsl).

Commands run through `opsdsl.cli.main.main` inside CliRunner's isolation, so the exit codes
are the real ones; a few cases run as a real subprocess. Each example gets a fresh folder
and a fresh `--state-dir`. The explicit tests below the properties are the bugs the
properties found, kept as regressions.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsdsl.cli.main import main

HANDLED = {0, 1, 2, 4, 5}
DEEP = int(os.environ.get("OPSDSL_HOSTILE_EXAMPLES", "0"))  # e.g. 200 for a long, random search
EXAMPLES = settings(
    max_examples=DEEP or 6,
    deadline=None,
    derandomize=not DEEP,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: tiny, version: 1.0.0, owner: sre}
params:
  ratio: {type: number, default: 1}
  count: {type: integer, default: 1}
  label: {type: string, default: x}
  grace: {type: duration, default: 1s}
  nodes: {type: list, default: []}
  extra: {type: map, default: {}}
  flag: {type: boolean, default: false}
  token: {type: string, secret: true, description: an API token}
triggers:
  page:
    on: alert
    when: event.labels.alertname == "Page"
hooks:
  onPage: {trigger: page, run: check, cooldown: 1m}
playbooks:
  check:
    severity: SEV-4
    inputs: {who: {type: string, from: event.labels.who, default: nobody}}
    steps:
      - id: ok
        action: assert
        with:
          that: params.count >= 0 || params.ratio > 0 || params.flag || params.label == "" || true
          message: "never ${{ params.nodes }} ${{ params.extra }} ${{ params.grace }} ${{ params.token }}"
    finally:
      - id: rca
        action: report.rca
        with: {title: Tiny, summary: "ran for ${{ inputs.who }}"}
"""

TRUST = """\
apiVersion: opsdsl/v1
kind: Trust
keys:
  - {name: ci, file: ci.key.pub}
"""

SECRET = ("--secret", "token=env:OPSDSL_TEST_TOKEN")


class Hung(BaseException):
    """A command did not return in time (BaseException: `main` must not turn it into an exit code)."""


@dataclass
class Outcome:
    code: int
    out: str
    args: tuple[str, ...]

    def assert_handled(self) -> None:
        shown = f"opsdsl {' '.join(a[:80] for a in self.args)}\n--- exit {self.code} ---\n{self.out[-3000:]}"
        assert self.code in HANDLED, shown
        assert "Traceback" not in self.out, shown
        assert "internal error" not in self.out, shown
        if self.code != 0:
            assert self.out.strip(), shown


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def hung(signum, frame):
        raise Hung(f"no answer in {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def opsdsl(*args: object, stdin: bytes = b"", timeout: float = 60) -> Outcome:
    """`opsdsl ARGS` in this process, as `opsdsl.cli.main.main` runs it: (exit code, stdout + stderr)."""
    argv = tuple(str(a) for a in args)
    runner = CliRunner()
    env = {"OPSDSL_TEST_TOKEN": "a-long-test-token-value", "OPSDSL_HOME": None}
    with time_limit(timeout), runner.isolation(input=stdin, env=env) as (stdout, stderr, _):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exited:
            code = exited.code if isinstance(exited.code, int) else (0 if exited.code is None else 1)
        out = stdout.getvalue() + stderr.getvalue()
    return Outcome(code, out.decode("utf-8", "replace"), argv)


@pytest.fixture(scope="module")
def kit() -> Iterator[Path]:
    """A pack, a private key, its public half, a signed plan and a trust file naming the key."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "tiny.yaml").write_text(PACK)
        (root / "trust.yaml").write_text(TRUST)
        opsdsl("keygen", "--out", root / "ci.key").assert_handled()
        built = opsdsl("compile", root / "tiny.yaml", "-o", root / "build", "--key", root / "ci.key")
        assert built.code == 0, built.out
        yield root


@pytest.fixture(autouse=True)
def memory_cap() -> Iterator[None]:
    """A reader that slurps /dev/zero fails with MemoryError (a test failure), not the box."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 6 * 1024**3 if hard == resource.RLIM_INFINITY else min(hard, 6 * 1024**3)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


# ---- hostile files -----------------------------------------------------------------------


def _deep(levels: int, opening: str, closing: str, middle: str = "1") -> bytes:
    return (opening * levels + middle + closing * levels).encode()


TEXTS = st.sampled_from(
    [
        b"",
        b"\xff\xfe\x00garbage\x80",
        b'{"labels": {"alertname": "Page", "who": "\xc3\x28"}}',
        _deep(10_000, "[", "]"),
        _deep(10_000, '{"a":', "}"),
        _deep(3_000, "- ", "", "x"),
        _deep(10_000, "[", "]").decode().replace("[", "{a: [", 1).encode() + b"}",
        b'{"labels": {"alertname": "Page"}, "value": NaN}',
        b'{"labels": {"alertname": "Page"}, "value": 1e400}',
        b'{"labels": {"alertname": "Page"}, "value": ' + b"9" * 5000 + b"}",
        b'{"labels": {"alertname": "Page"}, "value": ' + b"9" * 4000 + b"}",
        b'{"labels": {"alertname": "Page", "who": "\\ud800"}}',
        b'[{"labels": {"alertname": "Page"}}, 3]',
        b'{"version": "4", "alerts": [1]}',
        b"a: &a [*a]\n",
        b"apiVersion: opsdsl/v1\nkind: Trust\nkeys: " + _deep(2000, "[", "]"),
        PACK.encode().replace(b"version: 1.0.0", b"version: " + b"9" * 5000),
        b'{"payload": "", "payloadType": "x", "signatures": ' + _deep(5000, "[", "]") + b"}",
    ]
)
CONTENTS = st.one_of(TEXTS, st.binary(max_size=512))
KINDS = st.sampled_from(["file", "fifo", "directory", "loop", "missing", "dangling", "device"])


def hostile_path(folder: Path, kind: str, content: bytes, name: str = "input.yaml") -> Path:
    """A path of the given kind, where a command expects a file."""
    path = folder / name
    if kind == "file":
        path.write_bytes(content)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inner.yaml").write_bytes(content)
        os.mkfifo(path / "pipe.yaml")
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "dangling":
        path.symlink_to(folder / "nowhere")
    elif kind == "device":
        path.symlink_to("/dev/zero")
    return path


def file_commands(kit: Path, target: Path, folder: Path) -> list[tuple[object, ...]]:
    """Every command, with `target` where it reads a file."""
    state = ("--state-dir", folder / "state")
    plan = kit / "build" / "tiny.plan.dsse.json"
    return [
        ("lint", target),
        ("lint", "--config", target, kit / "tiny.yaml"),
        ("compile", target, "-o", folder / "out"),
        ("compile", kit / "tiny.yaml", "-o", folder / "out2", "--key", target),
        ("graph", target),
        ("fmt", target),
        ("fmt", "--to", "ops", target),
        ("test", target),
        ("lock", target, "--lock", folder / "opsdsl.lock"),
        ("drift", kit / "tiny.yaml", "--lock", target, "--no-build"),
        ("run", "--pack", target, "--dry-run", *SECRET, *state),
        ("run", "--pack", kit / "tiny.yaml", "--event", target, "--dry-run", *SECRET, *state),
        ("run", "--pack", kit / "tiny.yaml", "--event", target, "--log-format", "quiet", *SECRET, *state),
        ("run", "--plan", plan, "--trust", target, "--dry-run", *SECRET, *state),
        ("run", "--plan", target, "--trust", kit / "trust.yaml", "--log-format", "quiet", *SECRET, *state),
        ("fire", target, "--pack", kit / "tiny.yaml", *SECRET, *state),
        ("verify", target, "--key", kit / "ci.key.pub"),
        ("verify", plan, "--trust", target),
        ("verify", plan, "--key", target),
        ("sign", target, "--key", kit / "ci.key"),
        ("ledger", "verify", "--checkpoint", target, *state),
        ("incident", "verify", target, "--key", kit / "ci.key.pub", *state),
        ("incident", "verify", kit / "tiny.yaml", "--trust", target, *state),
    ]


@EXAMPLES
@given(kind=KINDS, content=CONTENTS, data=st.data())
def test_every_command_survives_a_hostile_file(kit: Path, kind: str, content: bytes, data):
    with scratch() as folder:
        target = hostile_path(folder, kind, content)
        for args in data.draw(st.permutations(file_commands(kit, target, folder)))[: 8 if not DEEP else None]:
            opsdsl(*args).assert_handled()


@EXAMPLES
@given(content=CONTENTS)
def test_watch_survives_hostile_lines(kit: Path, content: bytes):
    with scratch() as folder:
        lines = content + b"\n" + b'{"labels": {"alertname": "Page"}}\n' + content
        opsdsl("watch", "--pack", kit / "tiny.yaml", *SECRET, "--state-dir", folder, stdin=lines).assert_handled()
        opsdsl("fire", "-", "--pack", kit / "tiny.yaml", *SECRET, "--state-dir", folder, stdin=content).assert_handled()


# ---- hostile option values ------------------------------------------------------------------

NUMBERS = st.one_of(
    st.sampled_from(["nan", "-inf", "inf", "1e400", "-1e400", "9" * 5000, "9" * 4000, "1e20", "0x10", "", " ", "1_0"]),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=30),
)
PARAMS = st.sampled_from(["ratio", "count", "label", "grace", "nodes", "extra", "flag", "token", "nope", ""])
JSON_VALUES = st.one_of(
    NUMBERS,
    st.sampled_from(["[NaN]", "[1e400]", "{" * 3000, "[" * 5000 + "]" * 5000, '["\\ud800"]', "[" + "9" * 4500 + "]"]),
)


@EXAMPLES
@given(name=PARAMS, value=JSON_VALUES)
def test_hostile_param_and_input_values(kit: Path, name: str, value: str):
    with scratch() as folder:
        state = ("--state-dir", folder)
        base = ("run", "--pack", kit / "tiny.yaml", "--log-format", "quiet", *SECRET, *state)
        opsdsl(*base, "--dry-run", "--param", f"{name}={value}").assert_handled()
        opsdsl(*base, "--param", f"{name}={value}").assert_handled()
        opsdsl(*base, "--input", f"who={value}").assert_handled()


@EXAMPLES
@given(value=NUMBERS)
def test_hostile_numbers_in_options(kit: Path, value: str):
    with scratch() as folder:
        state = ("--state-dir", folder)
        for args in (
            ("runs", "--limit", value, *state),
            ("runs", "--limit", value, "--format", "json", *state),
            ("report", "--since", value, *state),
            ("lint", "-j", value, kit / "tiny.yaml"),
            ("compile", "-j", value, kit / "tiny.yaml", "-o", folder / "out"),
            ("test", "--fail-under", value, kit),
            ("verify", kit / "build" / "tiny.plan.dsse.json", "--key", kit / "ci.key.pub", "--threshold", value),
            ("fire", "-", "--pack", kit / "tiny.yaml", "--max-runs", value, *SECRET, *state),
            ("approve", value, "step", "--by", value, *state),
            ("resume", value, *state),
            ("rules", value),
        ):
            opsdsl(*args, stdin=b"{}").assert_handled()


# ---- regressions: what the properties found ------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe{}", _deep(10_000, "[", "]"), _deep(10_000, '{"a":', "}"), b'{"v": NaN}', b'{"v": 1e400}'],
    ids=["not-utf8", "deep-list", "deep-object", "nan", "inf"],
)
def test_run_event_file_that_is_not_usable_json_is_a_usage_error(kit: Path, content: bytes):
    with scratch() as folder:
        (folder / "event.json").write_bytes(content)
        for dry in ((), ("--dry-run",)):
            result = opsdsl(
                "run", "--pack", kit / "tiny.yaml", "--event", folder / "event.json", *dry, *SECRET,
                "--state-dir", folder / "state", "--log-format", "quiet",
            )  # fmt: skip
            assert result.code == 2, result.out
            assert f"--event {folder / 'event.json'}: " in result.out


def test_fire_and_watch_refuse_deep_json(kit: Path):
    with scratch() as folder:
        (folder / "deep.json").write_bytes(_deep(10_000, "[", "]"))
        fired = opsdsl("fire", folder / "deep.json", "--pack", kit / "tiny.yaml", "--state-dir", folder)
        assert fired.code == 2 and "nested deeper than 64 levels" in fired.out
        watched = opsdsl(
            "watch", "--pack", kit / "tiny.yaml", *SECRET, "--state-dir", folder,
            stdin=_deep(10_000, "[", "]") + b"\n\xff\n",
        )  # fmt: skip
        assert watched.code == 0
        assert "stdin line 1: skipped: nested deeper than 64 levels" in watched.out
        assert "stdin line 2: skipped: not UTF-8" in watched.out


def test_a_trust_file_nested_deep_in_flow_style_is_refused_quickly(kit: Path):
    # found by the property: PyYAML scans deep flow nesting in quadratic time (over 60 s)
    with scratch() as folder:
        trust = folder / "trust.yaml"
        trust.write_bytes(b"apiVersion: opsdsl/v1\nkind: Trust\nkeys: " + _deep(2000, "[", "]"))
        plan = kit / "build" / "tiny.plan.dsse.json"
        result = opsdsl("run", "--plan", plan, "--trust", trust, "--dry-run", "--state-dir", folder, timeout=10)
        assert result.code == 2 and "nested too deeply" in result.out


def test_a_deeply_nested_trust_file_is_a_configuration_error(kit: Path):
    with scratch() as folder:
        trust = folder / "trust.yaml"
        trust.write_bytes(b"apiVersion: opsdsl/v1\nkind: Trust\nkeys: " + _deep(10_000, "[", "]"))
        result = opsdsl("verify", kit / "build" / "tiny.plan.dsse.json", "--trust", trust)
        assert result.code == 2 and "nested too deeply" in result.out


@pytest.mark.parametrize("limit", ["1e20", "99999999999999999999", "0", "-1"])
def test_runs_limit_out_of_range_is_a_usage_error(limit: str):
    with scratch() as folder:
        opsdsl("run", "--pack", "x", "--state-dir", folder)  # makes the state dir
        result = opsdsl("runs", "--limit", limit, "--state-dir", folder)
        assert result.code == 2 and "--limit" in result.out


@pytest.mark.parametrize(
    ("param", "value", "says"),
    [
        ("ratio", "nan", "not a finite number"),
        ("ratio", "1e400", "not a finite number"),
        ("ratio", "9" * 5000, "not a finite number"),
        ("count", "9" * 5000, "is not an integer"),
        ("count", "9" * 4000, "out of range"),
        ("count", str(2**53), "out of range"),
        ("nodes", "[NaN]", "not a finite number"),
        ("nodes", "[" * 5000 + "]" * 5000, "nested deeper than"),
        ("extra", '{"a": 1e400}', "not a finite number"),
        ("label", "\udcff", "not valid UTF-8"),
    ],
)
def test_param_values_the_ledger_cannot_hold_are_usage_errors_naming_the_param(
    kit: Path, param: str, value: str, says: str
):
    with scratch() as folder:
        result = opsdsl(
            "run", "--pack", kit / "tiny.yaml", "--param", f"{param}={value}", *SECRET,
            "--state-dir", folder, "--log-format", "quiet",
        )  # fmt: skip
        assert result.code == 2, result.out
        assert f"--param {param}: " in result.out and says in result.out


def test_a_secret_param_on_the_command_line_is_refused(kit: Path):
    with scratch() as folder:
        for dry in ((), ("--dry-run",)):
            result = opsdsl(
                "run", "--pack", kit / "tiny.yaml", "--param", "token=hunter2-hunter2", *dry,
                "--state-dir", folder, "--log-format", "quiet",
            )  # fmt: skip
            assert result.code == 2
            assert "--param token: `token` is a secret param" in result.out
            assert "--secret token=env:VARIABLE or --secret token=file:PATH" in result.out


def test_a_fifo_in_a_folder_is_skipped_and_a_named_one_refused(kit: Path):
    with scratch() as folder:
        (folder / "tiny.yaml").write_text(PACK)
        os.mkfifo(folder / "pipe.yaml")
        for command in ("lint", "compile", "fmt"):
            result = opsdsl(command, folder, timeout=30)
            assert result.code in (0, 1, 2), result.out  # fmt: no .ops file there
            assert "pipe.yaml" not in result.out
        named = opsdsl("lint", folder / "pipe.yaml", timeout=30)
        assert named.code == 2 and "named pipe (FIFO), not a regular file" in named.out
        named = opsdsl("run", "--pack", kit / "tiny.yaml", "--event", folder / "pipe.yaml", timeout=30)
        assert named.code == 2 and "named pipe (FIFO), not a regular file" in named.out


def test_a_huge_event_file_is_refused_without_reading_it_all(kit: Path):
    with scratch() as folder:
        huge = folder / "huge.json"
        with huge.open("wb") as handle:
            handle.truncate(9 * 1024 * 1024)  # sparse: a 9 MiB file of NUL bytes
        result = opsdsl("fire", huge, "--pack", kit / "tiny.yaml", "--state-dir", folder)
        assert result.code == 2 and "larger than 8 MiB" in result.out


# ---- the real program ------------------------------------------------------------------------


def real(*args: object, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "opsdsl", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={**os.environ, "OPSDSL_TEST_TOKEN": "a-long-test-token-value"},
    )


def test_real_process_lint_of_a_folder_with_a_fifo_returns(kit: Path):
    with scratch() as folder:
        (folder / "tiny.yaml").write_text(PACK)
        os.mkfifo(folder / "stuck.yaml")
        done = real("lint", folder)
        assert done.returncode in (0, 1) and b"Traceback" not in done.stderr


def test_real_process_hostile_event_on_stdin_is_a_usage_error(kit: Path):
    with scratch() as folder:
        done = real(
            "run", "--pack", kit / "tiny.yaml", "--event", "-", "--dry-run", *SECRET, "--state-dir", folder,
            stdin=b"\xff" + _deep(10_000, "[", "]"),
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(b"opsdsl: error: --event -: not UTF-8")


def test_real_process_non_utf8_param_value_is_a_usage_error(kit: Path):
    with scratch() as folder:
        argv = [sys.executable, "-m", "opsdsl", "run", "--pack", str(kit / "tiny.yaml"), *SECRET]
        argv += ["--state-dir", str(folder), "--log-format", "quiet", "--param", "label=\udcff"]
        done = subprocess.run(argv, capture_output=True, timeout=60, env={**os.environ, "OPSDSL_TEST_TOKEN": "t" * 20})
        assert done.returncode == 2, done.stderr
        assert b"--param label: the value is not valid UTF-8 text" in done.stderr
