from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden files from current output")


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden") or os.environ.get("OPSDSL_UPDATE_GOLDEN"))


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with the working directory in a fresh temporary folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


MINIMAL_PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: minimal, version: 1.0.0, owner: sre}
params:
  kernel_url: {type: string, default: "http://127.0.0.1:8080"}
triggers:
  latency:
    on: alert
    when: event.labels.alertname == "SqlxExecLatencyHigh"
hooks:
  onLatency: {trigger: latency, run: respond, cooldown: 10m, dedupe: event.labels.cluster}
playbooks:
  respond:
    severity: SEV-2
    inputs: {cluster: {type: string, from: event.labels.cluster}}
    steps:
      - id: inspect
        action: http.request
        with: {method: GET, url: "${{ params.kernel_url }}/v1/latency?cluster=${{ inputs.cluster }}"}
        timeout: 10s
"""


@pytest.fixture
def minimal_pack() -> str:
    return MINIMAL_PACK
