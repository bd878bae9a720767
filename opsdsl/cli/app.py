"""The command line's click group: thin wrappers over the modules.

`opsdsl.cli.main.main` runs it and handles errors in one place (exit codes: 0 success, 1
findings or a refused input, 2 usage error, 3 internal error); `opsdsl lint PATH...` and
`opsdsl --version` do not import click at all (see main.py). Heavy modules are imported
inside the commands that need them, to keep start-up fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from opsdsl import __version__
from opsdsl.cli.paths import input_file, input_paths
from opsdsl.files import write_atomic


def _choose_database(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`opsdsl --database URL COMMAND`: the state backend for every command, as $OPSDSL_DATABASE."""
    if value is not None:
        from opsdsl.runtime.database import database_url

        database_url(value)  # a bad URL is refused here, before the command runs
        os.environ["OPSDSL_DATABASE"] = value


# Commands defined in other modules, in the order they were registered. A module is imported
# when one of its commands is looked up (or for `--help`, which lists them all), so
# `opsdsl lint` imports none of them; tests/cli/test_lazy_commands.py keeps this table true.
ELSEWHERE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("opsdsl.cli.signing", ("keygen", "sign", "verify")),
    ("opsdsl.cli.fmt", ("fmt",)),
    (
        "opsdsl.cli.run",
        ("init", "run", "resume", "approve", "decide", "ack", "cancel", "runs", "ledger", "incident", "report"),
    ),
    ("opsdsl.cli.events", ("fire", "watch", "serve")),
    ("opsdsl.cli.test", ("test",)),
    ("opsdsl.cli.users", ("users",)),
    ("opsdsl.cli.lsp", ("lsp",)),
    ("opsdsl.cli.inspect", ("show",)),
    ("opsdsl.cli.runner", ("runner", "runner-token")),
    ("opsdsl.cli.sequencer", ("sequencer",)),
    ("opsdsl.cli.worker", ("worker",)),
    ("opsdsl.cli.db", ("db",)),
)


