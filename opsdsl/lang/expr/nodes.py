"""The expression tree, and `Expression`: one parsed expression with its text.

Nodes are frozen. `offset` and `end` locate a node in the expression text (0-based,
end exclusive); they take no part in equality, so two parses of equivalent text compare
equal whatever the spacing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, dataclass
from typing import Any


class Node:
    """A frozen tree node. Each kind lists its fields in `_compared` (equality, hash) and
    `_shown` (repr); positions (`offset`, `end`, and the `*_offset`s) take part in neither.
    Written out rather than `@dataclass`: making fifteen dataclasses was a tenth of
    `opsdsl lint`'s start-up."""

    offset: int
    end: int
    _compared: tuple[str, ...] = ()
    _shown: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return tuple(getattr(self, n) for n in self._compared)

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._shown)})"

    def children(self) -> tuple[Node, ...]:
        return ()


class Literal(Node):
    """A constant. `kind` is int, double, string, bool, null or duration (a double of
    seconds); it keeps `1`, `1.0` and `true` apart, which Python's `==` would not."""

    kind: str
    value: Any
    raw: str | None
    _compared = ("kind", "value")
    _shown = _compared

    def __init__(self, kind: str, value: Any, raw: str | None = None, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"kind": kind, "value": value, "raw": raw, "offset": offset, "end": end})


class Ident(Node):
    """A root name: `event`, `params`, `steps`."""

    name: str
    _compared = ("name",)
    _shown = _compared

    def __init__(self, name: str, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"name": name, "offset": offset, "end": end})


class Select(Node):
    """`operand.field`; `field_offset` locates the field name."""

    operand: Node
    field: str
    field_offset: int
    _compared = ("operand", "field")
    _shown = _compared

    def __init__(self, operand: Node, field: str, field_offset: int = 0, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update(
            {"operand": operand, "field": field, "field_offset": field_offset, "offset": offset, "end": end}
        )

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


class Index(Node):
    """`operand[index]`."""

    operand: Node
    index: Node
    _compared = ("operand", "index")
    _shown = _compared

    def __init__(self, operand: Node, index: Node, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"operand": operand, "index": index, "offset": offset, "end": end})

    def children(self) -> tuple[Node, ...]:
        return (self.operand, self.index)


class Call(Node):
    """`function(args)`, or `target.function(args)` when `target` is set (a method)."""

    function: str
    args: tuple[Node, ...]
    target: Node | None
    name_offset: int
    _compared = ("function", "args", "target")
    _shown = _compared

    def __init__(
        self,
        function: str,
        args: tuple[Node, ...],
        target: Node | None = None,
        name_offset: int = 0,
        *,
        offset: int = 0,
        end: int = 0,
    ) -> None:
        self.__dict__.update(
            {
                "function": function,
                "args": args,
                "target": target,
                "name_offset": name_offset,
                "offset": offset,
                "end": end,
            }
        )

    def children(self) -> tuple[Node, ...]:
        return self.args if self.target is None else (self.target, *self.args)


class Has(Node):
    """The `has(operand.field)` macro: is the field present? Never a missing-key error."""

    operand: Node
    field: str
    field_offset: int
    _compared = ("operand", "field")
    _shown = _compared

    def __init__(self, operand: Node, field: str, field_offset: int = 0, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update(
            {"operand": operand, "field": field, "field_offset": field_offset, "offset": offset, "end": end}
        )

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


class Unary(Node):
    """`!operand` or `-operand`."""

    op: str
    operand: Node
    _compared = ("op", "operand")
    _shown = _compared

    def __init__(self, op: str, operand: Node, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"op": op, "operand": operand, "offset": offset, "end": end})

    def children(self) -> tuple[Node, ...]:
        return (self.operand,)


class Binary(Node):
    """`left op right` for `||`, `&&`, comparisons, `in` and arithmetic."""

    op: str
    left: Node
    right: Node
    _compared = ("op", "left", "right")
    _shown = _compared

    def __init__(self, op: str, left: Node, right: Node, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"op": op, "left": left, "right": right, "offset": offset, "end": end})

    def children(self) -> tuple[Node, ...]:
        return (self.left, self.right)


class Conditional(Node):
    """`condition ? then : otherwise`."""

    condition: Node
    then: Node
    otherwise: Node
    _compared = ("condition", "then", "otherwise")
    _shown = _compared

    def __init__(self, condition: Node, then: Node, otherwise: Node, *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update(
            {"condition": condition, "then": then, "otherwise": otherwise, "offset": offset, "end": end}
        )

    def children(self) -> tuple[Node, ...]:
        return (self.condition, self.then, self.otherwise)


class ListLit(Node):
    items: tuple[Node, ...]
    _compared = ("items",)
    _shown = _compared

    def __init__(self, items: tuple[Node, ...], *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"items": items, "offset": offset, "end": end})

    def children(self) -> tuple[Node, ...]:
        return self.items


class MapLit(Node):
    entries: tuple[tuple[Node, Node], ...]
    _compared = ("entries",)
    _shown = _compared

    def __init__(self, entries: tuple[tuple[Node, Node], ...], *, offset: int = 0, end: int = 0) -> None:
        self.__dict__.update({"entries": entries, "offset": offset, "end": end})

    def children(self) -> tuple[Node, ...]:
        return tuple(part for entry in self.entries for part in entry)


