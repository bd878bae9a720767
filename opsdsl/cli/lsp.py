"""`opsdsl lsp`: the language server, over stdin/stdout (editors start it; see docs/editors.md)."""

from __future__ import annotations

import click


@click.command()
@click.option("--stdio", is_flag=True, help="Talk LSP over stdin/stdout (the default and only transport).")
def lsp(stdio: bool) -> None:
    """Language server for editors: diagnostics, completion, hover, definitions, rename, fixes, formatting."""
    from opsdsl.lsp.server import serve

    serve()


COMMANDS = (lsp,)
