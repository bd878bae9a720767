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
  terminals that have no callback (WS), so one match skips the blanks and takes a token,
  with each terminal's group at the end of its branch (`_token_scanners`);
- a keyword re-typing (Lark's UnlessCallback: a WORD that spells `step` is a STEP) whose
  literals are plain strings becomes a dict lookup;
- a one-child reduction whose callback hands its child back (a `?rule` such as `?value`)
  only moves the state.

With `collapse_expressions` (what `load_text` uses: it needs an expression's extent, not
its structure) every rule of grammar/expr.lark builds an `Extent` holding the first and
last token instead of a subtree; the rest of the tree is Lark's.

`parse_lean` is `load_text`'s run: the same shapes, lighter objects. A token is a `Leaf`
(its text, terminal and offsets; line and column are left to the reader, who derives
them from the offsets as Lark's line counter does), a node a `Node` (rule name, children)
built by a plan derived from each of Lark's rules: the name Lark's tree builder gives it,
and which children it splices in (`_rule`s and the `__*_star_*` helpers, as Lark's
ChildFilter does with keep_all_tokens), each plan checked against Lark's builder at start.
Where a state expects a map or a list and sees its `{` or `[`, literals.py reads the
whole literal and the loop takes the goto on `map` or `list`, lexing the next token as
Lark would after the closer; most of a pack's tokens are in such literals.
"""

from __future__ import annotations

import re
from typing import Any

from .nodes import Leaf, Node


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
                mres = _token_scanners(scanner, f"(?:{blank})*+" if blank else "")
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
        lean = collapse_expressions and not self.terminal_callbacks
        self.lean = _lean_tables(table, callbacks, Shift) if lean else None
        # state -> its scanner, as `states` holds it, less what the lean run does not use
        self.lean_lexers = {state: (*lexer[1:7], lexer[8]) for state, lexer in self.states.items()}
        # (state, `{` or `[`) -> (the goto after a whole map or list, the lexer after it), where
        # the literal reader may read one; see `_literal_gotos`
        self.literals, self.literal_gotos = (None, {})
        if self.lean:
            self.literals, self.literal_gotos = _literal_gotos(lark, self.lean, self.states, self.lean_lexers)
        self.openers = frozenset(kind for _, kind in self.literal_gotos)

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
            start, after = match.start(1), match.end()
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

    def parse_lean(self, text: str) -> Any:
        """`parse`'s tree in `Leaf`s and `Node`s (an expression a Node "expression" holding its
        first and last token), or None where Lark would raise or a lexer callback needs Lark's
        tokens; `parse` itself where a plan did not match Lark's builder."""
        if self.lean is None:  # Lark's builders changed shape: its tokens and trees, as before
            return self.parse(text)
        actions, lexers = self.lean, self.lean_lexers
        literals, literal_gotos, openers = self.literals, self.literal_gotos, self.openers
        end_state = self.end_state
        state_stack = [self.start_state]
        value_stack: list[Any] = []
        new_leaf, new_node = str.__new__, tuple.__new__
        pos, end = 0, len(text)
        row = actions[self.start_state]
        scan, words, fancy, callback, keywords, ignore, skip = lexers[self.start_state]
        while pos < end:
            match = scan(text, pos)
            if match is None:
                if skip(text, pos) is None:
                    return None
                break
            kind = match.lastgroup
            start, pos = match.start(1), match.end()
            value = text[start:pos]
            if kind in fancy:  # ignored terminals, keywords by their text (Lark's UnlessCallback)
                if kind in ignore:
                    continue
                if kind in callback:
                    return None  # a lexer callback wants Lark's token: not this run's job
                if kind in keywords:
                    kind = keywords[kind].get(value, kind)
            elif kind in words:  # a WORD that spells `step` is a STEP
                kind = words[kind].get(value, kind)
            leaf = new_leaf(Leaf, value)
            leaf.type, leaf.start_pos, leaf.end_pos = kind, start, pos
            if kind in openers:
                after = literal_gotos.get((state_stack[-1], kind))
                read = after and literals.read(text, leaf)
                if read:  # a whole literal: its node, the goto on `map` or `list`, the closer's lexer
                    node, pos = read
                    goto, lexer = after
                    state_stack.append(goto)
                    value_stack.append(node)
                    row = actions[goto]
                    scan, words, fancy, callback, keywords, ignore, skip = lexer
                    continue
            while True:
                action = row.get(kind)
                if action is None:
                    return None
                if action.__class__ is int:  # shift, and the new state's lexer
                    state_stack.append(action)
                    value_stack.append(leaf)
                    row = actions[action]
                    scan, words, fancy, callback, keywords, ignore, skip = lexers[action]
                    break
                if action.__class__ is str:  # one-child rules handing their child back: the gotos
                    below = state_stack[-2]
                    while action.__class__ is str:
                        goto = actions[below][action]
                        row = actions[goto]
                        action = row.get(kind)
                    state_stack[-1] = goto
                    continue
                size, build, origin, name, splice = action
                if size:
                    children = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    children = []
                if build == _NODE:
                    node = new_node(Node, (name, children))
                elif build == _EXTENT:  # an expression: its first and last token
                    first, last = children[0], children[-1]
                    if first.__class__ is not Leaf:
                        first = first[1][0]
                    if last.__class__ is not Leaf:
                        last = last[1][-1]
                    node = new_node(Node, ("expression", [first, last]))
                else:
                    node = _spliced(children, splice, name, build == _EXPAND1)
                goto = actions[state_stack[-1]][origin]
                state_stack.append(goto)
                value_stack.append(node)
                row = actions[goto]
        while True:  # the end of the text: reduce until the start rule is complete
            action = row.get("$END")
            if action is None or action.__class__ is int:
                return None
            if action.__class__ is str:
                action = (1, _MOVE, action, None, None)
            size, build, origin, name, splice = action
            children = value_stack[-size:] if size else []
            if size:
                del state_stack[-size:]
                del value_stack[-size:]
            if build == _MOVE:
                node = children[0]
            elif build == _NODE:
                node = new_node(Node, (name, children))
            elif build == _EXTENT:
                node = _collapse(children)
                node = Node("expression", node.children)
            else:
                node = _spliced(children, splice, name, build == _EXPAND1)
            goto = actions[state_stack[-1]][origin]
            state_stack.append(goto)
            value_stack.append(node)
            if goto == end_state:
                return node
            row = actions[goto]


# How the lean run reduces a rule: hand the one child back, build a Node, an Extent, or a
# Node (or its single child, for a `?rule`) from children with some spliced in.
_MOVE, _NODE, _EXTENT, _SPLICE, _EXPAND1 = range(5)


def _spliced(children: list, splice: frozenset, name: str, expand1: bool) -> Any:
    # a left-recursive `_rule`'s list is extended in place, as Lark's ChildFilterLALR does
    # (the spliced node is dropped, nothing else holds it): a long body costs no copies
    kept: list = children[0].children if 0 in splice else [children[0]]
    for i in range(1, len(children)):
        if i in splice:
            kept += children[i].children
        else:
            kept.append(children[i])
    if expand1 and len(kept) == 1:
        return kept[0]
    return Node(name, kept)


def _lean_tables(table: Any, callbacks: dict, shift: Any) -> dict | None:
    """`parse_lean`'s action table: the LALR table with a plan per reduction, each plan checked
    against Lark's own tree builder on probe children; None (no lean run) if any differs."""
    from lark import Token, Tree

    plans: dict = {}
    for rule, build in callbacks.items():
        if isinstance(rule, str):
            continue
        origin = str(rule.origin.name)
        if _is_expression_rule(origin):
            plans[rule] = (_MOVE if len(rule.expansion) == 1 and origin != "expression" else _EXTENT), None, None
            continue
        name = str(rule.alias or rule.options.template_source or origin)
        keep_all = rule.options.keep_all_tokens
        kept = [i for i, sym in enumerate(rule.expansion) if keep_all or not (sym.is_term and sym.filter_out)]
        splice = frozenset(i for i in kept if not rule.expansion[i].is_term and rule.expansion[i].name.startswith("_"))
        expand1 = bool(rule.options.expand1 and not rule.alias)
        if len(kept) != len(rule.expansion):
            return None  # a filtered token: not a shape this run builds
        if expand1 and len(rule.expansion) == 1 and not splice:
            kind = _MOVE
        elif splice or expand1:
            kind = _EXPAND1 if expand1 else _SPLICE
        else:
            kind = _NODE
        plan = (kind, name, splice)
        if not _same_shape(plan, rule, build, Token, Tree):
            return None
        plans[rule] = plan
    lean: dict[int, dict[str, Any]] = {}
    for state, row in table.states.items():
        lean_row: dict[str, Any] = {}
        for name, (action, arg) in row.items():
            if action is shift:
                lean_row[str(name)] = arg
            else:
                kind, node_name, splice = plans[arg]
                origin = str(arg.origin.name)
                if kind == _MOVE:  # a str action: the rule whose goto to take
                    lean_row[str(name)] = origin
                else:
                    lean_row[str(name)] = (len(arg.expansion), kind, origin, node_name, splice)
        lean[state] = lean_row
    return lean


def _literal_gotos(lark: Any, actions: dict, states: dict, lexers: dict) -> tuple[Any, dict]:
    """Where the literal reader may read a whole map or list: states with a goto on `map`
    (`list`) whose `{` (`[`) leads to a state that only continues that literal (its
    actions are shifts of a pair's or value's first token, or of the closer). Reading the
    literal and taking the goto is then what the loop's shifts and reductions would do."""
    from .literals import LiteralReader

    key_words: set = set()
    for row, _, words, _, _, keywords, *_ in states.values():
        if "KEY" in row:
            key_words |= set(words.get("KEY", {})) | set(keywords.get("KEY", {}))
    try:
        reader = LiteralReader(lark, frozenset(key_words))
    except (KeyError, ValueError, StopIteration):
        return None, {}
    starts = {reader.string, reader.number, reader.lbrace, reader.lsqb} | {t for _, t in reader.scalars.values()}
    follow = {
        "map": (reader.lbrace, reader.key_terminals | {reader.rbrace, "pair"}),
        "list": (reader.lsqb, starts | {reader.rsqb, "value", "string", "number", "boolean", "null", "map", "list"}),
    }
    item = {"map": [reader.bare_key, reader.colon, reader.string], "list": [reader.string]}
    gotos: dict = {}
    for state, row in actions.items():
        for rule, (opener, allowed) in follow.items():
            inside, goto = row.get(opener), row.get(rule)
            if inside.__class__ is not int or goto.__class__ is not int:
                continue
            inner = actions[inside]
            if not set(inner) <= allowed or not all(a.__class__ is int for a in inner.values()):
                continue
            # The token after the literal is lexed in the state after its closer, as Lark does
            # (that state is shared by every context of the rule, so its lexer may take more
            # than the goto's): found by running the tables over each shape of literal
            closer = reader.rbrace if rule == "map" else reader.rsqb
            closing: dict = {}  # the same scanner objects: one lexer
            for count in range(4):
                kinds: list = []
                for i in range(count):
                    kinds += [reader.comma, *item[rule]] if i else item[rule]
                for trailing in ([], [reader.comma]) if count else ([],):
                    after = _run(actions, [state], [opener, *kinds, *trailing, closer])
                    lexer = None if after is None else lexers[after[-1]]
                    closing[None if lexer is None else tuple(map(id, lexer))] = lexer
            if len(closing) == 1 and None not in closing:
                gotos[(state, opener)] = (goto, *closing.values())
    return reader, gotos


def _run(actions: dict, stack: list, kinds: list) -> list | None:
    """The state stack after the tables take `kinds` (terminal names) from `stack`."""
    stack = list(stack)
    for kind in kinds:
        while True:
            action = actions[stack[-1]].get(kind)
            if action is None:
                return None
            if action.__class__ is int:
                stack.append(action)
                break
            size, origin = (1, action) if action.__class__ is str else (action[0], action[2])
            if size:
                del stack[-size:]
            stack.append(actions[stack[-1]][origin])
    return stack


def _same_shape(plan: tuple, rule: Any, build: Any, token_class: type, tree_class: type) -> bool:
    """Lark's builder and the plan make the same node of the same probe children (made twice:
    Lark's builder may extend a spliced child's list in place)."""

    def probe() -> list:
        children: list = []
        for i, sym in enumerate(rule.expansion):
            if sym.is_term:
                children.append(token_class(str(sym.name), f"t{i}"))
            elif str(sym.name).startswith("_"):
                children.append(tree_class(str(sym.name), [token_class("A", f"a{i}"), token_class("B", f"b{i}")]))
            else:
                children.append(tree_class(str(sym.name), []))
        return children

    kind, name, splice = plan
    expected = build(probe())
    children = probe()
    if kind == _MOVE:
        got = children[0]
    elif kind == _NODE:
        got = Node(name, children)
    else:
        got = _spliced(children, splice, name, kind == _EXPAND1)
    return _shape(got) == _shape(expected)


def _shape(node: Any) -> Any:
    if isinstance(node, str):
        return getattr(node, "type", None), str(node)
    return str(node.data), [_shape(child) for child in node.children]


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


def _token_scanners(scanner: Any, prefix: str) -> list:
    """A state's scanner as regexes that match the blanks to skip (`prefix`), an empty group 1
    where the token starts, then the token, named by the terminal's group (`lastgroup`).

    Where Lark's alternation is one regex of its terminals in order, `(?P<NAME>regex)`, each
    terminal's group moves to the end of its branch, `(?:regex)(?P<NAME>)`: the same branches
    in the same order match the same text, and the last group closed is still the terminal's.
    A branch that opens with a group is entered whatever the character; one that opens with
    a literal or a character set is passed over on its first character by the regex engine,
    and most of a state's branches are keywords that do. Otherwise Lark's own regexes."""
    terminals = scanner.terminals
    own = [m.pattern for m in scanner._mres]
    lark_s = "|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals)
    if not scanner.use_bytes and own == [lark_s]:
        tagged = "|".join(f"(?:{t.pattern.to_regexp()})(?P<{t.name}>)" for t in terminals)
        try:
            return [re.compile(f"{prefix}()(?:{tagged})", scanner._mres[0].flags)]
        except (re.error, AssertionError, OverflowError):
            pass
    return [re.compile(f"{prefix}()(?:{m.pattern})", m.flags) for m in scanner._mres]


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
