"""The command line: one module per command family; `opsdsl.cli.main` holds the group."""
