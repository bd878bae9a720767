"""Text to syntax tree for .ops files: Lark (LALR) with grammar/pack.lark, every token kept.

The tree is concrete: keywords and punctuation stay in it, and comments are collected
beside it, so the formatter can print it back. Syntax errors are collected, not raised:
after an error the parser drops tokens until a statement keyword or a closing brace, then
inserts the few tokens that let it continue there (a missing value, a missing `}`), so
one run reports several independent mistakes.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from opsdsl.errors import Diagnostic, Severity, Span
from opsdsl.resources import lark_cache_file, read_text

MAX_DEPTH = 64
MAX_ERRORS = 20
MAX_RECOVERIES = 200

# Statement keywords and `}`: where the parser resynchronises after an error.
SYNC = frozenset(
    [
        "PARAM",
        "TRIGGER",
        "HOOK",
        "PLAYBOOK",
        "POLICY",
        "DESCRIPTION",
        "LABELS",
        "INPUT",
        "STEP",
        "FINALLY",
        "NAME",
        "NEEDS",
        "WHEN",
        "RISK",
        "WITH",
        "TIMEOUT",
        "RETRY",
        "COMPENSATE",
        "CONTINUE_ON_ERROR",
        "IDEMPOTENT",
        "RUNNER",
        "THRESHOLD",
        "FOR",
        "COOLDOWN",
        "DEDUPE",
        "MAX_CONCURRENT",
        "ESCALATE",
        "MESSAGE",
        "APPROVALS",
        "SECRET",
        "ENUM",
        "expr__RBRACE",
    ]
)
# Tokens the recovery may invent to complete a construct, in order of preference.
_FILLERS = {
    "expr__RBRACE": "}",  # punctuation shares its terminal with grammar/expr.lark
    "expr__RSQB": "]",
    "DURATION": "1s",
    "STRING": '""',
    "WORD": "x",
    "NUMBER": "0",
    "expr__IDENT": "x",
    "expr__COLON": ":",
    "KEY": "x",
}
_WORDS = {
    "DURATION": "a duration like 30s",
    "STRING": 'a string in double quotes ("...")',
    "WORD": "a name",
    "NUMBER": "a number",
    "KEY": "a key",
    "_expr__COMMA": "`,`",
    "$END": "the end of the file",
}
_EXPRESSION_START = {"IDENT", "INT", "HEX", "FLOAT", "DURATION", "STRING", "LPAR", "LSQB", "LBRACE", "BANG", "MINUS"}
_EXPRESSION_START |= {"TRUE", "FALSE", "NULL"}
# Punctuation of grammar/pack.lark that shares its terminal with grammar/expr.lark.
_SHARED_PUNCTUATION = {"expr__LBRACE", "expr__RBRACE", "expr__LSQB", "expr__RSQB", "expr__COLON", "_expr__COMMA"}
_COMMENTS = re.compile(r"#[^\n]*")
_SCAN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{\[(]|[}\])]')


@dataclass
class ParseResult:
    """A concrete tree (None when the text has errors), its comments and diagnostics."""

    tree: Any
    comments: list = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def parse_ops(text: str, path: str) -> ParseResult:
    """Parse .ops text; never raises on bad input."""
    diagnostics = _check_nesting(text, path)
    if diagnostics:
        return ParseResult(None, [], diagnostics)
    from lark.exceptions import UnexpectedInput

    parser, comments = _lark_parser()
    comments.clear()
    tree = _driver().parse(text)
    if tree is not None:
        found = list(comments)
        comments.clear()
        return ParseResult(tree, found, [])
    comments.clear()  # Lark parses it again, with the error recovery, for the diagnostics
    recovery = _Recovery(path, text, parser)
    try:
        tree = parser.parse(text, on_error=recovery.on_error)
    except UnexpectedInput as error:
        if not recovery.stopped:
            recovery.record(error)
        tree = None
    found = list(comments)
    comments.clear()
    if recovery.diagnostics:
        return ParseResult(None, found, recovery.diagnostics)
    return ParseResult(tree, found, [])


def _check_nesting(text: str, path: str) -> list[Diagnostic]:
    """Brackets nested deeper than MAX_DEPTH are refused before parsing: no recursion
    downstream ever sees a deep tree."""
    depth = 0
    for match in _SCAN.finditer(text):
        token = match.group()
        if token in "{[(":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                col = match.start() - text.rfind("\n", 0, match.start())
                span = Span(path, line, col, line, col + 1)
                message = f"nesting deeper than {MAX_DEPTH} levels"
                return [Diagnostic("OPS005", Severity.ERROR, message, span, "flatten the pack")]
        elif token in "}])":
            depth = max(0, depth - 1)
    return []


# What _check_nesting's scan skips (strings, comments, any other text, a lone quote) and
# what is left after it: brackets only, whose innermost pairs one substitution removes.
_NOT_BRACKETS = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[^{}\[\]()"\'#]+|["\']')
_INNERMOST = re.compile(r"[{\[(][}\])]")
# The same for ASCII text without a backslash, at C speed: with no escapes, a string or a
# comment ends at the same quote or newline once every character but brackets, quotes, `#`
# and newlines is gone, so those are dropped first, then strings and comments, then the rest.
_QUOTING = "{}[]()\"'#\n"
_KEEP_QUOTING = {c: None for c in range(128) if chr(c) not in _QUOTING}
_KEEP_BRACKETS = {ord(c): None for c in "\"'#\n"}
_QUOTED = re.compile(r'"[^"\n]*"|\'[^\'\n]*\'|#[^\n]*')


def _shallow(text: str) -> bool:
    """True when the brackets of `text` (as _check_nesting counts them) balance and nest at
    most MAX_DEPTH deep: each round removes the innermost pairs, so a balanced text is
    empty after as many rounds as its depth. False means "ask _check_nesting"."""
    brackets = _brackets(text)
    for _ in range(MAX_DEPTH):
        if not brackets:
            return True
        inner = _INNERMOST.sub("", brackets)
        if len(inner) == len(brackets):
            return False
        brackets = inner
    return not brackets


def _brackets(text: str) -> str:
    """The brackets _check_nesting counts, in order (outside strings and comments)."""
    if text.isascii() and "\\" not in text:
        return _QUOTED.sub("", text.translate(_KEEP_QUOTING)).translate(_KEEP_BRACKETS)
    return _NOT_BRACKETS.sub("", text)


def _unclosed(text: str, before: int) -> int | None:
    """The line of the innermost bracket still open at offset `before`."""
    stack: list[int] = []
    for match in _SCAN.finditer(text, 0, before):
        token = match.group()
        if token in "{[(":
            stack.append(match.start())
        elif token in "}])" and stack:
            stack.pop()
    return text.count("\n", 0, stack[-1]) + 1 if stack else None


class _Recovery:
    """Lark's `on_error` for LALR: record, then skip or repair, and carry on."""

    def __init__(self, path: str, text: str, parser: Any) -> None:
        self.path, self.text, self.parser = path, text, parser
        self.diagnostics: list[Diagnostic] = []
        self.calls = 0
        self.last_end: int | None = None
        self.stopped = False

    def on_error(self, error: Any) -> bool:
        from lark.exceptions import UnexpectedToken

        self.calls += 1
        if self.calls > MAX_RECOVERIES or len(self.diagnostics) >= MAX_ERRORS:
            self.stopped = True
            return False
        token = getattr(error, "token", None)
        start, end = _extent(error)
        # an error right after the previous one (nothing accepted in between) is its echo
        quiet = self.last_end is not None and not _COMMENTS.sub("", self.text[self.last_end : start]).strip()
        self.last_end = end
        if isinstance(error, UnexpectedToken) and token is not None and token.type == "$END":
            if not quiet:
                self.record(error)
            self.stopped = True
            return False
        if not quiet:
            self.record(error)
        if isinstance(error, UnexpectedToken) and token.type in SYNC:
            self._repair(error.interactive_parser, token)
        return True

    def _repair(self, parser: Any, token: Any) -> bool:
        """Insert up to four invented tokens after which `token` is accepted, then feed it."""
        from lark import Token

        frontier: list[tuple[Any, tuple[str, ...]]] = [(parser, ())]
        for _ in range(4):
            following = []
            for state, inserted in frontier:
                choices = state.choices()
                if token.type in choices:
                    for name in inserted:
                        parser.feed_token(Token(name, _FILLERS[name], token.start_pos, token.line, token.column))
                    try:
                        parser.feed_token(token)
                    except Exception:
                        return False
                    return True
                for name in _FILLERS:
                    if name in choices:
                        trial = state.copy()
                        try:
                            trial.feed_token(Token(name, _FILLERS[name], token.start_pos, token.line, token.column))
                        except Exception:
                            continue
                        following.append((trial, (*inserted, name)))
            frontier = following[:40]
        return False

    def record(self, error: Any) -> None:
        from lark.exceptions import UnexpectedCharacters, UnexpectedToken

        line, col = getattr(error, "line", 1) or 1, getattr(error, "column", 1) or 1
        hint = None
        if isinstance(error, UnexpectedToken):
            token = error.token
            expected = set(error.accepts or error.expected or ())
            if token.type != "$END" and error.interactive_parser is not None:
                expected = _accepts(error.interactive_parser) or expected
            if token.type == "$END":
                line, col = _end_position(self.text)
                found = "the end of the file"
                opened = _unclosed(self.text, len(self.text))
                if opened:
                    hint = f"the `{{` or `[` opened on line {opened} is not closed"
            else:
                found = f"`{_clip(str(token))}`"
            width = max(1, len(str(token))) if token.type != "$END" else 1
            if "_expr__COMMA" in expected and token.type in (
                "STRING",
                "KEY",
                "WORD",
                "NUMBER",
                "TRUE",
                "FALSE",
                "NULL",
            ):
                hint = "missing comma? items of a list or map are separated by `,`"
            if token.type == "expr__COLON" and expected <= {"DURATION", "STRING", "WORD", "NUMBER"} | _expr_names(
                expected
            ):
                hint = "statements take no `:` — write `timeout 10s`, not `timeout: 10s`"
        elif isinstance(error, UnexpectedCharacters):
            expected = set(error.allowed or ())
            char = self.text[error.pos_in_stream] if error.pos_in_stream < len(self.text) else ""
            found = f"`{char}`" if char.strip() else "a space" if char else "the end of the file"
            width = 1
            if char in "'" and "STRING" in expected:
                hint = 'strings use double quotes: "..."'
        else:  # pragma: no cover - Lark raises only the two above while parsing
            expected, found, width = set(), "invalid input", 1
        message = f"expected {describe(expected)}, found {found}"
        self.diagnostics.append(
            Diagnostic("OPS002", Severity.ERROR, message, Span(self.path, line, col, line, col + width), hint)
        )


