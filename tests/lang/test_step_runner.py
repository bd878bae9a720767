"""`runner: NAME` on a step (issue 16 item 2) through every stage: schema, model, lint
(OPS013 for a bad name, OPS053 on a step with no side effect), the .ops grammar and its
emitter, and the plan (`"runner"` on the node only where the step sets it)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from opsdsl.build.compiler import build_plan, model_digest, plan_bytes
from opsdsl.lang.actions import BUILTIN_ACTIONS, SCHEDULER_ACTIONS
from opsdsl.lang.config import Config
from opsdsl.lang.loader import load_file
from opsdsl.lang.model import build_model
from opsdsl.lang.ops.convert import ops_to_yaml, yaml_to_ops
from opsdsl.lint.engine import lint_paths
from opsdsl.resources import read_text

PLAN_SCHEMA = jsonschema.Draft202012Validator(json.loads(read_text("schemas/plan.schema.json")))

PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: pools, version: 1.0.0, owner: sre}
playbooks:
  scale-api:
    severity: SEV-3
    steps:
      - id: scale
        action: shell
        with: {argv: [kubectl, scale, deployment/api, --replicas=6]}
        runner: prod-vpc
        compensate: {action: shell, with: {argv: [kubectl, scale, deployment/api, --replicas=3]}}
      - id: check
        action: http.request
        with: {method: GET, url: "http://127.0.0.1:8080/health"}
        timeout: 10s
        runner: eu_west-2
      - id: tell
        action: notify
        with: {kind: slack, url: "${{ secrets.SLACK_WEBHOOK }}", message: scaled}
        timeout: 10s
    finally:
      - {id: rca, action: report.rca, with: {title: Scaled}}
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def plan_of(path: Path) -> dict:
    document, diagnostics = load_file(path)
    assert diagnostics == []
    return build_plan(build_model(document.data), [])


def nodes_of(plan: dict) -> dict[str, dict]:
    return {n["id"]: n for n in plan["playbooks"]["scale-api"]["nodes"]}


def codes(path: Path) -> list[str]:
    return [d.code for d in lint_paths([path], Config()).diagnostics]


def test_the_plan_node_carries_the_pool_only_where_the_step_sets_it(tmp_path: Path):
    plan = plan_of(write(tmp_path, PACK))
    PLAN_SCHEMA.validate(plan)
    nodes = nodes_of(plan)
    assert nodes["scale"]["runner"] == "prod-vpc"
    assert nodes["check"]["runner"] == "eu_west-2"
    # the undo runs where the step ran
    assert nodes["scale.compensate"]["runner"] == "prod-vpc"
    assert "runner" not in nodes["tell"] and "runner" not in nodes["rca"]


def test_a_pack_without_runner_keeps_its_model_digest_and_plan_bytes(tmp_path: Path):
    without = PACK.replace("        runner: prod-vpc\n", "").replace("        runner: eu_west-2\n", "")
    model = build_model(load_file(write(tmp_path, without))[0].data)
    assert "runner" not in json.dumps(model.model_dump(mode="json", by_alias=True))
    assert b'"runner"' not in plan_bytes(build_plan(model, []))
    with_pool = build_model(load_file(write(tmp_path, PACK, "q.yaml"))[0].data)
    assert model_digest(with_pool) != model_digest(model)


def test_yaml_and_ops_give_the_same_plan_node(tmp_path: Path):
    ops = yaml_to_ops(PACK, "p.yaml")
    assert "runner prod-vpc" in ops and "runner eu_west-2" in ops
    back = ops_to_yaml(ops, "p.ops")
    assert "runner: prod-vpc" in back
    plans = [
        plan_of(write(tmp_path, text, name)) for name, text in (("p.yaml", PACK), ("p.ops", ops), ("b.yaml", back))
    ]
    assert plan_bytes(plans[0]) == plan_bytes(plans[1]) == plan_bytes(plans[2])


def test_ops_takes_a_quoted_pool_name_too(tmp_path: Path):
    ops = yaml_to_ops(PACK, "p.yaml").replace("runner prod-vpc", 'runner "prod-vpc"')
    assert nodes_of(plan_of(write(tmp_path, ops, "p.ops")))["scale"]["runner"] == "prod-vpc"


@pytest.mark.parametrize("name", ["Prod", "1pool", "-pool", "pool.x", "prod vpc", "", "p" * 64, "pøol"])
def test_a_bad_pool_name_is_ops013_at_its_value_with_a_hint(tmp_path: Path, name: str):
    text = PACK.replace("runner: prod-vpc", f"runner: {json.dumps(name)}")
    diagnostics = lint_paths([write(tmp_path, text)], Config()).diagnostics
    (found,) = [d for d in diagnostics if d.code != "OPS046"]
    assert found.code == "OPS013"
    assert "is not a valid pool name" in found.message
    assert (found.span.line, found.span.col) == (11, 17)
    assert "lower-case letters" in found.hint


@pytest.mark.parametrize("name", ["a", "p" * 63, "prod-vpc_2", "r2"])
def test_a_good_pool_name_passes(tmp_path: Path, name: str):
    assert "OPS013" not in codes(write(tmp_path, PACK.replace("runner: prod-vpc", f"runner: {name}")))


def test_a_non_string_pool_is_ops010(tmp_path: Path):
    assert codes(write(tmp_path, PACK.replace("runner: prod-vpc", "runner: [a]"))) == ["OPS010"]


def test_a_bad_pool_name_in_ops_points_at_the_ops_line(tmp_path: Path):
    ops = yaml_to_ops(PACK, "p.yaml").replace("runner prod-vpc", 'runner "Prod VPC"')
    path = write(tmp_path, ops, "p.ops")
    (found,) = [d for d in lint_paths([path], Config()).diagnostics if d.code != "OPS046"]
    line = ops.splitlines().index('      runner "Prod VPC"') + 1
    assert (found.code, found.span.line, found.span.col) == ("OPS013", line, 14)


@pytest.mark.parametrize(
    "step",
    [
        "{id: pause, action: wait, with: {duration: 1m}, runner: prod-vpc}",
        "{id: ok, action: approval, with: {message: go?}, runner: prod-vpc}",
        '{id: sure, action: assert, with: {that: "true"}, runner: prod-vpc}',
        "{id: sub, action: playbook.call, with: {playbook: other}, runner: prod-vpc}",
    ],
)
def test_runner_on_a_step_the_scheduler_runs_is_ops053(tmp_path: Path, step: str):
    text = PACK.replace("      - id: check\n", f"      - {step}\n      - id: check\n") + (
        '  other:\n    severity: SEV-4\n    steps:\n      - {id: a, action: assert, with: {that: "true"}}\n'
    )
    diagnostics = [d for d in lint_paths([write(tmp_path, text)], Config()).diagnostics if d.code == "OPS053"]
    (found,) = diagnostics
    assert "only applies to steps with side effects" in found.message
    assert (found.span.line, found.span.col) == (13, text.splitlines()[12].index("prod-vpc") + 1)
    assert found.hint


def test_runner_in_finally_on_report_rca_is_ops053(tmp_path: Path):
    text = PACK.replace("with: {title: Scaled}}", "with: {title: Scaled}, runner: prod-vpc}")
    assert codes(write(tmp_path, text)).count("OPS053") == 1


def test_steps_with_side_effects_take_a_runner_without_findings(tmp_path: Path):
    text = PACK.replace("message: scaled}\n", "message: scaled}\n        runner: prod-vpc\n")
    assert [c for c in codes(write(tmp_path, text)) if c != "OPS046"] == []


def test_the_scheduler_actions_are_the_built_ins_no_executor_runs():
    from opsdsl.runtime.actions import EXECUTOR_ACTIONS

    assert set(SCHEDULER_ACTIONS) == set(BUILTIN_ACTIONS) - set(EXECUTOR_ACTIONS)
