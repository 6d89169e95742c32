"""The steering context: which fields a rule condition may test, and what each one holds.

The pipeline builds one flat ``Mapping[str, Any]`` per request with dotted keys (the catalogue
below); rules test it by name.  Field names are validated when a rule file is parsed, so a typo
is a load error naming file, rule and field rather than a rule that silently never matches.

Fixed fields are listed in ``FIELDS``.  Three families are open:

- ``request.headers.<name>``: request headers, names lower-cased (the parser lower-cases the
  name written in the rule, so ``request.headers.X-Tenant-ID`` works too);
- ``request.metadata.<name>``: the request's ``metadata`` object (OpenAI body or the
  ``/api/v1/models/select`` metadata), any JSON value, names case-sensitive;
- ``budget.<scope>.<metric>``: the caller's budget state per scope (``org, team, user, project,
  key``) and ``any``, the worst over the whole chain (highest ``used_pct``, worst ``status``,
  lowest ``remaining_usd``).  ``budget_fields`` builds these keys so every producer agrees.

A field the pipeline does not know for a request is simply absent (or ``None``).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from costproxy.analyzer.tasks import TASK_TYPES
from costproxy.records import frozen
from costproxy.registry import CAPABILITIES
from costproxy.routing.policy import QUALITY_MODES

# Kinds decide which operators apply and how a condition's value is read.
KIND_STR = "str"
KIND_BOOL = "bool"
KIND_INT = "int"
KIND_NUMBER = "number"
KIND_MONEY = "money"  # decimal USD; compared exactly
KIND_DATE = "date"  # ISO "YYYY-MM-DD" string; ordered comparisons work
KIND_LIST = "list"  # list of strings
KIND_ANY = "any"  # any JSON value

ENDPOINTS = ("chat/completions", "completions", "embeddings", "responses", "messages")
BUDGET_SCOPES = ("org", "team", "user", "project", "key", "any")
BUDGET_STATUSES = ("normal", "warning", "critical", "exhausted")  # in order of severity
BUDGET_METRICS = ("used_pct", "status", "remaining_usd")

HEADER_PREFIX = "request.headers."
METADATA_PREFIX = "request.metadata."
BUDGET_PREFIX = "budget."


@frozen
class FieldSpec:
    name: str
    kind: str
    description: str
    choices: tuple[str, ...] | None = None  # closed set of string values, checked at parse


def _spec(name: str, kind: str, description: str, choices: tuple[str, ...] | None = None) -> FieldSpec:
    return FieldSpec(name, kind, description, choices)


FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        _spec("request.model", KIND_STR, "model name as the client sent it (e.g. auto, gpt-4o)"),
        _spec("request.model_requested_virtual", KIND_BOOL, "true when the client asked for auto or auto:*"),
        _spec("request.quality_mode", KIND_STR, "quality asked for (auto:<mode> or header)", QUALITY_MODES),
        _spec("request.tokens.input", KIND_INT, "prompt tokens counted by the analyzer"),
        _spec("request.tokens.max_output", KIND_INT, "max_tokens the client asked for (absent if none)"),
        _spec("request.task_type", KIND_STR, "task detected by the analyzer", TASK_TYPES),
        _spec("request.difficulty", KIND_NUMBER, "difficulty estimated by the analyzer, 0-1 (harder is higher)"),
        _spec("request.capabilities", KIND_LIST, "capabilities the request needs", CAPABILITIES),
        _spec("request.stream", KIND_BOOL, "true for a streamed request"),
        _spec("request.endpoint", KIND_STR, "API endpoint, without the /v1 prefix", ENDPOINTS),
        _spec("principal.key_id", KIND_STR, "id of the costproxy key"),
        _spec("principal.user", KIND_STR, "user the request is charged to"),
        _spec("principal.team", KIND_STR, "team the request is charged to"),
        _spec("principal.org", KIND_STR, "organisation the request is charged to"),
        _spec("principal.project", KIND_STR, "project the request is charged to"),
        _spec("time.hour", KIND_INT, "hour of the day, 0-23, UTC"),
        _spec("time.weekday", KIND_INT, "day of the week, 0 = Monday ... 6 = Sunday, UTC"),
        _spec("time.date", KIND_DATE, "date as YYYY-MM-DD, UTC"),
    )
}

_BUDGET_METRIC_SPECS = {
    "used_pct": (KIND_NUMBER, "percent of the budget used (0-100, may exceed 100)", None),
    "status": (KIND_STR, "budget status", BUDGET_STATUSES),
    "remaining_usd": (KIND_MONEY, "USD left before the limit", None),
}


def lookup_field(name: str) -> FieldSpec | None:
    """The spec of a field name, or ``None`` when the name is not in the catalogue."""
    spec = FIELDS.get(name)
    if spec is not None:
        return spec
    if name.startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX):
        return FieldSpec(name.lower(), KIND_STR, "request header")
    if name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
        return FieldSpec(name, KIND_ANY, "request metadata value")
    if name.startswith(BUDGET_PREFIX):
        parts = name.split(".")
        if len(parts) == 3 and parts[1] in BUDGET_SCOPES and parts[2] in _BUDGET_METRIC_SPECS:
            kind, description, choices = _BUDGET_METRIC_SPECS[parts[2]]
            return FieldSpec(name, kind, f"{description} ({parts[1]})", choices)
    return None


def known_field_names() -> list[str]:
    """Every fixed name plus one example of each open family (for "did you mean" hints)."""
    names = list(FIELDS)
    names += [f"budget.{scope}.{metric}" for scope in BUDGET_SCOPES for metric in BUDGET_METRICS]
    return names


@frozen
class BudgetState:
    """One budget's state, as ``budget_fields`` turns it into steering context keys."""

    used_pct: float
    status: str
    remaining_usd: Decimal | None = None  # None: no hard limit


