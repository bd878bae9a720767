"""The console's files ship in the package: its templates, its stylesheet and the vendored
htmx files, each of those exactly the bytes VENDORED.json pins (name, version, sha256)."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources

STATIC = resources.files("opsdsl.serve.console").joinpath("static")
TEMPLATES = resources.files("opsdsl.serve.console").joinpath("templates")


def test_every_vendored_file_has_the_recorded_sha256():
    vendored = json.loads(STATIC.joinpath("VENDORED.json").read_text(encoding="utf-8"))
    names = {entry["file"] for entry in vendored["files"]}
    assert {"htmx.min.js", "htmx-ext-sse.min.js"} <= names
    for entry in vendored["files"]:
        data = STATIC.joinpath(entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{entry['file']} changed; see docs/console.md"
        assert entry["package"] and re.fullmatch(r"\d+\.\d+\.\d+", entry["version"]) and entry["license"]


def test_htmx_is_a_2_0_release_and_the_sse_extension_is_the_htmx_2_one():
    vendored = {e["package"]: e for e in json.loads(STATIC.joinpath("VENDORED.json").read_text())["files"]}
    assert vendored["htmx.org"]["version"].startswith("2.0.")
    assert vendored["htmx-ext-sse"]["version"].startswith("2.")
    assert b'version:"2.0.' in STATIC.joinpath("htmx.min.js").read_bytes().replace(b" ", b"")
    assert b'defineExtension("sse"' in STATIC.joinpath("htmx-ext-sse.min.js").read_bytes()


def test_templates_and_stylesheet_are_package_resources():
    assert STATIC.joinpath("console.css").read_text(encoding="utf-8").strip()
    names = {item.name for item in TEMPLATES.iterdir()}
    assert {"base.html", "signin.html", "runs.html", "run.html", "report.html", "ledger.html"} <= names


def test_templates_hold_no_inline_script_or_style():
    for item in TEMPLATES.iterdir():
        text = item.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), f"{item.name}: inline script"
        assert "<style" not in text and " style=" not in text, f"{item.name}: inline style"
        assert not re.search(r"\son[a-z]+=", text), f"{item.name}: an event handler attribute"


def test_the_wheel_takes_the_whole_package_folder():
    """hatch's wheel target ships every file under opsdsl/ (packages = ["opsdsl"]), so the
    templates and static files need no package-data entry; a narrower include would lose them."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["opsdsl"] and "only-include" not in wheel and "exclude" not in wheel
