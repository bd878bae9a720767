"""Static checks of one expression against the roots its context provides.

    OPS021  unknown root name, or unknown field of a closed root (did you mean ...?)
    OPS022  unknown function or method, or a function called in the wrong form
    OPS023  wrong number of arguments
    OPS024  an operation that must fail, or a comparison that is always false, given the
            types known for certain: from literals, from operators and functions whose
            result type is fixed, and from RootSpec field types. `dyn` never triggers it.

A macro's variables are names in its body only; one that hides a root is OPS021, and a
macro over a value that is surely neither a list nor a map is OPS024.

Types are tracked as the set of kinds a value may have, always a superset of what it can
be at run time, so an empty intersection is a certain error and never a false positive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import product
from typing import NamedTuple

from .functions import BUILTINS
from .nodes import (
    MACROS,
    PREDICATE_MACROS,
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

Kinds = frozenset[str]
ANY: Kinds = frozenset(("int", "double", "string", "bool", "null", "list", "map"))
NUMBER: Kinds = frozenset(("int", "double"))
BOOL: Kinds = frozenset(("bool",))

_TYPE_KINDS: dict[str, Kinds] = {
    "dyn": ANY,
    "any": ANY,
    "map": frozenset(("map",)),
    "object": frozenset(("map",)),
    "list": frozenset(("list",)),
    "array": frozenset(("list",)),
    "string": frozenset(("string",)),
    "number": NUMBER,
    "int": frozenset(("int",)),
    "integer": frozenset(("int",)),
    "double": frozenset(("double",)),
    "duration": frozenset(("double",)),
    "bool": BOOL,
    "boolean": BOOL,
    "null": frozenset(("null",)),
}


@dataclass(frozen=True)
class RootSpec:
    """What a root name (or a field of one) holds. `type` is one of dyn, map, list,
    string, number, int, double, duration, bool, null (JSON Schema spellings such as
    object, array, integer, boolean work too). `fields` describes a map's known fields;
    with `open=False` no other field exists."""

    type: str = "dyn"
    fields: Mapping[str, RootSpec] | None = None
    open: bool = True

    def __post_init__(self) -> None:
        if self.type not in _TYPE_KINDS:
            raise ValueError(f"unknown RootSpec type {self.type!r}; use one of {sorted(_TYPE_KINDS)}")

    @property
    def kinds(self) -> Kinds:
        return _TYPE_KINDS[self.type]


@dataclass(frozen=True)
class Problem:
    """One finding, located by 0-based character offsets in the expression text."""

    code: str
    message: str
    offset: int
    end: int
    hint: str | None = None


def check(expr: Expression, roots: Mapping[str, RootSpec]) -> list[Problem]:
    """Every problem found in `expr`, in text order."""
    checker = _Checker(roots)
    checker.infer(expr.root)
    return sorted(checker.problems, key=lambda problem: (problem.offset, problem.end, problem.code))


class _Typed(NamedTuple):
    kinds: Kinds
    spec: RootSpec | None = None
    path: str | None = None  # the dotted name of a member chain, for messages


_UNKNOWN = _Typed(ANY)
_PYTHONISMS = {
    "True": "booleans are written `true` and `false`",
    "False": "booleans are written `true` and `false`",
    "None": "null is written `null`",
}

_ARITHMETIC: dict[str, dict[tuple[str, str], str]] = {
    "+": {
        ("int", "int"): "int",
        ("double", "double"): "double",
        ("string", "string"): "string",
        ("list", "list"): "list",
    },
    "-": {("int", "int"): "int", ("double", "double"): "double"},
    "*": {("int", "int"): "int", ("double", "double"): "double"},
    "/": {("int", "int"): "int", ("double", "double"): "double"},
    "%": {("int", "int"): "int"},
}
_ORDERED = {("string", "string"), ("bool", "bool")} | set(product(NUMBER, NUMBER))
_EQUALITY_FAMILY = {"int": "number", "double": "number"}
_MAP_KEYS = frozenset(("int", "string", "bool"))


_WITH_ARTICLE = {
    "int": "an int",
    "double": "a double",
    "string": "a string",
    "bool": "a bool",
    "null": "null",
    "list": "a list",
    "map": "a map",
}


def describe(kinds: Kinds) -> str:
    """`a string`, `a number`, `a list or a map`: for messages."""
    if kinds == NUMBER:
        return "a number"
    return " or ".join(_WITH_ARTICLE[kind] for kind in sorted(kinds))


def _did_you_mean(word: str, candidates: list[str] | tuple[str, ...], what: str) -> str | None:
    import difflib  # only when there is something to suggest

    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if not close:  # `slo` for `slo_p95_ms`: a prefix is a good guess too
        close = sorted(name for name in candidates if name.startswith(word) and len(word) >= 3)
    if close:
        return f"did you mean `{close[0]}`?"
    if candidates:
        return f"known {what}: {', '.join(sorted(candidates))}"
    return None


class _Checker:
    def __init__(self, roots: Mapping[str, RootSpec]) -> None:
        self.roots = roots
        self.problems: list[Problem] = []
        self.scopes: list[dict[str, _Typed]] = []  # macro variables, innermost last

    def report(self, code: str, message: str, node: Node, hint: str | None = None) -> _Typed:
        self.problems.append(Problem(code, message, node.offset, node.end, hint))
        return _UNKNOWN

    def mismatch(self, message: str, node: Node, hint: str | None = None) -> _Typed:
        return self.report("OPS024", message, node, hint)

    def infer(self, node: Node) -> _Typed:
        return getattr(self, f"_infer_{type(node).__name__}")(node)

    def _infer_Literal(self, node: Literal) -> _Typed:
        return _Typed(frozenset(("double" if node.kind == "duration" else node.kind,)))

    def _infer_Ident(self, node: Ident) -> _Typed:
        for scope in reversed(self.scopes):
            if node.name in scope:
                return scope[node.name]
        spec = self.roots.get(node.name)
        if spec is None:
            known = [*self.roots, *(name for scope in self.scopes for name in scope)]
            hint = _PYTHONISMS.get(node.name) or _did_you_mean(node.name, known, "names here")
            return self.report("OPS021", f"unknown name `{node.name}`", node, hint)
        return _Typed(spec.kinds, spec, node.name)

    def _field(self, operand: _Typed, name: str, offset: int, end: int) -> _Typed:
        """The type of field `name` of `operand` (located at offset..end for problems)."""
        spec = operand.spec
        path = f"{operand.path}.{name}" if operand.path else None
        if spec is None or spec.fields is None:
            return _Typed(ANY, None, path)
        if name in spec.fields:
            child = spec.fields[name]
            return _Typed(child.kinds, child, path)
        if not spec.open:
            hint = _did_you_mean(name, list(spec.fields), "fields")
            where = operand.path or "this map"
            message = f"unknown field `{name}` of {where}"
            self.problems.append(Problem("OPS021", message, offset, end, hint))
        return _UNKNOWN

    def _infer_Select(self, node: Select) -> _Typed:
        operand = self.infer(node.operand)
        if "map" not in operand.kinds:
            return self.mismatch(f"cannot select field `{node.field}` of {describe(operand.kinds)}", node)
        return self._field(operand, node.field, node.field_offset, node.end)

    def _infer_Index(self, node: Index) -> _Typed:
        operand = self.infer(node.operand)
        key = self.infer(node.index)
        if not operand.kinds & {"list", "map"}:
            return self.mismatch(f"cannot index into {describe(operand.kinds)}", node)
        if operand.kinds == {"list"} and "int" not in key.kinds:
            return self.mismatch(f"a list index must be an int, not {describe(key.kinds)}", node.index)
        if isinstance(node.index, Literal) and node.index.kind == "string":
            key_node = node.index
            return self._field(operand, key_node.value, key_node.offset, key_node.end)
        return _UNKNOWN

    def _infer_Has(self, node: Has) -> _Typed:
        operand = self.infer(node.operand)
        if "map" not in operand.kinds:
            return self.mismatch(f"has() needs a map, not {describe(operand.kinds)}", node)
        field_end = node.field_offset + len(node.field)
        self._field(operand, node.field, node.field_offset, field_end)  # reports unknown ones
        return _Typed(BOOL)

    def _infer_Unary(self, node: Unary) -> _Typed:
        operand = self.infer(node.operand)
        if node.op == "!":
            if "bool" not in operand.kinds:
                return self.mismatch(f"`!` needs a bool, not {describe(operand.kinds)}", node)
            return _Typed(BOOL)
        if not operand.kinds & NUMBER:
            return self.mismatch(f"`-` needs a number, not {describe(operand.kinds)}", node)
        return _Typed(operand.kinds & NUMBER)

    def _infer_Binary(self, node: Binary) -> _Typed:
        left, right = self.infer(node.left), self.infer(node.right)
        op = node.op
        if op in ("&&", "||"):
            for side in (left, right):
                if "bool" not in side.kinds:
                    self.mismatch(f"`{op}` needs bool operands, not {describe(side.kinds)}", node)
                    break
            return _Typed(BOOL)
        if op in ("==", "!="):
            return self._equality(node, left, right)
        if op in ("<", "<=", ">", ">="):
            if not any(pair in _ORDERED for pair in product(left.kinds, right.kinds)):
                return self.mismatch(
                    f"cannot order {describe(left.kinds)} and {describe(right.kinds)} with `{op}`",
                    node,
                    _mix_hint(left.kinds, right.kinds),
                )
            return _Typed(BOOL)
        if op == "in":
            if not right.kinds & {"list", "map"}:
                return self.mismatch(f"`in` needs a list or map on its right, not {describe(right.kinds)}", node)
            return _Typed(BOOL)
        table = _ARITHMETIC[op]
        results = {table[pair] for pair in product(left.kinds, right.kinds) if pair in table}
        if not results:
            return self.mismatch(
                f"`{op}` cannot combine {describe(left.kinds)} with {describe(right.kinds)}",
                node,
                _mix_hint(left.kinds, right.kinds),
            )
        return _Typed(frozenset(results))

    def _equality(self, node: Binary, left: _Typed, right: _Typed) -> _Typed:
        if "null" in left.kinds or "null" in right.kinds:
            return _Typed(BOOL)  # `x == null` is the way to test for an unset value
        families = [{_EQUALITY_FAMILY.get(kind, kind) for kind in side.kinds} for side in (left, right)]
        if not families[0] & families[1]:
            outcome = "false" if node.op == "==" else "true"
            return self.mismatch(
                f"`{node.op}` between {describe(left.kinds)} and {describe(right.kinds)} is always {outcome}",
                node,
                "values of different types are never equal; convert one side, e.g. string(x) or int(x)",
            )
        return _Typed(BOOL)

    def _infer_Conditional(self, node: Conditional) -> _Typed:
        condition = self.infer(node.condition)
        then, otherwise = self.infer(node.then), self.infer(node.otherwise)
        if "bool" not in condition.kinds:
            self.mismatch(
                f"the condition of `? :` must be a bool, not {describe(condition.kinds)}",
                node.condition,
            )
        return _Typed(then.kinds | otherwise.kinds)

    def _infer_ListLit(self, node: ListLit) -> _Typed:
        for item in node.items:
            self.infer(item)
        return _Typed(frozenset(("list",)))

    def _infer_MapLit(self, node: MapLit) -> _Typed:
        for key, value in node.entries:
            key_type = self.infer(key)
            self.infer(value)
            if not key_type.kinds & _MAP_KEYS:
                self.mismatch(
                    f"map keys must be strings, ints or bools, not {describe(key_type.kinds)}",
                    key,
                )
        return _Typed(frozenset(("map",)))

    def _infer_Comprehension(self, node: Comprehension) -> _Typed:
        macro = node.macro
        source = self.infer(node.range)
        if not source.kinds & {"list", "map"}:
            self.mismatch(f"{macro}() needs a list or a map, not {describe(source.kinds)}", node.range)
        keys = (frozenset(("int",)) if "list" in source.kinds else frozenset()) | (
            _MAP_KEYS if "map" in source.kinds else frozenset()
        )
        if len(node.variables) == 1:  # the elements of a list, the keys of a map
            types = [_UNKNOWN if "list" in source.kinds else _Typed(keys or ANY)]
        else:  # (index, element) of a list, (key, value) of a map
            types = [_Typed(keys or ANY), _UNKNOWN]
        scope: dict[str, _Typed] = {}
        for name, offset, typed in zip(node.variables, node.variable_offsets, types, strict=True):
            where = _Span(offset, offset + len(name))
            if name in self.roots:
                self.report(
                    "OPS021",
                    f"the variable `{name}` of {macro}() hides the root `{name}`",
                    where,
                    "name the variable something else, e.g. `x` or `item`",
                )
            scope[name] = typed
        self.scopes.append(scope)
        try:
            if node.filter is not None:
                self._predicate(macro, node.filter, "filter")
            if macro in PREDICATE_MACROS:
                self._predicate(macro, node.body, "predicate")
            else:
                self.infer(node.body)
        finally:
            self.scopes.pop()
        if macro in PREDICATE_MACROS and macro != "filter":
            return _Typed(BOOL)
        return _Typed(frozenset(("map" if macro == "transformMap" else "list",)))

    def _predicate(self, macro: str, node: Node, part: str) -> None:
        typed = self.infer(node)
        if "bool" not in typed.kinds:
            self.mismatch(f"the {part} of {macro}() must be a bool, not {describe(typed.kinds)}", node)

    def _infer_Call(self, node: Call) -> _Typed:
        receiver = self.infer(node.target) if node.target is not None else None
        args = [self.infer(arg) for arg in node.args]
        method = node.target is not None
        name = node.function
        builtin = BUILTINS.get(name)
        where = _NameSpan(node)
        if builtin is None and name in MACROS:
            counts = " or ".join(str(count) for count in sorted(MACROS[name]))
            if not method:
                return self.report(
                    "OPS022", f"{name}() is a macro: call it on a list or map", where, f"write list.{name}(x, ...)"
                )
            return self.report("OPS023", f"{name}() takes {counts} arguments, got {len(args)}", node)
        if builtin is None:
            if name == "has":
                hint = "has is a macro: write has(a.b)" if method else None
                if not method:
                    return self._arity(node, "has", 1, len(args))
                return self.report("OPS022", "unknown method `has`", where, hint)
            forms = [n for n, b in BUILTINS.items() if (b.is_method if method else b.is_global)]
            if not method:
                forms.append("has")
            else:
                forms.extend(MACROS)
            hint = _did_you_mean(name, forms, "methods" if method else "functions")
            kind = "method" if method else "function"
            return self.report("OPS022", f"unknown {kind} `{name}`", where, hint)
        if method and not builtin.is_method:
            return self.report("OPS022", f"`{name}` is a function, not a method", where, f"write {name}(x)")
        if not method and not builtin.is_global:
            return self.report("OPS022", f"`{name}` is a method, not a function", where, f"write x.{name}(...)")
        if not builtin.accepts(method, len(args)):
            return self.report("OPS023", f"{name}() takes {builtin.arity_text(method)}, got {len(args)}", node)
        operands = ([receiver] if receiver is not None else []) + args
        operand_nodes = ([node.target] if node.target is not None else []) + list(node.args)
        # optional params may be left out: zip stops at the last argument given
        for typed, operand_node, allowed in zip(operands, operand_nodes, builtin.params, strict=False):
            if typed is not None and not typed.kinds & allowed:
                return self.mismatch(
                    f"{name}() needs {describe(allowed)}, not {describe(typed.kinds)}",
                    operand_node,
                )
        return _Typed(builtin.result)

    def _arity(self, node: Call, name: str, expected: int, got: int) -> _Typed:
        plural = "argument" if expected == 1 else "arguments"
        return self.report("OPS023", f"{name}() takes {expected} {plural}, got {got}", node)


class _Span:
    """A span of the expression text that is no node: a macro's variable."""

    def __init__(self, offset: int, end: int) -> None:
        self.offset, self.end = offset, end


class _NameSpan:
    """The span of a call's function name, for problems about the name itself."""

    def __init__(self, node: Call) -> None:
        self.offset = node.name_offset
        self.end = node.name_offset + len(node.function)


def _mix_hint(left: Kinds, right: Kinds) -> str | None:
    if {frozenset(("int",)), frozenset(("double",))} == {left, right}:
        return (
            "ints and doubles do not mix in arithmetic: write 2.0 rather than 2, or convert "
            "with double(x) or int(x) (durations are doubles of seconds)"
        )
    return None
