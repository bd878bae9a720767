"""The exact evaluator: a tree of closures with CEL's full semantics.

It is the reference the fast path (codegen.py) falls back to, so it favours being plainly
right over being quick: every operation goes through values.py, and `&&`, `||` absorb
errors in either order as CEL does (`false && <error>` and `<error> && false` are false).

It is total: whatever the activation holds, evaluation returns a value or raises
EvalError. A Python exception that escapes an operation (a value nested deeper than the
recursion limit, an object that is no JSON value) becomes an EvalError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from opsdsl.errors import EvalError, OpsdslError

from . import values
from .functions import Builtin, python_failure, resolve
from .macros import (
    BudgetExceeded,
    Meter,
    body_cost,
    charged_operands,
    has_macro,
    iteration_pairs,
    iteration_range,
    not_bool,
)
from .nodes import (
    Binary,
    Call,
    Comprehension,
    Conditional,
    Expression,
    Has,
    Ident,
    Index,
    ListLit,
    Literal,
    MapLit,
    Node,
    Select,
    Unary,
)

Activation = Mapping[str, Any]
Evaluate = Callable[[Activation], Any]

_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "==": values.equal,
    "!=": values.not_equal,
    "<": values.less,
    "<=": values.less_equal,
    ">": values.greater,
    ">=": values.greater_equal,
    "in": values.contained_in,
    "+": values.add,
    "-": values.subtract,
    "*": values.multiply,
    "/": values.divide,
    "%": values.modulo,
}


def build_exact(expr: Expression | Node) -> Evaluate:
    """A callable that evaluates `expr` against an activation (root name -> value) and
    raises EvalError for CEL errors, and for nothing else."""
    root = expr.root if isinstance(expr, Expression) else expr
    evaluate = _build(root, False)
    with_macros = has_macro(root)

    def total(activation: Activation) -> Any:
        try:
            if with_macros:  # one budget for the whole evaluation, carried by the scope
                return evaluate(_Scope(activation, Meter(), (), ()))
            return evaluate(activation)
        except OpsdslError:
            raise  # ours, EvalError among them: their messages are written to be shown
        except Exception as error:
            raise _as_eval_error(error) from None

    return total


def _as_eval_error(error: Exception) -> EvalError:
    return error if isinstance(error, EvalError) else EvalError(f"evaluation failed: {python_failure(error)}")


def evaluate(expr: Expression, activation: Activation) -> Any:
    """Evaluate once with the exact evaluator (tests and one-off use)."""
    return build_exact(expr)(activation)


def _build(node: Node, metered: bool) -> Evaluate:
    """`node` as a closure; `metered` inside a macro's body, where operations that work
    through their operands charge the evaluation's budget (macros.py)."""
    builder = _BUILDERS.get(type(node))
    if builder is None:
        raise TypeError(f"not an expression node: {node!r}")
    return builder(node, metered)


def _operands(node: Node, metered: bool) -> list[Evaluate]:
    """The closures of `node`'s children, those charged for wrapped in a charge."""
    built = [_build(child, metered) for child in node.children()]
    if metered:
        for position in charged_operands(node):
            built[position] = _charging(built[position])
    return built


def _charging(evaluate: Evaluate) -> Evaluate:
    return lambda scope: scope.meter.charged(evaluate(scope))


class _Scope(Mapping):
    """The activation inside a macro: its variables, then the enclosing names; and the
    evaluation's meter. One scope serves a whole macro run, its values set per element."""

    __slots__ = ("meter", "names", "parent", "values")

    def __init__(self, parent: Activation, meter: Meter, names: tuple[str, ...], values: tuple[Any, ...]) -> None:
        self.parent, self.meter, self.names, self.values = parent, meter, names, values

    def __getitem__(self, name: str) -> Any:
        names = self.names
        if names:
            if name == names[0]:
                return self.values[0]
            if len(names) == 2 and name == names[1]:
                return self.values[1]
        return self.parent[name]

    def __iter__(self) -> Iterator[str]:
        return iter({*self.names, *self.parent})

    def __len__(self) -> int:
        return len({*self.names, *self.parent})