def _accepts(parser: Any) -> set[str]:
    """The terminals the parser can take next. (Lark's own `accepts()` skips terminal names
    that are not all upper case, such as the `expr__...` names imported from expr.lark.)"""
    from lark import Token

    names = set(_literal_patterns()) | set(_WORDS) | {"expr__IDENT", "expr__INT", "expr__STRING", "KEY"}
    out = set()
    for name in parser.choices():
        if name not in names and not name.isupper():
            continue
        trial = parser.copy()
        try:
            trial.feed_token(Token(name, ""))
        except Exception:
            continue
        out.add(name)
    return out


def _extent(error: Any) -> tuple[int, int]:
    token = getattr(error, "token", None)
    if token is not None and token.type != "$END":
        return token.start_pos, token.end_pos
    position = getattr(error, "pos_in_stream", None)
    if position is None:
        return 10**12, 10**12
    return position, position + 1


def _expr_names(expected: set[str]) -> set[str]:
    return {name for name in expected if name.startswith("expr__")}


def _clip(text: str, limit: int = 40) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _end_position(text: str) -> tuple[int, int]:
    stripped = text.rstrip()
    line = stripped.count("\n") + 1
    return line, len(stripped) - (stripped.rfind("\n") + 1) + 1


def describe(expected: set[str]) -> str:
    """Terminal names in words: `a duration like 30s`, `` `{` or `step` ``."""
    words: list[str] = []
    shared = {n for n in expected if n in _SHARED_PUNCTUATION}
    plain = {n.removeprefix("expr__") for n in expected if n.startswith("expr__") and n not in shared}
    if plain & _EXPRESSION_START:
        words.append("an expression")
    elif plain:
        words.append("an operator")
    literals = _literal_patterns()
    keywords = []
    for name in sorted(n for n in expected if not n.startswith("expr__") or n in shared):
        if name in _WORDS:
            words.append(_WORDS[name])
        elif name in literals:
            keywords.append(f"`{literals[name]}`")
        else:
            words.append(name.lower())
    if len(keywords) > 8:
        keywords = [*sorted(keywords)[:8], "…"]
    items = words + sorted(keywords)
    if not items:
        return "something else"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


