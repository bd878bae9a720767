"""Schema stage: check loaded documents against schemas/pack.schema.json.

The schema file is the contract (editors use it for completion and `opsdsl schema` prints
it). At run time we compile it into closures rather than use a general validator: lint
needs one located diagnostic per problem, with a did-you-mean for misspelt keys, and a
fast start. The compiler supports the JSON Schema 2020-12 keywords the schema uses and
refuses any other, so the schema cannot silently outgrow it; tests check that it accepts
exactly what `jsonschema`'s Draft 2020-12 validator accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from opsdsl.resources import read_text

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """A schema violation at `path`; `at` says whether to point at the key or the value."""

    code: str
    path: Path_
    message: str
    hint: str | None = None
    at: str = "value"  # "value" | "key"


Check = Callable[[Any, Path_, list], None]

_ANNOTATIONS = frozenset(
    {
        "description",
        "title",
        "$schema",
        "$id",
        "$comment",
        "default",
        "examples",
        "$defs",
        "markdownDescription",
        "deprecated",
    }
)
_SUPPORTED = _ANNOTATIONS | {
    "$ref",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "propertyNames",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "enum",
    "const",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "allOf",
    "anyOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
}
_NOUNS = {
    "compensation": "`compensate`",
    "actionName": "action name",
    "valueType": "type",
    "identifier": "identifier",
    "name": "name",
    "poolName": "pool name",
}
_ARTICLE = {
    "string": "a string",
    "number": "a number",
    "integer": "an integer",
    "boolean": "a boolean",
    "null": "null",
    "array": "a list",
    "object": "a mapping",
}


def _noun(def_name: str) -> str:
    if def_name.startswith("with."):
        return f"`{def_name[5:]}` inputs"
    return _NOUNS.get(def_name, def_name)


def type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    kind = type_name(value)
    if kind == name:
        return True
    if name == "number":
        return kind == "integer"
    if name == "integer":
        return kind == "number" and float(value).is_integer()
    return False


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def _where(path: Path_) -> str:
    for part in reversed(path):
        if isinstance(part, str):
            return f" for `{part}`"
    return ""


def did_you_mean(word: str, choices: list[str]) -> str | None:
    import difflib  # only when there is something to suggest

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{close[0]}`?" if close else None


def _json_equal(a: Any, b: Any) -> bool:
    if type_name(a) in ("integer", "number") and type_name(b) in ("integer", "number"):
        return a == b
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=False))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return a == b


class _Compiler:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.defs: dict[str, Check] = {}

    def ref(self, target: str) -> tuple[Check, str]:
        if not target.startswith("#/$defs/"):
            raise ValueError(f"unsupported $ref {target!r}: only local #/$defs/ references")
        name = target[len("#/$defs/") :]
        if name not in self.root.get("$defs", {}):
            raise ValueError(f"$ref to missing definition {name!r}")
        if name not in self.defs:
            slot: list[Check] = []
            self.defs[name] = lambda v, p, e: slot[0](v, p, e)
            slot.append(self.compile(self.root["$defs"][name], _noun(name)))
        return self.defs[name], name

    def compile(self, schema: Any, noun: str) -> Check:
        if schema is True or schema == {}:
            return lambda v, p, e: None
        if schema is False:
            return lambda v, p, e: e.append(Problem("OPS011", p, "no value is allowed here", at="key"))
        unknown = set(schema) - _SUPPORTED
        if unknown:
            raise ValueError(f"schema keyword(s) not supported: {sorted(unknown)}")
        checks: list[Check] = []
        desc = schema.get("description")
        if "$ref" in schema:
            target, name = self.ref(schema["$ref"])
            checks.append(target)
            noun = _noun(name)
            desc = desc or self.root["$defs"][name].get("description")
        if "type" in schema:
            checks.append(self.type_check(schema["type"], noun))
        typed = schema.get("type")
        for build in (self.object_checks, self.array_checks, self.scalar_checks):
            checks.extend(build(schema, noun, desc))
        checks.extend(self.combinators(schema, noun))
        if "type" in schema and len(checks) > 1:
            # One problem per node: a value of the wrong type gets no further checks.
            head, rest = checks[0], checks[1:]

            def typed_checks(v, p, e, head=head, rest=rest):
                before = len(e)
                head(v, p, e)
                if len(e) == before:
                    for check in rest:
                        check(v, p, e)

            return typed_checks
        del typed
        if len(checks) == 1:
            return checks[0]
        return lambda v, p, e: [c(v, p, e) for c in checks] and None

    def type_check(self, expected: str | list[str], noun: str) -> Check:
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_ARTICLE[n] for n in names)
        if names == ["object"]:
            return lambda v, p, e: None if type(v) is dict else self.type_error(v, p, e, wanted, names, noun)
        if names == ["string"]:
            return lambda v, p, e: None if type(v) is str else self.type_error(v, p, e, wanted, names, noun)

        def check(v, p, e):
            if not any(_is_type(v, n) for n in names):
                self.type_error(v, p, e, wanted, names, noun)

        return check

    @staticmethod
    def type_error(value: Any, path: Path_, errors: list, wanted: str, names: list[str], noun: str) -> None:
        got = type_name(value)
        hint = None
        if noun == "duration" and got in ("integer", "number"):
            hint = f"a duration needs a unit, e.g. `{_shown(value)}s` for seconds"
        elif "string" in names and got in ("integer", "number", "boolean"):
            hint = f'quote it: "{_shown(value)}"' if got != "boolean" else 'quote it, e.g. "true"'
        elif got == "null":
            hint = "the key is there but has no value"
        shown = "" if got in ("object", "array", "null") else f" `{_shown(value)}`"
        errors.append(
            Problem("OPS010", path, f"expected {wanted}{_where(path)}, got {_ARTICLE.get(got, got)}{shown}", hint)
        )

    def object_checks(self, schema: dict, noun: str, desc: str | None) -> list[Check]:
        checks: list[Check] = []
        props = {k: self.compile(s, k) for k, s in schema.get("properties", {}).items()}
        extra = schema.get("additionalProperties", True)
        extra_check = self.compile(extra, noun) if isinstance(extra, dict) else None
        names_check = self.compile(schema["propertyNames"], noun) if "propertyNames" in schema else None
        required = tuple(schema.get("required", ()))
        known = sorted(props)
        min_props = schema.get("minProperties")
        max_props = schema.get("maxProperties")
        if props or extra is not True or names_check or required or min_props or max_props:
            if extra is True and names_check is None and not min_props and not max_props:
                # Open objects (the `if` conditions): look up the few named properties only.
                def open_check(v, p, e):
                    if type(v) is not dict:
                        return
                    for key in required:
                        if key not in v:
                            e.append(Problem("OPS012", p, f"missing required key `{key}` in {noun}"))
                    for key, sub in props.items():
                        if key in v:
                            sub(v[key], (*p, key), e)

                checks.append(open_check)
                return checks

            def check(v, p, e):
                if type(v) is not dict:
                    return
                for key in required:
                    if key not in v:
                        e.append(Problem("OPS012", p, f"missing required key `{key}` in {noun}"))
                for key, item in v.items():
                    child = (*p, key)
                    if names_check is not None:
                        before = len(e)
                        names_check(key, child, e)
                        for i in range(before, len(e)):
                            problem = e[i]
                            e[i] = Problem(
                                problem.code, child, f"invalid name `{key}`{_where(p)}", problem.hint, at="key"
                            )
                    sub = props.get(key)
                    if sub is not None:
                        sub(item, child, e)
                    elif extra_check is not None:
                        extra_check(item, child, e)
                    elif extra is False:
                        e.append(
                            Problem(
                                "OPS011",
                                child,
                                f"unknown key `{key}` in {noun}",
                                did_you_mean(key, known)
                                or (f"allowed keys: {', '.join(known)}" if len(known) <= 12 else None),
                                at="key",
                            )
                        )
                if min_props is not None and len(v) < min_props:
                    e.append(
                        Problem(
                            "OPS013", p, f"{noun} needs at least {min_props} entr{'y' if min_props == 1 else 'ies'}"
                        )
                    )
                if max_props is not None and len(v) > max_props:
                    e.append(Problem("OPS013", p, f"{noun} has more than {max_props} entries"))

            checks.append(check)
        return checks

    def array_checks(self, schema: dict, noun: str, desc: str | None) -> list[Check]:
        checks: list[Check] = []
        items = self.compile(schema["items"], noun) if "items" in schema else None
        low, high = schema.get("minItems"), schema.get("maxItems")
        unique = schema.get("uniqueItems", False)
        if items is None and low is None and high is None and not unique:
            return checks

        def check(v, p, e):
            if type(v) is not list:
                return
            if low is not None and len(v) < low:
                e.append(
                    Problem(
                        "OPS013", p, f"expected at least {low} item{'s' if low != 1 else ''}{_where(p)}, got {len(v)}"
                    )
                )
            if high is not None and len(v) > high:
                e.append(Problem("OPS013", p, f"expected at most {high} items{_where(p)}, got {len(v)}"))
            if items is not None:
                for i, item in enumerate(v):
                    items(item, (*p, i), e)
            if unique:
                for i, item in enumerate(v):
                    if any(_json_equal(item, earlier) for earlier in v[:i]):
                        e.append(Problem("OPS013", (*p, i), f"duplicate item `{_shown(item)}`{_where(p)}"))

        checks.append(check)
        return checks

    def scalar_checks(self, schema: dict, noun: str, desc: str | None) -> list[Check]:
        checks: list[Check] = []
        if "enum" in schema:
            options = schema["enum"]
            strings = [o for o in options if isinstance(o, str)]
            listed = ", ".join(f"`{o}`" for o in strings) if len(strings) == len(options) else json.dumps(options)

            fast = frozenset(strings) if len(strings) == len(options) else None

            def enum(v, p, e):
                if fast is not None and type(v) is str and v in fast:
                    return
                if not any(_json_equal(v, o) for o in options):
                    hint = did_you_mean(v, strings) if isinstance(v, str) else None
                    e.append(
                        Problem("OPS013", p, f"`{_shown(v)}` is not allowed{_where(p)}: expected one of {listed}", hint)
                    )

            checks.append(enum)
        if "const" in schema:
            const = schema["const"]

            const_is_str = type(const) is str

            def const_check(v, p, e):
                if type(v) is str and const_is_str:
                    if v != const:
                        e.append(
                            Problem("OPS013", p, f"`{_shown(v)}` is not allowed{_where(p)}: expected `{_shown(const)}`")
                        )
                    return
                if not _json_equal(v, const):
                    e.append(
                        Problem("OPS013", p, f"`{_shown(v)}` is not allowed{_where(p)}: expected `{_shown(const)}`")
                    )

            checks.append(const_check)
        if "pattern" in schema:
            regex = re.compile(_anchor_end(schema["pattern"]))
            what = (
                f"a valid {noun}" if noun in _NOUNS.values() or noun in ("duration",) else f"a valid value{_where(())}"
            )

            def pattern(v, p, e):
                if type(v) is str and not regex.search(v):
                    label = what if what != "a valid value" else "valid"
                    e.append(
                        Problem(
                            "OPS013",
                            p,
                            f"`{_shown(v)}` is not {label}{_where(p) if label == 'valid' else ''}",
                            desc or f"it must match `{regex.pattern}`",
                        )
                    )

            checks.append(pattern)
        low_len, high_len = schema.get("minLength"), schema.get("maxLength")
        if low_len is not None or high_len is not None:

            def length(v, p, e):
                if type(v) is not str:
                    return
                if low_len is not None and len(v) < low_len:
                    e.append(
                        Problem(
                            "OPS013",
                            p,
                            f"value{_where(p)} must not be empty"
                            if low_len == 1
                            else f"value{_where(p)} is shorter than {low_len} characters",
                        )
                    )
                if high_len is not None and len(v) > high_len:
                    e.append(Problem("OPS013", p, f"value{_where(p)} is longer than {high_len} characters"))

            checks.append(length)
        bounds = [(k, schema[k]) for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum") if k in schema]
        if bounds:
            tests = {
                "minimum": (lambda v, b: v >= b, "at least"),
                "maximum": (lambda v, b: v <= b, "at most"),
                "exclusiveMinimum": (lambda v, b: v > b, "more than"),
                "exclusiveMaximum": (lambda v, b: v < b, "less than"),
            }

            def bound(v, p, e):
                if type_name(v) not in ("integer", "number"):
                    return
                for key, limit in bounds:
                    ok, words = tests[key]
                    if not ok(v, limit):
                        e.append(Problem("OPS013", p, f"`{_shown(v)}`{_where(p)} must be {words} {limit}"))

            checks.append(bound)
        return checks

    def combinators(self, schema: dict, noun: str) -> list[Check]:
        checks: list[Check] = []
        dispatch = _discriminator(schema.get("allOf", ()))
        if dispatch is not None:
            checks.append(self.dispatch(*dispatch, noun))
        else:
            for sub in schema.get("allOf", ()):
                checks.append(self.compile(sub, noun))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                checks.append(self.alternatives(schema[key], noun, exactly_one=key == "oneOf"))
        if "not" in schema:
            inner = schema["not"]
            inner_check = self.compile(inner, noun)
            keys = inner.get("required") if set(inner) == {"required"} else None

            def negation(v, p, e):
                probe: list = []
                inner_check(v, p, probe)
                if not probe:
                    if keys:
                        names = " and ".join(f"`{k}`" for k in keys)
                        e.append(Problem("OPS013", p, f"{names} cannot be used together in {noun}"))
                    else:
                        e.append(Problem("OPS013", p, f"this {noun} matches a form that is not allowed"))

            checks.append(negation)
        if "if" in schema:
            condition = self.predicate(schema["if"], noun)
            then = self.compile(schema["then"], noun) if "then" in schema else None
            otherwise = self.compile(schema["else"], noun) if "else" in schema else None

            def conditional(v, p, e):
                branch = then if condition(v, p) else otherwise
                if branch is not None:
                    branch(v, p, e)

            checks.append(conditional)
        return checks

    def predicate(self, schema: dict, noun: str) -> Callable[[Any, Path_], bool]:
        """Whether a value matches `schema`, without building messages (for `if`)."""
        test = _const_property(schema)
        if test is not None:
            name, const = test
            return lambda v, p: type(v) is dict and name in v and _json_equal(v[name], const)
        check = self.compile(schema, noun)

        def matches(v, p):
            probe: list = []
            check(v, p, probe)
            return not probe

        return matches

    def dispatch(self, name: str, branches: dict[str, Any], noun: str) -> Check:
        """`allOf` of `if {name: const C} then S` entries: look the branch up instead."""
        compiled = {const: self.compile(then, noun) for const, then in branches.items()}

        def check(v, p, e):
            if type(v) is dict:
                value = v.get(name)
                branch = compiled.get(value) if type(value) is str else None
                if branch is not None:
                    branch(v, p, e)

        return check

    def alternatives(self, options: list, noun: str, exactly_one: bool) -> Check:
        compiled = [self.compile(o, noun) for o in options]
        only_required = all(set(o) == {"required"} for o in options)
        names = [k for o in options for k in o.get("required", ())]

        def check(v, p, e):
            results = []
            for c in compiled:
                probe: list = []
                c(v, p, probe)
                results.append(probe)
            passing = sum(1 for r in results if not r)
            if passing == 1 or (passing > 1 and not exactly_one):
                return
            if passing > 1:
                e.append(Problem("OPS013", p, f"{noun} matches more than one allowed form"))
            elif only_required and type(v) is dict:
                listed = ", ".join(f"`{n}`" for n in names)
                e.append(Problem("OPS012", p, f"{noun} needs one of {listed}"))
            else:
                e.extend(min(results, key=len))

        return check


def _anchor_end(pattern: str) -> str:
    """ECMA-262's `$` (JSON Schema's regex dialect) matches only at the very end; Python's
    also matches before a final newline, which would let `name: "x\\n"` through."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + r"\Z"
    return pattern


