"""The fast path, and `compile_expr`, which pairs it with the exact evaluator.

The node tree becomes a Python function built as `ast` nodes (user text only ever lands in
`ast.Constant`s, never in source code) and compiled once. It uses Python's own operators
where they agree with CEL on every value they accept, and small helpers where they do not
(`True == 1` is true in Python, `[1] < [2]` is allowed, `a + b` mixes int and double).
Whenever the fast path raises anything - a CEL error, a type it does not handle, `&&`
reached with a non-bool - the call is re-evaluated by the exact evaluator, so errors and
error absorption are always the exact ones. The fast path never returns a value the exact
evaluator would not: the differential property test holds it to that.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Mapping
from typing import Any

from . import functions, values
from .evaluator import build_exact
from .functions import Builtin, resolve
from .macros import BudgetExceeded, Meter, body_cost, charged_operands, has_macro, iteration_pairs, iteration_range
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
from .parser import parse

Compiled = Callable[[Mapping[str, Any]], Any]


@functools.lru_cache(maxsize=4096)
def _compile_cached(expr: Expression) -> Compiled:
    exact = build_exact(expr)
    namespace: dict[str, Any] = {**_HELPERS, "_exact": exact}
    body = _Emitter(namespace).emit(expr.root)[0]
    try:
        code = compile(_function(body, has_macro(expr.root)), f"<opsdsl expression {expr.text[:60]!r}>", "exec")
    except (SyntaxError, RecursionError, MemoryError):  # e.g. a warning turned into an error
        return exact
    exec(code, namespace)  # defines `evaluate` from the ast above; no user text is code
    evaluate = namespace["evaluate"]
    evaluate.__doc__ = expr.text
    return evaluate


def compile_expr(expr: Expression | str) -> Compiled:
    """A callable evaluating `expr` against an activation (root name -> value); it raises
    opsdsl.errors.EvalError for CEL errors. Memoised per expression."""
    return _compile_cached(parse(expr) if isinstance(expr, str) else expr)


def _function(body: ast.expr, with_meter: bool) -> ast.Module:
    """`def evaluate(a): try: [m = _Meter()]; return <body> / except Exception: return
    _exact(a)`. The meter (an evaluation's budget, macros.py) only where there are macros."""
    fallback = ast.Return(_call("_exact", _load("a")), **_AT)
    handler = ast.ExceptHandler(_load("Exception"), None, [fallback], **_AT)
    statements: list[ast.stmt] = [ast.Return(body, **_AT)]
    handlers = [handler]
    if with_meter:
        meter = ast.Assign([ast.Name("m", ast.Store(), **_AT)], _call("_Meter"), **_AT)
        statements.insert(0, meter)
        # Over budget, the exact evaluator would be too: it charges the same operations in
        # the same order, and the fast path got this far without an error to fall back on.
        handlers.insert(0, ast.ExceptHandler(_load("_BudgetExceeded"), None, [ast.Raise(None, None, **_AT)], **_AT))
    function = ast.FunctionDef(
        name="evaluate",
        args=ast.arguments([], [ast.arg("a", **_AT)], None, [], [], None, []),
        body=[ast.Try(statements, handlers, [], [], **_AT)],
        decorator_list=[],
        returns=None,
        **_AT,
        **_TYPE_PARAMS,
    )
    return ast.Module([function], [])


# -- helpers the generated code calls: quick checks, then the exact operation ------------


class _NotBool(Exception):
    """A logical operand was not a bool: let the exact evaluator decide."""


def _bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise _NotBool


def _equal(a: Any, b: Any) -> bool:
    kind = type(a)
    if kind is type(b) and (kind is str or kind is int or kind is float or kind is bool):
        return a == b
    return values.equal(a, b)


def _not_equal(a: Any, b: Any) -> bool:
    return not _equal(a, b)


def _less(a: Any, b: Any) -> bool:
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is kb is str):
        return a < b
    return values.less(a, b)


def _less_equal(a: Any, b: Any) -> bool:
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is kb is str):
        return a <= b
    return values.less_equal(a, b)


