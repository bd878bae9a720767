"""The package's folders are the pipeline, and imports run one way through them:
cli → (rehearsal, serve) → runtime → (audit, lint) → build → lang → the ground floor.

Every import is counted, also those inside functions (they are how start-up stays fast,
not a way around the order)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "opsdsl"

# Folder → rank. A module may import from its own folder and from folders of lower rank;
# folders of equal rank are peers and do not import each other.
RANKS = {
    "": 0,  # errors, files, resources, canonical, __init__
    "lang": 1,
    "build": 2,
    "audit": 3,
    "lint": 3,
    "runtime": 4,
    "rehearsal": 5,
    "serve": 5,
    "lsp": 5,  # the language server: lint's engine and the language's schema, for editors
    "cli": 6,
}


def _module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _imports(name: str, path: Path) -> set[str]:
    """The opsdsl modules `name` imports (a `from pkg import submodule` counts as the submodule)."""
    found: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & MODULES.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(module)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANKS) else ""


def test_every_folder_has_a_rank():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and (path / "__init__.py").exists()}
    assert folders == set(RANKS) - {""}


def test_the_top_level_holds_only_the_ground_floor():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "canonical.py", "errors.py", "files.py", "resources.py"]


def test_imports_run_down_the_pipeline():
    wrong = []
    for module in sorted(MODULES):
        if module == "opsdsl.__main__":
            continue  # `python -m opsdsl` starts the CLI: the one module above everything
        own = _folder(module)
        for target in sorted(GRAPH[module] - {"opsdsl"}):
            if _folder(target) != own and RANKS[_folder(target)] >= RANKS[own]:
                wrong.append(f"{module} ({own or 'ground floor'}) imports {target}")
    assert wrong == []


def test_the_scan_sees_imports_inside_functions():
    assert "opsdsl.lang.ops" in GRAPH["opsdsl.lang.loader"]  # imported only when an .ops file is read


def test_no_module_imports_itself_back_through_others():
    """No import cycles: the YAML and .ops readers meet in `lang.source`, which imports neither."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_readers_meet_in_one_small_module():
    assert "opsdsl.lang.loader" not in GRAPH["opsdsl.lang.ops"]
    assert not any(target.startswith("opsdsl.lang.ops") for target in GRAPH["opsdsl.lang.yaml_reader"])
    assert GRAPH["opsdsl.lang.source"] <= {"opsdsl.errors"}
