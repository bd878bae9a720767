"""Path options for files opsdsl reads: click's checks, and no FIFO, socket or device.

Reading a named pipe blocks until someone writes to it, and a device may never end, so a
file the user names must be a regular file (or, where folders are taken, a folder). The
refusal is a usage error (exit 2) that says what the path is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from opsdsl.files import not_regular


class InputPath(click.Path):
    """A `click.Path` that also refuses what is neither a regular file nor a folder."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        if str(converted) == "-" and self.allow_dash:
            return converted
        try:
            kind = not_regular(os.stat(converted).st_mode)
        except (OSError, ValueError):
            return converted  # missing, a loop: click (exists=True) or the reader says so
        if kind is not None and not (kind == "a directory" and self.dir_okay):
            self.fail(f"{click.format_filename(converted)!r} is {kind}, not a regular file.", param, ctx)
        return converted


def input_file(exists: bool = True) -> InputPath:
    """A regular file opsdsl reads (as a Path)."""
    return InputPath(exists=exists, dir_okay=False, path_type=Path)


class PackPath(InputPath):
    """A pack to run (`--pack`): a policy pack has no playbooks, so naming one is a usage error."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        converted = super().convert(value, param, ctx)
        from opsdsl.build.pipeline import looks_like_policy_pack

        if Path(converted).is_file() and looks_like_policy_pack(Path(converted)):
            self.fail(
                f"{click.format_filename(converted)!r} is a policy pack (kind: PolicyPack): it has no playbooks"
                " to run. Name a pack (kind: Pack) here; policy packs beside it are in scope, or give them"
                " with --policies.",
                param,
                ctx,
            )
        return converted


def pack_file(exists: bool = True) -> PackPath:
    """A pack file to run (as a Path), refusing a policy pack."""
    return PackPath(exists=exists, dir_okay=False, path_type=Path)


def input_paths() -> InputPath:
    """Files or folders of packs or tests (as Paths); a folder's special files are skipped."""
    return InputPath(path_type=Path)
