"""`opsdsl run --params-file`, as `serve`, `fire` and `watch` take it: the file's params,
then `--param` over them; a bad file is a usage error naming it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1] / "fixtures" / "serve" / "owned" / "owned.yaml"


def opsdsl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsdsl", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def dry_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return opsdsl(
        "run", "--pack", str(PACK), "--playbook", "settle", "--dry-run", "--state-dir", str(tmp_path / "state"), *args,
        cwd=tmp_path,
    )  # fmt: skip


def test_the_params_file_sets_params_and_param_wins(tmp_path):
    (tmp_path / "params.yaml").write_text("kernel_url: http://127.0.0.1:7001\n")
    from_file = dry_run(tmp_path, "--params-file", "params.yaml")
    assert from_file.returncode == 0, from_file.stderr
    assert "http://127.0.0.1:7001/v1/pool" in from_file.stdout
    both = dry_run(tmp_path, "--params-file", "params.yaml", "--param", "kernel_url=http://127.0.0.1:7002")
    assert both.returncode == 0, both.stderr
    assert "http://127.0.0.1:7002/v1/pool" in both.stdout and "7001" not in both.stdout


def test_a_bad_params_file_is_a_usage_error(tmp_path):
    (tmp_path / "params.yaml").write_text("kernel_url: [\n")
    refused = dry_run(tmp_path, "--params-file", "params.yaml")
    assert refused.returncode == 2
    assert "--params-file" in refused.stderr and "params.yaml" in refused.stderr
    assert "Traceback" not in refused.stderr
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    refused = dry_run(tmp_path, "--params-file", "list.yaml")
    assert refused.returncode == 2 and "mapping" in refused.stderr
