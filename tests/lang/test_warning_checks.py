"""`opsdsl compile` reports errors only, so it leaves out the rules that can only warn
(`WARNING_CHECKS`, `run_checks(errors_only=True)`): the same errors, in the same order,
as the full check stage, on every pack and fixture the repository has."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from opsdsl.build.pipeline import analyse_file
from opsdsl.errors import Severity
from opsdsl.lang.checks import REVIEW_CHECKS, SEMANTIC_CHECKS, WARNING_CHECKS, Scope, Unit, run_checks
from opsdsl.lang.config import Config
from opsdsl.lang.rules import RULES

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted(
    p
    for pattern in ("packs/*.yaml", "tests/fixtures/lint/*.yaml", "examples/**/*.yaml", "tests/fixtures/ops/*.ops")
    for p in ROOT.glob(pattern)
    if not p.name.endswith(".test.yaml")
)


def test_the_warning_checks_are_rules_of_the_check_stage():
    assert set(SEMANTIC_CHECKS) | set(REVIEW_CHECKS) >= WARNING_CHECKS


@pytest.mark.parametrize("check", sorted(WARNING_CHECKS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_a_warning_check_names_only_warning_rules(check):
    """Read from the rule's source (and what it calls in its module): a rule that learns an
    error code must leave WARNING_CHECKS, or compile would miss that error."""
    source = inspect.getsource(check)
    module = inspect.getmodule(check)
    for name in re.findall(r"\b(_[a-z][a-z_]*)\(", source):
        helper = getattr(module, name, None)
        if inspect.isfunction(helper):
            source += inspect.getsource(helper)
    codes = set(re.findall(r"OPS0\d\d", source))
    assert codes, check.__name__
    assert {code: RULES[code].severity for code in codes} == dict.fromkeys(codes, Severity.WARNING)


def test_the_corpus_is_not_empty():
    assert len(CORPUS) > 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(ROOT)))
def test_errors_only_finds_the_same_errors(path: Path):
    analysis = analyse_file(path, stop_after="model", checked=True)
    if analysis.model is None:
        pytest.skip("no model: the check stage does not run")
    unit = Unit(analysis.document, analysis.model)
    full = run_checks(unit, Scope())
    errors_only = run_checks(unit, Scope(), errors_only=True)
    assert [d for d in errors_only if d.severity is Severity.ERROR] == [d for d in full if d.severity is Severity.ERROR]
    assert all(d.severity is Severity.WARNING for check in WARNING_CHECKS for d in check(unit, Scope()))


def test_errors_only_leaves_out_the_warnings(tmp_path: Path, minimal_pack: str):
    pack = tmp_path / "pack.yaml"
    pack.write_text(minimal_pack.replace("params:\n", "params:\n  never_used: {type: string, default: x}\n", 1))
    assert "OPS047" in {d.code for d in analyse_file(pack, checked=True).diagnostics}
    assert "OPS047" not in {d.code for d in analyse_file(pack, checked=True, errors_only=True).diagnostics}


def test_a_configuration_keeps_every_rule(tmp_path: Path, minimal_pack: str):
    """A configuration may raise a warning to an error: then nothing is left out."""
    pack = tmp_path / "pack.yaml"
    pack.write_text(minimal_pack.replace("params:\n", "params:\n  never_used: {type: string, default: x}\n", 1))
    found = analyse_file(pack, config=Config(), checked=True, errors_only=True).diagnostics
    assert "OPS047" in {d.code for d in found}
