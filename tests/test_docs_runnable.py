"""The commands README and docs/ show, run (issue 18 part 3).

A fenced block is runnable when the line before its opening fence is `<!-- runnable -->`
and the fence is ```` ```console ````. In it, a line `$ COMMAND` is a command (run by bash,
with pipefail, in the root of a temporary copy of the repository, `opsdsl` on PATH), and the
lines after it, up to the next `$ ` line, are its output as the page shows it (stdout and
stderr together, trailing spaces ignored). A line `...` stands for any number of lines,
and `...` inside a line for any text (times, ids, counts that vary). A command expects exit code 0, or N when it ends with `# exit N`.
The runnable blocks of one page share one copy and run in the order of the page, so a page
can build on its earlier commands. docs/decisions.md ("Docs that run") says why.

The test fails when a command no longer works or its output no longer matches the page.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from repo_copy import ROOT, copy_repo

MARKER = "<!-- runnable -->"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass(frozen=True)
class Command:
    page: str
    line: int  # 1-based line of the `$ ` line in the page
    command: str
    expected: tuple[str, ...]
    exit_code: int


def runnable_commands(path: Path) -> list[Command]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[Command] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARKER:
            fence = lines[i + 1] if i + 1 < len(lines) else ""
            assert fence.strip() == "```console", f"{path.name}:{i + 2}: a runnable block is a ```console fence"
            j = i + 2
            current: list | None = None
            while j < len(lines) and lines[j].strip() != "```":
                text = lines[j]
                if text.startswith("$ "):
                    if current:
                        out.append(_command(path, *current))
                    current = [j + 1, text[2:], []]
                else:
                    assert current is not None, f"{path.name}:{j + 1}: output before the first `$ ` command"
                    current[2].append(text)
                j += 1
            assert j < len(lines), f"{path.name}:{i + 2}: the runnable block is not closed"
            if current:
                out.append(_command(path, *current))
            i = j
        i += 1
    return out


def _command(path: Path, line: int, command: str, expected: list[str]) -> Command:
    match = re.search(r"\s#\s*exit\s+(\d+)\s*$", command)
    code = int(match.group(1)) if match else 0
    return Command(path.relative_to(ROOT).as_posix(), line, command, tuple(expected), code)


def matches(expected: tuple[str, ...], actual: list[str]) -> bool:
    """`expected` against `actual` line by line; `...` takes any number of lines."""
    if not expected:
        return not actual
    head, rest = expected[0].rstrip(), expected[1:]
    if head == "...":
        return any(matches(rest, actual[k:]) for k in range(len(actual) + 1))
    return bool(actual) and _line_matches(head, actual[0].rstrip()) and matches(rest, actual[1:])


def _line_matches(expected: str, actual: str) -> bool:
    if "..." not in expected:
        return expected == actual
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


RUNNABLE = {page.relative_to(ROOT).as_posix(): runnable_commands(page) for page in PAGES}
RUNNABLE = {page: commands for page, commands in RUNNABLE.items() if commands}


def test_the_pages_have_runnable_blocks():
    """The walker finds blocks (a renamed marker must not silently turn the test off)."""
    assert "README.md" in RUNNABLE
    assert sum(len(c) for c in RUNNABLE.values()) >= 8


def test_the_matcher():
    assert matches(("a", "...", "z"), ["a", "b", "c", "z"])
    assert matches(("a", "...", "z"), ["a", "z"])
    assert not matches(("a", "z"), ["a", "b", "z"])
    assert matches((), [])
    assert not matches((), ["noise"])
    assert matches(("...",), ["x", "y"])
    assert matches(("39 cases: 39 passed in ...s",), ["39 cases: 39 passed in 4.13s"])
    assert not matches(("39 cases: 39 passed in ...s",), ["39 cases: 38 passed in 4.13s"])


@pytest.mark.parametrize("page", sorted(RUNNABLE))
def test_runnable_blocks_work_as_the_page_shows(page: str, tmp_path: Path):
    work = copy_repo(tmp_path / "repo")
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSDSL_") and k != "PYTHONPATH"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", COLUMNS="100", NO_COLOR="1", TERM="dumb")
    for command in RUNNABLE[page]:
        result = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command.command],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        where = f"{page}:{command.line}: $ {command.command}"
        assert result.returncode == command.exit_code, f"{where}\nexit {result.returncode}\n{result.stdout}"
        actual = result.stdout.splitlines()
        assert matches(command.expected, actual), (
            f"{where}\nthe page shows:\n" + "\n".join(command.expected) + "\nit printed:\n" + result.stdout
        )