def _literal(node: Literal, metered: bool) -> Evaluate:
    value = node.value
    return lambda activation: value


def _ident(node: Ident, metered: bool) -> Evaluate:
    name = node.name

    def ident(activation: Activation) -> Any:
        try:
            return activation[name]
        except KeyError:
            raise EvalError(f"undeclared reference to `{name}`") from None

    return ident


def _select(node: Select, metered: bool) -> Evaluate:
    operand, name = _build(node.operand, metered), node.field
    return lambda activation: values.select(operand(activation), name)


def _index(node: Index, metered: bool) -> Evaluate:
    operand, key = _build(node.operand, metered), _build(node.index, metered)
    literal = isinstance(node.index, Literal)  # the pack's text, which messages may quote
    return lambda activation: values.index(operand(activation), key(activation), literal)


def _has(node: Has, metered: bool) -> Evaluate:
    operand, name = _build(node.operand, metered), node.field
    return lambda activation: values.has_field(operand(activation), name)


def _unary(node: Unary, metered: bool) -> Evaluate:
    operand = _build(node.operand, metered)
    operation = values.logical_not if node.op == "!" else values.negate
    return lambda activation: operation(operand(activation))


def _binary(node: Binary, metered: bool) -> Evaluate:
    left, right = _operands(node, metered)
    if node.op in ("&&", "||"):
        return _logical(node.op, left, right)
    operation = _BINARY[node.op]
    return lambda activation: operation(left(activation), right(activation))


def _outcome(evaluate: Evaluate, activation: Activation) -> tuple[Any, EvalError | None]:
    try:
        return evaluate(activation), None
    except BudgetExceeded:
        raise  # not a CEL error value: nothing absorbs it
    except Exception as error:  # absorbed like any CEL error: `false && <anything>` is false
        return None, _as_eval_error(error)


def _logical(op: str, left: Evaluate, right: Evaluate) -> Evaluate:
    """`&&` / `||`. A deciding operand (false for `&&`, true for `||`) decides, whichever
    side it is on and whatever the other side did; else both must be bools."""
    deciding = op == "||"

    def logical(activation: Activation) -> Any:
        left_value, left_error = _outcome(left, activation)
        if left_error is None and left_value is deciding:
            return deciding
        right_value, right_error = _outcome(right, activation)
        if right_error is None and right_value is deciding:
            return deciding
        for value, error in ((left_value, left_error), (right_value, right_error)):
            if error is not None:
                raise error
            if value is not True and value is not False:
                raise EvalError(f"`{op}` needs bool operands, got {values.kind(value)}")
        return not deciding

    return logical


def _conditional(node: Conditional, metered: bool) -> Evaluate:
    condition, then, otherwise = (
        _build(node.condition, metered),
        _build(node.then, metered),
        _build(node.otherwise, metered),
    )

    def conditional(activation: Activation) -> Any:
        if values.require_bool(condition(activation), "the condition of `? :`"):
            return then(activation)
        return otherwise(activation)

    return conditional


def _list(node: ListLit, metered: bool) -> Evaluate:
    items = tuple(_build(item, metered) for item in node.items)
    return lambda activation: [item(activation) for item in items]


def _map(node: MapLit, metered: bool) -> Evaluate:
    entries = tuple((_build(key, metered), _build(value, metered)) for key, value in node.entries)
    literal_keys = frozenset(i for i, (key, _) in enumerate(node.entries) if isinstance(key, Literal))
    return lambda activation: values.make_map(
        [(key(activation), value(activation)) for key, value in entries], literal_keys
    )


def _call(node: Call, metered: bool) -> Evaluate:
    resolved = resolve(node.function, node.target is not None, len(node.args))
    if not isinstance(resolved, Builtin):
        message = resolved

        def unresolved(activation: Activation) -> Any:
            raise EvalError(message)

        return unresolved
    implementation = resolved.impl
    args = tuple(_operands(node, metered))  # the receiver first, as the implementation takes it
    if len(args) == 1:
        (only,) = args
        return lambda activation: implementation(only(activation))
    if len(args) == 2:
        first, second = args
        return lambda activation: implementation(first(activation), second(activation))
    return lambda activation: implementation(*[arg(activation) for arg in args])


