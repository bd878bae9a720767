"""`opsdsl fmt`: lay out .ops files canonically, and convert packs between YAML and .ops.

    opsdsl fmt pack.ops                 # the formatted text on stdout
    opsdsl fmt --check packs/           # exit 1 if any .ops file would change (for CI)
    opsdsl fmt --in-place packs/        # rewrite .ops files
    opsdsl fmt --to ops pack.yaml       # convert; --to yaml converts the other way
    opsdsl fmt --to yaml -o out/ packs/ # write converted files into out/

Without `--to`, YAML files given by name are refused (there is no YAML formatter) and
folders contribute their .ops files only. Exit codes: 0 done, 1 a file would change
(`--check`) or could not be read or converted, 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from opsdsl.cli.paths import input_paths
from opsdsl.errors import OpsdslError, UsageError

_OPS, _YAML = ".ops", (".yaml", ".yml")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=input_paths())
@click.option("--check", is_flag=True, help="Write nothing; exit 1 and name each file that would change.")
@click.option("--to", "target", type=click.Choice(["ops", "yaml"]), help="Convert to this form.")
@click.option(
    "-o",
    "--output-dir",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write results into DIR (file names keep their stem).",
)
@click.option("--in-place", is_flag=True, help="Rewrite the files themselves (without --to: .ops files only).")
def fmt(paths: tuple[Path, ...], check: bool, target: str | None, out_dir: Path | None, in_place: bool) -> None:
    """Format .ops packs, or convert packs between YAML and .ops (--to)."""
    from opsdsl.lang.loader import discover, display_path, read_source

    if in_place and (out_dir or target):
        raise UsageError("--in-place rewrites .ops files as they are; it cannot be combined with --to or -o")
    if check and (out_dir or in_place):
        raise UsageError("--check writes nothing; drop -o / --in-place")
    for path in paths:
        if not path.exists():
            raise UsageError(f"{path}: no such file or folder")
    files = _select(discover(paths), paths, target)
    if not files:
        raise UsageError("no files to format here (.ops packs; with --to yaml|ops, YAML packs too)")
    if len(files) > 1 and not (check or in_place or out_dir):
        raise UsageError("several files: pass -o DIR, --in-place or --check (stdout takes one file)")
    changed, failed = [], 0
    for path in files:
        text, problems = read_source(path)
        shown = display_path(path)
        try:
            if text is None:
                raise OpsdslError(f"cannot read {shown}", tuple(problems))
            result, suffix = _transform(text, shown, path, target)
        except OpsdslError as exc:
            failed += 1
            click.echo(f"opsdsl: error: {exc.message}", err=True)
            for diagnostic in exc.diagnostics:
                click.echo(diagnostic.render(), err=True)
            continue
        if check:
            if result != text or suffix != path.suffix:
                changed.append(shown)
                click.echo(f"would reformat {shown}" if target is None else f"would convert {shown}")
            continue
        if out_dir is not None or in_place:
            from opsdsl.files import write_atomic

            destination = path if in_place else out_dir / (path.stem + suffix)
            if in_place and result == text:
                continue
            write_atomic(destination, result)
            click.echo(f"wrote {display_path(destination)}", err=True)
        else:
            click.echo(result, nl=False)
    if check and not failed:
        click.echo(f"{len(changed)} of {len(files)} files would change" if changed else "all files formatted", err=True)
    sys.exit(1 if failed or changed else 0)


def _select(found: list[Path], given: tuple[Path, ...], target: str | None) -> list[Path]:
    named = {p for p in given if p.is_file()}
    out = []
    for path in found:
        if path.suffix == _OPS:
            out.append(path)
        elif path.suffix in _YAML:
            if target is not None:
                out.append(path)
            elif path in named:
                raise UsageError(f"{path}: a YAML pack; convert it with --to ops (there is no YAML formatter)")
        elif path in named:
            raise UsageError(f"{path}: not a pack file (.ops, .yaml or .yml)")
    return out


def _transform(text: str, shown: str, path: Path, target: str | None) -> tuple[str, str]:
    """The new text and the suffix its file takes."""
    from opsdsl.lang.ops.convert import ConversionError, format_text, ops_to_yaml, yaml_to_ops

    is_ops = path.suffix == _OPS
    if target == "yaml":
        return (ops_to_yaml(text, shown) if is_ops else text), ".yaml" if is_ops else path.suffix
    if target == "ops" and not is_ops:
        return yaml_to_ops(text, shown), _OPS
    formatted, diagnostics = format_text(text, shown)
    if formatted is None:
        raise ConversionError(f"{shown} has syntax errors", tuple(diagnostics))
    return formatted, _OPS
