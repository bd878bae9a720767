"""Render lint results: text for people, JSON for scripts, SARIF for code scanning,
GitHub workflow commands for pull-request annotations, GitLab code-quality JSON for merge
requests. Every format is deterministic."""

from __future__ import annotations

import json

from opsdsl import __version__
from opsdsl.errors import Diagnostic, Severity
from opsdsl.lang.rules import RULES
from opsdsl.lint.engine import LintResult

FORMATS = ("text", "json", "sarif", "github", "gitlab")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def render(result: LintResult, fmt: str) -> str:
    renderers = {"text": to_text, "json": to_json, "sarif": to_sarif, "github": to_github, "gitlab": to_gitlab}
    return renderers[fmt](result)


def summary(result: LintResult) -> str:
    errors, warnings = result.count(Severity.ERROR), result.count(Severity.WARNING)
    files = f"{result.files} file{'s' if result.files != 1 else ''}"
    if not errors and not warnings:
        return f"{files} checked: no problems found"
    parts = []
    if errors:
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    return f"{files} checked: {', '.join(parts)}"


def to_text(result: LintResult) -> str:
    blocks = [d.render() for d in result.diagnostics]
    blocks.append(summary(result))
    return "\n\n".join(blocks) + "\n"


def _diagnostic_json(d: Diagnostic) -> dict:
    return {
        "code": d.code,
        "rule": RULES[d.code].name,
        "severity": d.severity.value,
        "message": d.message,
        "file": d.span.file,
        "line": d.span.line,
        "column": d.span.col,
        "end_line": d.span.end_line or d.span.line,
        "end_column": d.span.end_col or d.span.col + 1,
        "hint": d.hint,
    }


def to_json(result: LintResult) -> str:
    document = {
        "version": 1,
        "tool": {"name": "opsdsl", "version": __version__},
        "files": result.files,
        "summary": {"errors": result.count(Severity.ERROR), "warnings": result.count(Severity.WARNING)},
        "diagnostics": [_diagnostic_json(d) for d in result.diagnostics],
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def to_sarif(result: LintResult) -> str:
    """SARIF 2.1.0, as GitHub code scanning accepts it (upload-sarif)."""
    codes = sorted(RULES)
    index = {code: i for i, code in enumerate(codes)}
    rules = [
        {
            "id": code,
            "name": "".join(w.capitalize() for w in RULES[code].name.split("-")),
            "shortDescription": {"text": RULES[code].summary},
            "fullDescription": {"text": RULES[code].summary},
            "help": {"text": f"{RULES[code].summary} See {RULES[code].doc_path} in the opsdsl documentation."},
            "defaultConfiguration": {"level": RULES[code].severity.value},
            "properties": {"tags": ["opsdsl"]},
        }
        for code in codes
    ]
    results = []
    for d in result.diagnostics:
        region = {"startLine": d.span.line, "startColumn": d.span.col}
        if (
            d.span.end_line >= d.span.line
            and d.span.end_col
            and (d.span.end_line, d.span.end_col) > (d.span.line, d.span.col)
        ):
            region["endLine"] = d.span.end_line
            region["endColumn"] = d.span.end_col
        if d.source_line is not None:
            region["snippet"] = {"text": d.source_line}
        text = d.message + (f" (hint: {d.hint})" if d.hint else "")
        results.append(
            {
                "ruleId": d.code,
                "ruleIndex": index[d.code],
                "level": d.severity.value,
                "message": {"text": text},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": d.span.file, "uriBaseId": "%SRCROOT%"},
                            "region": region,
                        }
                    }
                ],
                "partialFingerprints": {"opsdslRule/v1": f"{d.code}:{d.span.file}:{d.message}"},
            }
        )
    document = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "opsdsl",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "informationUri": "https://pypi.org/project/opsdsl/",
                        "rules": rules,
                    }
                },
                "originalUriBaseIds": {"%SRCROOT%": {"description": {"text": "The directory opsdsl lint ran in."}}},
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(result: LintResult) -> str:
    """GitHub Actions workflow commands: one `::error` / `::warning` annotation each."""
    lines = []
    for d in result.diagnostics:
        props = [f"file={_escape_property(d.span.file)}", f"line={d.span.line}", f"col={d.span.col}"]
        if d.span.end_line == d.span.line and d.span.end_col > d.span.col:
            props += [f"endLine={d.span.end_line}", f"endColumn={d.span.end_col}"]
        props.append(f"title={_escape_property(f'{d.code} {RULES[d.code].name}')}")
        message = d.message + (f" (hint: {d.hint})" if d.hint else "")
        kind = "error" if d.severity is Severity.ERROR else "warning"
        lines.append(f"::{kind} {','.join(props)}::{_escape_data(message)}")
    return "".join(line + "\n" for line in lines)


# GitLab's code-quality severities are info, minor, major, critical and blocker; an error
# blocks a plan from compiling, which is what GitLab calls major (critical and blocker are
# for security findings and outages).
_GITLAB_SEVERITY = {Severity.ERROR: "major", Severity.WARNING: "minor"}


def to_gitlab(result: LintResult) -> str:
    """GitLab code quality (the Code Climate subset GitLab reads): a JSON array, one issue
    per finding, shown in the merge request's widget and diff.

    GitLab matches issues between the source and target branch by `fingerprint`, so it
    leaves out the line (a finding that only moved is not new) and counts repeats of the
    same finding in one file instead (two identical findings stay two issues).
    """
    import hashlib  # only this format hashes; the other lint formats skip the import

    seen: dict[tuple[str, str, str], int] = {}
    issues = []
    for d in result.diagnostics:
        key = (d.code, d.span.file, d.message)
        seen[key] = seen.get(key, 0) + 1
        digest = hashlib.sha256("\0".join((*key, str(seen[key]))).encode("utf-8")).hexdigest()
        issues.append(
            {
                "type": "issue",
                "check_name": d.code,
                "description": f"{d.code} {d.message}" + (f" (hint: {d.hint})" if d.hint else ""),
                "categories": ["Style"] if d.severity is Severity.WARNING else ["Bug Risk"],
                "severity": _GITLAB_SEVERITY[d.severity],
                "fingerprint": digest,
                "location": {
                    "path": d.span.file,
                    "lines": {"begin": d.span.line, "end": max(d.span.end_line, d.span.line)},
                },
            }
        )
    return json.dumps(issues, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
