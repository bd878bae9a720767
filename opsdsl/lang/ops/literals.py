"""The lean run's reader for JSON-like literals (`value` in grammar/pack.lark): a map or
list read in one call, where the LALR loop would take a token and a few reductions at a
time. Most of a pack's tokens are in `with {...}` maps, so this is most of the run.

Everything it knows comes from the loaded Lark: the terminal regexes, the punctuation's
terminal names and the rules' shapes (`map: "{" [pair ("," pair)* [","]] "}"`), so the
grammar stays the definition of the syntax. It builds the very `Node`s and `Leaf`s the
LALR loop would, and answers only when it is sure: on anything else (an unexpected
character or token, a bare key that spells a keyword, a literal it cannot close) it
returns None and the loop parses the literal token by token, or fails and leaves the
diagnostics to Lark. tests/lang/test_ops_fast_load.py holds its trees to the loop's.
"""

from __future__ import annotations

import re
from typing import Any

from .nodes import Leaf, Node

MAX_NESTING = 64  # parser.MAX_DEPTH: deeper text is refused before any parse


class LiteralReader:
    """Reads one literal at an offset: (node, offset after it) or None."""

    def __init__(self, lark: Any, keywords: frozenset) -> None:
        rules: dict[str, list[list[str]]] = {}
        for rule in lark.rules:
            rules.setdefault(str(rule.origin.name), []).append([str(s.name) for s in rule.expansion])
        terminals = {str(t.name): t for t in lark.terminals}
        (self.lbrace, self.rbrace) = next(e for e in rules["map"] if len(e) == 2)
        (self.lsqb, self.rsqb) = next(e for e in rules["list"] if len(e) == 2)
        self.colon = next(e for e in rules["pair"])[1]
        # `map: "{" pair "," "}"` (a trailing comma) names the comma
        self.comma = next(e[2] for e in rules["map"] if len(e) == 4 and e[2] in terminals)
        if not any(len(e) == 4 and e[2] == self.comma for e in rules["list"]):
            raise ValueError("lists and maps separate items differently")
        self.key_terminals = frozenset(e[0] for e in rules["pair"])
        (self.string,) = rules["string"][0]
        (self.number,) = rules["number"][0]
        self.scalars = {
            terminals[e[0]].pattern.value: (name, e[0]) for name in ("boolean", "null") for e in rules[name]
        }
        punctuation = {self.lbrace, self.rbrace, self.lsqb, self.rsqb, self.colon, self.comma}
        self.punctuation = {terminals[n].pattern.value: n for n in punctuation}
        if len(self.punctuation) != 6 or any(len(p) != 1 for p in self.punctuation):
            raise ValueError("punctuation is not six single characters")
        (bare,) = self.key_terminals - {self.string}
        self.bare_key = bare
        # a bare key spelling a keyword some state's lexer re-types (or true/false/null): not sure
        self.keywords = keywords | set(self.scalars)
        blank = "|".join(terminals[str(n)].pattern.to_regexp() for n in lark.ignore_tokens)
        groups = [
            (self.string, terminals[self.string].pattern.to_regexp()),
            (self.number, terminals[self.number].pattern.to_regexp()),
            (bare, terminals[bare].pattern.to_regexp()),
            ("P", "[" + re.escape("".join(self.punctuation)) + "]"),
        ]
        # group 1 (empty) where the token starts, each terminal's group at the end of its
        # branch, so the regex engine passes over a branch on its first character (as in
        # driver.py's `_token_scanners`)
        alternation = "|".join(f"(?:{regex})(?P<{name}>)" for name, regex in groups)
        self.scan = re.compile(f"(?:{blank})*+()(?:{alternation})").match

    def read(self, text: str, opening: Leaf) -> tuple[Any, int] | None:
        """The `map` or `list` that `opening` (its `{` or `[`) starts, as the LALR loop builds it,
        and the offset after it; None when not sure. One loop, an explicit stack for nesting."""
        scan, punctuation, scalars, keywords = self.scan, self.punctuation, self.scalars, self.keywords
        string, number, bare, comma, colon = self.string, self.number, self.bare_key, self.comma, self.colon
        lbrace, lsqb, key_terminals = self.lbrace, self.lsqb, self.key_terminals
        new_leaf, new_node = str.__new__, tuple.__new__
        stack: list[tuple] = []
        children: list = [opening]
        is_map = opening.type == lbrace
        closer = self.rbrace if is_map else self.rsqb
        key = separator = None
        expect = _ITEM
        pos = opening.end_pos
        while True:
            match = scan(text, pos)
            if match is None:
                return None
            kind = match.lastgroup
            start, pos = match.start(1), match.end()
            value = text[start:pos]
            if kind == "P":
                kind = punctuation[value]
            leaf = new_leaf(Leaf, value)
            leaf.type, leaf.start_pos, leaf.end_pos = kind, start, pos
            if expect == _NEXT:  # after an item: a comma or the closer
                if kind == comma:
                    children.append(leaf)
                    expect = _ITEM
                    continue
                if kind != closer:
                    return None
            elif expect == _ITEM and kind != closer and is_map:  # a key
                if kind not in key_terminals or (kind == bare and value in keywords):
                    return None
                key, expect = leaf, _COLON
                continue
            elif expect == _COLON:
                if kind != colon:
                    return None
                separator, expect = leaf, _VALUE
                continue
            if kind == closer and expect != _VALUE:  # the literal ends (after `[`, an item or a comma)
                children.append(leaf)
                node = new_node(Node, ("map" if is_map else "list", children))
                if not stack:
                    return node, pos
                children, is_map, closer, key, separator = stack.pop()
            elif kind == string:
                node = new_node(Node, ("string", [leaf]))
            elif kind == number:
                node = new_node(Node, ("number", [leaf]))
            elif kind == bare and value in scalars:
                rule, leaf.type = scalars[value]
                node = new_node(Node, (rule, [leaf]))
            elif kind in (lbrace, lsqb):
                if len(stack) >= MAX_NESTING:
                    return None
                stack.append((children, is_map, closer, key, separator))
                children, is_map = [leaf], kind == lbrace
                closer = self.rbrace if is_map else self.rsqb
                expect = _ITEM
                continue
            else:
                return None
            if is_map:
                node = new_node(Node, ("pair", [key, separator, node]))
            children.append(node)
            expect = _NEXT


# What the literal reader expects next: an item (or the closer), a comma (or the closer),
# a map key's colon, a map value.
_ITEM, _NEXT, _COLON, _VALUE = range(4)
