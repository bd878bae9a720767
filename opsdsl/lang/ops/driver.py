"""A lean run of Lark's LALR parser for .ops text that parses: the same tree, faster.

Lark's `parse()` spends most of a pack's time in per-token Python overhead (a generator
per lexer, a line counter object, a method call per token and per reduction). This
module runs the very tables Lark built from grammar/pack.lark — each parser state's
contextual scanner (its compiled alternation of terminals, keyword re-typing and the
COMMENT callback) and the LALR action table with Lark's tree-building callbacks — in
one loop, so the grammar stays the only definition of the syntax and the tree, tokens
and positions are exactly Lark's. It handles only the happy path: at the first
character or token it cannot take it gives up (returns None) and the caller parses
again with Lark and the error recovery, which produce the diagnostics.

Three shortcuts keep the loop short, each derived from Lark's own objects:
- each scanner's alternation is compiled again behind a possessive run of the ignored
  terminals that have no callback (WS), so one match skips the blanks and takes a token;
- a keyword re-typing (Lark's UnlessCallback: a WORD that spells `step` is a STEP) whose
  literals are plain strings becomes a dict lookup;
- a one-child reduction whose callback hands its child back (a `?rule` such as `?value`)
  only moves the state.

With `collapse_expressions` (what `load_text` uses: it needs an expression's extent, not
its structure) every rule of grammar/expr.lark builds an `Extent` holding the first and
last token instead of a subtree; the rest of the tree is Lark's.
"""

from __future__ import annotations

import re
from typing import Any


class Extent:
    """A collapsed expression: `children` are its first and last token, so code that walks
    to a node's first or last token (spans, source text) reads it as it reads a subtree."""

    __slots__ = ("children",)
    data = "expression"

    def __init__(self, children: list) -> None:
        self.children = children


def _collapse(children: list) -> Extent:
    first, last = children[0], children[-1]
    if not isinstance(first, str):
        first = first.children[0]
    if not isinstance(last, str):
        last = last.children[-1]
    return Extent([first, last])


def _is_expression_rule(origin: str) -> bool:
    return origin == "expression" or origin.startswith("expr__")


