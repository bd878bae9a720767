"""The shipped .ops packs are the YAML packs in another spelling: same data, same plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsdsl.build.compiler import ScopeEntry, compile_pack, model_digest
from opsdsl.lang.loader import discover, load_file
from opsdsl.lang.model import build_model

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["org-policies", "sev1", "sev2", "sev3", "sev4"]


def models(folder: Path, suffix: str) -> dict:
    out = {}
    for name in NAMES:
        document, diagnostics = load_file(folder / f"{name}{suffix}")
        assert not diagnostics, diagnostics
        out[name] = build_model(document.data)
    return out


def scope_of(loaded: dict) -> list[ScopeEntry]:
    policy = loaded["org-policies"]
    return [ScopeEntry(policy.metadata.name, policy.metadata.version, model_digest(policy), policy)]


@pytest.mark.parametrize("name", NAMES)
def test_ops_twin_loads_to_the_same_data(name: str):
    yaml_doc, _ = load_file(ROOT / "packs" / f"{name}.yaml")
    ops_doc, diagnostics = load_file(ROOT / "examples" / "ops" / f"{name}.ops")
    assert diagnostics == []
    assert ops_doc.data == yaml_doc.data


def test_each_ops_pack_compiles_to_a_byte_identical_plan():
    from_yaml, from_ops = models(ROOT / "packs", ".yaml"), models(ROOT / "examples" / "ops", ".ops")
    assert model_digest(from_yaml["org-policies"]) == model_digest(from_ops["org-policies"])
    for name in NAMES[1:]:
        _, yaml_bytes = compile_pack(from_yaml[name], scope_of(from_yaml))
        _, ops_bytes = compile_pack(from_ops[name], scope_of(from_ops))
        assert ops_bytes == yaml_bytes, name


def test_discover_finds_ops_packs_but_not_ops_tests(tmp_path: Path):
    (tmp_path / "a.ops").write_text("x")
    (tmp_path / "a.test.ops").write_text("x")
    (tmp_path / "b.yaml").write_text("x")
    assert [p.name for p in discover([tmp_path])] == ["a.ops", "b.yaml"]


def test_ops_positions_point_at_the_statement(tmp_path: Path):
    document, _ = load_file(ROOT / "examples" / "ops" / "sev2.ops")
    lines = document.source.text.splitlines()
    span = document.key_span(("playbooks", "query-latency-regression", "steps", 0, "timeout"))
    assert lines[span.line - 1][span.col - 1 :].startswith("timeout 10s")
    span = document.span(("hooks", "onLatencyBreach", "cooldown"))
    assert lines[span.line - 1][span.col - 1 :].startswith("10m")
    when = ("playbooks", "query-latency-regression", "steps", 1, "when")
    text = document.data["playbooks"]["query-latency-regression"]["steps"][1]["when"]
    offset = text.index("params")
    span = document.expression_span(when, offset, offset + 6)
    assert lines[span.line - 1][span.col - 1 : span.end_col - 1] == "params"


def test_yaml_loading_does_not_import_the_ops_front_end():
    import subprocess
    import sys

    code = "import sys; from opsdsl.cli.main import main; import opsdsl.lint.engine; print('opsdsl.lang.ops' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