def _comprehension(node: Comprehension, metered: bool) -> Evaluate:
    range_ = _build(node.range, metered)
    body = _build(node.body, True)
    filter_ = _build(node.filter, True) if node.filter is not None else None
    per_item, names, macro = body_cost(node), node.variables, node.macro
    two = len(names) == 2
    run = _MACRO_RUNS[macro]

    def comprehension(activation: Activation) -> Any:
        meter = activation.meter if isinstance(activation, _Scope) else Meter()
        value = range_(activation)
        if two:
            items: Iterable[Any] = iteration_pairs(value, meter, per_item, macro)
        else:
            items = ((item,) for item in iteration_range(value, meter, per_item, macro))
        return run(macro, items, _Scope(activation, meter, names, ()), body, filter_)

    return comprehension


def _run_all(macro: str, items: Iterable[tuple], scope: _Scope, body: Evaluate, _: Any) -> bool:
    """`&&` over the elements: a false decides (errors elsewhere absorbed), else the
    first error, else true."""
    return _run_quantifier(macro, items, scope, body, deciding=False)


def _run_exists(macro: str, items: Iterable[tuple], scope: _Scope, body: Evaluate, _: Any) -> bool:
    """`||` over the elements: a true decides, else the first error, else false."""
    return _run_quantifier(macro, items, scope, body, deciding=True)


def _run_quantifier(macro: str, items: Iterable[tuple], scope: _Scope, body: Evaluate, deciding: bool) -> bool:
    first_error: EvalError | None = None
    for values_ in items:
        scope.values = values_
        value, error = _outcome(body, scope)  # as `&&` / `||` see an operand
        if error is None and value is deciding:
            return deciding
        if first_error is None:
            first_error = error if error is not None else (None if value is (not deciding) else not_bool(macro, value))
    if first_error is not None:
        raise first_error
    return not deciding


def _predicate(macro: str, evaluate: Evaluate, scope: _Scope) -> bool:
    value = evaluate(scope)
    if value is True or value is False:
        return value
    raise not_bool(macro, value)


def _run_exists_one(macro: str, items: Iterable[tuple], scope: _Scope, body: Evaluate, _: Any) -> bool:
    """Exactly one element satisfies the predicate; any error is the result."""
    count = 0
    for values_ in items:
        scope.values = values_
        count += _predicate(macro, body, scope)
    return count == 1


def _run_map(macro: str, items: Iterable[tuple], scope: _Scope, body: Evaluate, filter_: Evaluate | None) -> Any:
    """map / transformList (a list of the body's values) and transformMap (the first
    variable's value to the body's), of the elements the filter keeps."""
    keyed = macro == "transformMap"
    result: Any = {} if keyed else []
    for values_ in items:
        scope.values = values_
        if filter_ is not None and not _predicate(macro, filter_, scope):
            continue
        if keyed:
            result[values_[0]] = body(scope)
        else:
            result.append(body(scope))
    return result


def _run_filter(macro: str, items: Iterable[tuple], scope: _Scope, body: Evaluate, _: Any) -> list:
    """The elements (list) or keys (map) the predicate keeps."""
    kept = []
    for values_ in items:
        scope.values = values_
        if _predicate(macro, body, scope):
            kept.append(values_[0])
    return kept


_MACRO_RUNS: dict[str, Callable[..., Any]] = {
    "all": _run_all,
    "exists": _run_exists,
    "exists_one": _run_exists_one,
    "existsOne": _run_exists_one,
    "map": _run_map,
    "transformList": _run_map,
    "transformMap": _run_map,
    "filter": _run_filter,
}


_BUILDERS: dict[type, Callable[[Any], Evaluate]] = {
    Literal: _literal,
    Ident: _ident,
    Select: _select,
    Index: _index,
    Has: _has,
    Unary: _unary,
    Binary: _binary,
    Conditional: _conditional,
    ListLit: _list,
    MapLit: _map,
    Call: _call,
    Comprehension: _comprehension,
}