def _greater(a: Any, b: Any) -> bool:
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is kb is str):
        return a > b
    return values.greater(a, b)


def _greater_equal(a: Any, b: Any) -> bool:
    ka, kb = type(a), type(b)
    if ((ka is int or ka is float) and (kb is int or kb is float)) or (ka is kb is str):
        return a >= b
    return values.greater_equal(a, b)


def _add(a: Any, b: Any) -> Any:
    kind = type(a)
    if kind is type(b):
        if kind is float or kind is str:
            return a + b
        if kind is int:
            result = a + b
            if values.INT_MIN <= result <= values.INT_MAX:
                return result
    return values.add(a, b)


def _subtract(a: Any, b: Any) -> Any:
    kind = type(a)
    if kind is type(b):
        if kind is float:
            return a - b
        if kind is int:
            result = a - b
            if values.INT_MIN <= result <= values.INT_MAX:
                return result
    return values.subtract(a, b)


def _multiply(a: Any, b: Any) -> Any:
    kind = type(a)
    if kind is type(b):
        if kind is float:
            return a * b
        if kind is int:
            result = a * b
            if values.INT_MIN <= result <= values.INT_MAX:
                return result
    return values.multiply(a, b)


def _contained_in(element: Any, container: Any) -> bool:
    kind = type(container)
    if type(element) is str and (kind is dict or kind is list):
        return element in container  # a str equals only a str, in Python as in CEL
    return values.contained_in(element, container)


def _index(container: Any, key: Any) -> Any:
    kind = type(container)
    if kind is list and type(key) is int and key >= 0:
        return container[key]
    if kind is dict and type(key) is str:
        return container[key]
    return values.index(container, key)


def _has(container: Any, name: str) -> bool:
    if type(container) is dict:
        return name in container
    return values.has_field(container, name)


def _size(value: Any) -> int:
    kind = type(value)
    if kind is str or kind is list or kind is dict:
        return len(value)
    return functions.size(value)


def _starts_with(text: Any, prefix: Any) -> bool:
    if type(text) is str and type(prefix) is str:
        return text.startswith(prefix)
    return functions.starts_with(text, prefix)


def _ends_with(text: Any, suffix: Any) -> bool:
    if type(text) is str and type(suffix) is str:
        return text.endswith(suffix)
    return functions.ends_with(text, suffix)


def _contains(text: Any, part: Any) -> bool:
    if type(text) is str and type(part) is str:
        return part in text
    return functions.contains(text, part)


class _Unresolved(Exception):
    """A call to no known function: the exact evaluator reports it."""


def _unresolved() -> Any:
    raise _Unresolved


_BINARY_HELPERS = {
    "==": "_equal",
    "!=": "_not_equal",
    "<": "_less",
    "<=": "_less_equal",
    ">": "_greater",
    ">=": "_greater_equal",
    "in": "_contained_in",
    "+": "_add",
    "-": "_subtract",
    "*": "_multiply",
    "/": "_divide",
    "%": "_modulo",
}
_FAST_BUILTINS = {
    "size": "_size",
    "startsWith": "_starts_with",
    "endsWith": "_ends_with",
    "contains": "_contains",
}
_HELPERS: dict[str, Any] = {
    "_bool": _bool,
    "_equal": _equal,
    "_not_equal": _not_equal,
    "_less": _less,
    "_less_equal": _less_equal,
    "_greater": _greater,
    "_greater_equal": _greater_equal,
    "_contained_in": _contained_in,
    "_add": _add,
    "_subtract": _subtract,
    "_multiply": _multiply,
    "_divide": values.divide,
    "_modulo": values.modulo,
    "_negate": values.negate,
    "_not": values.logical_not,
    "_index": _index,
    "_has": _has,
    "_select": values.select,
    "_make_map": values.make_map,
    "_size": _size,
    "_starts_with": _starts_with,
    "_ends_with": _ends_with,
    "_contains": _contains,
    "_unresolved": _unresolved,
    "_Meter": Meter,
    "_BudgetExceeded": BudgetExceeded,
    "_range": iteration_range,
    "_pairs": iteration_pairs,
    "_all": all,
    "_any": any,
}

