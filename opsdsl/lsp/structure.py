"""Where things are in a YAML pack, for an editor: the YAML path at the cursor (from the
lines alone, so half-typed text still has one), and the pack's symbols with their ranges
(from PyYAML's node tree, when the text parses).

Positions here are 0-based lines and 0-based character columns (code points), as
PyYAML's marks count them; the server converts columns to the client's encoding.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import yaml

Path_ = tuple[str | int, ...]

_KEY = re.compile(r"""(?P<key>[A-Za-z_$][\w.$-]*|"[^"]*"|'[^']*')\s*:(?=\s|$)""")
_BLOCK_SCALAR = re.compile(r":\s*[|>][0-9+-]*\s*(#.*)?$")
# `steps.ID`, `params.NAME`, `inputs.NAME` in an expression.
REFERENCE = re.compile(r"(?<![\w.])(steps|params|inputs)\.([A-Za-z_][A-Za-z0-9_-]*)")
TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)


@dataclass(frozen=True)
class Cursor:
    """What the cursor is in: the mapping path, and whether a key or a value is being typed."""

    path: Path_  # the mapping (or sequence) that holds what is typed
    key: str | None  # the key whose value is typed, None when a key is typed
    prefix: str  # the word typed so far
    in_list: bool = False  # the value is a block-sequence item (`- x` under `key:`)
    item: int | None = None  # which item of that list
    flow_keys: tuple[str, ...] | None = None  # in a flow mapping `{a: 1, |`: the keys before the cursor


def _line_entries(line: str) -> list[tuple[int, str, str | None]]:
    """The structure one line opens: `(indent, "item", None)` for each `- `, then
    `(indent, "key", KEY)` for a `key:`."""
    out: list[tuple[int, str, str | None]] = []
    i = len(line) - len(line.lstrip(" "))
    while line.startswith("-", i) and (i + 1 == len(line) or line[i + 1] in " \t"):
        out.append((i, "item", None))
        i += 1
        while i < len(line) and line[i] == " ":
            i += 1
    match = _KEY.match(line, i)
    if match:
        key = match.group("key")
        if key[:1] in "\"'":
            key = key[1:-1]
        out.append((i, "key", key))
    return out


@dataclass
class _Frame:
    indent: int
    part: str | int
    items: int = 0  # sequence items seen directly below this frame


def _walk(lines: list[str], upto: int, keys: list | None = None) -> list[_Frame]:
    """The stack of open keys and items after reading lines [0, upto); each block key met
    is appended to `keys` as (line, key, path of the mapping holding it)."""
    stack: list[_Frame] = []
    top = _Frame(-1, "")
    block_indent: int | None = None  # inside a block scalar started by a key at this indent
    for number, line in enumerate(lines[:upto]):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        for col, kind, key in _line_entries(line):
            while stack and stack[-1].indent >= col:
                stack.pop()
            parent = stack[-1] if stack else top
            if kind == "item":
                stack.append(_Frame(col, parent.items))
                parent.items += 1
            else:
                if keys is not None:
                    keys.append((number, key or "", tuple(f.part for f in stack)))
                stack.append(_Frame(col, key or ""))
        if _BLOCK_SCALAR.search(line.split(" #", 1)[0] if " #" in line else line) and stack:
            block_indent = stack[-1].indent
    return stack


@functools.lru_cache(maxsize=4)
def block_keys(text: str) -> tuple[tuple[int, str, Path_], ...]:
    """Every block-mapping key of `text`: (line, key, path of the mapping holding it), in
    one pass (what sibling keys and a step's `action:` are looked up in)."""
    keys: list = []
    lines = text.splitlines()
    _walk(lines, len(lines), keys)
    return tuple(keys)


def cursor_at(text: str, line: int, col: int) -> Cursor:
    """The cursor's place in the YAML structure, read from indentation (valid YAML or not)."""
    lines = text.splitlines()
    current = lines[line] if line < len(lines) else ""
    before = current[:col]
    stack = _walk(lines, line)
    entries = _line_entries(before)
    in_list = False
    indent = len(before) - len(before.lstrip(" "))
    # The cursor line's own structure: `- ` markers, and a `key:` before the cursor.
    key = None
    value_start = None
    for c, kind, k in entries:
        while stack and stack[-1].indent >= c:
            stack.pop()
        if kind == "item":
            parent_items = _count_items(lines, line, c, stack)
            stack.append(_Frame(c, parent_items))
            indent = c + 2
        else:
            key, indent = k, c
            value_start = before.index(":", c) + 1
    if key is None:
        # typing a key (or a `- item` value)
        while stack and stack[-1].indent >= indent:
            stack.pop()
        prefix = re.search(r"[\w.-]*$", before).group(0)
        stripped = before.strip()
        if entries and entries[-1][1] == "item" and stripped.startswith("-"):
            # `- x`: an item of the list the enclosing key holds
            path = tuple(f.part for f in stack)
            if path and isinstance(path[-1], int):
                parent = path[:-1]
                if parent and isinstance(parent[-1], str):
                    return Cursor(parent[:-1], str(parent[-1]), prefix, in_list=True, item=path[-1])
        return Cursor(tuple(f.part for f in stack), None, prefix, in_list)
    while stack and stack[-1].indent >= indent:
        stack.pop()
    value = before[value_start:] if value_start is not None else ""
    prefix = re.search(r"[\w.$-]*$", value).group(0)
    return Cursor(tuple(f.part for f in stack), key, prefix)


