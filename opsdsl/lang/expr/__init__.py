"""opsdsl expressions: CEL's syntax and semantics for a subset, plus duration literals.

    expr = parse('event.value > 5m')             # Expression; ExprSyntaxError if malformed
    problems = check(expr, {"event": RootSpec("dyn")})
    compile_expr(expr)({"event": {"value": 301}})  # True; EvalError on CEL errors
    parse_template("GET ${{ params.url }}").render(activation)
    compile_expr('event.alerts.exists(a, a.labels.severity == "critical")')(activation)

Macros (`all`, `exists`, `map`, `filter`, ...) are nodes of their own (nodes.Comprehension)
whose work counts against one budget per evaluation (macros.py); features.py lists what of
CEL is in the subset. Importing this package is cheap: Lark loads on the first parse, and
the code generator and evaluator on the first `compile_expr` (lint of a valid pack never
evaluates, so they stay out of its start-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .checker import Problem, RootSpec, check
from .nodes import Expression, Reference
from .parser import ExprSyntaxError, parse
from .template import Template, parse_template

if TYPE_CHECKING:
    from .codegen import compile_expr

__all__ = [
    "ExprSyntaxError",
    "Expression",
    "Problem",
    "Reference",
    "RootSpec",
    "Template",
    "check",
    "compile_expr",
    "parse",
    "parse_template",
]


def __getattr__(name: str):
    if name == "compile_expr":  # loaded on first use: codegen pulls in the evaluator
        from .codegen import compile_expr

        globals()["compile_expr"] = compile_expr
        return compile_expr
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
