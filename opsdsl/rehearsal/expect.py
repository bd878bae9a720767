"""Expectations against what happened: each mismatch a located failure with a diff.

A failure points at the expectation in the test file (the first differing item of a
list when there is one, else the key) and carries a unified diff of YAML-ish lines,
expected against actual, so a reviewer sees at once what changed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from opsdsl.errors import Span

from .facts import RunFacts, deciding_policies
from .model import Case, Path_, TestFile

STEP_KEYS = ("started", "skipped", "compensated", "decisions", "status", "error", "outputs", "rca_headline")


@dataclass(frozen=True)
class Failure:
    """One expectation not met."""

    key: str  # what failed: "expect.started", "expect.decisions.scale_pool", "mocks", …
    message: str
    span: Span
    source_line: str | None = None
    diff: tuple[str, ...] = ()
    expected: Any = None
    actual: Any = None

    def render(self, indent: str = "") -> str:
        out = [f"{indent}{self.span}: {self.key}: {self.message}"]
        if self.source_line is not None:
            gutter = f"{self.span.line:>5} | "
            width = 1
            if self.span.end_line == self.span.line and self.span.end_col > self.span.col:
                width = self.span.end_col - self.span.col
            out.append(f"{indent}{gutter}{self.source_line.rstrip()}")
            out.append(f"{indent}{' ' * (len(gutter) - 2)}| {' ' * (self.span.col - 1)}{'^' * width}")
        out += [f"{indent}      {line}" for line in self.diff]
        return "\n".join(out)


@dataclass
class Observed:
    """Everything a case produced that expectations can be about."""

    triggers: list[str]
    hooks: list[str]
    suppressed: list[str]
    runs: list[RunFacts]
    subruns: list[RunFacts] = field(default_factory=list)  # started by `playbook.call` (for coverage)


class _Checker:
    def __init__(self, test: TestFile, case: Case) -> None:
        self.test, self.case = test, case
        self.failures: list[Failure] = []

    def fail(self, path: Path_, key: str, message: str, expected: Any = None, actual: Any = None, diff=(), at="value"):
        self.failures.append(failure_at(self.test, path, f"expect.{key}", message, expected, actual, diff, at))


def failure_at(test: TestFile, path: Path_, key: str, message: str, expected=None, actual=None, diff=(), at="value"):
    """A failure located at the value (or key) at `path` of the test file."""
    document = test.document
    span = document.key_span(path) if at == "key" else document.span(path)
    return Failure(key, message, span, document.source.line(span.line), tuple(diff), expected, actual)


def compare(test: TestFile, case: Case, observed: Observed) -> list[Failure]:
    """Every expectation of `case` that `observed` does not meet."""
    checker = _Checker(test, case)
    expect, base = case.expect, (*case.path, "expect")
    for key in ("triggers", "hooks", "suppressed"):
        if key in expect and expect[key] != getattr(observed, key):
            checker.fail(
                (*base, key), key, f"{key} differ", expect[key], getattr(observed, key),
                unified(_lines(expect[key]), _lines(getattr(observed, key))), at="key",
            )  # fmt: skip
    wanted = [key for key in STEP_KEYS if key in expect]
    if not wanted:
        return checker.failures
    if len(observed.runs) != 1:
        started = ", ".join(f"{r.playbook} ({r.run_id})" for r in observed.runs) or "none"
        message = f"step expectations need exactly one run; the case started {len(observed.runs)}: {started}"
        checker.fail((*base, wanted[0]), wanted[0], message, at="key")
        return checker.failures
    facts = observed.runs[0]
    for key in wanted:
        _COMPARERS[key](checker, (*base, key), expect[key], facts)
    return checker.failures


# ---- one comparer per expectation ----------------------------------------------------------


def match_started(expected: list, actual: list[str]) -> int | None:
    """The index in `expected` of the first item not met (len(expected) for extra actual
    steps), or None when the order matches. A nested list matches that many next steps in
    any order."""
    position = 0
    for index, item in enumerate(expected):
        group = item if isinstance(item, list) else [item]
        if sorted(actual[position : position + len(group)]) != sorted(group):
            return index
        position += len(group)
    return None if position == len(actual) else len(expected)


def started_lines(expected: list, actual: list[str]) -> tuple[list[str], list[str]]:
    """Both sides as YAML-ish lines, actual grouped like expected as far as they agree."""
    want = [f"- {_item(item)}" for item in expected]
    got, position = [], 0
    for item in expected:
        group = item if isinstance(item, list) else [item]
        chunk = actual[position : position + len(group)]
        if sorted(chunk) != sorted(group):
            break
        got.append(f"- {_item(item)}")
        position += len(group)
    got += [f"- {step}" for step in actual[position:]]
    return want, got


def _item(item: Any) -> str:
    return f"[{', '.join(item)}]" if isinstance(item, list) else str(item)


def _started(checker: _Checker, path: Path_, expected: list, facts: RunFacts) -> None:
    index = match_started(expected, facts.started)
    if index is None:
        return
    want, got = started_lines(expected, facts.started)
    if index < len(expected):
        item = expected[index]
        flat_before = sum(len(i) if isinstance(i, list) else 1 for i in expected[:index])
        at = facts.started[flat_before : flat_before + (len(item) if isinstance(item, list) else 1)]
        shown = ", ".join(f"`{s}`" for s in at) or "nothing more"
        message = f"steps started in another order: expected `{_item(item)}` at position {flat_before + 1}, got {shown}"
        target = (*path, index)
    else:
        extra = facts.started[sum(len(i) if isinstance(i, list) else 1 for i in expected) :]
        message = f"more steps started than expected: {', '.join(f'`{s}`' for s in extra)}"
        target = path
    checker.fail(
        target, "started", message, expected, facts.started, unified(want, got), at="key" if target == path else "value"
    )


def _skipped(checker: _Checker, path: Path_, expected: list, facts: RunFacts) -> None:
    if sorted(expected) != sorted(facts.skipped):
        missing = sorted(set(expected) - set(facts.skipped))
        extra = sorted(set(facts.skipped) - set(expected))
        parts = [
            f"not skipped: {', '.join(missing)}" if missing else "",
            f"also skipped: {', '.join(extra)}" if extra else "",
        ]
        diff = unified(_lines(sorted(expected)), _lines(sorted(facts.skipped)))
        checker.fail(path, "skipped", "; ".join(p for p in parts if p), expected, facts.skipped, diff, at="key")


def _compensated(checker: _Checker, path: Path_, expected: list, facts: RunFacts) -> None:
    if expected != facts.compensated:
        message = (
            "other compensations ran"
            if sorted(expected) != sorted(facts.compensated)
            else "compensations ran in another order"
        )
        diff = unified(_lines(expected), _lines(facts.compensated))
        checker.fail(path, "compensated", message, expected, facts.compensated, diff, at="key")


def _decisions(checker: _Checker, path: Path_, expected: dict, facts: RunFacts) -> None:
    for step, want in expected.items():
        here = (*path, step)
        want_decision = want if isinstance(want, str) else want["decision"]
        want_policy = None if isinstance(want, str) else want.get("policy")
        actual = facts.decisions.get(step)
        if actual is None:
            checker.fail(
                here, f"decisions.{step}", f"no policy decision was made for `{step}`: {facts.fate(step)}", want
            )
            continue
        policies = deciding_policies(actual)
        shown = {"decision": actual["decision"], "policies": policies}
        expected_shown = {"decision": want_decision, **({"policies": [want_policy]} if want_policy else {})}
        if actual["decision"] != want_decision:
            by = f" ({', '.join(policies)})" if policies else ""
            message = f"the gate said {actual['decision']}{by}, not {want_decision}"
        elif want_policy is not None and want_policy not in policies:
            message = f"{want_decision} came from {', '.join(policies) or 'no policy'}, not {want_policy}"
        else:
            continue
        checker.fail(here, f"decisions.{step}", message, want, shown, unified(_yaml(expected_shown), _yaml(shown)))


def _status(checker: _Checker, path: Path_, expected: str, facts: RunFacts) -> None:
    if facts.status != expected:
        because = f" ({facts.error})" if facts.error else ""
        checker.fail(
            path,
            "status",
            f"the run {facts.status}{because}, not {expected}",
            expected,
            facts.status,
            unified([expected], [facts.status]),
        )


def _error(checker: _Checker, path: Path_, expected: str, facts: RunFacts) -> None:
    if facts.error is None or expected not in facts.error:
        got = f"`{facts.error}`" if facts.error else "no error"
        checker.fail(
            path, "error", f"the run's error does not contain `{expected}`: it has {got}", expected, facts.error
        )


def contains(expected: Any, actual: Any) -> bool:
    """Whether `actual` has everything `expected` has: maps by key (more keys are fine),
    lists item by item with the same length, scalars equal (true is not 1)."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and contains(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(actual, list) and len(expected) == len(actual) and all(map(contains, expected, actual))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    return expected == actual


