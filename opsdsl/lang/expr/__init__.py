"""opsdsl expressions: CEL's syntax and semantics for a subset, plus duration literals.

    expr = parse('event.value > 5m')             # Expression; ExprSyntaxError if malformed
    problems = check(expr, {"event": RootSpec("dyn")})
    compile_expr(expr)({"event": {"value": 301}})  # True; EvalError on CEL errors
    parse_template("GET ${{ params.url }}").render(activation)
    compile_expr('event.alerts.exists(a, a.labels.severity == "critical")')(activation)

Macros (`all`, `exists`, `map`, `filter`, ...) are nodes of their own (nodes.Comprehension)
whose work counts against one budget per evaluation (macros.py); features.py lists what of
CEL is in the subset. Importing this package is cheap: Lark loads on the first parse.
"""

from __future__ import annotations

from .checker import Problem, RootSpec, check
from .codegen import compile_expr
from .nodes import Expression, Reference
from .parser import ExprSyntaxError, parse
from .template import Template, parse_template

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
