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
"""

from __future__ import annotations

from typing import Any


class Driver:
    """The tables of one loaded Lark (LALR, contextual lexer) in plain dicts and tuples."""

    def __init__(self, lark: Any) -> None:
        from lark import Token
        from lark.parsers.lalr_analysis import Shift

        frontend = lark.parser
        parser = frontend.parser.parser
        table = parser.parse_table
        callbacks = parser.callbacks
        self.start_state = table.start_states["start"]
        self.end_state = table.end_states["start"]
        self.token_class = Token
        # state -> {terminal: (shift?, next state) | (shift?, (size, callback, rule's name))}
        self.actions: dict[int, dict[str, tuple]] = {}
        for state, row in table.states.items():
            actions = {}
            for name, (action, arg) in row.items():
                # names as plain str: Lark's are often Tokens, whose __eq__ slows each lookup
                if action is Shift:
                    actions[str(name)] = (True, arg)
                else:
                    actions[str(name)] = (False, (len(arg.expansion), callbacks[arg], str(arg.origin.name)))
            self.actions[state] = actions
        self.terminal_callbacks = {str(name): f for name, f in callbacks.items() if isinstance(name, str)}
        # state -> (its actions, its scanner's match, terminal callbacks, ignored terminals,
        # terminals that may hold a newline)
        self.states: dict[int, tuple] = {}
        built: dict[int, tuple] = {}
        for state, lexer in frontend.lexer.lexers.items():
            if id(lexer) not in built:
                scanner = lexer.scanner  # builds lexer.callback too
                mres = scanner._mres
                built[id(lexer)] = (
                    mres[0].match if len(mres) == 1 else _first_match(mres),
                    {str(name): f for name, f in lexer.callback.items()},
                    frozenset(map(str, lexer.ignore_types)),
                    frozenset(map(str, lexer.newline_types)),
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
        row, scan, callback, ignore, newline = states[self.start_state]
        while pos < end:
            match = scan(text, pos)
            if match is None:
                return None
            value = match.group(0)
            kind = match.lastgroup
            start, column = pos, pos - line_start + 1
            pos = match.end()
            if kind in newline:
                newlines = value.count("\n")
                if newlines:
                    line_start = start + value.rindex("\n") + 1
            else:
                newlines = 0
            if kind in ignore:
                if kind in callback:
                    comment = new_token(Token, value)
                    comment.type, comment.value, comment.start_pos = kind, value, start
                    comment.line, comment.column = line, column
                    comment.end_line, comment.end_column, comment.end_pos = line + newlines, pos - line_start + 1, pos
                    callback[kind](comment)
                line += newlines
                continue
            token = new_token(Token, value)
            token.type, token.value, token.start_pos = kind, value, start
            token.line, token.column = line, column
            line += newlines
            token.end_line, token.end_column, token.end_pos = line, pos - line_start + 1, pos
            if kind in callback:
                token = callback[kind](token)
                kind = token.type
            shifted = token if kind not in terminal_callbacks else terminal_callbacks[kind](token)
            while True:
                action = row.get(kind)
                if action is None:
                    return None
                shift, arg = action
                if shift:
                    state_stack.append(arg)
                    value_stack.append(shifted)
                    row, scan, callback, ignore, newline = states[arg]  # the lexer of the new state
                    break
                size, build, origin = arg
                if size == 1:  # the most common reduction: replace the top in place
                    value_stack[-1] = build([value_stack[-1]])
                    row = actions[state_stack[-2]]
                    state_stack[-1] = row[origin][1]
                else:
                    if size:
                        children = value_stack[-size:]
                        del state_stack[-size:]
                        del value_stack[-size:]
                    else:
                        children = []
                    state_stack.append(actions[state_stack[-1]][origin][1])
                    value_stack.append(build(children))
                row = actions[state_stack[-1]]
        while True:  # the end of the text: reduce until the start rule is complete
            action = actions[state_stack[-1]].get("$END")
            if action is None or action[0]:
                return None
            size, build, origin = action[1]
            if size:
                children = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                children = []
            state_stack.append(actions[state_stack[-1]][origin][1])
            value_stack.append(build(children))
            if state_stack[-1] == end_state:
                return value_stack[-1]


def _first_match(mres: list) -> Any:
    """A scanner split over several alternations (Python's group limit): the first match."""

    def match(text: str, pos: int) -> Any:
        for mre in mres:
            found = mre.match(text, pos)
            if found:
                return found
        return None

    return match