@functools.cache
def _literal_patterns() -> dict[str, str]:
    parser, _ = _lark_parser()
    out = {}
    for terminal in parser.terminals:
        pattern = terminal.pattern
        if type(pattern).__name__ == "PatternStr":
            out[terminal.name] = pattern.value
    return out


@functools.cache
def _lark_parser() -> tuple[Any, list]:
    from lark import Lark

    grammar = read_text("grammar/pack.lark")
    expr_grammar = read_text("grammar/expr.lark")
    comments: list = []
    parser = Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        keep_all_tokens=True,
        maybe_placeholders=False,
        import_paths=[_import_from_data],
        lexer_callbacks={"COMMENT": comments.append},
        cache=lark_cache_file("pack", grammar + "\0" + expr_grammar),
    )
    return parser, comments


@functools.cache
def _driver() -> Any:
    from .driver import Driver

    return Driver(_lark_parser()[0])


@functools.cache
def _extent_driver() -> Any:
    """The lean run for `load_text` (`Driver.parse_lean`): Lark's tree shapes in lighter
    objects, each expression collapsed to its extent, no comments, literals read whole."""
    from .driver import Driver

    return Driver(_lark_parser()[0], collapse_expressions=True)


def parse_for_data(text: str) -> Any:
    """The tree `load_text` builds data from (expressions collapsed to their extent), or None
    where `parse_ops` must run instead: too deep, or not parsed by the lean run (errors)."""
    if not _shallow(text) and _check_nesting(text, ""):
        return None
    return _extent_driver().parse_lean(text)


def _import_from_data(base_path: str, grammar_path: str) -> tuple[str, str]:
    """Lark import loader: `%import .expr...` reads grammar/expr.lark wherever it ships."""
    return f"grammar/{grammar_path}", read_text(f"grammar/{grammar_path}")
