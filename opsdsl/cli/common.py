"""What several command files share: the `--state-dir` option and the RUN argument.

A RUN is a full run id, a unique prefix of one (4 characters or more), or `latest` (the
newest top-level run), for every command that takes one: `show`, `resume`, `approve`,
`decide`, `ack`, `ledger show --run`. It is resolved once, here, by
`opsdsl.runtime.inspect.resolve_run`, so each command gets the full id and all of them
accept the same words. `--state-dir` is eager (processed before the other parameters,
wherever it is on the command line) so that RUN can be looked up in the right place.
"""

from __future__ import annotations

from pathlib import Path

import click

STATE_HELP = "State directory (default: $OPSDSL_HOME, else ./.opsdsl)."
RUN_HELP = "a run id, a unique prefix of one (4 characters or more), or `latest`"


def state_option(function):
    """`--state-dir DIR`, read before the other parameters (a RUN needs it)."""
    return click.option(
        "--state-dir", type=click.Path(file_okay=False, path_type=Path), is_eager=True, help=STATE_HELP
    )(function)


def run_reference(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: the full id of the run `value` names, in the command's state directory.

    No such run, an ambiguous prefix or no state directory is a usage error (exit 2).
    """
    if value is None:
        return None
    if "state_dir" not in ctx.params:  # a command whose --state-dir is not eager: a bug of ours
        raise RuntimeError(f"{ctx.command.name}: --state-dir must be eager for {param.human_readable_name}")
    from opsdsl.runtime.inspect import resolve_run
    from opsdsl.runtime.store import Store, state_dir

    store = Store(state_dir(ctx.params["state_dir"]), create=False)
    try:
        return resolve_run(store, value)
    finally:
        store.close()
