"""Finding and reading test files: source → syntax → schema, with located diagnostics.

YAML test files go through the pack loader (`opsdsl.lang.loader`: the same YAML dialect, the
same OPS001–006); `*.test.ops` files through `ops_form`. Both are then checked against
`schemas/test.schema.json` with our closure-compiled validator (OPS010–013). Pack
discovery skips test files, so they are found here, explicitly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from opsdsl.errors import Diagnostic, UsageError
from opsdsl.lang.loader import TEST_SUFFIXES, display_path, read_source
from opsdsl.lang.rules import rule
from opsdsl.lang.schema import Problem, compile_schema, validate_with
from opsdsl.lang.source import Document, Source
from opsdsl.lang.yaml_reader import load_text

from .model import TestFile, build_test_file

Path_ = tuple[str | int, ...]


def is_test_file(path: Path) -> bool:
    return path.name.endswith(TEST_SUFFIXES) and not path.name.startswith(".")


def discover_tests(paths: Sequence[Path]) -> list[Path]:
    """Test files named by `paths`: files as given, folders searched recursively (hidden
    files and folders skipped). A missing path, or a file that is not a test file, is a
    usage error."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    found: dict[Path, Path] = {}  # resolved → as first named, so `x/` and `./x/t.test.yaml` run it once
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if is_test_file(Path(name)):
                        found.setdefault(Path(root, name).resolve(), Path(root, name))
        elif is_test_file(path):
            found.setdefault(path.resolve(), path)
        else:
            raise UsageError(f"{path} is not a pack test: test files end in {', '.join(TEST_SUFFIXES)}")
    return sorted(found.values(), key=lambda p: p.as_posix())


@cache
def pack_test_schema() -> dict:
    """schemas/test.schema.json, parsed."""
    from opsdsl.resources import read_text

    return json.loads(read_text("schemas/test.schema.json"))


@cache
def _validator():
    return compile_schema(pack_test_schema(), "pack test")


def validate_test(data: object) -> list[Problem]:
    """Every schema problem of a loaded test document, one per path and code."""
    return validate_with(_validator(), data)


def load_document(path: Path) -> tuple[Document | None, list[Diagnostic]]:
    """The test file's data with positions; diagnostics carry their source lines."""
    text, diagnostics = read_source(path)
    if text is None:
        return None, diagnostics
    shown = display_path(path)
    if path.name.endswith(".ops"):
        from .ops_form import load_text as load_ops

        document, diagnostics = load_ops(text, shown)
    else:
        document, diagnostics = load_text(text, shown)
    lines = Source(shown, text)
    return document, [d if d.source_line else d.with_source_line(lines.line(d.span.line)) for d in diagnostics]


def located(document: Document, code: str, path: Path_, message: str, hint: str | None = None, at: str = "value"):
    """A diagnostic at the value (or key) found at `path`, with its source line."""
    span = document.key_span(path) if at == "key" else document.span(path)
    return Diagnostic(code, rule(code).severity, message, span, hint, document.source.line(span.line))


@dataclass
class Loaded:
    """A test file as far as it could be read: file-level problems stop every case; a case
    with problems of its own is not run, the others are."""

    path: Path
    test: TestFile | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)  # about the file
    case_diagnostics: dict[int, list[Diagnostic]] = field(default_factory=dict)
    case_names: dict[int, str] = field(default_factory=dict)

    def add(self, path: Path_, diagnostic: Diagnostic) -> None:
        if len(path) >= 2 and path[0] == "cases" and isinstance(path[1], int):
            self.case_diagnostics.setdefault(path[1], []).append(diagnostic)
        else:
            self.diagnostics.append(diagnostic)


def load_test_file(path: Path) -> Loaded:
    """Read, parse and schema-check one test file, and build what is valid of it."""
    loaded = Loaded(path)
    document, diagnostics = load_document(path)
    loaded.diagnostics.extend(diagnostics)
    if document is None or diagnostics:
        return loaded
    for problem in validate_test(document.data):
        loaded.add(
            problem.path, located(document, problem.code, problem.path, problem.message, problem.hint, problem.at)
        )
    if loaded.diagnostics:
        return loaded
    cases = document.data["cases"]
    for index, case in enumerate(cases):
        name = case.get("name") if isinstance(case, dict) else None
        loaded.case_names[index] = name if isinstance(name, str) else f"case {index + 1}"
    loaded.test = build_test_file(path, document, skip=set(loaded.case_diagnostics))
    return loaded
