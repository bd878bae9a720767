"""Data files shipped with opsdsl: grammars and schemas.

In a checkout they live at the repository root (`grammar/`, `schemas/`); a wheel carries
them as `opsdsl/_data/...`. `read_text` finds them in either place.
"""

from __future__ import annotations

from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def read_text(relpath: str) -> str:
    """The text of a data file, e.g. `read_text("grammar/expr.lark")`."""
    package = Path(__file__).parent
    if package.is_dir():  # the usual case: importlib.resources would find this same file
        packaged_file = package / "_data" / relpath
        if packaged_file.is_file():
            return packaged_file.read_text(encoding="utf-8")
    else:  # imported from a zip: ask importlib.resources (it pulls in zipfile and more)
        import importlib.resources

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


def lark_cache_file(name: str, grammar: str) -> str | bool:
    """A per-user file for Lark's analysed grammar (`$XDG_CACHE_HOME/opsdsl` or
    `~/.cache/opsdsl`), named by Lark's version and the grammar's text; False where no
    cache can be written, which only costs start-up time."""
    import hashlib
    import os

    import lark

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = Path(base) / "opsdsl"
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    if not os.access(directory, os.W_OK):
        return False
    digest = hashlib.sha256(f"{lark.__version__}\0{grammar}".encode()).hexdigest()[:16]
    return str(directory / f"{name}-{digest}.lark-cache")