# The comprehension macros: name -> how many variables each form binds, by argument count.
# `all`, `exists`, `exists_one`, `map` and `filter` are CEL's; the two-variable forms
# (`all(i, v, p)`, `existsOne`, `transformList`, `transformMap`) are cel-go's extension.
MACROS: dict[str, dict[int, int]] = {
    "all": {2: 1, 3: 2},
    "exists": {2: 1, 3: 2},
    "exists_one": {2: 1},
    "existsOne": {3: 2},
    "map": {2: 1, 3: 1},
    "filter": {2: 1},
    "transformList": {3: 2, 4: 2},
    "transformMap": {3: 2, 4: 2},
}
PREDICATE_MACROS = frozenset(("all", "exists", "exists_one", "existsOne", "filter"))


class Comprehension(Node):
    """A macro over a list or map: `range.macro(var, [filter,] body)`, or with two
    variables `range.macro(var, var2, [filter,] body)` (index and element of a list, key
    and value of a map). The variables are bound in `filter` and `body` only. `body` is the
    predicate of all/exists/exists_one/filter and the transform of map/transform*."""

    macro: str
    range: Node
    variables: tuple[str, ...]
    body: Node
    filter: Node | None
    variable_offsets: tuple[int, ...]
    name_offset: int
    _compared = ("macro", "range", "variables", "body", "filter")
    _shown = _compared

    def __init__(
        self,
        macro: str,
        range: Node,
        variables: tuple[str, ...],
        body: Node,
        filter: Node | None = None,
        variable_offsets: tuple[int, ...] = (),
        name_offset: int = 0,
        *,
        offset: int = 0,
        end: int = 0,
    ) -> None:
        self.__dict__.update(
            {
                "macro": macro,
                "range": range,
                "variables": variables,
                "body": body,
                "filter": filter,
                "variable_offsets": variable_offsets,
                "name_offset": name_offset,
                "offset": offset,
                "end": end,
            }
        )

    def children(self) -> tuple[Node, ...]:
        if self.filter is None:
            return (self.range, self.body)
        return (self.range, self.filter, self.body)


def walk(root: Node) -> Iterator[Node]:
    """Every node of the tree, parents before children, left to right; no recursion."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children()))


def depth(root: Node) -> tuple[int, Node]:
    """The depth of the tree and its deepest node; no recursion."""
    deepest, deepest_node = 0, root
    stack = [(root, 1)]
    while stack:
        node, level = stack.pop()
        if level > deepest:
            deepest, deepest_node = level, node
        stack.extend((child, level + 1) for child in node.children())
    return deepest, deepest_node


@dataclass(frozen=True)
class Reference:
    """A maximal member chain from a root name: `steps.inspect.outputs` is
    `Reference("steps", ("inspect", "outputs"))`. Constant string indexes count as
    fields (`steps["inspect"]`); any other index ends the chain."""

    root: str
    path: tuple[str, ...]
    offset: int
    end: int

    @property
    def dotted(self) -> str:
        return ".".join((self.root, *self.path))


def _chain(node: Node) -> tuple[str, tuple[str, ...]] | None:
    """The root and path of a pure member chain, or None if `node` is not one."""
    path: list[str] = []
    if isinstance(node, Has):
        node = node.operand
    while True:
        if isinstance(node, Ident):
            return node.name, tuple(reversed(path))
        if isinstance(node, Select):
            path.append(node.field)
            node = node.operand
        elif isinstance(node, Index) and isinstance(node.index, Literal) and node.index.kind == "string":
            path.append(node.index.value)
            node = node.operand
        else:
            return None


@dataclass(frozen=True, eq=False)
class Expression:
    """One parsed expression. Equal (and hashed) by its text, which determines the tree."""

    text: str
    root: Node

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Expression({self.text!r})"

    def references(self) -> tuple[Reference, ...]:
        """Every maximal member chain that starts at a root name, in text order."""
        return self._references

    def functions(self) -> tuple[tuple[str, int, int], ...]:
        """`(name, arity, offset)` of every call, `has()` included; a method's arity
        does not count its receiver."""
        return self._functions

    @functools.cached_property
    def _references(self) -> tuple[Reference, ...]:
        found: list[Reference] = []
        stack: list[tuple[Node, frozenset[str]]] = [(self.root, frozenset())]
        while stack:
            node, bound = stack.pop()
            if isinstance(node, Comprehension):  # its variables are no roots in its body
                inner = bound | frozenset(node.variables)
                stack.extend((child, bound if child is node.range else inner) for child in node.children())
                continue
            chain = _chain(node)
            if chain is not None and chain[0] in bound:
                continue  # a macro's variable, not a root
            if chain is not None and isinstance(node, Has):  # the tested field belongs too
                root, path = chain
                end = node.field_offset + len(node.field)
                found.append(Reference(root, (*path, node.field), node.operand.offset, end))
                continue
            if chain is not None:
                found.append(Reference(chain[0], chain[1], node.offset, node.end))
                continue  # maximal: the chain's own parts are not references of their own
            stack.extend((child, bound) for child in node.children())
        return tuple(sorted(found, key=lambda ref: (ref.offset, ref.end)))

    @functools.cached_property
    def _functions(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for node in walk(self.root):
            if isinstance(node, Call):
                found.append((node.function, len(node.args), node.name_offset))
            elif isinstance(node, Has):
                found.append(("has", 1, node.offset))
            elif isinstance(node, Comprehension):
                arity = len(node.variables) + (2 if node.filter is not None else 1)
                found.append((node.macro, arity, node.name_offset))
        return tuple(sorted(found, key=lambda entry: entry[2]))