class LazyGroup(click.Group):
    """A group whose commands from `ELSEWHERE` are imported on first look-up. `commands`
    (click's mapping, which tests and plugins read and extend) imports them all first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._registered: dict[str, click.Command] = {}
        self._unloaded = {name: module for module, names in ELSEWHERE for name in names}
        super().__init__(*args, **kwargs)

    @property
    def commands(self) -> dict[str, click.Command]:  # type: ignore[override]
        for name in list(self._unloaded):
            self._load(name)
        return self._registered

    @commands.setter
    def commands(self, value: dict[str, click.Command]) -> None:
        self._registered = dict(value)

    def _load(self, name: str) -> None:
        module_name = self._unloaded.get(name)
        if module_name is None:
            return
        import importlib

        module = importlib.import_module(module_name)
        names = next(names for module, names in ELSEWHERE if module == module_name)
        for command in getattr(module, "COMMANDS", None) or [getattr(module, n) for n in names]:
            self.add_command(command)
        for n in names:
            self._unloaded.pop(n, None)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._registered[name] = cmd

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self._registered:
            self._load(cmd_name)
        return self._registered.get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._registered, *self._unloaded})


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="opsdsl", message="%(prog)s %(version)s")
@click.option(
    "--database",
    metavar="URL",
    expose_value=False,
    is_eager=True,
    callback=_choose_database,
    help="State database: a postgresql:// URL (default: $OPSDSL_DATABASE, else state.db in the state directory).",
)
def cli() -> None:
    """opsdsl: lint, compile and run incident-response packs."""


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=input_paths())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "sarif", "github", "gitlab"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the report to FILE (atomically) instead of stdout.",
)
@click.option(
    "--config",
    "config_path",
    type=input_file(),
    help="Configuration file (default: nearest .opsdsl.toml or pyproject.toml [tool.opsdsl]).",
)
@click.option(
    "--fail-on",
    type=click.Choice(["error", "warning"]),
    help="Lowest severity that makes the exit code 1 (default from config: warning).",
)
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Worker processes (default: one per CPU).")
def lint(
    paths: tuple[Path, ...],
    fmt: str,
    output: Path | None,
    config_path: Path | None,
    fail_on: str | None,
    jobs: int | None,
) -> None:
    """Check packs: YAML, schema, references, expressions and review rules.

    Exit 0 when clean, 1 when there are findings, 2 on a usage error.
    """
    from opsdsl.cli.lintcmd import run_lint

    run_lint(
        paths, fmt, output, config_path, fail_on, jobs, lambda text, err=False: click.echo(text, nl=False, err=err)
    )


@cli.command("compile")
@click.argument("paths", nargs=-1, required=True, type=input_paths())
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("build"),
    show_default=True,
    help="Folder for the signed plans and the build manifest.",
)
@click.option(
    "--key",
    "key_files",
    multiple=True,
    type=input_file(),
    help="Private key to sign with (repeatable).",
)
@click.option("--passphrase-env", metavar="VAR", help="Environment variable holding the private keys' passphrase.")
@click.option(
    "--emit", type=click.Choice(["model", "plan"]), help="Print one stage's output as JSON instead of writing plans."
)
@click.option("--rebuild", is_flag=True, help="Compile every pack again, ignoring the prior output.")
@click.option("-j", "--jobs", type=click.IntRange(min=1), help="Worker processes (default: one per CPU).")
def compile_command(
    paths: tuple[Path, ...],
    out_dir: Path,
    key_files: tuple[Path, ...],
    passphrase_env: str | None,
    emit: str | None,
    rebuild: bool,
    jobs: int | None,
) -> None:
    """Check packs and compile each into a signed plan (a DSSE envelope) in OUT.

    A second compile of an unchanged tree reuses the plans already there.
    """
    if emit:
        from opsdsl.build.emit import emit_stage

        click.echo(emit_stage(list(paths), emit), nl=False)
        return
    from opsdsl.cli.compilecmd import run_compile

    run_compile(
        paths,
        out_dir,
        key_files,
        passphrase_env,
        rebuild,
        jobs,
        lambda text, err=False: click.echo(text, nl=False, err=err),
    )


@cli.command()
@click.argument("pack_file", type=input_file())
@click.option("--playbook", help="Draw only this playbook (default: all).")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot", "svg"]), default="mermaid", show_default=True)
@click.option(
    "--policies",
    "--policy-pack",
    "policy_files",
    multiple=True,
    type=input_file(),
    help="Policy packs whose approval gates to show, as `run --policies` (default: those beside the pack).",
)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE instead of stdout."
)
def graph(pack_file: Path, playbook: str | None, fmt: str, policy_files: tuple[Path, ...], output: Path | None) -> None:
    """Draw a pack's playbook DAG: risk, approval gates and compensations visible."""
    from opsdsl.build.drawing import draw
    from opsdsl.build.pipeline import analyse_file
    from opsdsl.errors import OpsdslError
    from opsdsl.runtime.plans import policy_scope

    policies: list = []
    for path in policy_scope(pack_file, list(policy_files) if policy_files else None):  # the packs `run` uses
        analysis = analyse_file(path)
        if not analysis.ok or analysis.model is None or analysis.model.kind != "PolicyPack":
            raise OpsdslError(
                f"{path} is not a valid policy pack; run `opsdsl lint {path}`", tuple(analysis.diagnostics)
            )
        policies.extend(analysis.model.policies)
    analysis = analyse_file(pack_file, tuple(policies))
    if not analysis.ok or analysis.model is None:
        raise OpsdslError(
            f"{pack_file} has errors; run `opsdsl lint {pack_file}`",
            tuple(d for d in analysis.diagnostics if d.severity.value == "error"),
        )
    if analysis.model.kind != "Pack":
        raise click.UsageError(f"{pack_file} is a policy pack; it has no playbooks to draw")
    text = draw(analysis.model, playbook, fmt, (*analysis.model.policies, *policies))
    if output is not None:
        write_atomic(output, text)
    else:
        click.echo(text, nl=False)