_NATIVE_COMPARE = {
    "==": ast.Eq,
    "!=": ast.NotEq,
    "<": ast.Lt,
    "<=": ast.LtE,
    ">": ast.Gt,
    ">=": ast.GtE,
}
_NUMBER = ("int", "double")
_BOOL_RESULT = frozenset(("==", "!=", "<", "<=", ">", ">=", "in", "&&", "||"))


# Generated code has no source text; every node sits at line 1 (cheaper than
# ast.fix_missing_locations, which dominated compile time).
_AT = {"lineno": 1, "col_offset": 0, "end_lineno": 1, "end_col_offset": 0}
# Python 3.12 added FunctionDef.type_params, required there.
_TYPE_PARAMS = {"type_params": []} if "type_params" in ast.FunctionDef._fields else {}


def _load(name: str) -> ast.Name:
    return ast.Name(name, ast.Load(), **_AT)


def _call(helper: str, *args: ast.expr) -> ast.Call:
    return ast.Call(_load(helper), list(args), [], **_AT)


def _constant(value: Any) -> ast.Constant:
    return ast.Constant(value, **_AT)


def _subscript(container: ast.expr, key: ast.expr) -> ast.Subscript:
    return ast.Subscript(container, key, ast.Load(), **_AT)


def _compare(left: ast.expr, op: ast.cmpop, right: ast.expr) -> ast.Compare:
    return ast.Compare(left, [op], [right], **_AT)


def _list(items: list[ast.expr]) -> ast.List:
    return ast.List(items, ast.Load(), **_AT)


