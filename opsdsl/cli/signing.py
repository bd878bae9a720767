"""`opsdsl keygen`, `opsdsl sign` and `opsdsl verify`: keys and signed envelopes from the command line.

Thin wrappers over `opsdsl.build.signing` and `opsdsl.build.trust`, registered on the main group by
`opsdsl.cli.app` (`cli.add_command(...)`). They raise; `opsdsl.cli.main.main` turns errors into a
message and an exit code: 0 verified, 1 refused, 2 usage or configuration error.
"""

from __future__ import annotations

from pathlib import Path

import click

from opsdsl.cli.compilecmd import key_passphrase as _passphrase
from opsdsl.cli.paths import input_file
from opsdsl.errors import UsageError

_FILE = click.Path(dir_okay=False, path_type=Path)
MAX_ENVELOPE_BYTES = 256 * 1024 * 1024  # a plan envelope: packs are at most 8 MiB
_EXISTING_FILE = input_file()
_PASSPHRASE_HELP = "Read the key's passphrase from environment variable VAR (default: OPSDSL_KEY_PASSPHRASE, if set)."
_ENCRYPT_HELP = (
    "Encrypt the key with the passphrase in environment variable VAR (default: OPSDSL_KEY_PASSPHRASE, if set)."
)


@click.command()
@click.option("--out", required=True, type=_FILE, help="Private key file to write; the public key goes to FILE.pub.")
@click.option("--passphrase-env", metavar="VAR", help=_ENCRYPT_HELP)
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(out: Path, passphrase_env: str | None, force: bool) -> None:
    """Make an Ed25519 signing key: FILE (private, mode 0600) and FILE.pub. Prints its keyid."""
    from opsdsl.build.signing import PASSPHRASE_ENV, generate_key, keyid, write_private_key, write_public_key

    public_path = out.with_name(out.name + ".pub")
    existing = [path for path in (out, public_path) if path.exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} already exists; pass --force to overwrite it")
    passphrase = _passphrase(passphrase_env)
    key = generate_key()
    write_private_key(out, key, passphrase)
    write_public_key(public_path, key.public_key())
    state = f"encrypted with the passphrase in {passphrase_env or PASSPHRASE_ENV}" if passphrase else "not encrypted"
    click.echo(f"wrote {out} (private key, mode 0600, {state}) and {public_path}", err=True)
    click.echo(keyid(key.public_key()))


@click.command()
@click.argument("envelope", type=_EXISTING_FILE)
@click.option("--key", "key_path", required=True, type=_EXISTING_FILE, help="Private key to sign with.")
@click.option("--passphrase-env", metavar="VAR", help=_PASSPHRASE_HELP)
def sign(envelope: Path, key_path: Path, passphrase_env: str | None) -> None:
    """Add a signature to the DSSE envelope ENVELOPE, in place (atomically).

    Signing again with the same key replaces its signature. Prints the keyid, the number of
    signatures now present and the payload's sha256, to compare with what you meant to sign.
    """
    import hashlib

    from opsdsl.build.signing import (
        add_signature,
        decode_base64,
        envelope_bytes,
        keyid,
        load_private_key,
        parse_envelope,
    )
    from opsdsl.files import write_atomic

    key = load_private_key(key_path, _passphrase(passphrase_env))
    signed = add_signature(parse_envelope(_read(envelope)), key)
    write_atomic(envelope, envelope_bytes(signed).decode("ascii"))
    digest = hashlib.sha256(decode_base64(signed["payload"])).hexdigest()
    count = len(signed["signatures"])
    click.echo(
        f"signed by {keyid(key.public_key())}: {count} signature{'s' * (count != 1)} now (payload sha256:{digest})"
    )


@click.command()
@click.argument("envelope", type=_EXISTING_FILE)
@click.option("--key", "key_paths", multiple=True, type=_EXISTING_FILE, help="A trusted public key (repeatable).")
@click.option("--trust", "trust_path", type=_EXISTING_FILE, help="Trust file: keys and per-environment thresholds.")
@click.option(
    "--env", "environment", metavar="NAME", help="Environment in the trust file (required when it has several)."
)
@click.option(
    "--threshold",
    type=click.IntRange(min=1),
    help="With --key: how many distinct given keys must have signed (default: 1).",
)
def verify(
    envelope: Path, key_paths: tuple[Path, ...], trust_path: Path | None, environment: str | None, threshold: int | None
) -> None:
    """Check that ENVELOPE is a plan signed by enough trusted keys.

    Exit 0 when it is, 1 when it is refused (the reason on stderr), 2 on a usage error.
    """
    from opsdsl.build.signing import SignatureError, keyid, load_public_key, parse_envelope, verify_envelope

    if bool(key_paths) == bool(trust_path):
        raise UsageError("give either --key PUB (repeatable) or --trust TRUST.yaml")
    if trust_path is not None:
        from opsdsl.build.trust import load_trust

        if threshold is not None:
            raise UsageError("--threshold goes with --key; with --trust, the trust file sets each environment's")
        trust = load_trust(trust_path)
        trusted, required = trust.environment(environment)
        names = trust.names
    else:
        if environment is not None:
            raise UsageError("--env needs --trust")
        trusted, names = {}, {}
        for path in key_paths:
            public_key = load_public_key(path)
            kid = keyid(public_key)
            trusted[kid] = public_key
            names.setdefault(kid, str(path))
        required = threshold or 1
        if required > len(trusted):
            raise UsageError(f"--threshold {required} is more than the {len(trusted)} distinct key(s) given")
    try:
        document = parse_envelope(_read(envelope))
        verified = verify_envelope(document, trusted, required, names=names)
    except SignatureError as exc:
        raise SignatureError(f"refused: {exc.message}") from exc
    signers = ", ".join(sorted(names[kid] for kid in verified.keyids))
    click.echo(
        f"verified: {len(verified.keyids)} of {len(document['signatures'])} signatures from trusted keys ({signers})"
    )


def _read(path: Path) -> bytes:
    from opsdsl.lang.untrusted import read_bytes

    return read_bytes(path, f"cannot read {path}", MAX_ENVELOPE_BYTES)
