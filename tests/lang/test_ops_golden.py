"""Golden files: each broken .ops pack beside the exact diagnostics `opsdsl lint` prints.

Regenerate with `pytest --update-golden` and read the diff like any other change.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from opsdsl.lang.config import Config
from opsdsl.lint.engine import lint_paths
from opsdsl.lint.render import to_text

FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "ops"
CASES = sorted(FOLDER.glob("*.ops"))


@pytest.mark.parametrize("pack", CASES, ids=lambda p: p.stem)
def test_ops_lint_output_matches_golden(pack: Path, update_golden: bool, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(FOLDER)
    output = to_text(lint_paths([Path(pack.name)], Config()))
    golden = pack.with_suffix(".diagnostics.txt")
    if update_golden:
        golden.write_text(output, encoding="utf-8")
    assert output == golden.read_text(encoding="utf-8")


def test_several_independent_syntax_errors_are_all_reported():
    text = (FOLDER / "several_errors.diagnostics.txt").read_text(encoding="utf-8")
    assert text.count("error[OPS002]") == 4
