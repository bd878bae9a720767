"""`threshold: {count, within, per: EXPR}` (issue 13 #16) through every stage: schema,
model, lint, the .ops grammar and its emitter, and the plan (unchanged without `per`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from opsdsl.build.emit import emit_stage
from opsdsl.lang.config import Config
from opsdsl.lint.engine import lint_paths

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: per-cluster, version: 1.0.0, owner: sre}
triggers:
  errors:
    on: metric
    when: event.name == "errors_total"
    threshold: {count: 3, within: 5m, per: event.labels.cluster}
    for: 1m
  plain:
    on: metric
    when: event.name == "other"
    threshold: {count: 3, within: 5m}
hooks:
  onErrors: {trigger: errors, run: p, cooldown: 1m, dedupe: event.labels.cluster}
  onPlain: {trigger: plain, run: p, cooldown: 1m}
playbooks:
  p:
    severity: SEV-4
    steps:
      - {id: a, action: assert, with: {that: "true"}}
"""


def opsdsl(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "opsdsl", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def plan_of(path: Path) -> dict:
    return json.loads(emit_stage([path], "plan"))


def test_the_plan_keeps_per_and_leaves_it_out_where_absent(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(PACK)
    triggers = plan_of(tmp_path / "p.yaml")["triggers"]
    assert triggers["errors"]["threshold"] == {"count": 3, "within": 300_000, "per": "event.labels.cluster"}
    assert triggers["plain"]["threshold"] == {"count": 3, "within": 300_000}


def test_per_round_trips_through_ops_to_a_byte_identical_plan(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(PACK)
    assert opsdsl("fmt", "--to", "ops", "-o", "ops", "p.yaml", cwd=tmp_path).returncode == 0
    text = (tmp_path / "ops" / "p.ops").read_text()
    assert "threshold 3 within 5m per event.labels.cluster" in text
    assert opsdsl("fmt", "--check", "ops/p.ops", cwd=tmp_path).returncode == 0
    assert opsdsl("fmt", "--to", "yaml", "-o", "back", "ops/p.ops", cwd=tmp_path).returncode == 0
    plans = [plan_of(tmp_path / name) for name in ("p.yaml", "ops/p.ops", "back/p.yaml")]
    assert plans[0] == plans[1] == plans[2]


def test_per_is_an_expression_lint_checks(tmp_path: Path):
    bad = PACK.replace("per: event.labels.cluster}", "per: event.labels.cluster +}")
    (tmp_path / "bad.yaml").write_text(bad)
    assert "OPS020" in [d.code for d in lint_paths([tmp_path / "bad.yaml"], Config()).diagnostics]
    wrong = PACK.replace("per: event.labels.cluster}", "per: event.message}")
    (tmp_path / "wrong.yaml").write_text(wrong)
    assert "OPS052" in [d.code for d in lint_paths([tmp_path / "wrong.yaml"], Config()).diagnostics]
    (tmp_path / "ok.yaml").write_text(PACK)
    assert not lint_paths([tmp_path / "ok.yaml"], Config()).diagnostics


def test_per_must_be_a_string(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(PACK.replace("per: event.labels.cluster}", "per: 3}"))
    assert "OPS010" in [d.code for d in lint_paths([tmp_path / "p.yaml"], Config()).diagnostics]
