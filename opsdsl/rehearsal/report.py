"""Render a test session: text for people, JSON for scripts, JUnit XML for CI systems."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

from opsdsl import __version__
from opsdsl.errors import Diagnostic

from .expect import Failure
from .session import ERROR, FAILED, PASSED, CaseResult, FileResult, SessionResult

FORMATS = ("text", "json", "junit")


def render(session: SessionResult, fmt: str) -> str:
    return {"text": to_text, "json": to_json, "junit": to_junit}[fmt](session)


def summary(session: SessionResult) -> str:
    cases = session.cases
    parts = [f"{session.count(PASSED)} passed"]
    if session.count(FAILED):
        parts.append(f"{session.count(FAILED)} failed")
    if session.count(ERROR):
        parts.append(f"{session.count(ERROR)} error{'s' if session.count(ERROR) != 1 else ''}")
    if session.file_errors:
        parts.append(f"{session.file_errors} file{'s' if session.file_errors != 1 else ''} not run")
    if session.deselected:
        parts.append(f"{session.deselected} deselected")
    return f"{cases} case{'s' if cases != 1 else ''}: {', '.join(parts)} in {session.seconds:.2f}s"


# ---- text -------------------------------------------------------------------------------


def to_text(session: SessionResult) -> str:
    blocks = [_file_text(f) for f in session.files]
    blocks.append(summary(session))
    return "\n\n".join(blocks) + "\n"


def _file_text(result: FileResult) -> str:
    head = result.path + (f" (pack {result.pack})" if result.pack else "")
    lines = [head]
    for diagnostic in result.diagnostics:
        lines.append(_indent(diagnostic.render(), "  "))
    for case in result.cases:
        lines.append(_case_text(case))
    return "\n".join(lines)


def _case_text(case: CaseResult) -> str:
    label = {PASSED: "PASS ", FAILED: "FAIL ", ERROR: "ERROR"}[case.status]
    virtual = f", {_virtual(case.virtual_seconds)} virtual" if case.virtual_seconds >= 1 else ""
    lines = [f"  {label} {case.name} ({case.seconds * 1000:.0f} ms{virtual})"]
    for diagnostic in case.diagnostics:
        lines.append(_indent(diagnostic.render(), "      "))
    if case.error:
        lines.append(f"      error: {case.error}")
    for failure in case.failures:
        lines.append(failure.render("      "))
    lines += [f"      note: {note}" for note in case.notes]
    return "\n".join(lines)


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _virtual(seconds: float) -> str:
    from opsdsl.lang.durations import format_duration

    return format_duration(round(seconds * 1000))


# ---- JSON -------------------------------------------------------------------------------


def _diagnostic_json(d: Diagnostic) -> dict[str, Any]:
    return {
        "code": d.code,
        "severity": d.severity.value,
        "message": d.message,
        "file": d.span.file,
        "line": d.span.line,
        "column": d.span.col,
        "end_line": d.span.end_line or d.span.line,
        "end_column": d.span.end_col or d.span.col + 1,
        "hint": d.hint,
    }


def _failure_json(f: Failure) -> dict[str, Any]:
    return {
        "key": f.key,
        "message": f.message,
        "file": f.span.file,
        "line": f.span.line,
        "column": f.span.col,
        "expected": f.expected,
        "actual": f.actual,
        "diff": "\n".join(f.diff),
    }


def to_json(session: SessionResult) -> str:
    return dump_json(json_document(session))


def dump_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n"


def json_document(session: SessionResult) -> dict[str, Any]:
    """The session as JSON data (`--coverage` adds a `coverage` key)."""
    return {
        "version": 1,
        "tool": {"name": "opsdsl", "version": __version__},
        "summary": {
            "cases": session.cases,
            "passed": session.count(PASSED),
            "failed": session.count(FAILED),
            "errors": session.count(ERROR),
            "file_errors": session.file_errors,
            "deselected": session.deselected,
            "seconds": round(session.seconds, 3),
        },
        "files": [
            {
                "file": f.path,
                "pack": f.pack,
                "seconds": round(f.seconds, 3),
                "diagnostics": [_diagnostic_json(d) for d in f.diagnostics],
                "cases": [
                    {
                        "name": c.name,
                        "line": c.line,
                        "status": c.status,
                        "seconds": round(c.seconds, 4),
                        "virtual_seconds": round(c.virtual_seconds, 3),
                        "failures": [_failure_json(x) for x in c.failures],
                        "diagnostics": [_diagnostic_json(d) for d in c.diagnostics],
                        "error": c.error,
                        "notes": c.notes,
                    }
                    for c in f.cases
                ],
            }
            for f in session.files
        ],
    }


# ---- JUnit XML ----------------------------------------------------------------------------


def to_junit(session: SessionResult) -> str:
    """JUnit XML as Jenkins, GitLab and GitHub test reporters read it: one testsuite per
    file, one testcase per case; a file that could not run is one errored testcase."""
    root = ET.Element(
        "testsuites",
        name="opsdsl test",
        tests=str(session.cases + session.file_errors),
        failures=str(session.count(FAILED)),
        errors=str(session.count(ERROR) + session.file_errors),
        time=f"{session.seconds:.3f}",
    )
    for result in session.files:
        classname = result.path.rsplit(".test.", 1)[0].replace("/", ".")
        cases = list(result.cases)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=result.path,
            tests=str(len(cases) + (1 if result.diagnostics else 0)),
            failures=str(sum(c.status == FAILED for c in cases)),
            errors=str(sum(c.status == ERROR for c in cases) + (1 if result.diagnostics else 0)),
            skipped="0",
            time=f"{result.seconds:.3f}",
            file=result.path,
        )
        if result.diagnostics:
            element = ET.SubElement(
                suite, "testcase", classname=classname, name="(test file)", file=result.path, line="1", time="0"
            )
            first = result.diagnostics[0]
            error = ET.SubElement(element, "error", message=first.message, type=first.code)
            error.text = "\n\n".join(d.render() for d in result.diagnostics)
        for case in cases:
            element = ET.SubElement(
                suite,
                "testcase",
                classname=classname,
                name=case.name,
                file=result.path,
                line=str(case.line),
                time=f"{case.seconds:.4f}",
            )
            if case.status == FAILED:
                failure = ET.SubElement(element, "failure", message=case.failures[0].message, type="expectation")
                failure.text = "\n\n".join(f.render() for f in case.failures)
            elif case.status == ERROR:
                first = case.diagnostics[0] if case.diagnostics else None
                message = first.message if first else (case.error or "error")
                error = ET.SubElement(element, "error", message=message, type=first.code if first else "rehearsal")
                texts = [d.render() for d in case.diagnostics] + ([case.error] if case.error else [])
                texts += [f.render() for f in case.failures]
                error.text = "\n\n".join(texts)
            if case.notes:
                ET.SubElement(element, "system-out").text = "\n".join(case.notes)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