def project(expected: Any, actual: Any) -> Any:
    """`actual` cut down to the keys `expected` mentions, so a diff shows only what matters."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        return {k: project(v, actual[k]) for k, v in expected.items() if k in actual}
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [project(e, a) for e, a in zip(expected, actual, strict=True)]
    return actual


def _outputs(checker: _Checker, path: Path_, expected: dict, facts: RunFacts) -> None:
    for step, want in expected.items():
        here = (*path, step)
        if step not in facts.outputs:
            checker.fail(here, f"outputs.{step}", f"`{step}` has no outputs: {facts.fate(step)}", want, at="key")
        elif not contains(want, facts.outputs[step]):
            got = project(want, facts.outputs[step])
            checker.fail(
                here,
                f"outputs.{step}",
                "the outputs differ",
                want,
                facts.outputs[step],
                unified(_yaml(want), _yaml(got)),
                at="key",
            )


def _headline(checker: _Checker, path: Path_, expected: Any, facts: RunFacts) -> None:
    actual = facts.headline
    if isinstance(expected, str):
        mode, text = "contains", expected
    else:
        ((mode, text),) = expected.items()
    ok = {
        "contains": lambda: text in actual,
        "equals": lambda: text == actual,
        "matches": lambda: re.search(text, actual) is not None,
    }[mode]()
    if not ok:
        verb = {"contains": "does not contain", "equals": "is not", "matches": "does not match"}[mode]
        checker.fail(path, "rca_headline", f"the headline {verb} `{text}`", text, actual, unified([text], [actual]))


_COMPARERS: dict[str, Callable[[_Checker, Path_, Any, RunFacts], None]] = {
    "started": _started,
    "skipped": _skipped,
    "compensated": _compensated,
    "decisions": _decisions,
    "status": _status,
    "error": _error,
    "outputs": _outputs,
    "rca_headline": _headline,
}


# ---- diffs -------------------------------------------------------------------------------


def unified(expected: list[str], actual: list[str]) -> list[str]:
    """A unified diff, `--- expected` / `+++ actual`, all lines in context."""
    return list(
        difflib.unified_diff(expected, actual, "expected", "actual", n=max(len(expected), len(actual)), lineterm="")
    )


def _lines(items: list) -> list[str]:
    return [f"- {_item(item)}" for item in items]


def _yaml(value: Any) -> list[str]:
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)
    return text.rstrip("\n").removesuffix("\n...").splitlines()