def _count_items(lines: list[str], line: int, col: int, stack: list[_Frame]) -> int:
    """Which item (0-based) of its list a `- ` at column `col` on `line` is."""
    count = 0
    for previous in reversed(lines[:line]):
        stripped = previous.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(previous) - len(previous.lstrip(" "))
        if indent < col:
            break
        if indent == col and stripped.startswith("-"):
            count += 1
    return count


# ---------------------------------------------------------------- symbols from the node tree


@dataclass(frozen=True)
class Range:
    line: int
    col: int
    end_line: int
    end_col: int

    def contains(self, line: int, col: int) -> bool:
        return (self.line, self.col) <= (line, col) <= (self.end_line, self.end_col)


@dataclass(frozen=True)
class Symbol:
    """A name defined or used: `kind` step|playbook|trigger|param|input; `scope` is the
    playbook for steps and inputs ("" for pack-wide names)."""

    kind: str
    name: str
    scope: str
    range: Range
    definition: bool


@dataclass
class Outline:
    """Every definition and reference of the pack's names, and the data itself."""

    symbols: list[Symbol] = field(default_factory=list)
    data: object = None

    def at(self, line: int, col: int) -> Symbol | None:
        for symbol in self.symbols:
            if symbol.range.contains(line, col):
                return symbol
        return None

    def matching(self, symbol: Symbol) -> list[Symbol]:
        return [s for s in self.symbols if (s.kind, s.name, s.scope) == (symbol.kind, symbol.name, symbol.scope)]

    def names(self, kind: str, scope: str = "") -> list[str]:
        seen: dict[str, None] = {}
        for s in self.symbols:
            if s.kind == kind and s.scope == scope and s.definition:
                seen.setdefault(s.name)
        return list(seen)


def _range(node: yaml.Node) -> Range:
    return Range(node.start_mark.line, node.start_mark.column, node.end_mark.line, node.end_mark.column)


def _scalar_range(node: yaml.Node, text: str) -> Range:
    """The name itself, without quotes."""
    r = _range(node)
    if getattr(node, "style", None) in ("'", '"') and r.line == r.end_line:
        return Range(r.line, r.col + 1, r.end_line, r.end_col - 1)
    return r


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index)
    return line, index - (text.rfind("\n", 0, index) + 1)


def _items(node: yaml.Node) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        return []
    return [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode)]


def _get(node: yaml.Node, key: str) -> yaml.Node | None:
    for k, v in _items(node):
        if k.value == key:
            return v
    return None


