"""The comprehension macros' shared parts: the evaluation budget and what it charges.

A macro runs its body once per element, so an expression's work is no longer bounded by
its length: `l.map(x, l.map(y, l + l))` over an event's 10,000-element list would build
10^12 list elements. Every evaluation therefore carries a `Meter` holding a budget of
`EVALUATION_BUDGET` units, charged the same way by both evaluators:

- a macro, when it starts: (the number of elements or entries + 1) x (the number of nodes
  in its body and filter), so a nested macro is charged again for every outer element;
- inside a macro's body, an operation whose work grows with the size of its operands
  (`==`, `!=`, ordering and `in` between data, `+`, function arguments but those of
  `size()`): the size of each operand that is not a literal (`size_cost`): its elements or
  entries, or its characters / 32.

Outside macros each operator runs once, so the expression's length bounds the work and no
charge is made. Running out raises `BudgetExceeded`, an EvalError that nothing absorbs:
`false && <error>` is false, but an evaluation over budget fails whatever it was inside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opsdsl.errors import EvalError

from .nodes import Binary, Call, Comprehension, ListLit, Literal, Node, walk
from .values import kind

EVALUATION_BUDGET = 1_000_000
CHARACTERS_PER_UNIT = 32


class BudgetExceeded(EvalError):
    """The evaluation ran out of budget: not a CEL error value, nothing absorbs it."""


def budget_message() -> str:
    return (
        f"evaluation budget exceeded: more than {EVALUATION_BUDGET:,} steps "
        "(a macro over a large list or map, or macros nested over large ones)"
    )


class Meter:
    """The budget of one evaluation."""

    __slots__ = ("left",)

    def __init__(self, budget: int = EVALUATION_BUDGET) -> None:
        self.left = budget

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise BudgetExceeded(budget_message())

    def charged(self, value: Any) -> Any:
        """`value`, after charging its size: an operation is about to work through it."""
        self.spend(size_cost(value))
        return value


def size_cost(value: Any) -> int:
    value_type = type(value)
    if value_type is str:
        return len(value) // CHARACTERS_PER_UNIT
    if value_type is list or value_type is dict or value_type is tuple:
        return len(value)
    if value_type in _SCALARS:
        return 0
    return len(value) if isinstance(value, Mapping) else 0


_SCALARS = frozenset((int, float, bool, type(None)))


def body_cost(node: Comprehension) -> int:
    """Units charged per element: the nodes the body and filter evaluate."""
    count = sum(1 for _ in walk(node.body))
    if node.filter is not None:
        count += sum(1 for _ in walk(node.filter))
    return count


def has_macro(root: Node) -> bool:
    return any(isinstance(node, Comprehension) for node in walk(root))


_COMPARISONS = frozenset(("==", "!=", "<", "<=", ">", ">="))


def charged_operands(node: Node) -> frozenset[int]:
    """Positions (in `node.children()` order) of the operands an operation inside a macro
    body is charged for. A comparison with a literal costs at most the literal's size, and
    `in` a list of literals is a set lookup: neither is charged."""
    if isinstance(node, Binary):
        if node.op in _COMPARISONS:
            if isinstance(node.left, Literal) or isinstance(node.right, Literal):
                return frozenset()
            return frozenset((0, 1))
        if node.op == "in":
            right = node.right
            if isinstance(right, ListLit) and all(isinstance(item, Literal) for item in right.items):
                return frozenset()
            return frozenset((1,))
        if node.op == "+":
            return frozenset(i for i, side in enumerate((node.left, node.right)) if not isinstance(side, Literal))
        return frozenset()
    if isinstance(node, Call):
        if node.function in _CONSTANT_TIME:
            return frozenset()
        return frozenset(i for i, arg in enumerate(node.children()) if not isinstance(arg, Literal))
    return frozenset()


# Functions whose work does not grow with their argument: `size(l)` is len(l).
_CONSTANT_TIME = frozenset(("size", "dyn", "raw"))


def iteration_range(value: Any, meter: Meter, per_item: int, macro: str) -> Iterable[Any]:
    """The elements of a list or the keys of a map, after charging for the whole run."""
    value_type = type(value)
    if value_type is not list and value_type is not dict:
        value_kind = kind(value)
        if value_kind not in ("list", "map"):
            raise EvalError(f"no such overload: {macro}() on {value_kind}")
    meter.spend((len(value) + 1) * per_item)
    return value


def iteration_pairs(value: Any, meter: Meter, per_item: int, macro: str) -> Iterable[tuple[Any, Any]]:
    """(index, element) of a list or (key, value) of a map, after charging for the run."""
    iteration_range(value, meter, per_item, macro)
    if kind(value) == "map":
        return value.items()
    return enumerate(value)


def not_bool(macro: str, value: Any) -> EvalError:
    part = "filter" if macro in ("map", "transformList", "transformMap") else "predicate"
    return EvalError(f"the {part} of {macro}() must be a bool, got {kind(value)}")