def budget_fields(states: Iterable[tuple[str, BudgetState]]) -> dict[str, object]:
    """``budget.<scope>.<metric>`` keys for ``(scope, state)`` pairs, plus ``budget.any.*``.

    A scope with several budgets (say daily and monthly) reports its worst: highest percentage,
    most severe status, least money remaining.  ``any`` is the same over every scope.
    """
    # per key: [highest used_pct, severity, its status, least remaining]; on a tie the first seen
    # stays (as ``max``/``min`` keep it), without building a ``BudgetState`` per comparison
    worst: dict[str, list[Any]] = {}
    for scope, state in states:
        if scope not in BUDGET_SCOPES or scope == "any":
            raise ValueError(f"unknown budget scope {scope!r}")
        severity = _severity(state.status)
        for key in (scope, "any"):
            seen = worst.get(key)
            if seen is None:
                worst[key] = [state.used_pct, severity, state.status, state.remaining_usd]
                continue
            if state.used_pct > seen[0]:
                seen[0] = state.used_pct
            if severity > seen[1]:
                seen[1], seen[2] = severity, state.status
            remaining = state.remaining_usd
            if remaining is not None and (seen[3] is None or remaining < seen[3]):
                seen[3] = remaining
    fields: dict[str, object] = {}
    for scope, (used_pct, _, status, remaining) in worst.items():
        used_key, status_key, remaining_key = _BUDGET_KEYS[scope]
        fields[used_key] = used_pct
        fields[status_key] = status
        if remaining is not None:
            fields[remaining_key] = remaining
    return fields


# the keys ``budget_fields`` writes, per scope: built once, not three f-strings per scope per request
_BUDGET_KEYS = {scope: (f"budget.{scope}.used_pct", f"budget.{scope}.status", f"budget.{scope}.remaining_usd")
                for scope in BUDGET_SCOPES}


def _severity(status: str) -> int:
    return _SEVERITY.get(status, 0)


_SEVERITY = {status: rank for rank, status in enumerate(BUDGET_STATUSES)}