class Driver:
    """The tables of one loaded Lark (LALR, contextual lexer) in plain dicts and tuples."""

    def __init__(self, lark: Any, collapse_expressions: bool = False) -> None:
        from lark import Token, Tree
        from lark.lexer import PatternStr, UnlessCallback
        from lark.parsers.lalr_analysis import Shift

        frontend = lark.parser
        parser = frontend.parser.parser
        table = parser.parse_table
        callbacks = parser.callbacks
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.token_class = Token
        probe = Tree("probe", [])
        # state -> {terminal or rule: next state (a shift or a goto) | (size, callback or None, rule)}
        self.actions: dict[int, dict[str, tuple]] = {}
        for state, row in table.states.items():
            actions = {}
            for name, (action, arg) in row.items():
                # names as plain str: Lark's are often Tokens, whose __eq__ slows each lookup
                if action is Shift:
                    actions[str(name)] = arg
                    continue
                size, build, origin = len(arg.expansion), callbacks[arg], str(arg.origin.name)
                if collapse_expressions and _is_expression_rule(origin):
                    # one Extent per expression; inside it, one-child rules only move the state
                    build = None if size == 1 and origin != "expression" else _collapse
                elif size == 1 and build([probe]) is probe:
                    build = None  # Lark's callback returns its one child: nothing to build
                actions[str(name)] = (size, build, origin)
            self.actions[state] = actions
        self.terminal_callbacks = {str(name): f for name, f in callbacks.items() if isinstance(name, str)}
        ignored = {str(t.name): t for t in lark.terminals if t.name in lark.ignore_tokens}
        # state -> (its actions, its scanner's match, words to re-type as keywords, the other
        # terminals that need more than a token (any below), terminal callbacks, keyword
        # tables, ignored terminals, terminals that may hold a newline, skip-blanks-at-end match)
        self.states: dict[int, tuple] = {}
        built: dict[int, tuple] = {}
        for state, lexer in frontend.lexer.lexers.items():
            if id(lexer) not in built:
                scanner = lexer.scanner  # builds lexer.callback too
                ignore = frozenset(map(str, lexer.ignore_types))
                callback, keywords = {}, {}
                for name, f in lexer.callback.items():
                    literals = _plain_literals(f, UnlessCallback, PatternStr)
                    if literals is not None:
                        keywords[str(name)] = literals
                    else:
                        callback[str(name)] = f
                if collapse_expressions:
                    callback = {n: f for n, f in callback.items() if n not in ignore}  # no comments kept
                blank = _blanks(ignored, ignore - set(callback), scanner.terminals)
                prefix = f"(?:{blank})*+" if blank else ""
                mres = [re.compile(f"{prefix}(?:{m.pattern})", m.flags) for m in scanner._mres]
                skip = re.compile(f"(?:{blank})*+\\Z").match if blank else _nothing
                newline = frozenset(map(str, lexer.newline_types))
                # words that may spell a keyword and need nothing else: re-typed by a lookup
                words = {n: t for n, t in keywords.items() if n not in newline | ignore | set(callback)}
                if self.terminal_callbacks:
                    words = {}
                fancy = frozenset(callback) | set(keywords) | ignore | newline | set(self.terminal_callbacks)
                built[id(lexer)] = (
                    mres[0].match if len(mres) == 1 else _first_match(mres),
                    words,
                    fancy - set(words),
                    callback,
                    keywords,
                    ignore,
                    newline,
                    skip,
                )
            self.states[state] = (self.actions[state], *built[id(lexer)])

    def parse(self, text: str) -> Any:
        """The tree Lark's `parse(text)` gives, or None where Lark would raise."""
        Token = self.token_class
        new_token = str.__new__
        actions, states = self.actions, self.states
        terminal_callbacks = self.terminal_callbacks
        end_state = self.end_state
        state_stack = [self.start_state]
        value_stack: list[Any] = []
        pos, line, line_start, end = 0, 1, 0, len(text)
        row, scan, words, fancy, callback, keywords, ignore, newline, skip = states[self.start_state]
        count, rindex = text.count, text.rindex
        while pos < end:
            match = scan(text, pos)
            if match is None:
                if skip(text, pos) is None:
                    return None
                line += count("\n", pos, end)  # only blanks left
                break
            kind = match.lastgroup
            start, after = match.span(kind)
            value = text[start:after]
            if start != pos:  # blanks skipped before the token
                newlines = count("\n", pos, start)
                if newlines:
                    line += newlines
                    line_start = rindex("\n", pos, start) + 1
            pos = after
            token = new_token(Token, value)
            token.start_pos, token.line, token.column = start, line, start - line_start + 1
            if kind in words:  # a WORD that spells `step` is a STEP
                kind = words[kind].get(value, kind)
                token.type, token.value = kind, value
                token.end_line, token.end_column, token.end_pos = line, pos - line_start + 1, pos
            elif kind in fancy:  # Lark's lexer: newlines, ignored tokens, callbacks by the matched kind
                newlines = value.count("\n") if kind in newline else 0
                if newlines:
                    line_start = start + value.rindex("\n") + 1
                token.type, token.value = kind, value
                token.end_line, token.end_column, token.end_pos = line + newlines, pos - line_start + 1, pos
                line += newlines
                if kind in keywords:
                    token.type = keywords[kind].get(value, kind)
                elif kind in callback:
                    token = callback[kind](token)
                if kind in ignore:
                    continue
                kind = token.type
                if kind in terminal_callbacks:
                    token = terminal_callbacks[kind](token)
            else:
                token.type, token.value = kind, value
                token.end_line, token.end_column, token.end_pos = line, pos - line_start + 1, pos
            while True:
                action = row.get(kind)
                if action is None:
                    return None
                if action.__class__ is int:  # shift, and the new state's lexer
                    state_stack.append(action)
                    value_stack.append(token)
                    row, scan, words, fancy, callback, keywords, ignore, newline, skip = states[action]
                    break
                size, build, origin = action
                if size == 1:  # the most common reduction: replace the top in place
                    if build is not None:
                        value_stack[-1] = build([value_stack[-1]])
                    goto = actions[state_stack[-2]][origin]
                    state_stack[-1] = goto
                else:
                    if size:
                        children = value_stack[-size:]
                        del state_stack[-size:]
                        del value_stack[-size:]
                    else:
                        children = []
                    goto = actions[state_stack[-1]][origin]
                    state_stack.append(goto)
                    value_stack.append(build(children))
                row = actions[goto]
        while True:  # the end of the text: reduce until the start rule is complete
            action = actions[state_stack[-1]].get("$END")
            if action is None or action.__class__ is int:
                return None
            size, build, origin = action
            if size:
                children = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                children = []
            state_stack.append(actions[state_stack[-1]][origin])
            value_stack.append(build(children) if build is not None else children[0])
            if state_stack[-1] == end_state:
                return value_stack[-1]


def _plain_literals(callback: Any, unless_class: type, pattern_str: type) -> dict[str, str] | None:
    """Lark's keyword re-typing as {literal: terminal}, when every literal is a plain string
    (no flags), so re-typing is an exact lookup; else None (the callback is kept)."""
    if type(callback) is not unless_class:
        return None
    scanner = callback.scanner
    if scanner.g_regex_flags & re.IGNORECASE:
        return None
    out: dict[str, str] = {}
    for terminal in scanner.terminals:
        pattern = terminal.pattern
        if type(pattern) is not pattern_str or pattern.flags:
            return None
        out.setdefault(pattern.value, str(terminal.name))
    return out


def _blanks(ignored: dict, names: set, terminals: list) -> str:
    """The alternation of the ignored terminals the scanner may skip without a token: those
    no other terminal of the state could also match where they start (then the alternation's
    order would decide, so they stay in it)."""
    others = [re.compile(t.pattern.to_regexp()) for t in terminals if str(t.name) not in names]
    out = []
    for name in sorted(names):
        terminal = ignored.get(name)
        if terminal is None:
            continue
        own = re.compile(terminal.pattern.to_regexp())
        probes = [c for c in " \t\r\n\f#;/" if own.match(c)]
        if probes and not any(other.match(c + c) for other in others for c in probes):
            out.append(terminal.pattern.to_regexp())
    return "|".join(out)


def _nothing(text: str, pos: int) -> None:
    return None


def _first_match(mres: list) -> Any:
    """A scanner split over several alternations (Python's group limit): the first match."""

    def match(text: str, pos: int) -> Any:
        for mre in mres:
            found = mre.match(text, pos)
            if found:
                return found
        return None

    return match
