"""`matches()` is RE2, as CEL specifies: linear time whatever the input, and a pattern RE2
rejects is an evaluation error at run time and a lint error (OPS026) where it is written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from opsdsl.errors import EvalError
from opsdsl.lang.config import Config
from opsdsl.lang.expr import compile_expr, parse
from opsdsl.lang.expr.evaluator import build_exact
from opsdsl.lang.expr.functions import regex_error
from opsdsl.lint.engine import lint_paths
from opsdsl.lint.render import to_text

EVIL = "^([a-z0-9]+-?)+$"  # catastrophic backtracking in a backtracking engine


@pytest.mark.parametrize("text", [f"s.matches('{EVIL}')", "matches(s, p)"])
def test_a_backtracking_pattern_runs_in_linear_time(text):
    adversarial = "a" * 10_000 + "!"
    for evaluate in (build_exact(parse(text)), compile_expr(text)):
        started = time.perf_counter()
        assert evaluate({"s": adversarial, "p": EVIL}) is False
        assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("'eu-1'.matches('^[a-z]+-[0-9]+$')", True),
        ("'EU-1'.matches('(?i)^eu')", True),
        ("'a\\nb'.matches('^b')", False),  # no multi-line mode unless asked: (?m)
        ("'a\\nb'.matches('(?m)^b')", True),
        ("'ab\\n'.matches('b$')", False),  # RE2's `$` is the end of the text, not before a final \n
        ("'héllo'.matches('^h.llo$')", True),  # `.` is one code point
        ("'x9'.matches(r'\\d')", True),
        ("'ab'.matches(r'\\pL+')", True),
        ("'a'.matches('')", True),
    ],
)
def test_re2_semantics(text, expected):
    assert compile_expr(text)({}) is expected
    assert build_exact(parse(text))({}) is expected


@pytest.mark.parametrize(
    "pattern",
    [r"(a)\1", "(?=a)", "(?!a)", "(?<=a)b", r"a\Z", "a{1001}", "(", "[z-a]"],
)
def test_patterns_re2_rejects_are_evaluation_errors(pattern, capfd):
    for evaluate in (build_exact(parse("s.matches(p)")), compile_expr("s.matches(p)")):
        with pytest.raises(
            EvalError, match=r"^invalid regular expression: a string \(\d+ characters?\) is not RE2 syntax"
        ):
            evaluate({"s": "aa", "p": pattern})
    assert capfd.readouterr().err == ""  # RE2 logs nothing of its own


def test_regex_error_is_total():
    assert regex_error("^a+$") is None
    assert regex_error("\ud800") == "not valid Unicode: a lone surrogate"
    assert regex_error("x" * 20_000) == "pattern too large: over 10,000 RE2 instructions"


PACK = """\
apiVersion: opsdsl/v1
kind: Pack
metadata: {name: patterns, version: 1.0.0, owner: sre}
triggers:
  backref: {on: alert, when: 'event.labels.host.matches("(web)-\\\\1")'}
  lookahead: {on: alert, when: 'matches(event.labels.host, "^(?!canary)")'}
  fine: {on: alert, when: 'event.labels.host.matches(r"^web-[0-9]+$") && event.labels.x.matches(event.labels.y)'}
hooks:
  a: {trigger: backref, run: respond, cooldown: 1m}
  b: {trigger: lookahead, run: respond, cooldown: 1m}
  c: {trigger: fine, run: respond, cooldown: 1m}
playbooks:
  respond:
    severity: SEV-3
    steps:
      - id: call
        action: http.request
        with: {url: "http://127.0.0.1:8080/${{ event.labels.x.matches('a{2000}') ? 'a' : 'b' }}"}
        timeout: 5s
"""

GOLDEN = r"""patterns.yaml:5:57: error[OPS026] invalid RE2 pattern: invalid escape sequence: \1
    5 |   backref: {on: alert, when: 'event.labels.host.matches("(web)-\\1")'}
      |                                                         ^^^^^^^^^^^
      = hint: RE2 has no backreferences or lookaround, and writes `\z` for Python's `\Z`

patterns.yaml:6:60: error[OPS026] invalid RE2 pattern: invalid perl operator: (?!
    6 |   lookahead: {on: alert, when: 'matches(event.labels.host, "^(?!canary)")'}
      |                                                            ^^^^^^^^^^^^^
      = hint: RE2 has no backreferences or lookaround, and writes `\z` for Python's `\Z`

patterns.yaml:18:71: error[OPS026] invalid RE2 pattern: invalid repetition size: {2000}
   18 |         with: {url: "http://127.0.0.1:8080/${{ event.labels.x.matches('a{2000}') ? 'a' : 'b' }}"}
      |                                                                       ^^^^^^^^^
      = hint: RE2 repeats at most 1000 times (`x{1,1000}`) and caps a pattern's size

1 file checked: 3 errors
"""


def test_a_literal_pattern_re2_rejects_is_a_lint_error_at_the_pattern(tmp_path: Path, monkeypatch):
    (tmp_path / "patterns.yaml").write_text(PACK, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert to_text(lint_paths([Path("patterns.yaml")], Config())) == GOLDEN
