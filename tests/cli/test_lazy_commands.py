"""`opsdsl.cli.main.ELSEWHERE` names every command of every other CLI module, so the lazy
group lists and finds exactly what registering them all at import did."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from opsdsl.cli.main import ELSEWHERE, LazyGroup, cli


def test_the_table_names_each_modules_commands_in_order():
    for module_name, names in ELSEWHERE:
        module = importlib.import_module(module_name)
        commands = getattr(module, "COMMANDS", None) or [getattr(module, n) for n in names]
        assert tuple(c.name for c in commands) == names, module_name


def test_list_and_lookup_agree_with_the_full_mapping():
    group = LazyGroup("opsdsl")
    ctx = click.Context(group)
    listed = group.list_commands(ctx)
    assert listed == sorted(n for _, names in ELSEWHERE for n in names)
    assert all(group.get_command(ctx, n) is not None for n in listed)
    assert group.get_command(ctx, "no-such-command") is None
    assert sorted(cli.commands) == cli.list_commands(click.Context(cli))
    assert {"lint", "compile", "graph", "lock", "drift", "schema", "rules"} <= set(cli.commands)


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for _, names in ELSEWHERE:
        for name in names:
            assert f"\n  {name} " in result.output


def test_lint_imports_no_other_command_module():
    code = (
        "import sys; from opsdsl.cli.main import main, ELSEWHERE\n"
        "try:\n    main(['lint', 'packs/sev2.yaml'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m, _ in ELSEWHERE if m in sys.modules))"
    )
    root = importlib.import_module("opsdsl").__file__.rsplit("/opsdsl/", 1)[0]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr


def test_every_cli_modules_commands_are_reachable():
    """A new module's COMMANDS must be in ELSEWHERE (or added to a group that is)."""
    reachable, stack = set(), list(cli.commands.values())
    while stack:
        command = stack.pop()
        reachable.add(id(command))
        stack.extend(getattr(command, "commands", {}).values())
    folder = Path(importlib.import_module("opsdsl.cli").__file__).parent
    for source in sorted(folder.glob("*.py")):
        module = importlib.import_module(f"opsdsl.cli.{source.stem}")
        for command in getattr(module, "COMMANDS", ()):
            assert id(command) in reachable, f"{source.name}: `{command.name}` is not registered; add it to ELSEWHERE"
