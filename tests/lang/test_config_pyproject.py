"""`find_config`'s quick look at a pyproject.toml agrees with parsing it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from opsdsl.lang.config import _has_opsdsl_table, find_config

CASES = [
    "[tool.opsdsl]\nignore = []\n",
    '[tool . "opsdsl"]\na = 1\n',
    "[tool]\nopsdsl = {ignore = []}\n",
    "tool = {opsdsl = {ignore = []}}\n",
    '[tool.x]\na = 1\n[project]\nname = "opsdsl"\n',
    '[tool.ruff]\nx = 1\n[tool.opsdsl]\nfail-on = "error"\n',
    '["tool".opsdsl]\na = 1\n',
    '[tool."\\u006Fpsdsl"]\na = 1\n',
    '[project]\nname = "opsdsl"\n[tool.ruff]\nline-length = 1\n',
    "tool.opsdsl.ignore = []\n",
    "[ tool ]\nopsdsl.ignore = []\n",
    "[[tool.opsdsl]]\na = 1\n",
    "[tool.pytest]\nx = 1\n",
]


@pytest.mark.parametrize("text", CASES)
def test_quick_look_agrees_with_tomllib(text: str):
    assert _has_opsdsl_table(text) == ("opsdsl" in tomllib.loads(text).get("tool", {}))


def test_the_repositorys_pyproject_has_no_opsdsl_table_and_a_parent_one_is_found(tmp_path: Path):
    root = Path(__file__).resolve().parents[2]
    assert not _has_opsdsl_table((root / "pyproject.toml").read_text("utf-8"))
    (tmp_path / "pyproject.toml").write_text("[tool.opsdsl]\nignore = []\n", "utf-8")
    inner = tmp_path / "a"
    inner.mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "opsdsl-packs"\n', "utf-8")
    assert find_config(inner) == tmp_path / "pyproject.toml"
