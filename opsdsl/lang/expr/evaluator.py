"""The exact evaluator: a tree of closures with CEL's full semantics.

It is the reference the fast path (codegen.py) falls back to, so it favours being plainly
right over being quick: every operation goes through values.py, and `&&`, `||` absorb
errors in either order as CEL does (`false && <error>` and `<error> && false` are false).

It is total: whatever the activation holds, evaluation returns a value or raises
EvalError. A Python exception that escapes an operation (a value nested deeper than the
recursion limit, an object that is no JSON value) becomes an EvalError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opsdsl.errors import EvalError, OpsdslError

from . import values
from .functions import Builtin, python_failure, resolve
from .nodes import (
    Binary,
    Call,
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
    evaluate = _build(expr.root if isinstance(expr, Expression) else expr)

    def total(activation: Activation) -> Any:
        try:
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


def _build(node: Node) -> Evaluate:
    builder = _BUILDERS.get(type(node))
    if builder is None:
        raise TypeError(f"not an expression node: {node!r}")
    return builder(node)


def _literal(node: Literal) -> Evaluate:
    value = node.value
    return lambda activation: value


def _ident(node: Ident) -> Evaluate:
    name = node.name

    def ident(activation: Activation) -> Any:
        try:
            return activation[name]
        except KeyError:
            raise EvalError(f"undeclared reference to `{name}`") from None

    return ident


def _select(node: Select) -> Evaluate:
    operand, name = _build(node.operand), node.field
    return lambda activation: values.select(operand(activation), name)


def _index(node: Index) -> Evaluate:
    operand, key = _build(node.operand), _build(node.index)
    literal = isinstance(node.index, Literal)  # the pack's text, which messages may quote
    return lambda activation: values.index(operand(activation), key(activation), literal)


def _has(node: Has) -> Evaluate:
    operand, name = _build(node.operand), node.field
    return lambda activation: values.has_field(operand(activation), name)


def _unary(node: Unary) -> Evaluate:
    operand = _build(node.operand)
    operation = values.logical_not if node.op == "!" else values.negate
    return lambda activation: operation(operand(activation))


def _binary(node: Binary) -> Evaluate:
    left, right = _build(node.left), _build(node.right)
    if node.op in ("&&", "||"):
        return _logical(node.op, left, right)
    operation = _BINARY[node.op]
    return lambda activation: operation(left(activation), right(activation))


def _outcome(evaluate: Evaluate, activation: Activation) -> tuple[Any, EvalError | None]:
    try:
        return evaluate(activation), None
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


def _conditional(node: Conditional) -> Evaluate:
    condition, then, otherwise = (
        _build(node.condition),
        _build(node.then),
        _build(node.otherwise),
    )

    def conditional(activation: Activation) -> Any:
        if values.require_bool(condition(activation), "the condition of `? :`"):
            return then(activation)
        return otherwise(activation)

    return conditional


def _list(node: ListLit) -> Evaluate:
    items = tuple(_build(item) for item in node.items)
    return lambda activation: [item(activation) for item in items]


def _map(node: MapLit) -> Evaluate:
    entries = tuple((_build(key), _build(value)) for key, value in node.entries)
    literal_keys = frozenset(i for i, (key, _) in enumerate(node.entries) if isinstance(key, Literal))
    return lambda activation: values.make_map(
        [(key(activation), value(activation)) for key, value in entries], literal_keys
    )


def _call(node: Call) -> Evaluate:
    resolved = resolve(node.function, node.target is not None, len(node.args))
    if not isinstance(resolved, Builtin):
        message = resolved

        def unresolved(activation: Activation) -> Any:
            raise EvalError(message)

        return unresolved
    implementation = resolved.impl
    args = tuple(_build(arg) for arg in node.args)
    if node.target is not None:
        args = (_build(node.target), *args)
    if len(args) == 1:
        (only,) = args
        return lambda activation: implementation(only(activation))
    if len(args) == 2:
        first, second = args
        return lambda activation: implementation(first(activation), second(activation))
    return lambda activation: implementation(*[arg(activation) for arg in args])


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
}