@cli.command("lock")
@click.argument("paths", nargs=-1, type=input_paths())
@click.option(
    "--lock",
    "lock_file",
    type=input_file(exists=False),
    default=Path("opsdsl.lock"),
    show_default=True,
    help="The lock file.",
)
@click.option(
    "--restore",
    metavar="NAME",
    help="Write the locked revision of policy pack NAME back to its source file (a rollback).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --restore: write here instead of the recorded source path.",
)
def lock_command(paths: tuple[Path, ...], lock_file: Path, restore: str | None, output: Path | None) -> None:
    """Pin each pack's name, version and digest in opsdsl.lock."""
    from opsdsl.build import lockfile

    if restore:
        text, source = lockfile.restore_policy_pack(lockfile.read_lock(_checked_lock(lock_file)), restore)
        target = output or Path(source)
        write_atomic(target, text)
        click.echo(f"restored policy pack `{restore}` from {lock_file} to {target}")
        return
    if not paths:
        raise click.UsageError("name the packs to lock, e.g. `opsdsl lock packs/`")
    current = lockfile.analyse_current(list(paths))
    write_atomic(lock_file, lockfile.lock_text(lockfile.lock_document(current)))
    click.echo(f"locked {len(current)} pack{'s' if len(current) != 1 else ''} in {lock_file}")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=input_paths())
@click.option(
    "--lock",
    "lock_file",
    type=input_file(exists=False),
    default=Path("opsdsl.lock"),
    show_default=True,
    help="The lock file.",
)
@click.option(
    "--build",
    "build_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also check the plans in this folder (default: build/ if it exists).",
)
@click.option("--no-build", is_flag=True, help="Do not check plans.")
def drift(paths: tuple[Path, ...], lock_file: Path, build_dir: Path | None, no_build: bool) -> None:
    """List packs that changed since the lock, and plans that no longer match their source.

    Exit 0 when nothing drifted, 1 when something did.
    """
    from opsdsl.build import lockfile

    if build_dir is None and not no_build and Path("build").is_dir():
        build_dir = Path("build")
    findings = lockfile.drift(
        lockfile.analyse_current(list(paths)),
        lockfile.read_lock(_checked_lock(lock_file)),
        None if no_build else build_dir,
    )
    click.echo(lockfile.render(findings), nl=False)
    sys.exit(1 if findings else 0)


def _checked_lock(lock_file: Path) -> Path:
    """`lock_file`, once it is known to be bounded, UTF-8 JSON of sane depth (a missing one is
    left for `read_lock` to report)."""
    from opsdsl.lang.untrusted import read_json

    if lock_file.exists():
        read_json(lock_file, f"lock file {lock_file}")
    return lock_file


@cli.command()
@click.option(
    "--kind",
    type=click.Choice(["pack", "test"]),
    default="pack",
    show_default=True,
    help="Which schema: packs, or pack tests (*.test.yaml).",
)
def schema(kind: str) -> None:
    """Print the JSON Schema (draft 2020-12) of packs or of pack tests, for editors and other tools."""
    from opsdsl.resources import read_text

    click.echo(read_text(f"schemas/{kind}.schema.json"), nl=False)


@cli.command()
@click.argument("code", required=False)
def rules(code: str | None) -> None:
    """List the lint rules, or show one rule's summary."""
    from opsdsl.lang.rules import RULES

    if code:
        found = RULES.get(code.upper())
        if found is None:
            raise click.UsageError(f"unknown rule {code!r}")
        click.echo(f"{found.code} {found.name} ({found.severity.value})\n{found.summary}\nDocs: {found.doc_path}")
        return
    for item in RULES.values():
        click.echo(f"{item.code}  {item.severity.value:<7}  {item.name:<28} {item.summary}")
