"""Lint configuration from `.opsdsl.toml` or `[tool.opsdsl]` in pyproject.toml.

[tool.opsdsl]
ignore = ["OPS042"]                 # never report these codes
severity = { OPS047 = "error" }     # change a rule's severity
exclude = ["packs/legacy/**"]       # globs skipped when searching folders
fail-on = "warning"                 # exit 1 on any finding ("error": only on errors)
require-tested-high-risk = true     # OPS050: every `risk: high` step started by a pack test
coverage-file = ".opsdsl/coverage.json"   # where `opsdsl test --coverage-out` wrote it (default)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from opsdsl.errors import ConfigError, Severity
from opsdsl.lang.rules import RULES

_KEYS = {"ignore", "severity", "exclude", "fail-on", "require-tested-high-risk", "coverage-file"}
DEFAULT_COVERAGE_FILE = ".opsdsl/coverage.json"


@dataclass(frozen=True)
class Config:
    ignore: frozenset[str] = frozenset()
    severity: dict[str, Severity] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    fail_on: Severity = Severity.WARNING
    origin: str | None = None
    require_tested_high_risk: bool = False  # OPS050 is off unless enabled
    coverage_file: str = DEFAULT_COVERAGE_FILE

    def coverage_path(self) -> Path:
        """The coverage file OPS050 reads: relative to the configuration file's folder (the
        working directory when there is no configuration file)."""
        folder = Path(self.origin).parent if self.origin else Path(".")
        return folder / self.coverage_file

    @property
    def raised(self) -> frozenset[str]:
        """The warning codes `severity` makes errors (and `ignore` does not drop): what
        `opsdsl compile` must fail on too, as lint does (docs/compile.md)."""
        return frozenset(
            code
            for code, level in self.severity.items()
            if level is Severity.ERROR and RULES[code].severity is Severity.WARNING and code not in self.ignore
        )


def find_config(start: Path) -> Path | None:
    """The nearest `.opsdsl.toml`, or pyproject.toml with `[tool.opsdsl]`, at or above `start`."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / ".opsdsl.toml"
        if candidate.is_file():
            return candidate
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            try:
                if _has_opsdsl_table(pyproject.read_text("utf-8")):
                    return pyproject
            except (ValueError, OSError, UnicodeDecodeError):  # tomllib.TOMLDecodeError is a ValueError
                continue
    return None


def _has_opsdsl_table(text: str) -> bool:
    """Whether a pyproject.toml has `[tool.opsdsl]`. Only a file that could spell it is
    parsed (importing and running tomllib costs start-up): one with `tool.opsdsl` in any
    quoting and spacing, a `[tool]` table or a `tool =` inline table, or an escaped key."""
    if "\\u" not in text and "\\U" not in text:
        if "opsdsl" not in text:
            return False
        import re

        if not re.search(
            r"""tool["']?\s*\.\s*["']?opsdsl|^\s*(\[\s*["']?tool["']?\s*\]|["']?tool["']?\s*=)""", text, re.M
        ):
            return False
    import tomllib

    return "opsdsl" in tomllib.loads(text).get("tool", {})


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config()
    import tomllib

    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    table = document.get("tool", {}).get("opsdsl", {}) if path.name == "pyproject.toml" else document
    return parse_config(table, str(path))


def parse_config(table: dict, origin: str) -> Config:
    unknown = set(table) - _KEYS
    if unknown:
        raise ConfigError(
            f"{origin}: unknown configuration key(s): {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(_KEYS))})"
        )

    def codes(values: object, key: str) -> list[str]:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ConfigError(f"{origin}: `{key}` must be a list of strings")
        for value in values:
            if key != "exclude" and value not in RULES:
                raise ConfigError(f"{origin}: `{key}` names unknown rule `{value}`")
        return values

    severity: dict[str, Severity] = {}
    raw_severity = table.get("severity", {})
    if not isinstance(raw_severity, dict):
        raise ConfigError(f'{origin}: `severity` must be a table of CODE = "error" | "warning"')
    for code, level in raw_severity.items():
        if code not in RULES:
            raise ConfigError(f"{origin}: `severity` names unknown rule `{code}`")
        if level not in ("error", "warning"):
            raise ConfigError(f'{origin}: severity of {code} must be "error" or "warning"')
        severity[code] = Severity(level)
    fail_on = table.get("fail-on", "warning")
    if fail_on not in ("error", "warning"):
        raise ConfigError(f'{origin}: `fail-on` must be "error" or "warning"')
    tested = table.get("require-tested-high-risk", False)
    if not isinstance(tested, bool):
        raise ConfigError(f"{origin}: `require-tested-high-risk` must be true or false")
    coverage_file = table.get("coverage-file", DEFAULT_COVERAGE_FILE)
    if not isinstance(coverage_file, str) or not coverage_file:
        raise ConfigError(f"{origin}: `coverage-file` must be a path (a non-empty string)")
    return Config(
        ignore=frozenset(codes(table.get("ignore", []), "ignore")),
        severity=severity,
        exclude=tuple(codes(table.get("exclude", []), "exclude")),
        fail_on=Severity(fail_on),
        origin=origin,
        require_tested_high_risk=tested,
        coverage_file=coverage_file,
    )
