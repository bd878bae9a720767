"""opsdsl: Ops-as-Code packs, linted, compiled into signed plans, and run."""

__version__ = "0.1.0"
