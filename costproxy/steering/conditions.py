"""Rule conditions: ``{field, operator, value}``, checked at parse time, compiled to a closure.

Evaluation never raises.  A field that is absent (or ``None``) matches only ``not_exists``; a
value of the wrong type for the operator (a string compared with ``gt``, a number tested with
``regex``) is "no match", for the negated operators too: ``not_equals``, ``not_contains`` and
``not_in`` match only a present value of a comparable type.
"""

from __future__ import annotations

import difflib
import operator as operator_module
import re
from collections.abc import Callable, Mapping
from dataclasses import field as dataclass_field
from datetime import date
from decimal import Decimal
from typing import Any

from costproxy.config_schema import Node
from costproxy.records import frozen
from costproxy.steering import fields as f

OPERATORS = (
    "equals",
    "not_equals",
    "contains",
    "not_contains",
    "regex",
    "gt",
    "lt",
    "gte",
    "lte",
    "in",
    "not_in",
    "exists",
    "not_exists",
)
_ORDERED = ("gt", "lt", "gte", "lte")
_ALL = frozenset(OPERATORS)
_SCALAR = frozenset(("equals", "not_equals", "in", "not_in", "exists", "not_exists"))
OPERATORS_BY_KIND: dict[str, frozenset[str]] = {
    f.KIND_STR: _SCALAR | {"contains", "not_contains", "regex"},
    f.KIND_DATE: _SCALAR | {"regex", *_ORDERED},
    f.KIND_BOOL: frozenset(("equals", "not_equals", "exists", "not_exists")),
    f.KIND_INT: _SCALAR | set(_ORDERED),
    f.KIND_NUMBER: _SCALAR | set(_ORDERED),
    f.KIND_MONEY: _SCALAR | set(_ORDERED),
    f.KIND_LIST: frozenset(("contains", "not_contains", "in", "not_in", "exists", "not_exists")),
    f.KIND_ANY: _ALL,
}

Context = Mapping[str, Any]
Check = Callable[[Context], bool]
_LISTLIKE = (list, tuple, set, frozenset)


@frozen
class Condition:
    field: str
    operator: str
    value: Any  # as read: str, number, Decimal, bool; a tuple for in/not_in; None for (not_)exists
    check: Check = dataclass_field(compare=False, repr=False)

    def matches(self, context: Context) -> bool:
        return self.check(context)


def parse_condition(node: Node) -> Condition:
    """Read one ``{field, operator, value}`` mapping; errors name the exact sub-field."""
    field_node = node.child("field")
    spec = f.lookup_field(field_node.str())
    if spec is None:
        raise field_node.error(f"unknown field{_hint(field_node.value)}", field_node.value)
    op_node = node.child("operator")
    operator = op_node.str(choices=OPERATORS)
    if operator not in OPERATORS_BY_KIND[spec.kind]:
        allowed = ", ".join(o for o in OPERATORS if o in OPERATORS_BY_KIND[spec.kind])
        raise op_node.error(f"does not apply to {spec.name} ({spec.kind}); use one of: {allowed}", operator)
    if operator in ("exists", "not_exists"):
        if node.has("value") and node.child("value").value is not None:
            raise node.child("value").error(f"{operator} takes no value", node.child("value").value)
        node.done()
        return Condition(spec.name, operator, None, _compile(spec.name, operator, None))
    value = _read_value(node.child("value"), spec, operator)
    node.done()
    return Condition(spec.name, operator, value, _compile(spec.name, operator, value))


def _hint(name: object) -> str:
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, f.known_field_names(), n=1, cutoff=0.75)
    if close:
        return f"; did you mean {close[0]}?"
    return "; see rules/README.md for the field catalogue"


def _read_value(node: Node, spec: f.FieldSpec, operator: str) -> Any:
    if operator in ("in", "not_in"):
        if not isinstance(node.value, list) or not node.value:
            raise node.error("must be a non-empty list", node.value)
        return tuple(_read_scalar(e, spec, operator) for e in node.elements())
    if operator == "regex":
        pattern = node.str(allow_empty=True)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise node.error(f"invalid regular expression: {exc}", pattern) from None
        return pattern
    return _read_scalar(node, spec, operator)


