"""The command line: one module per command family; `opsdsl.cli.app` holds the group and
`opsdsl.cli.main.main` is the entry point (it runs a plain `opsdsl lint` without click)."""
