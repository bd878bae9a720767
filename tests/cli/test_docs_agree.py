"""Docs that disagree with behaviour (issue 13 #12): what README and docs/lint.md say about
the CLI, the pre-commit hook and installing opsdsl is checked against the real thing."""

from __future__ import annotations

import re
from pathlib import Path

import click

from opsdsl.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def _without_groups(text: str) -> str:
    """`text` with its optional `[...]` and alternative `(... | ...)` parts removed."""
    previous = None
    while previous != text:
        previous = text
        text = re.sub(r"\[[^\[\]]*\]|\([^()]*\)", " ", text)
    return text


def _command(words: list[str]) -> click.Command | None:
    command: click.Command = cli
    for word in words:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    return command


def test_options_the_readme_shows_as_required_are_required():
    rows = re.findall(r"^\| `(opsdsl [^`]+)`", (ROOT / "README.md").read_text(), re.MULTILINE)
    assert rows
    wrong = []
    for row in rows:
        for usage in row.split("` / `"):
            words = usage.replace("\\|", "|").split()
            command = _command([w for w in words[1:3] if not w.startswith("-")])
            if command is None or command is cli:
                continue
            shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", _without_groups(" ".join(words))))
            for param in command.params:
                if isinstance(param, click.Option) and set(param.opts) & shown and not param.required:
                    wrong.append(f"{usage}: {'/'.join(param.opts)} is optional")
    assert not wrong, wrong


def test_runs_status_takes_the_real_statuses_as_the_docs_list_them():
    from opsdsl.cli.run import runs

    status = next(p for p in runs.params if p.name == "status")
    assert isinstance(status.type, click.Choice)
    docs = (ROOT / "docs" / "runtime.md").read_text()
    assert "takes any text" not in docs
    for choice in status.type.choices:
        assert f"`{choice}`" in docs


def test_the_pre_commit_hook_in_the_docs_is_the_one_shipped():
    shipped = (ROOT / ".pre-commit-hooks.yaml").read_text().strip()
    lint_doc = (ROOT / "docs" / "lint.md").read_text()
    section = lint_doc[lint_doc.index("## pre-commit") :]
    shown = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1).strip()
    assert shown == shipped


def test_the_docs_never_install_opsdsl_from_a_registry_it_is_not_on():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert not re.search(r"pip install (-U )?opsdsl(\s|$|\[)", text), doc.name