def _read_scalar(node: Node, spec: f.FieldSpec, operator: str) -> Any:
    kind = spec.kind
    if kind in (f.KIND_STR, f.KIND_LIST):
        text = node.str(allow_empty=operator not in ("contains", "not_contains"))
        if spec.choices is not None and text not in spec.choices:
            raise node.error(f"must be one of {', '.join(spec.choices)}", text)
        return text
    if kind == f.KIND_DATE:
        text = node.str()
        try:
            date.fromisoformat(text)
        except ValueError:
            raise node.error("must be a date written YYYY-MM-DD", text) from None
        return text
    if kind == f.KIND_BOOL:
        return node.bool()
    if kind in (f.KIND_INT, f.KIND_NUMBER):
        node.number()  # type check only: ints stay ints
        return node.value
    if kind == f.KIND_MONEY:
        return node.decimal()
    return _read_any(node, operator)


def _read_any(node: Node, operator: str) -> Any:
    value = node.value
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    if isinstance(value, bool) and operator not in _ORDERED:
        return value
    expected = "a string or a number" if operator in _ORDERED else "a string, a number or true/false"
    raise node.error(f"must be {expected}", value)


# --- compiled checks ---------------------------------------------------------------------------
# Values compare only within a family: 1 bool, 2 number, 3 string, 0 anything else.  The exact
# type lookup is the hot path; subclasses (an IntEnum, a str subclass) take the slow path.
_FAMILIES: dict[type, int] = {bool: 1, int: 2, float: 2, Decimal: 2, str: 3}


def _family(value: object) -> int:
    family = _FAMILIES.get(type(value))
    if family is not None:
        return family
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float, Decimal)):
        return 2
    return 3 if isinstance(value, str) else 0


def _compile(name: str, operator: str, expected: Any) -> Check:
    if operator == "exists":
        return lambda ctx: ctx.get(name) is not None
    if operator == "not_exists":
        return lambda ctx: ctx.get(name) is None
    test = _PREDICATES[operator](expected)

    def check(ctx: Context) -> bool:
        value = ctx.get(name)
        if value is None:
            return False
        try:
            return test(value)
        except (TypeError, ValueError, ArithmeticError):  # e.g. Decimal NaN ordering
            return False

    return check


Predicate = Callable[[Any], bool]


def _equals(expected: Any) -> Predicate:
    family = _family(expected)
    return lambda v: _family(v) == family and bool(v == expected)


def _not_equals(expected: Any) -> Predicate:
    family = _family(expected)
    return lambda v: _family(v) == family and bool(v != expected)


def _contains(expected: Any) -> Predicate:
    family = _family(expected)

    def test(v: Any) -> bool:
        if isinstance(v, str):
            return family == 3 and expected in v
        if isinstance(v, _LISTLIKE):
            return any(_family(x) == family and x == expected for x in v)
        return False

    return test


def _not_contains(expected: Any) -> Predicate:
    contains = _contains(expected)
    family = _family(expected)

    def test(v: Any) -> bool:
        if isinstance(v, str):
            return family == 3 and not contains(v)
        return isinstance(v, _LISTLIKE) and not contains(v)

    return test


def _regex(expected: Any) -> Predicate:
    search = re.compile(expected).search
    return lambda v: isinstance(v, str) and search(v) is not None


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any], Predicate]:
    def build(expected: Any) -> Predicate:
        family = _family(expected)
        if family not in (2, 3):
            return lambda v: False
        return lambda v: _family(v) == family and compare(v, expected)

    return build


def _member_test(expected: tuple[Any, ...]) -> Predicate:
    """True when a scalar equals a member (same family); a list matches if any element does."""
    by_family: dict[int, frozenset[Any]] = {}
    for item in expected:
        family = _family(item)
        by_family[family] = by_family.get(family, frozenset()) | {item}

    def one(v: Any) -> bool:
        members = by_family.get(_family(v))
        return members is not None and v in members

    def test(v: Any) -> bool:
        if isinstance(v, _LISTLIKE):
            return any(one(x) for x in v)
        return one(v)

    return test


def _not_in(expected: Any) -> Predicate:
    member = _member_test(expected)
    families = {_family(x) for x in expected}

    def test(v: Any) -> bool:
        if isinstance(v, _LISTLIKE):
            return all(_family(x) in families for x in v) and not member(v)
        return _family(v) in families and not member(v)

    return test


_PREDICATES: dict[str, Callable[[Any], Predicate]] = {
    "equals": _equals,
    "not_equals": _not_equals,
    "contains": _contains,
    "not_contains": _not_contains,
    "regex": _regex,
    "gt": _ordered(operator_module.gt),
    "lt": _ordered(operator_module.lt),
    "gte": _ordered(operator_module.ge),
    "lte": _ordered(operator_module.le),
    "in": _member_test,
    "not_in": _not_in,
}
