"""The body of `opsdsl lint`, shared by the click command (opsdsl/cli/app.py) and the
click-free path `opsdsl.cli.main` takes for a plain `opsdsl lint PATH...`, so both print
the same bytes and exit with the same code. It imports no click."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Echo = Callable[..., None]  # echo(text, err=False): write `text` as is, and flush


def run_lint(
    paths: Sequence[Path],
    fmt: str,
    output: Path | None,
    config_path: Path | None,
    fail_on: str | None,
    jobs: int | None,
    echo: Echo,
) -> None:
    """Lint `paths`, print the report (or write it to `output`), and exit: 0 when clean,
    1 when a finding reaches the threshold."""
    from opsdsl.errors import Severity
    from opsdsl.lang.config import find_config, load_config
    from opsdsl.lint.engine import lint_paths
    from opsdsl.lint.render import render

    config = load_config(config_path or find_config(Path.cwd()))
    result = lint_paths(list(paths), config, jobs=jobs)
    text = render(result, fmt)
    if output is not None:
        from opsdsl.files import write_atomic

        write_atomic(output, text)
        if fmt != "text":
            from opsdsl.lint.render import summary

            echo(summary(result) + "\n", err=True)
    else:
        echo(text)
    threshold = Severity(fail_on) if fail_on else config.fail_on
    sys.exit(1 if result.failed(threshold) else 0)
