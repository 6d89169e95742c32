"""Budgets in and out: the ``budgets:`` section of ``config/costproxy.yaml`` and the camelCase JSON.

One parser reads both shapes; only the key names differ (``YAML`` snake_case vs ``JSON`` in the
RelayCore/Auterity vocabulary of DESIGN §3.6).  YAML errors are ``ConfigError`` naming file, dotted
path and value; JSON errors are ``InvalidRequest`` whose ``param`` is the JSON path.  Money is a
decimal string or number in USD, converted exactly to nano-USD (sub-nano precision is refused).

The YAML section and its settings are read by ``costproxy.budgets.config``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from costproxy.budgets.model import (
    BudgetInvalid,
    BudgetOverride,
    BudgetSpec,
    Threshold,
    ThresholdAction,
    zone,
)
from costproxy.config_schema import Node
from costproxy.errors import ConfigError, InvalidRequest
from costproxy.money import MAX_AMOUNT_NANOS, MoneyError, nanos_to_decimal, usd_to_nanos
from costproxy.records import frozen
from costproxy.wire import JSON_SCOPE as JSON_SCOPE  # re-exported: the budget API's older home of these
from costproxy.wire import MAX_TIMESTAMP_MS as MAX_TIMESTAMP_MS
from costproxy.wire import SCOPE_FROM_JSON as SCOPE_FROM_JSON
from costproxy.wire import TimeInvalid, canonical, instant_ms, spellings
from costproxy.wire import iso as iso

T = TypeVar("T")

# the systems a usage record may come from ("proxy" is the proxy's own entries: no record claims it)
USAGE_SOURCES = ("relaycore", "auterity", "manual")

# internal name -> (YAML key, JSON key)
_NAMES: dict[str, tuple[str, str]] = {
    "id": ("id", "id"), "name": ("name", "name"), "description": ("description", "description"),
    "scope_type": ("scope_type", "scopeType"), "scope_id": ("scope_id", "scopeId"),
    "org": ("org", "organizationId"), "limit_nanos": ("limit_usd", "amount"),
    "currency": ("currency", "currency"), "period": ("period", "period"),
    "timezone": ("timezone", "timezone"), "start_date": ("start_date", "startDate"),
    "end_date": ("end_date", "endDate"), "recurring": ("recurring", "recurring"),
    "thresholds": ("thresholds", "alerts"), "on_exhausted": ("on_exhausted", "onExhausted"),
    "tags": ("tags", "tags"), "parent_id": ("parent", "parentBudgetId"),
    "percent": ("percent", "threshold"), "actions": ("actions", "actions"),
    "channels": ("channels", "notificationChannels"), "message": ("message", "message"),
    "tiers": ("tiers", "tiers"), "models": ("models", "models"),
    "max_price_per_mtok": ("max_price_per_mtok", "maxPricePerMTok"), "type": ("type", "type"),
    "same_provider": ("same_provider", "sameProvider"), "downgrade_to": ("downgrade_to", "downgradeTo"),
    "amount_nanos": ("amount", "amount"), "expires_at_ms": ("expires_at", "expiresAt"),
    "reason": ("reason", "reason"), "kind": ("type", "type"),
}
_JSON_READ_ONLY = ("createdAt", "updatedAt", "createdBy", "source", "readOnly", "hardLimit")

# The alias table of a budget body: at each level the camelCase keys, and the names of the YAML
# ``budgets:`` section accepted for them (snake_case spellings of every key are accepted too, see
# ``costproxy.wire.canonical``), so a definition copied from the YAML works in the API unchanged.
BUDGET_KEYS = ("id", "name", "description", "scopeType", "scopeId", "organizationId", "amount", "currency",
               "period", "timezone", "startDate", "endDate", "recurring", "alerts", "onExhausted", "downgradeTo",
               "tags", "parentBudgetId", *_JSON_READ_ONLY)
BUDGET_ALIASES = {"limit_usd": "amount", "org": "organizationId", "organization": "organizationId",
                  "thresholds": "alerts", "parent": "parentBudgetId"}
ALERT_KEYS = ("threshold", "actions", "notificationChannels", "message")
ALERT_ALIASES = {"percent": "threshold", "channels": "notificationChannels"}
ACTION_KEYS = ("type", "tiers", "models", "maxPricePerMTok", "sameProvider")
ACTION_ALIASES = {"max_price_per_mtok": "maxPricePerMTok"}
TARGET_KEYS = ("tiers", "models", "sameProvider")


def budget_names(data: Any) -> Any:
    """A budget body with its aliases renamed to the camelCase keys (anything not an object is
    left for the reader to refuse with its own message)."""
    if not isinstance(data, dict):
        return data
    body = canonical(data, BUDGET_KEYS, BUDGET_ALIASES)
    if isinstance(body.get("alerts"), list):
        body["alerts"] = [_alert_names(item, f"alerts[{i}]") for i, item in enumerate(body["alerts"])]
    if isinstance(body.get("downgradeTo"), dict):
        body["downgradeTo"] = canonical(body["downgradeTo"], TARGET_KEYS, where="downgradeTo")
    return body


def _alert_names(item: Any, where: str) -> Any:
    if not isinstance(item, dict):
        return item
    alert = canonical(item, ALERT_KEYS, ALERT_ALIASES, where=where)
    if isinstance(alert.get("actions"), list):
        alert["actions"] = [canonical(a, ACTION_KEYS, ACTION_ALIASES, where=f"{where}.actions[{i}]")
                            if isinstance(a, dict) else a for i, a in enumerate(alert["actions"])]
    return alert


@frozen
class UsageRecord:
    """Usage recorded by another system (``POST /api/v1/budgets/{id}/usage``)."""

    amount_nanos: int
    timestamp_ms: int
    source: str = "manual"
    description: str = ""
    request_id: str | None = None
    model_id: str | None = None
    user: str | None = None
    team: str | None = None
    project: str | None = None
    tags: tuple[str, ...] = ()
    timestamp_sent: bool = True  # False: ``timestamp_ms`` is when it arrived (no ``timestamp`` was sent)


STORED_MAX_NANOS = 2**62  # definitions already stored are read with the int64 range only


class _Reader:
    """Reads one budget from a Node in one naming style (0: YAML, 1: JSON).  ``maximum``: the
    largest money amount accepted (``MAX_AMOUNT_NANOS`` for new input)."""

    def __init__(self, style: int, maximum: int = MAX_AMOUNT_NANOS) -> None:
        self.style = style
        self.maximum = maximum

    def key(self, name: str) -> str:
        return _NAMES[name][self.style]

    def child(self, node: Node, name: str, *default: Any) -> Node:
        return node.child(self.key(name), *default)

    def spec(self, node: Node, source: str, base: BudgetSpec | None = None) -> BudgetSpec:
        node.mapping()
        values: dict[str, Any] = {} if base is None else {f.name: getattr(base, f.name) for f in fields(base)}
        for name in ("id", "name", "description", "scope_id", "org", "parent_id"):
            if node.has(self.key(name)) or (name in ("id", "scope_id") and base is None):
                values[name] = self._text(self.child(node, name), name)
        if base is not None and values["id"] != base.id:
            raise self.child(node, "id").error("cannot be changed", values["id"])
        for name in ("period", "currency", "on_exhausted"):
            if node.has(self.key(name)):
                values[name] = self.child(node, name).str()
        self._scope(node, values, base)
        if node.has(self.key("limit_nanos")) or base is None:
            values["limit_nanos"] = self._money(self.child(node, "limit_nanos"))
        if node.has(self.key("timezone")):
            values["timezone"] = self.child(node, "timezone").str()
        for name in ("start_date", "end_date"):
            if node.has(self.key(name)):
                values[name] = self._date(self.child(node, name), values.get("timezone", "UTC"))
        if node.has(self.key("recurring")):
            values["recurring"] = self.child(node, "recurring").bool()
        if node.has(self.key("tags")):
            values["tags"] = tuple(self.child(node, "tags").str_list())
        if node.has(self.key("thresholds")):
            values["thresholds"] = self._thresholds(self.child(node, "thresholds"))
        if node.has(self.key("downgrade_to")):
            values["downgrade_to"] = self._targets(self.child(node, "downgrade_to"))
        if self.style == 1:
            self._hard_limit(node, values)
            for extra in _JSON_READ_ONLY:
                node.child(extra, None)
        node.done()
        values["source"] = source
        return self._build(node, BudgetSpec, values)

    def _text(self, node: Node, name: str) -> str | None:
        if name in ("id", "scope_id"):
            return node.str()
        if name in ("name", "description"):
            return "" if node.value is None else node.str(allow_empty=True)
        return node.opt_str()

    def _scope(self, node: Node, values: dict[str, Any], base: BudgetSpec | None) -> None:
        if not node.has(self.key("scope_type")) and base is not None:
            return
        scope = self.child(node, "scope_type")
        raw = scope.str()
        kind = SCOPE_FROM_JSON.get(raw) if self.style == 1 else raw
        if kind is None:
            raise scope.error(f"must be one of {', '.join(JSON_SCOPE.values())}", raw)
        values["scope_type"] = kind

    def _hard_limit(self, node: Node, values: dict[str, Any]) -> None:
        if not node.has("hardLimit") or node.has(self.key("on_exhausted")):
            return
        hard = node.child("hardLimit").bool()
        values["on_exhausted"] = "block" if hard else "notify"

    def _money(self, node: Node) -> int:
        try:
            nanos = usd_to_nanos(node.value, what="amount", maximum=self.maximum)
        except MoneyError as exc:
            raise node.error(str(exc), node.value) from None
        if nanos < 0:
            raise node.error("must not be negative", node.value)
        return nanos

    def _date(self, node: Node, tz_name: str) -> date | None:
        value = node.value
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        if not isinstance(value, str):
            raise node.error("must be a date YYYY-MM-DD", value)
        try:
            if "T" in value:
                moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
                return moment.astimezone(zone(tz_name)).date() if moment.tzinfo else moment.date()
            return date.fromisoformat(value)
        except (ValueError, BudgetInvalid):
            raise node.error("must be a date YYYY-MM-DD (or an ISO 8601 date-time)", value) from None

    def _thresholds(self, node: Node) -> tuple[Threshold, ...]:
        items = node.elements()
        if not items:
            return ()
        return tuple(sorted((self._threshold(item) for item in items), key=lambda t: t.percent))

    def _threshold(self, node: Node) -> Threshold:
        if isinstance(node.value, int) and not isinstance(node.value, bool):
            return self._build(node, Threshold, {"percent": node.value})
        node.mapping()
        values: dict[str, Any] = {"percent": self._percent(self.child(node, "percent"))}
        if node.has(self.key("actions")):
            values["actions"] = tuple(self._action(a) for a in self.child(node, "actions").elements())
        values["channels"] = tuple(self.child(node, "channels", []).str_list())
        values["message"] = self.child(node, "message", None).opt_str()
        node.done()
        return self._build(node, Threshold, values)

    def _percent(self, node: Node) -> int:
        number = node.decimal(minimum=Decimal(1))
        if number != number.to_integral_value():
            raise node.error("must be a whole percent", node.value)
        return int(number)

    def _action(self, node: Node) -> ThresholdAction:
        if isinstance(node.value, str):
            return self._build(node, ThresholdAction, {"type": node.value})
        node.mapping()
        values: dict[str, Any] = {"type": self.child(node, "type").str()}
        values["tiers"] = frozenset(self.child(node, "tiers", []).str_list())
        values["models"] = frozenset(self.child(node, "models", []).str_list())
        price = self.child(node, "max_price_per_mtok", None)
        if price.value is not None:
            values["max_price_per_mtok"] = str(price.decimal(minimum=Decimal(0)))
        values["same_provider"] = self.child(node, "same_provider", False).bool()
        node.done()
        return self._build(node, ThresholdAction, values)

    def _targets(self, node: Node) -> ThresholdAction:
        """``downgrade_to``: the models an exhausted ``on_exhausted: downgrade`` budget may switch to."""
        node.mapping()
        values: dict[str, Any] = {"type": "auto-downgrade"}
        values["tiers"] = frozenset(self.child(node, "tiers", []).str_list())
        values["models"] = frozenset(self.child(node, "models", []).str_list())
        values["same_provider"] = self.child(node, "same_provider", False).bool()
        node.done()
        return self._build(node, ThresholdAction, values)

    def _build(self, node: Node, cls: Callable[..., T], values: dict[str, Any]) -> T:
        try:
            return cls(**values)
        except BudgetInvalid as exc:
            key = _NAMES.get(exc.field, (exc.field, exc.field))[self.style]
            raise ConfigError(node.file, _join(node.path, key), exc.message, exc.value) from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- YAML ------------------------------------------------------------------------------------


def spec_from_yaml(node: Node, source: str = "config") -> BudgetSpec:
    """One budget of the ``budgets:`` section (snake_case keys); ``budgets.config`` reads the section."""
    return _Reader(0).spec(node, source)


# --- JSON in ---------------------------------------------------------------------------------


def _as_request_error(exc: ConfigError, sent: Mapping[str, str] | None = None) -> InvalidRequest:
    """The 400 for a bad body.  ``sent``: top-level key -> as the client spelled it (an alias), so
    the error names the key that was sent (``limit_usd``, not ``amount``)."""
    head = re.match(r"[A-Za-z0-9_]+", exc.path)
    if sent is None or head is None or sent.get(head.group(0), head.group(0)) == head.group(0):
        return InvalidRequest(str(exc), param=exc.path or None)
    path = sent[head.group(0)] + exc.path[head.end():]
    message = str(exc).replace(f"{exc.file}: {exc.path}", f"{exc.file}: {path}", 1)
    return InvalidRequest(message, param=path)


def _spelled(data: Any, names: tuple[str, ...], aliases: Mapping[str, str] | None = None) -> dict[str, str] | None:
    return spellings(data, names, aliases) if isinstance(data, dict) else None


def spec_from_json(data: Any, *, base: BudgetSpec | None = None, stored: bool = False) -> BudgetSpec:
    """A budget from a JSON body; with ``base`` the body is a partial update (PATCH).  ``stored``:
    a definition read back from the store, which may predate the money bound (still int64)."""
    try:
        return _Reader(1, STORED_MAX_NANOS if stored else MAX_AMOUNT_NANOS).spec(
            Node(budget_names(data), "body"), "api", base)
    except ConfigError as exc:
        raise _as_request_error(exc, _spelled(data, BUDGET_KEYS, BUDGET_ALIASES)) from None


def _iso_ms(node: Node) -> int:
    """A time as ``costproxy.wire.instant_ms`` reads it (ISO 8601, or unix seconds/milliseconds)."""
    try:
        return instant_ms(node.value)
    except TimeInvalid as exc:
        raise node.error(str(exc), node.value) from None


OVERRIDE_KEYS = ("type", "amount", "startsAt", "expiresAt", "durationMinutes", "reason")
USAGE_KEYS = ("amount", "currency", "timestamp", "source", "description", "metadata")
USAGE_METADATA_KEYS = ("requestId", "modelId", "userId", "teamId", "projectId", "tags")


def override_from_json(data: Any, *, budget_id: str, override_id: str, actor: str | None,
                       now_ms: int) -> BudgetOverride:
    """``{type: increase|approval, amount?, expiresAt | durationMinutes, startsAt?, reason}``."""
    node = Node(canonical(data, OVERRIDE_KEYS) if isinstance(data, dict) else data, "body")
    try:
        kind = node.child("type").str(choices=("increase", "approval"))
        amount = node.child("amount", None)
        starts = _iso_ms(node.child("startsAt")) if node.has("startsAt") else now_ms
        if node.has("expiresAt"):
            expires = _iso_ms(node.child("expiresAt"))
        else:
            expires = starts + int(node.child("durationMinutes").number(minimum=1, maximum=527_040) * 60_000)
        values = dict(id=override_id, budget_id=budget_id, kind=kind, starts_at_ms=starts,
                      expires_at_ms=expires, reason=node.child("reason").str(), created_by=actor,
                      created_at_ms=now_ms,
                      amount_nanos=_Reader(1)._money(amount) if amount.value is not None else 0)
        node.done()
        return _Reader(1)._build(node, BudgetOverride, values)
    except ConfigError as exc:
        raise _as_request_error(exc, _spelled(data, OVERRIDE_KEYS)) from None


def usage_from_json(data: Any, *, now_ms: int) -> UsageRecord:
    """A usage record: ``amount, currency, timestamp, source, description, metadata{...}``."""
    sent = _spelled(data, USAGE_KEYS)
    if isinstance(data, dict):
        data = canonical(data, USAGE_KEYS)
        if isinstance(data.get("metadata"), dict):
            data["metadata"] = canonical(data["metadata"], USAGE_METADATA_KEYS, where="metadata")
    node = Node(data, "body")
    try:
        amount = _Reader(1)._money(node.child("amount"))
        node.child("currency", "USD").str(choices=("USD",))
        stamp = _iso_ms(node.child("timestamp")) if node.has("timestamp") else now_ms
        meta = node.child("metadata", {})
        record = UsageRecord(
            amount_nanos=amount, timestamp_ms=stamp,
            source=node.child("source", "manual").str(choices=USAGE_SOURCES),
            description=node.child("description", "").str(allow_empty=True),
            request_id=meta.child("requestId", None).opt_str(), model_id=meta.child("modelId", None).opt_str(),
            user=meta.child("userId", None).opt_str(), team=meta.child("teamId", None).opt_str(),
            project=meta.child("projectId", None).opt_str(), tags=tuple(meta.child("tags", []).str_list()),
            timestamp_sent=node.has("timestamp"),
        )
        meta.done()
        node.done()
    except ConfigError as exc:
        raise _as_request_error(exc, sent) from None
    return record


# --- JSON out --------------------------------------------------------------------------------


def usd(nanos: int) -> str:
    """Nano-USD as the shortest exact decimal string ("12.5", "0.000001")."""
    return format(nanos_to_decimal(nanos).normalize(), "f")


def action_to_json(action: ThresholdAction) -> str | dict[str, Any]:
    if not (action.tiers or action.models or action.max_price_per_mtok or action.same_provider):
        return action.type
    return {"type": action.type, **targets_to_json(action)}


def targets_to_json(action: ThresholdAction) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if action.tiers:
        out["tiers"] = sorted(action.tiers)
    if action.models:
        out["models"] = sorted(action.models)
    if action.max_price_per_mtok:
        out["maxPricePerMTok"] = action.max_price_per_mtok
    if action.type == "auto-downgrade":
        out["sameProvider"] = action.same_provider
    return out


def spec_to_json(spec: BudgetSpec) -> dict[str, Any]:
    return {
        "id": spec.id, "name": spec.name, "description": spec.description,
        "scopeType": JSON_SCOPE[spec.scope_type], "scopeId": spec.scope_id, "organizationId": spec.org,
        "amount": usd(spec.limit_nanos), "currency": spec.currency, "period": spec.period,
        "timezone": spec.timezone,
        "startDate": spec.start_date.isoformat() if spec.start_date else None,
        "endDate": spec.end_date.isoformat() if spec.end_date else None,
        "recurring": spec.recurring,
        "alerts": [{"threshold": t.percent, "actions": [action_to_json(a) for a in t.actions],
                    "notificationChannels": list(t.channels), "message": t.message} for t in spec.thresholds],
        "onExhausted": spec.on_exhausted, "downgradeTo": targets_to_json(spec.downgrade_to),
        "hardLimit": spec.hard, "tags": list(spec.tags),
        "parentBudgetId": spec.parent_id, "createdAt": iso(spec.created_at_ms),
        "updatedAt": iso(spec.updated_at_ms), "createdBy": spec.created_by, "source": spec.source,
        "readOnly": spec.read_only,
    }


def override_to_json(override: BudgetOverride, now_ms: int) -> dict[str, Any]:
    return {
        "id": override.id, "budgetId": override.budget_id, "type": override.kind,
        "amount": usd(override.amount_nanos) if override.kind == "increase" else None,
        "startsAt": iso(override.starts_at_ms), "expiresAt": iso(override.expires_at_ms),
        "reason": override.reason, "createdBy": override.created_by, "createdAt": iso(override.created_at_ms),
        "revokedAt": iso(override.revoked_at_ms), "revokedBy": override.revoked_by,
        "active": override.active(now_ms),
    }


def percent(part: int, whole: int) -> float:
    """A percentage for display, rounded to 2 decimals (money itself never becomes a float)."""
    if whole <= 0:
        return 100.0 if part > 0 else 0.0
    return float((Decimal(part) * 100 / Decimal(whole)).quantize(Decimal("0.01")))


def names_for(style: str) -> Mapping[str, str]:
    """Internal field name -> external key, for ``style`` ``yaml`` or ``json`` (error mapping)."""
    index = 0 if style == "yaml" else 1
    return {internal: pair[index] for internal, pair in _NAMES.items()}
