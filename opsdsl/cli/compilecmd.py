"""The body of `opsdsl compile` (writing plans), shared by the click command
(opsdsl/cli/app.py) and the click-free path `opsdsl.cli.main` takes for a plain
`opsdsl compile PATH... [-o OUT] [--key FILE]... [--rebuild] [-j N] [--passphrase-env VAR]`,
so both print the same bytes and exit with the same code. It imports no click."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from opsdsl.errors import UsageError

Echo = Callable[..., None]  # echo(text, err=False): write `text` as is, and flush


def key_passphrase(env_var: str | None) -> bytes | None:
    """The passphrase from --passphrase-env VAR, else from OPSDSL_KEY_PASSPHRASE if set, else none."""
    from opsdsl.build.signing import PASSPHRASE_ENV

    if env_var:
        value = os.environ.get(env_var)
        if not value:
            raise UsageError(f"--passphrase-env {env_var}: that environment variable is not set, or empty")
        return os.fsencode(value)
    value = os.environ.get(PASSPHRASE_ENV)
    return os.fsencode(value) if value else None


def run_compile(
    paths: Sequence[Path],
    out_dir: Path,
    key_files: Sequence[Path],
    passphrase_env: str | None,
    rebuild: bool,
    jobs: int | None,
    echo: Echo,
) -> None:
    """Compile `paths` into signed plans in `out_dir` and print what became of each pack;
    exit 1 when the build failed (nothing is written then)."""
    from opsdsl.build.plans import compile_paths
    from opsdsl.build.signing import load_private_key
    from opsdsl.lang.config import find_config, load_config

    passphrase = key_passphrase(passphrase_env)
    keys = [load_private_key(path, passphrase) for path in key_files]
    config = load_config(find_config(Path.cwd()))
    result = compile_paths(list(paths), out_dir, keys, jobs=jobs, rebuild=rebuild, config=config)
    for diagnostic in result.diagnostics:
        echo(diagnostic.render() + "\n\n", err=True)
    if result.failed:
        echo("build failed: no plan was written\n", err=True)
        sys.exit(1)
    words = {"compiled": "compiled", "unchanged": "unchanged, kept", "reused": "unchanged, reused"}
    counts: dict[str, int] = {}
    for pack in sorted(result.packs, key=lambda p: p.source):
        if pack.entry is None or pack.status not in words:
            continue
        counts[pack.status] = counts.get(pack.status, 0) + 1
        signers = len(pack.entry.get("keyids", ()))
        signed = f"signed by {signers} key{'s' if signers != 1 else ''}" if signers else "UNSIGNED"
        echo(
            f"{words[pack.status]:<16} {pack.name} → {out_dir / pack.plan_file} "
            f"({pack.entry['payloadDigest'][:19]}…, {signed})\n"
        )
    for policy_pack in result.policy_packs:
        echo(
            f"{'in scope':<16} {policy_pack['name']} {policy_pack['version']} "
            f"({policy_pack['modelDigest'][:19]}…, policy pack)\n"
        )
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    if result.policy_packs:
        n = len(result.policy_packs)
        parts.append(f"{n} policy pack{'s' if n != 1 else ''} in scope")
    total = sum(counts.values()) + len(result.policy_packs)
    echo(f"{total} pack{'s' if total != 1 else ''}: {', '.join(parts)}\n")
    if not keys:
        echo(
            "warning: plans are unsigned; `opsdsl run` refuses them until signed (--key, or `opsdsl sign`)\n", err=True
        )