class _Emitter:
    """Turns nodes into Python expressions. `emit` returns the expression and, where it is
    certain, the CEL kind of its value when evaluation succeeds (else None)."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.namespace = namespace
        self.scopes: list[dict[str, str]] = []  # macro variables -> Python locals, innermost last
        self.locals = 0

    def emit(self, node: Node) -> tuple[ast.expr, str | None]:
        return getattr(self, f"_emit_{type(node).__name__}")(node)

    def operands(self, node: Node) -> list[tuple[ast.expr, str | None]]:
        """`node`'s children emitted; inside a macro's body, those charged for are
        wrapped in `m.charged(...)` (macros.py), as the exact evaluator charges them."""
        emitted = [self.emit(child) for child in node.children()]
        if self.scopes:
            for position in charged_operands(node):
                operand, kind = emitted[position]
                emitted[position] = (_charged(operand), kind)
        return emitted

    def _emit_Literal(self, node: Literal) -> tuple[ast.expr, str | None]:
        kind = "double" if node.kind == "duration" else node.kind
        return _constant(node.value), kind

    def _emit_Ident(self, node: Ident) -> tuple[ast.expr, str | None]:
        for scope in reversed(self.scopes):
            if node.name in scope:
                return _load(scope[node.name]), None
        return _subscript(_load("a"), _constant(node.name)), None

    def _emit_Select(self, node: Select) -> tuple[ast.expr, str | None]:
        # dict[str] is CEL's select on a map; on anything else Python raises
        operand, _ = self.emit(node.operand)
        if _is_literal(operand):  # `1.a`: Python would warn at compile time; CEL fails later
            return _call("_select", operand, _constant(node.field)), None
        return _subscript(operand, _constant(node.field)), None

    def _emit_Index(self, node: Index) -> tuple[ast.expr, str | None]:
        operand, _ = self.emit(node.operand)
        key, key_kind = self.emit(node.index)
        if key_kind == "string" and not _is_literal(operand):
            return _subscript(operand, key), None  # a str key: only a dict accepts it, as in CEL
        return _call("_index", operand, key), None

    def _emit_Has(self, node: Has) -> tuple[ast.expr, str | None]:
        operand, _ = self.emit(node.operand)
        return _call("_has", operand, _constant(node.field)), "bool"

    def _emit_Unary(self, node: Unary) -> tuple[ast.expr, str | None]:
        operand, kind = self.emit(node.operand)
        if node.op == "!":
            if kind == "bool":
                return ast.UnaryOp(ast.Not(), operand, **_AT), "bool"
            return _call("_not", operand), "bool"
        if kind == "double":
            return ast.UnaryOp(ast.USub(), operand, **_AT), "double"
        return _call("_negate", operand), kind if kind in _NUMBER else None

    def _emit_Binary(self, node: Binary) -> tuple[ast.expr, str | None]:
        (left, left_kind), (right, right_kind) = self.operands(node)
        op = node.op
        if op in ("&&", "||"):
            operands = [
                side if kind == "bool" else _call("_bool", side)
                for side, kind in ((left, left_kind), (right, right_kind))
            ]
            return ast.BoolOp(ast.And() if op == "&&" else ast.Or(), operands, **_AT), "bool"
        if op in ("==", "!=") and _native_equality(left_kind, right_kind):
            if "null" not in (left_kind, right_kind):
                return _compare(left, _NATIVE_COMPARE[op](), right), "bool"
            if not any(_is_literal(side) and not _is_none(side) for side in (left, right)):
                return _compare(left, ast.Is() if op == "==" else ast.IsNot(), right), "bool"
        if op in _NATIVE_COMPARE and op not in ("==", "!=") and _native_order(left_kind, right_kind):
            return _compare(left, _NATIVE_COMPARE[op](), right), "bool"
        if op == "in" and isinstance(node.right, ListLit) and _all_strings(node.right):
            members = frozenset(item.value for item in node.right.items)
            return _compare(left, ast.In(), _constant(members)), "bool"
        if op in ("+", "-", "*") and left_kind == right_kind == "double":
            python_op = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult}[op]()
            return ast.BinOp(left, python_op, right, **_AT), "double"
        if op == "+" and left_kind == right_kind == "string":
            return ast.BinOp(left, ast.Add(), right, **_AT), "string"
        result = "bool" if op in _BOOL_RESULT else _arithmetic_kind(left_kind, right_kind)
        return _call(_BINARY_HELPERS[op], left, right), result

    def _emit_Conditional(self, node: Conditional) -> tuple[ast.expr, str | None]:
        condition, condition_kind = self.emit(node.condition)
        then, then_kind = self.emit(node.then)
        otherwise, otherwise_kind = self.emit(node.otherwise)
        if condition_kind != "bool":
            condition = _call("_bool", condition)
        kind = then_kind if then_kind == otherwise_kind else None
        return ast.IfExp(condition, then, otherwise, **_AT), kind

    def _emit_ListLit(self, node: ListLit) -> tuple[ast.expr, str | None]:
        return _list([self.emit(item)[0] for item in node.items]), "list"

    def _emit_MapLit(self, node: MapLit) -> tuple[ast.expr, str | None]:
        keys = [key for key, _ in node.entries]
        plain = all(isinstance(key, Literal) and key.kind == "string" for key in keys)
        if plain and len({key.value for key in keys}) == len(keys):
            return ast.Dict(
                [self.emit(key)[0] for key in keys],
                [self.emit(value)[0] for _, value in node.entries],
                **_AT,
            ), "map"
        pairs = [ast.Tuple([self.emit(key)[0], self.emit(value)[0]], ast.Load(), **_AT) for key, value in node.entries]
        return _call("_make_map", _list(pairs)), "map"

    def _emit_Call(self, node: Call) -> tuple[ast.expr, str | None]:
        resolved = resolve(node.function, node.target is not None, len(node.args))
        if not isinstance(resolved, Builtin):
            return _call("_unresolved"), None
        args = [operand for operand, _ in self.operands(node)]  # the receiver first
        helper = _FAST_BUILTINS.get(resolved.name)
        if helper is None:
            helper = f"_builtin_{resolved.name}"
            self.namespace[helper] = resolved.impl
        (result,) = resolved.result if len(resolved.result) == 1 else (None,)
        return _call(helper, *args), result

    def _emit_Comprehension(self, node: Comprehension) -> tuple[ast.expr, str | None]:
        """A Python comprehension over the range (checked and charged by `_range` or
        `_pairs`), the variables as its locals. all/exists become all()/any() over a
        generator, which stop where CEL stops; an error or a non-bool predicate raises, and
        the exact evaluator then decides (it absorbs errors as `&&` / `||` do)."""
        range_, _ = self.emit(node.range)
        helper = "_pairs" if len(node.variables) == 2 else "_range"
        items = _call(helper, range_, _load("m"), _constant(body_cost(node)), _constant(node.macro))
        names = [f"_v{self.locals + i}" for i in range(len(node.variables))]
        self.locals += len(names)
        self.scopes.append(dict(zip(node.variables, names, strict=True)))
        try:
            body, body_kind = self.emit(node.body)
            condition = self._as_bool(*self.emit(node.filter)) if node.filter is not None else None
        finally:
            self.scopes.pop()
        stores = [ast.Name(name, ast.Store(), **_AT) for name in names]
        target = stores[0] if len(stores) == 1 else ast.Tuple(stores, ast.Store(), **_AT)
        macro = node.macro
        if macro in ("all", "exists", "exists_one", "existsOne"):
            loop = ast.comprehension(target, items, [], 0)
            predicate = self._as_bool(body, body_kind)
            if macro in ("all", "exists"):
                generator = ast.GeneratorExp(predicate, [loop], **_AT)
                return _call("_all" if macro == "all" else "_any", generator), "bool"
            counted = ast.Attribute(ast.ListComp(predicate, [loop], **_AT), "count", ast.Load(), **_AT)
            return _compare(ast.Call(counted, [_constant(True)], [], **_AT), ast.Eq(), _constant(1)), "bool"
        if macro == "filter":
            loop = ast.comprehension(target, items, [self._as_bool(body, body_kind)], 0)
            return ast.ListComp(_load(names[0]), [loop], **_AT), "list"
        loop = ast.comprehension(target, items, [condition] if condition is not None else [], 0)
        if macro == "transformMap":
            return ast.DictComp(_load(names[0]), body, [loop], **_AT), "map"
        return ast.ListComp(body, [loop], **_AT), "list"

    @staticmethod
    def _as_bool(value: ast.expr, kind: str | None) -> ast.expr:
        return value if kind == "bool" else _call("_bool", value)


def _charged(operand: ast.expr) -> ast.expr:
    charge = ast.Attribute(_load("m"), "charged", ast.Load(), **_AT)
    return ast.Call(charge, [operand], [], **_AT)


def _native_equality(left: str | None, right: str | None) -> bool:
    """Python's `==` is CEL's when one side is surely a string or null (a str or None
    equals only its own kind in both), or both sides are surely numbers or both bools."""
    if "string" in (left, right) or "null" in (left, right):
        return True
    return (left in _NUMBER and right in _NUMBER) or left == right == "bool"


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


# Displays whose kind Python's compiler knows: it warns on a str index into any of them.
_DISPLAYS = (ast.List, ast.ListComp, ast.Tuple, ast.Set, ast.SetComp, ast.GeneratorExp, ast.JoinedStr, ast.Lambda)


def _is_literal(node: ast.expr) -> bool:
    """Whether Python's compiler would look at this operand's value or kind: constants
    (after its constant folding, so anything that reads no data) and list displays. It warns
    about `1["a"]`, `[1]["a"]`, `[x for x in y]["a"]` or `1 is None`, which CEL reports only
    when evaluated."""
    if isinstance(node, _DISPLAYS):
        return True
    return not any(isinstance(child, ast.Name) for child in ast.walk(node))


def _native_order(left: str | None, right: str | None) -> bool:
    return (left in _NUMBER and right in _NUMBER) or left == right == "string"


def _arithmetic_kind(left: str | None, right: str | None) -> str | None:
    if left == right and left in ("int", "double"):
        return left
    return None


def _all_strings(node: ListLit) -> bool:
    return all(isinstance(item, Literal) and item.kind == "string" for item in node.items)
