"""What of CEL the language has, as one table: docs/expressions.md's "CEL coverage" section
is generated from it (and a test checks the two agree), and the conformance test decides
from it which of CEL's own tests are in scope.

A construct is either in the subset or not. Supported functions come from the builtin
table itself (functions.py), so a function added there is in scope at once; what CEL has
and the subset lacks is listed here with the way a test reveals it (a value type in the
expected result or the bindings, a call, a spelling in the text).
"""

from __future__ import annotations

from dataclasses import dataclass

from .functions import BUILTINS
from .nodes import MACROS


@dataclass(frozen=True)
class Feature:
    """One construct. `pattern` (a regular expression over the expression text with the
    string literals' contents blanked out) reveals an unsupported spelling."""

    name: str
    group: str  # value type, syntax, function, macro
    supported: bool
    note: str = ""
    pattern: str | None = None


# Value types, by the field that carries them in CEL's conformance values.
VALUE_TYPES: dict[str, Feature] = {
    "int64_value": Feature("int", "value type", True, "signed 64-bit"),
    "double_value": Feature("double", "value type", True, "durations are doubles of seconds"),
    "string_value": Feature("string", "value type", True),
    "bool_value": Feature("bool", "value type", True),
    "null_value": Feature("null", "value type", True),
    "list_value": Feature("list", "value type", True),
    "map_value": Feature("map", "value type", True, "keys: string, int, bool"),
    "uint64_value": Feature("uint", "value type", False),
    "bytes_value": Feature("bytes", "value type", False),
    "object_value": Feature("protobuf messages", "value type", False, "also timestamp, duration and wrapper objects"),
    "type_value": Feature("type values", "value type", False, "`int`, `type(x)`"),
    "enum_value": Feature("enums", "value type", False),
}

SYNTAX: tuple[Feature, ...] = (
    Feature("operators", "syntax", True, "`? :` `||` `&&` `!` `==` `!=` `<` `<=` `>` `>=` `in` `+` `-` `*` `/` `%`"),
    Feature(
        "literals",
        "syntax",
        True,
        "int (decimal, hex), double, string (quotes, raw, triple, escapes), bool, null, list, map",
    ),
    Feature("field selection and indexing", "syntax", True, "`a.f`, `a['f']`, `l[0]`"),
    Feature("duration literals", "syntax", True, "`5m`, `1h30m`: an extension, doubles of seconds"),
    Feature("uint literals", "syntax", False, "`1u`", r"(?<![\w.])(?:0[xX][0-9a-fA-F]+|\d+)[uU](?!\w)"),
    Feature("bytes literals", "syntax", False, "`b'abc'`", r"(?<![\w])[bB][rR]?\x00|(?<![\w])[rR][bB]\x00"),
    Feature(
        "leading-dot names",
        "syntax",
        False,
        "`.a.b`",
        r"(?:^|[(\[{,:!?&|=<>+\-*/%])\s*\.\s*[A-Za-z_]",
    ),
    Feature("message construction", "syntax", False, "`T{f: 1}`", r"[A-Za-z_][\w.]*\s*\{"),
    Feature("quoted field names", "syntax", False, "``a.`b-c` ``", r"`"),
    Feature("optional syntax", "syntax", False, "`a.?f`, `l[?0]`, `{?k: v}`", r"\.\s*\?|\[\s*\?|[{,]\s*\?"),
)

# Functions of CEL and its extensions that the subset does not have.
UNSUPPORTED_FUNCTIONS: tuple[str, ...] = (
    "bytes",
    "charAt",
    "format",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "quote",
    "reverse",
    "timestamp",
    "type",
    "uint",
)
# Namespaced extension functions: `math.greatest(...)`, `strings.quote(...)`, ...
UNSUPPORTED_NAMESPACES: tuple[str, ...] = ("base64", "cel", "math", "optional", "proto", "sets", "strings", "google")
# Type names used as values (`type(1) == int`).
TYPE_NAMES: tuple[str, ...] = ("int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type", "type")

_FUNCTION_NOTES = {
    "size": "strings count code points",
    "matches": "RE2",
    "duration": "a double of seconds; CEL's range (±2^63 ns)",
    "raw": "opsdsl's own: no URL encoding",
    "dyn": "the value itself (no static types to turn off)",
    "bool": "from a bool or `'true'`, `'f'`, `'1'`, ...",
    "substring": "code points; bad indexes are errors",
    "indexOf": "code points",
    "lastIndexOf": "code points",
}


def supported_functions() -> tuple[str, ...]:
    return ("has", *BUILTINS)


def supported_macros() -> tuple[str, ...]:
    return tuple(MACROS)


def feature_table() -> list[Feature]:
    """Every construct, supported first within each group."""
    rows: list[Feature] = [*VALUE_TYPES.values(), *SYNTAX]
    rows += [Feature(name, "function", True, _FUNCTION_NOTES.get(name, "")) for name in supported_functions()]
    rows += [Feature(name, "macro", True, _macro_note(name)) for name in supported_macros()]
    rows += [Feature(name, "function", False) for name in UNSUPPORTED_FUNCTIONS]
    rows += [Feature(f"{name}.*", "function", False, "namespaced extension") for name in UNSUPPORTED_NAMESPACES]
    order = {"value type": 0, "syntax": 1, "function": 2, "macro": 3}
    return sorted(rows, key=lambda row: (order[row.group], not row.supported))


def _macro_note(name: str) -> str:
    forms = MACROS[name]
    arguments = " or ".join(str(count) for count in sorted(forms))
    two = any(count == 2 for count in forms.values())
    return f"{arguments} arguments" + (" (two variables: cel-go's extension)" if two else "")


def feature_markdown() -> str:
    """The table docs/expressions.md holds between its `features` markers."""
    lines = ["| Construct | Kind | In the subset | Notes |", "|---|---|---|---|"]
    for row in feature_table():
        name = row.name if row.group in ("value type", "syntax") else f"`{row.name}`"
        lines.append(f"| {name} | {row.group} | {'yes' if row.supported else 'no'} | {row.note} |")
    return "\n".join(lines) + "\n"
