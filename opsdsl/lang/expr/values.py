"""CEL semantics over plain Python values: equality, ordering, arithmetic, lookups.

Values are what JSON gives: dict, list, str, int, float, bool, None (tuples and other
Mappings are accepted too). A Python `bool` is never an int here. Every operation either
returns the CEL result or raises `EvalError`; both evaluators share these functions.

Values come from events, so their text may be hostile or secret: an error message names a
value's type and shape (`describe`), never its text.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from opsdsl.errors import EvalError

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1

_KINDS: dict[type, str] = {
    bool: "bool",
    int: "int",
    float: "double",
    str: "string",
    type(None): "null",
    list: "list",
    tuple: "list",
    dict: "map",
}


def kind(value: Any) -> str:
    """The CEL type name of a value: int, double, string, bool, null, list or map."""
    found = _KINDS.get(type(value))
    if found is not None:
        return found
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, (list, tuple)):
        return "list"
    raise EvalError(f"unsupported value of Python type {type(value).__name__}")


_ARTICLES = {"int": "an int", "double": "a double", "bool": "a bool", "null": "null"}


def describe(value: Any) -> str:
    """A value's type and shape for an error message, never its text: `a string (14
    characters)`, `a list of 3 elements`, `an int`."""
    value_kind = kind(value)
    if value_kind == "string":
        return f"a string ({_count(len(value), 'character')})"
    if value_kind == "list":
        return f"a list of {_count(len(value), 'element')}"
    if value_kind == "map":
        return f"a map of {_count(len(value), 'entry', 'entries')}"
    return _ARTICLES[value_kind]


def _count(number: int, noun: str, plural: str | None = None) -> str:
    return f"{number} {noun if number == 1 else plural or noun + 's'}"


def no_overload(op: str, *values: Any) -> EvalError:
    kinds = ", ".join(kind(value) for value in values)
    return EvalError(f"no such overload: {op} on ({kinds})")


def checked_int(value: int) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    raise EvalError("integer overflow")


# Equality is total: values of different types are unequal, never an error.


def equal(a: Any, b: Any) -> bool:
    """CEL `==`: numbers compare by value across int and double; bools only equal bools;
    lists and maps compare element-wise; anything else of different types is unequal."""
    ka, kb = kind(a), kind(b)
    if ka == kb:
        if ka == "list":
            return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
        if ka == "map":
            if len(a) != len(b):
                return False
            for key, value in a.items():
                found, other = map_find(b, key)
                if not found or not equal(value, other):
                    return False
            return True
        return a == b
    if ka in ("int", "double") and kb in ("int", "double"):
        return a == b  # Python compares int with float exactly
    return False


def not_equal(a: Any, b: Any) -> bool:
    return not equal(a, b)


# Ordering: numbers (across int and double), strings, bools. Anything else is an error.

_ORDERED_SAME = frozenset(("int", "double", "string", "bool"))


def _ordered(op: str, a: Any, b: Any) -> None:
    ka, kb = kind(a), kind(b)
    if ka == kb and ka in _ORDERED_SAME:
        return
    if ka in ("int", "double") and kb in ("int", "double"):
        return
    raise no_overload(op, a, b)


def less(a: Any, b: Any) -> bool:
    _ordered("<", a, b)
    return a < b


def less_equal(a: Any, b: Any) -> bool:
    _ordered("<=", a, b)
    return a <= b


def greater(a: Any, b: Any) -> bool:
    _ordered(">", a, b)
    return a > b


def greater_equal(a: Any, b: Any) -> bool:
    _ordered(">=", a, b)
    return a >= b


# Arithmetic: both operands of one type, no implicit conversion.


def add(a: Any, b: Any) -> Any:
    ka, kb = kind(a), kind(b)
    if ka == kb:
        if ka == "int":
            return checked_int(a + b)
        if ka in ("double", "string"):
            return a + b
        if ka == "list":
            return [*a, *b]
    raise no_overload("+", a, b)


def subtract(a: Any, b: Any) -> Any:
    ka, kb = kind(a), kind(b)
    if ka == kb == "int":
        return checked_int(a - b)
    if ka == kb == "double":
        return a - b
    raise no_overload("-", a, b)


def multiply(a: Any, b: Any) -> Any:
    ka, kb = kind(a), kind(b)
    if ka == kb == "int":
        return checked_int(a * b)
    if ka == kb == "double":
        return a * b
    raise no_overload("*", a, b)


def _truncated_quotient(a: int, b: int) -> int:
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


def divide(a: Any, b: Any) -> Any:
    ka, kb = kind(a), kind(b)
    if ka == kb == "int":
        if b == 0:
            raise EvalError("division by zero")
        return checked_int(_truncated_quotient(a, b))
    if ka == kb == "double":
        if b == 0.0:  # IEEE 754, as CEL: ±inf, or nan for 0/0
            if a == 0.0 or math.isnan(a):
                return math.nan
            return math.copysign(math.inf, a) * math.copysign(1.0, b)
        return a / b
    raise no_overload("/", a, b)


def modulo(a: Any, b: Any) -> Any:
    if kind(a) == kind(b) == "int":
        if b == 0:
            raise EvalError("modulus by zero")
        if a == INT_MIN and b == -1:
            raise EvalError("integer overflow")
        return a - b * _truncated_quotient(a, b)  # the sign follows the dividend
    raise no_overload("%", a, b)


def negate(a: Any) -> Any:
    ka = kind(a)
    if ka == "int":
        return checked_int(-a)
    if ka == "double":
        return -a
    raise no_overload("-", a)


def logical_not(a: Any) -> bool:
    if a is True or a is False:
        return not a
    raise no_overload("!", a)


def require_bool(value: Any, what: str) -> bool:
    if value is True or value is False:
        return value
    raise EvalError(f"{what} must be a bool, got {kind(value)}")


# Maps and lists.

_MAP_KEY_KINDS = frozenset(("int", "string", "bool"))


def map_find(mapping: Mapping, key: Any) -> tuple[bool, Any]:
    """(found, value) for a CEL map lookup. Python's dict treats `True` and `1` as one
    key and CEL does not, so a hit on a colliding key is confirmed by its stored type."""
    key_kind = kind(key)
    if key_kind == "string":
        if key in mapping:
            return True, mapping[key]
        return False, None
    if key_kind == "double":
        if not key.is_integer():
            return False, None
        key, key_kind = int(key), "int"  # CEL finds int keys by an equal double
    if key_kind not in _MAP_KEY_KINDS:
        raise EvalError(f"unsupported map key type {key_kind}")
    if key not in mapping:
        return False, None
    if key_kind == "int" and key not in (0, 1):
        return True, mapping[key]
    for stored, value in mapping.items():  # 0, 1, False, True: match the type too
        if kind(stored) == key_kind and stored == key:
            return True, value
    return False, None


def _show_key(key: Any) -> str:
    return key if isinstance(key, str) else to_string(key) if kind(key) != "null" else "null"


def select(container: Any, name: str) -> Any:
    """`container.name`."""
    if kind(container) != "map":
        raise EvalError(f"cannot select field `{name}` of {kind(container)}")
    if name in container:
        return container[name]
    raise EvalError(f"no such key: {name}")


def index(container: Any, key: Any, key_is_literal: bool = False) -> Any:
    """`container[key]`: a list by int position, a map by key. Messages name the key only
    when the pack spells it (`key_is_literal`); a key computed from data is described."""
    container_kind = kind(container)
    if container_kind == "list":
        if type(key) is float and key.is_integer():  # CEL accepts an integral double
            key = int(key)
        if kind(key) != "int":
            raise EvalError(f"list index must be an int, got {kind(key)}")
        if 0 <= key < len(container):
            return container[key]
        shown = str(key) if key_is_literal else describe(key)
        raise EvalError(f"index out of range: {shown} (list of size {len(container)})")
    if container_kind == "map":
        found, value = map_find(container, key)
        if found:
            return value
        raise EvalError(f"no such key: {_show_key(key) if key_is_literal else describe(key)}")
    raise EvalError(f"cannot index into {container_kind}")


def has_field(container: Any, name: str) -> bool:
    """The `has(container.name)` test."""
    if kind(container) == "map":
        return name in container
    raise EvalError(f"has() needs a map, got {kind(container)}")


def contained_in(element: Any, container: Any) -> bool:
    """`element in container`: list membership by CEL equality, or a map key."""
    container_kind = kind(container)
    if container_kind == "list":
        return any(equal(element, item) for item in container)
    if container_kind == "map":
        if kind(element) not in ("int", "double", "string", "bool"):
            return False
        return map_find(container, element)[0]
    raise no_overload("in", element, container)


def make_map(entries: list[tuple[Any, Any]], literal_keys: frozenset[int] = frozenset()) -> dict:
    """A map literal's value; CEL rejects repeated keys. `literal_keys` are the positions
    of keys the pack spells, which messages may name."""
    result: dict = {}
    for position, (key, value) in enumerate(entries):
        key_kind = kind(key)
        if key_kind not in _MAP_KEY_KINDS:
            raise EvalError(f"unsupported map key type {key_kind}")
        if map_find(result, key)[0]:
            shown = _show_key(key) if position in literal_keys else describe(key)
            raise EvalError(f"repeated key in map literal: {shown}")
        if key in result:  # True and 1 are distinct CEL keys but one Python key
            raise EvalError(f"map literal cannot hold both {key!r} and its bool/int twin")
        result[key] = value
    return result


def to_string(value: Any) -> str:
    """CEL `string(x)` for scalars."""
    value_kind = kind(value)
    if value_kind == "string":
        return value
    if value_kind == "bool":
        return "true" if value else "false"
    if value_kind == "int":
        try:
            return str(int(value))
        except ValueError:  # Python's limit on digits; no int64 comes near it
            raise EvalError("cannot convert an int to string: too large") from None
    if value_kind == "double":
        return format_double(value)
    raise EvalError(f"cannot convert {value_kind} to string")


def format_double(value: float) -> str:
    """The shortest text that reads back as `value`, spelt as Go's `%g` (CEL's
    `string(double)`): `1.5`, `100`, `1e+06`, `1e-05`, `+Inf`, `NaN`."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    from decimal import Decimal  # not at import: keep `import opsdsl.lang.expr` cheap

    _, digit_tuple, last = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    exponent = last + len(digits) - 1  # of the first digit
    if exponent < -4 or exponent >= 6:  # Go: %e when the exponent is < -4 or >= 6
        fraction = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    if len(digits) <= exponent + 1:
        return sign + digits + "0" * (exponent + 1 - len(digits))
    return f"{sign}{digits[: exponent + 1]}.{digits[exponent + 1 :]}"
