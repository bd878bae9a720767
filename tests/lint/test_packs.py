"""The bundled packs: the seed runbook's playbooks and hooks, linting clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from opsdsl.lang.config import Config
from opsdsl.lang.loader import is_pack_file, load_file
from opsdsl.lang.model import Pack, PolicyPack, build_model
from opsdsl.lint.engine import lint_paths

ROOT = Path(__file__).resolve().parents[2]
PACKS = ROOT / "packs"


def models() -> dict[str, Pack | PolicyPack]:
    return {p.name: build_model(load_file(p)[0].data) for p in sorted(PACKS.glob("*.yaml")) if is_pack_file(p)}


def test_bundled_packs_lint_clean_through_the_cli():
    result = subprocess.run(
        [sys.executable, "-m", "opsdsl", "lint", "packs/"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "5 files checked: no problems found\n"


def test_bundled_packs_have_no_findings_even_as_warnings():
    assert lint_paths([PACKS], Config()).diagnostics == ()


def test_one_pack_per_severity_and_an_org_policy_pack():
    found = models()
    assert sorted(found) == ["org-policies.yaml", "sev1.yaml", "sev2.yaml", "sev3.yaml", "sev4.yaml"]
    assert isinstance(found["org-policies.yaml"], PolicyPack)
    for level in range(1, 5):
        pack = found[f"sev{level}.yaml"]
        assert isinstance(pack, Pack)
        assert {p.severity for p in pack.playbooks.values()} == {f"SEV-{level}"}


@pytest.mark.parametrize(
    ("pack", "playbook"),
    [
        ("sev1.yaml", "driver-connection-failure"),  # runbook 6.1
        ("sev2.yaml", "query-latency-regression"),  # 6.2
        ("sev3.yaml", "policy-denial-surge"),  # 6.3
        ("sev3.yaml", "telemetry-export-failure"),  # 6.4
        ("sev1.yaml", "security-breach"),  # 6.5
        ("sev2.yaml", "migration-failure"),  # 6.6
    ],
)
def test_every_seed_playbook_is_expressed(pack: str, playbook: str):
    assert playbook in models()[pack].playbooks


def test_the_five_automation_hooks_of_section_9():
    hooks = {
        name: (file, hook)
        for file, pack in models().items()
        if isinstance(pack, Pack)
        for name, hook in pack.hooks.items()
    }
    for name in ["onLatencyBreach", "onDriverErrorSpike", "onPolicyRollback", "onTelemetryDrop", "onMigrationFail"]:
        assert name in hooks, name
        assert hooks[name][1].cooldown is not None
    driver = models()["sev1.yaml"].triggers[hooks["onDriverErrorSpike"][1].trigger]
    assert (driver.threshold.count, driver.threshold.within) == (50, 5 * 60_000)  # errors > 50/5m
