"""`opsdsl lsp`: a language server for pack authors' editors (diagnostics from the lint
engine, completion, hover, definitions, references, rename, quick fixes, formatting)."""
