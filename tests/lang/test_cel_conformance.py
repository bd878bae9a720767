"""CEL's own conformance suite (cel-spec's "simple" tests) over the documented subset.

The suite is read from `../shared/testdata/cel-spec/` beside the checkout, or from the
copy in tests/fixtures/cel-spec. A test is in scope when every construct it uses is one
the feature table (opsdsl/lang/expr/features.py, from which docs/expressions.md's "CEL
coverage" table is generated) lists as supported: its expected value and bindings hold
only supported value types, its text shows no unsupported spelling, and every function it
calls is supported. In-scope tests run through both evaluators (the compiled fast path
and the exact one); a wrong value, a missing error, or any exception other than the
language's own errors fails the test. The counts per file are printed (`pytest -s`) with
the reasons tests are out, and tests/fixtures/cel_conformance_counts.json holds the
in-scope counts, which may only grow (OPSDSL_UPDATE_CONFORMANCE=1 rewrites it).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opsdsl.errors import EvalError
from opsdsl.lang.expr import ExprSyntaxError, compile_expr, parse
from opsdsl.lang.expr.evaluator import build_exact
from opsdsl.lang.expr.features import (
    SYNTAX,
    TYPE_NAMES,
    UNSUPPORTED_NAMESPACES,
    VALUE_TYPES,
    feature_markdown,
    supported_functions,
)

REPO = Path(__file__).resolve().parents[2]
SUITES = (REPO.parent / "shared" / "testdata" / "cel-spec", REPO / "tests" / "fixtures" / "cel-spec")
COUNTS = REPO / "tests" / "fixtures" / "cel_conformance_counts.json"
DOCS = REPO / "docs" / "expressions.md"

# Tests that contradict a deliberate, documented deviation (docs/expressions.md,
# "Deviations from CEL"): reported apart, never counted as passing.
DEVIATIONS = {
    **dict.fromkeys(
        [
            ("comparisons", "gt_literal", "not_gt_dyn_big_double_int"),
            ("comparisons", "lte_literal", "lte_dyn_big_double_int"),
            ("comparisons", "gte_literal", "gte_dyn_int_big_lossy_double"),
            ("comparisons", "lt_literal", "not_lt_dyn_int_big_lossy_double"),
        ],
        "an int and a double compare exactly, as numbers; cel-go rounds the int to a double first",
    ),
    ("timestamps", "duration_conversions", "toString_duration"): (
        "durations are doubles of seconds, so string() spells a double"
    ),
}


def _suite() -> Path:
    for folder in SUITES:
        if (folder / "basic.textproto").is_file():
            return folder
    pytest.skip("CEL conformance suite not found in ../shared/testdata/cel-spec or tests/fixtures/cel-spec")


# -- protobuf text format ------------------------------------------------------------------

_TOKEN = re.compile(
    r"""\s+|\#[^\n]*
    |(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
    |(?P<ext>\[[A-Za-z_][\w.]*(?:/[\w.]+)?\])
    |(?P<punct>[{}<>:\[\],;])
    |(?P<word>[-+]?(?:\d[\w.]*[eE][-+]?\d+|[\w.]+))""",
    re.VERBOSE,
)
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v"}


def _unquote(token: str) -> bytes:
    body, out, i = token[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        code = body[i + 1]
        if code in _ESCAPES:
            out += _ESCAPES[code]
            i += 2
        elif code in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1 :]).group()
            out.append(int(digits, 8))
            i += 1 + len(digits)
        elif code in "xX":
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2 :]).group()
            out.append(int(digits, 16))
            i += 2 + len(digits)
        elif code in "uU":
            width = 4 if code == "u" else 8
            out += chr(int(body[i + 2 : i + 2 + width], 16)).encode("utf-8", "surrogatepass")
            i += 2 + width
        else:
            out += code.encode("utf-8")
            i += 2
    return bytes(out)


def _tokens(text: str) -> list[tuple[str, Any]]:
    found, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match, f"textproto: cannot read at {text[position : position + 30]!r}"
        position = match.end()
        if match.lastgroup == "string":
            value = _unquote(match.group())
            if found and found[-1][0] == "string":  # adjacent strings concatenate
                found[-1] = ("string", found[-1][1] + value)
            else:
                found.append(("string", value))
        elif match.lastgroup:
            found.append((match.lastgroup, match.group()))
    return found


def read_textproto(text: str) -> dict[str, list]:
    """A message as {field: [values]}; a value is bytes (strings), str (words) or a message."""
    tokens = _tokens(text)
    message, _ = _message(tokens, 0, None)
    return message


def _message(tokens: list, position: int, close: str | None) -> tuple[dict[str, list], int]:
    fields: dict[str, list] = collections.defaultdict(list)
    while position < len(tokens):
        kind, value = tokens[position]
        if kind == "punct" and value == close:
            return fields, position + 1
        if kind == "punct" and value in ",;":
            position += 1
            continue
        name = value
        position += 1
        if tokens[position] == ("punct", ":"):
            position += 1
        kind, value = tokens[position]
        if kind == "punct" and value in "{<":
            child, position = _message(tokens, position + 1, "}" if value == "{" else ">")
            fields[name].append(child)
        elif kind == "punct" and value == "[":  # a list of scalars
            position += 1
            while tokens[position] != ("punct", "]"):
                if tokens[position][0] != "punct":
                    fields[name].append(tokens[position][1])
                position += 1
            position += 1
        else:
            fields[name].append(value)
            position += 1
    return fields, position


def _one(message: dict, name: str, default: Any = None) -> Any:
    values = message.get(name)
    return values[-1] if values else default


# -- values and scope -------------------------------------------------------------------------


class OutOfScope(Exception):
    """The test uses a construct outside the subset; the message names it."""


def to_python(value: dict) -> Any:
    """A cel.expr.Value as the Python value the language works on."""
    for field, items in value.items():
        feature = VALUE_TYPES.get(field)
        if feature is None or not feature.supported:
            raise OutOfScope(f"value type: {feature.name if feature else field}")
        item = items[-1]
        if field == "int64_value":
            return int(item)
        if field == "double_value":
            return float(item)
        if field == "string_value":
            return item.decode("utf-8", "surrogatepass")
        if field == "bool_value":
            return item == "true"
        if field == "null_value":
            return None
        if field == "list_value":
            return [to_python(element) for element in item.get("values", [])]
        if field == "map_value":
            result: dict = {}
            for entry in item.get("entries", []):
                key = to_python(_one(entry, "key"))
                if isinstance(key, float) or key is None or isinstance(key, (list, dict)):
                    raise OutOfScope("value type: map key")
                if key in result:  # `true` and `1` are one Python key
                    raise OutOfScope("value type: a map with both 1 and true (deviation)")
                result[key] = to_python(_one(entry, "value"))
            return result
    raise OutOfScope("value type: empty value")


_STRING = re.compile(r"""(?P<prefix>[rRbB]{0,2})(?P<quote>'''|\"\"\"|'|")""")


def blank_strings(text: str) -> str:
    """`text` with each string literal's contents cut out: `b'ab' + x` -> `b\\x00 + x`."""
    out, position = [], 0
    while position < len(text):
        match = _STRING.search(text, position)
        if match is None:
            out.append(text[position:])
            break
        start = match.start()
        prefix = match.group("prefix")
        if prefix and start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_"):
            prefix, start = "", match.start("quote")  # `xb'...'`: the b belongs to a name
        out.append(text[position:start])
        quote = match.group("quote")
        raw = "r" in prefix.lower()
        i = match.end()
        while i < len(text) and not text.startswith(quote, i):
            i += 2 if (text[i] == "\\" and not raw) else 1
        out.append(prefix + "\x00")
        position = i + len(quote)
    return "".join(out)


def scope_problem(test: dict, bindings: dict) -> str | None:
    """Why `test` is out of scope, or None."""
    if _one(test, "check_only") == "true":
        return "type checking only"
    if _one(test, "disable_macros") == "true":
        return "macros disabled"
    if _one(test, "container"):
        return "containers (qualified names)"
    for field in ("typed_result", "unknown", "any_eval_errors", "any_unknowns"):
        if field in test:
            return f"expects {field.replace('_', ' ')}"
    if any("." in name for name in bindings):
        return "containers (qualified names)"
    for env in test.get("type_env", []):
        if "function" in env:
            return "declared functions"
    text = _one(test, "expr").decode("utf-8")
    blanked = blank_strings(text)
    for feature in SYNTAX:
        if feature.pattern and re.search(feature.pattern, blanked):
            return f"syntax: {feature.name}"
    called = set(re.findall(r"([A-Za-z_]\w*)\s*\(", blanked))
    unknown = sorted(called - set(supported_functions()) - _macro_names())
    if unknown:
        return f"function: {unknown[0]}"
    for root in re.findall(r"(?<![\w.])([A-Za-z_]\w*)\s*\.", blanked):
        if root in UNSUPPORTED_NAMESPACES and root not in bindings:
            return f"function: {root}.*"
    for word in re.findall(r"(?<![\w.])([A-Za-z_]\w*)(?![\w(])", blanked):
        if word in TYPE_NAMES and word not in bindings:
            return "value type: type values"
    return None


@functools.cache
def _macro_names() -> frozenset[str]:
    from opsdsl.lang.expr.features import supported_macros

    return frozenset(supported_macros())


# -- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    file: str
    section: str
    name: str
    expr: str
    status: str  # pass, fail, out, deviation
    detail: str = ""


def same(expected: Any, got: Any) -> bool:
    """Equal values of equal types (1 is not 1.0 here); NaN equals NaN."""
    if type(expected) is not type(got):
        return False
    if isinstance(expected, float):
        return (math.isnan(expected) and math.isnan(got)) or expected == got
    if isinstance(expected, list):
        return len(expected) == len(got) and all(same(a, b) for a, b in zip(expected, got, strict=True))
    if isinstance(expected, dict):
        return expected.keys() == got.keys() and all(same(expected[k], got[k]) for k in expected)
    return expected == got


def _evaluate(evaluate: Any, activation: dict) -> tuple[str, Any]:
    try:
        return "value", evaluate(activation)
    except EvalError as error:
        return "error", error.message
    except Exception as error:
        return "crash", f"{type(error).__name__}: {error}"


def run_test(file: str, section: str, test: dict) -> Outcome:
    name = _one(test, "name").decode("utf-8") if isinstance(_one(test, "name"), bytes) else str(_one(test, "name"))
    text = _one(test, "expr").decode("utf-8")
    outcome = Outcome(file, section, name, text, "out")
    try:
        bindings = {
            _one(entry, "key").decode("utf-8"): to_python(_one(_one(entry, "value"), "value"))
            for entry in test.get("bindings", [])
        }
        expected_value = _one(test, "value")
        expected = to_python(expected_value) if expected_value is not None else True  # the default
    except OutOfScope as reason:
        outcome.detail = str(reason)
        return outcome
    problem = scope_problem(test, bindings)
    if problem is not None:
        outcome.detail = problem
        return outcome
    deviation = DEVIATIONS.get((file, section, name))
    try:
        expression = parse(text)
    except ExprSyntaxError as error:
        if "too long" in error.message or "too deeply" in error.message:
            outcome.detail = "limits: length or nesting"
            return outcome
        outcome.status, outcome.detail = "fail", f"syntax error: {error}"
        return outcome
    expects_error = "eval_error" in test
    results = {
        "compiled": _evaluate(compile_expr(expression), bindings),
        "exact": _evaluate(build_exact(expression), bindings),
    }
    for evaluator, (kind, got) in results.items():
        if kind == "crash":
            outcome.status, outcome.detail = "fail", f"{evaluator}: crashed: {got}"
            return outcome
        if expects_error and kind != "error":
            outcome.status, outcome.detail = "fail", f"{evaluator}: expected an error, got {got!r}"
        elif not expects_error and (kind != "value" or not same(expected, got)):
            outcome.status, outcome.detail = "fail", f"{evaluator}: expected {expected!r}, got {kind} {got!r}"
        if outcome.status == "fail":
            break
    else:
        outcome.status = "pass"
    if deviation is not None and outcome.status == "fail":
        outcome.status, outcome.detail = "deviation", deviation
    return outcome


@functools.cache
def outcomes() -> tuple[Outcome, ...]:
    folder = _suite()
    found = []
    for path in sorted(folder.glob("*.textproto")):
        suite = read_textproto(path.read_text(encoding="utf-8"))
        for section in suite.get("section", []):
            section_name = _one(section, "name").decode("utf-8")
            for test in section.get("test", []):
                found.append(run_test(path.stem, section_name, test))
    return tuple(found)


def per_file() -> dict[str, collections.Counter]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for outcome in outcomes():
        counts[outcome.file][outcome.status] += 1
    return counts


def report() -> str:
    lines = [f"{'file':<18} {'in':>5} {'pass':>5} {'out':>5} {'dev':>4}"]
    totals: collections.Counter = collections.Counter()
    for file, counts in sorted(per_file().items()):
        in_scope = counts["pass"] + counts["fail"]
        lines.append(f"{file:<18} {in_scope:>5} {counts['pass']:>5} {counts['out']:>5} {counts['deviation']:>4}")
        totals.update(counts)
    in_scope = totals["pass"] + totals["fail"]
    lines.append(f"{'total':<18} {in_scope:>5} {totals['pass']:>5} {totals['out']:>5} {totals['deviation']:>4}")
    reasons = collections.Counter(outcome.detail for outcome in outcomes() if outcome.status == "out")
    lines.append("out of scope because:")
    lines += [f"  {count:>5}  {reason}" for reason, count in reasons.most_common()]
    lines += [f"deviation: {o.file}/{o.section}/{o.name}: {o.detail}" for o in outcomes() if o.status == "deviation"]
    return "\n".join(lines)


# -- the tests ---------------------------------------------------------------------------------


def test_every_in_scope_test_passes_through_both_evaluators() -> None:
    print("\n" + report())
    failures = [o for o in outcomes() if o.status == "fail"]
    assert not failures, "\n".join(f"{o.file}/{o.section}/{o.name}: {o.expr}\n    {o.detail}" for o in failures)


def test_the_in_scope_set_only_grows() -> None:
    counts = {file: c["pass"] + c["fail"] for file, c in sorted(per_file().items())}
    if os.environ.get("OPSDSL_UPDATE_CONFORMANCE"):
        COUNTS.write_text(json.dumps(counts, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    stored = json.loads(COUNTS.read_text(encoding="utf-8"))
    shrunk = {file: (count, counts.get(file, 0)) for file, count in stored.items() if counts.get(file, 0) < count}
    assert not shrunk, f"in-scope tests fell (stored, now): {shrunk}"


@pytest.mark.parametrize("file", ["macros", "macros2", "string_ext"])
def test_the_macro_and_strings_files_are_in_scope(file: str) -> None:
    """Every test of these files that calls only supported functions and macros is in
    scope (string_ext's others test format(), quote(), charAt(), reverse())."""
    supported = set(supported_functions()) | _macro_names()
    left_out = [
        o
        for o in outcomes()
        if o.file == file
        and o.status == "out"
        and set(re.findall(r"([A-Za-z_]\w*)\s*\(", blank_strings(o.expr))) <= supported
    ]
    assert not left_out, [(o.name, o.detail) for o in left_out]
    assert per_file()[file]["pass"] >= 40


def test_docs_feature_table_is_the_codes() -> None:
    text = DOCS.read_text(encoding="utf-8")
    begin, end = "<!-- features: generated from opsdsl/lang/expr/features.py -->", "<!-- /features -->"
    assert begin in text and end in text, "docs/expressions.md lacks the features markers"
    documented = text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"
    if os.environ.get("OPSDSL_UPDATE_CONFORMANCE") and documented != feature_markdown():
        DOCS.write_text(text.replace(documented, feature_markdown()), encoding="utf-8")
        return
    assert documented == feature_markdown()


def test_docs_state_the_figure_this_test_measures() -> None:
    passing = sum(1 for o in outcomes() if o.status == "pass")
    deviations = sum(1 for o in outcomes() if o.status == "deviation")
    text = " ".join(DOCS.read_text(encoding="utf-8").split())
    assert f"**{passing} of {passing} in-scope tests pass (100 %)**" in text
    assert f"{deviations} more contradict the deliberate deviations" in text


def test_textproto_reader() -> None:
    message = read_textproto('a: 1 b { c: "x\\101\\n" c: \'y\' "z" } d: [1, 2] e < f: NULL_VALUE >')
    assert message["a"] == ["1"]
    assert message["b"][0]["c"] == [b"xA\n", b"yz"]
    assert message["d"] == ["1", "2"]
    assert message["e"][0]["f"] == ["NULL_VALUE"]


def test_blank_strings_keeps_prefixes() -> None:
    assert blank_strings("b'ab' + x") == "b\x00 + x"
    assert blank_strings(r"r'\d' + '\'' + xb") == "r\x00 + \x00 + xb"
