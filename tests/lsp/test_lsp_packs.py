"""`opsdsl lsp` on the repository's own packs (YAML and .ops) and their pack tests, as an
editor opened on `packs/` would see them: the same findings as `opsdsl lint packs/`, an
answer (not an error) at every line for hover or completion, and a definition for every
step, playbook, trigger, param and input a pack refers to."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsp_client import Client

from opsdsl.lsp import features

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"packs": sorted((ROOT / "packs").glob("*.yaml")), "ops": sorted((ROOT / "examples" / "ops").glob("*.ops"))}


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_every_pack_answers_like_lint_and_resolves_its_names(folder: str, tmp_path: Path):
    for path in FOLDERS[folder]:
        shutil.copy(path, tmp_path / path.name)
    lint = subprocess.run(
        [sys.executable, "-m", "opsdsl", "lint", "--format", "json", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = json.loads(lint.stdout)["diagnostics"]
    c = Client(tmp_path)
    try:
        for path in FOLDERS[folder]:
            name = path.name
            text = path.read_text()
            c.open(name, text)
            got = c.diagnostics(name, timeout=60)
            assert [(d["code"], d["range"]["start"]["line"] + 1) for d in got] == [
                (d["code"], d["line"]) for d in expected if d["file"] == name
            ], name
            for number, line in enumerate(text.splitlines()):  # hover on a key, complete after it: alternately
                if number % 2:
                    c.request("textDocument/hover", c.at(name, number, len(line) - len(line.lstrip())))
                else:
                    c.request("textDocument/completion", c.at(name, number, len(line)))
            if path.suffix == ".ops" or name.endswith(".test.yaml") or "kind: PolicyPack" in text:
                continue
            references = [s for s in features.symbols_in(path, text) if not s.definition]
            assert references, name
            for symbol in references:
                found = c.request("textDocument/definition", c.at(name, symbol.range.line, symbol.range.col))
                assert found, f"{name}:{symbol.range.line + 1}: no definition of {symbol.kind} {symbol.name}"
    finally:
        assert c.close() == 0
