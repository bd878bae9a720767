"""`opsdsl init`: make a state directory, in development mode or (`--production`) in the mode
where only reviewed plans run and records are signed with a key kept outside it."""

from __future__ import annotations

from pathlib import Path

import click

from opsdsl.cli.paths import input_file
from opsdsl.errors import UsageError


@click.command()
@click.option("--production", is_flag=True, help="Refuse --pack; sign checkpoints and records with --signing-key.")
@click.option(
    "--signing-key",
    type=input_file(),
    help="With --production: the private key (outside the state directory) that signs checkpoints and records.",
)
@click.option("--passphrase-env", metavar="VAR", help="Environment variable holding --signing-key's passphrase.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory (default: $OPSDSL_HOME, else ./.opsdsl).",
)
def init(production: bool, signing_key: Path | None, passphrase_env: str | None, state_dir: Path | None) -> None:
    """Make a state directory (mode 0700); --production writes STATE/config.json.

    In a production state directory `run`, `fire`, `watch` and `serve` refuse --pack (exit 5):
    only signed plans verified against a trust file run, and ledger checkpoints and incident
    records are signed with --signing-key, which must live outside the state directory.
    """
    from opsdsl.build.signing import keyid
    from opsdsl.runtime.state_config import CONFIG_FILE, read_config, signer, write_production_config
    from opsdsl.runtime.store import prepare_state_dir
    from opsdsl.runtime.store import state_dir as resolve_state

    state = resolve_state(state_dir)
    if not production:
        if signing_key is not None or passphrase_env is not None:
            raise UsageError("--signing-key and --passphrase-env go with --production")
        prepare_state_dir(state)
        mode = read_config(state).mode
        click.echo(f"{state}: a {mode} state directory (runs of --pack are signed with its dev key)")
        return
    if signing_key is None:
        raise UsageError("--production needs --signing-key PATH: a private key kept outside the state directory")
    write_production_config(state, signing_key, passphrase_env)
    key = signer(state).key
    click.echo(
        f"{state}: production state directory ({state / CONFIG_FILE}); --pack is refused, and checkpoints and"
        f" records are signed with {signing_key.resolve()} (keyid {keyid(key.public_key())})"
    )
