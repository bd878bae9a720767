"""Data files shipped with opsdsl: grammars and schemas.

In a checkout they live at the repository root (`grammar/`, `schemas/`); a wheel carries
them as `opsdsl/_data/...`. `read_text` finds them in either place.
"""

from __future__ import annotations

from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def read_text(relpath: str) -> str:
    """The text of a data file, e.g. `read_text("grammar/expr.lark")`."""
    import importlib.resources  # here, not at import: it pulls in zipfile and more

    try:
        packaged = importlib.resources.files("opsdsl").joinpath("_data", *relpath.split("/"))
        if packaged.is_file():
            return packaged.read_text(encoding="utf-8")
    except (ModuleNotFoundError, TypeError, OSError):
        pass  # not installed as a package with data: fall back to the checkout
    path = _CHECKOUT_ROOT / relpath
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"opsdsl data file {relpath!r} is missing: looked in the package's _data/ and {path}"
        ) from None