def _const_property(schema: Any) -> tuple[str, Any] | None:
    """`(name, C)` for a schema that says exactly "property `name` is present and is C"."""
    if not isinstance(schema, dict) or set(schema) != {"properties", "required"}:
        return None
    props = schema["properties"]
    if len(props) != 1 or schema["required"] != list(props):
        return None
    ((name, inner),) = props.items()
    return (name, inner["const"]) if isinstance(inner, dict) and set(inner) == {"const"} else None


def _discriminator(entries: Any) -> tuple[str, dict[str, Any]] | None:
    """An `allOf` whose every entry is `if {name: const C} then S` on one property name."""
    if not entries:
        return None
    name, branches = None, {}
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"if", "then"}:
            return None
        test = _const_property(entry["if"])
        if (
            test is None
            or not isinstance(test[1], str)
            or (name is not None and test[0] != name)
            or test[1] in branches
        ):
            return None
        name = test[0]
        branches[test[1]] = entry["then"]
    return name, branches


@cache
def pack_schema_text() -> str:
    return read_text("schemas/pack.schema.json")


@cache
def pack_validator() -> Check:
    schema = json.loads(pack_schema_text())
    return _Compiler(schema).compile(schema, "pack")


def compile_schema(schema: dict, noun: str = "document") -> Check:
    """Compile any schema that uses the supported keywords; `noun` names the top level in messages."""
    return _Compiler(schema).compile(schema, noun)


def validate_pack(data: Any) -> list[Problem]:
    """Every schema problem of a loaded pack document, one per problem."""
    return validate_with(pack_validator(), data)


def validate_with(check: Check, data: Any) -> list[Problem]:
    """Every problem `check` finds in `data`, each (path, code, place) once."""
    problems: list[Problem] = []
    check(data, (), problems)
    seen: set[tuple] = set()
    unique = []
    for problem in problems:
        key = (problem.path, problem.code, problem.at)
        if key not in seen:
            seen.add(key)
            unique.append(problem)
    return unique