class _OutlineBuilder:
    def __init__(self, text: str, expression_keys: frozenset[str]) -> None:
        self.text = text
        self.expression_keys = expression_keys
        self.symbols: list[Symbol] = []

    def add(self, kind: str, name: str, scope: str, node: yaml.Node, definition: bool) -> None:
        self.symbols.append(Symbol(kind, name, scope, _scalar_range(node, self.text), definition))

    def expressions(self, node: yaml.Node, playbook: str, key: str | None = None) -> None:
        """References in the strings below `node`: `${{ }}` templates, and whole values of
        expression keys (`when:`, `dedupe:`, `from:`, `that:`...)."""
        if isinstance(node, yaml.ScalarNode):
            if node.tag != "tag:yaml.org,2002:str" or not isinstance(node.value, str):
                return
            start, end = node.start_mark.index, node.end_mark.index
            raw = self.text[start:end]
            if key in self.expression_keys:
                spans = [(0, len(raw))]
            else:
                spans = [(m.start(1), m.end(1)) for m in TEMPLATE.finditer(raw)]
            for a, b in spans:
                for m in REFERENCE.finditer(raw, a, b):
                    root, name = m.group(1), m.group(2)
                    kind = {"steps": "step", "params": "param", "inputs": "input"}[root]
                    scope = "" if kind == "param" else playbook
                    line, col = _position(self.text, start + m.start(2))
                    self.symbols.append(Symbol(kind, name, scope, Range(line, col, line, col + len(name)), False))
        elif isinstance(node, yaml.MappingNode):
            for k, v in _items(node):
                if k.value not in ("description", "name"):
                    self.expressions(v, playbook, k.value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self.expressions(item, playbook, key)

    def pack(self, root: yaml.Node) -> None:
        for section, kind in (("params", "param"), ("triggers", "trigger"), ("playbooks", "playbook")):
            for k, _ in _items(_get(root, section)):
                self.add(kind, k.value, "", k, True)
        for _name, trigger in _items(_get(root, "triggers")):
            self.expressions(trigger, "")
        for _, hook in _items(_get(root, "hooks")):
            for key, kind in (("trigger", "trigger"), ("run", "playbook")):
                value = _get(hook, key)
                if isinstance(value, yaml.ScalarNode):
                    self.add(kind, value.value, "", value, False)
            self.expressions(hook, "")
        for k, playbook in _items(_get(root, "playbooks")):
            self.playbook(k.value, playbook)
        for _, param in _items(_get(root, "params")):
            self.expressions(param, "")

    def playbook(self, name: str, node: yaml.Node) -> None:
        for k, value in _items(_get(node, "inputs")):
            self.add("input", k.value, name, k, True)
            self.expressions(value, name)
        steps = _get(node, "steps")
        for step in steps.value if isinstance(steps, yaml.SequenceNode) else []:
            self.step(name, step)
        for k, value in _items(node):
            if k.value not in ("inputs", "steps", "description"):
                self.expressions(value, name, k.value)

    def step(self, playbook: str, step: yaml.Node) -> None:
        ident = _get(step, "id")
        if isinstance(ident, yaml.ScalarNode):
            self.add("step", ident.value, playbook, ident, True)
        needs = _get(step, "needs")
        if isinstance(needs, yaml.SequenceNode):
            for item in needs.value:
                if isinstance(item, yaml.ScalarNode):
                    self.add("step", item.value, playbook, item, False)
        for holder in (step, _get(step, "compensate")):
            action = _get(holder, "action") if holder is not None else None
            if isinstance(action, yaml.ScalarNode) and action.value == "playbook.call":
                called = _get(_get(holder, "with"), "playbook")
                if isinstance(called, yaml.ScalarNode):
                    self.add("playbook", called.value, "", called, False)
        for k, value in _items(step):
            if k.value not in ("id", "needs", "name", "description"):
                self.expressions(value, playbook, k.value)


# libyaml's parser when PyYAML has it (marks count characters, as the pure-Python one's do):
# a 30-step pack composes in ~3 ms instead of ~150 ms.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def compose(text: str) -> yaml.Node | None:
    """PyYAML's node tree of `text`, or None when it does not parse (yet)."""
    try:
        return yaml.compose(text, Loader=_LOADER)
    except Exception:  # any half-typed text: the outline is simply not available
        return None


@functools.lru_cache(maxsize=4)
def outline(text: str, expression_keys: frozenset[str]) -> Outline | None:
    """The pack's symbols and data; cached for the last few texts (every request on an
    unchanged document asks for the same one)."""
    root = compose(text)
    if not isinstance(root, yaml.MappingNode):
        return None
    builder = _OutlineBuilder(text, expression_keys)
    builder.pack(root)
    try:
        data = yaml.load(text, Loader=_LOADER)
    except Exception:
        data = None
    return Outline(builder.symbols, data)


_STEP_MAPS = ("mocks", "approvals", "decisions", "outputs")
_STEP_LISTS = ("started", "skipped", "compensated")
_STEP_KEY = re.compile(r"^(?:(?P<playbook>[A-Za-z][A-Za-z0-9_-]*)/)?(?P<step>[A-Za-z_][A-Za-z0-9_]*)(?:\.compensate)?$")


def test_outline(text: str) -> list[Symbol]:
    """References in a pack test (`*.test.yaml`): a case's `playbook:`, and step keys
    (`inspect`, `scale_pool.compensate`, `escalate-sev1/page`) in `mocks:`, `approvals:`,
    `expect.decisions:`/`outputs:` and `expect.started:`/`skipped:`/`compensated:`. The
    scope of a step is the case's playbook, "" when events pick it."""
    root = compose(text)
    if not isinstance(root, yaml.MappingNode):
        return []
    found: list[Symbol] = []

    def step_key(node: yaml.Node, playbook: str) -> None:
        if not isinstance(node, yaml.ScalarNode):
            return
        match = _STEP_KEY.match(node.value)
        if not match:
            return
        r = _scalar_range(node, text)
        offset = match.start("step")
        found.append(
            Symbol(
                "step",
                match.group("step"),
                match.group("playbook") or playbook,
                Range(r.line, r.col + offset, r.line, r.col + offset + len(match.group("step"))),
                False,
            )
        )

    def in_list(node: yaml.Node, playbook: str) -> None:
        for item in node.value if isinstance(node, yaml.SequenceNode) else []:
            if isinstance(item, yaml.SequenceNode):
                in_list(item, playbook)
            else:
                step_key(item, playbook)

    cases = _get(root, "cases")
    for case in cases.value if isinstance(cases, yaml.SequenceNode) else []:
        value = _get(case, "playbook")
        playbook = value.value if isinstance(value, yaml.ScalarNode) else ""
        if isinstance(value, yaml.ScalarNode):
            found.append(Symbol("playbook", value.value, "", _scalar_range(value, text), False))
        expect = _get(case, "expect")
        for holder, keys in ((case, _STEP_MAPS), (expect, _STEP_MAPS)):
            for key in keys:
                for k, _ in _items(_get(holder, key)) if holder is not None else []:
                    step_key(k, playbook)
        for key in _STEP_LISTS:
            if expect is not None:
                in_list(_get(expect, key), playbook)
    return found
