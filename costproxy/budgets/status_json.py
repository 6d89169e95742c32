"""The status API's JSON: a budget's status, its ``costRestrictions``, and a scope's aggregate.

Field names follow DESIGN §3.6 and the names the RelayCore/Auterity plans read: per budget
``currentAmount`` (Auterity) and ``currentSpend`` (RelayCore), the same figure; in
``costRestrictions`` ``modelDowngrading``, ``restrictedModels``, ``maxCostPerRequest`` and
``blockNonEssential``; per scope ``aggregateStatus``.  Names kept only for older clients are
marked *deprecated* here, in the README and in ``/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from costproxy.budgets.codec import action_to_json, iso, override_to_json, percent, usd
from costproxy.budgets.model import STATUSES
from costproxy.budgets.status import BudgetStatus, restrictions_of
from costproxy.money import usd_to_nanos
from costproxy.registry import ModelSpec
from costproxy.routing.policy import Constraints
from costproxy.wire import JSON_SCOPE


def allowed_models(found: Constraints, models: Sequence[ModelSpec]) -> list[str] | None:
    """The chat models of ``models`` a restriction leaves usable (None: no restriction)."""
    if found.allowed_tiers is None and found.allowed_models is None and found.max_price_per_mtok_output is None:
        return None
    cap = None if found.max_price_per_mtok_output is None else Decimal(found.max_price_per_mtok_output)
    return sorted(m.id for m in models if m.kind == "chat"
                  and (found.allowed_tiers is None or m.tier in found.allowed_tiers)
                  and (found.allowed_models is None or m.id in found.allowed_models)
                  and (cap is None or m.price.output <= cap))


def refusing(status: BudgetStatus) -> bool:
    """Does the proxy refuse new requests charged to this budget now?  A ``block-all`` threshold
    reached, a ``require-approval`` one reached without an approval in force, or a hard budget
    with nothing left to reserve (a temporary increase counts as part of the limit)."""
    return status.blocked or (status.spec.hard and status.remaining_nanos == 0)


def restrictions_to_json(status: BudgetStatus, models: Sequence[ModelSpec] = ()) -> dict[str, Any]:
    """``costRestrictions`` of the status API: what the proxy does to requests charged to this
    budget now.  ``models``: the deployment's servable models (``restrictedModels`` lists those a
    ``restrict-models`` action leaves usable).

    ``blockNonEssential`` (RelayCore/Auterity) is ``refusing``: costproxy has no per-request
    priority, so while a budget refuses requests every proxied request is treated as
    non-essential and refused (429 ``budget_exceeded``); essential work goes through only with an
    override (``POST /api/v1/budgets/{id}/overrides``: an approval or a temporary increase).
    """
    if not status.in_force:  # outside its dates: the proxy enforces nothing of it
        return {"modelDowngrading": False, "restrictedModels": None, "maxCostPerRequest": None,
                "blockNonEssential": False, "allowedTiers": None, "allowedModels": None, "maxPricePerMTok": None,
                "blocked": False, "requiresApproval": False, "downgrading": False}
    found = restrictions_of(status.actions, status.spec.id)
    downgrading = found.downgrade or (
        status.spec.on_exhausted == "downgrade" and status.status in ("critical", "exhausted"))
    blocked = refusing(status)
    return {
        "modelDowngrading": downgrading,
        "restrictedModels": allowed_models(found, models),
        "maxCostPerRequest": usd(status.remaining_nanos) if status.spec.hard else None,
        "blockNonEssential": blocked,
        "allowedTiers": sorted(found.allowed_tiers) if found.allowed_tiers is not None else None,
        "allowedModels": sorted(found.allowed_models) if found.allowed_models is not None else None,
        "maxPricePerMTok": found.max_price_per_mtok_output,
        "blocked": blocked,
        "requiresApproval": status.blocked and any(a.type == "require-approval" for a in status.actions),
        "downgrading": downgrading,  # deprecated: modelDowngrading
    }


def status_to_json(status: BudgetStatus, models: Sequence[ModelSpec] = ()) -> dict[str, Any]:
    """A budget status (DESIGN §3.6); ``currentSpend`` (RelayCore) equals ``currentAmount`` (Auterity)."""
    spec, window = status.spec, status.window
    days = None if status.ms_remaining is None else round(status.ms_remaining / 86_400_000, 2)
    return {
        "budgetId": spec.id, "name": spec.name, "scopeType": JSON_SCOPE[spec.scope_type],
        "scopeId": spec.scope_id, "period": spec.period, "periodKey": window.key,
        "periodStart": iso(window.start_ms), "periodEnd": iso(window.end_ms),
        "currentAmount": usd(status.spent_nanos), "currentSpend": usd(status.spent_nanos),
        "reserved": usd(status.reserved_nanos),
        "limit": usd(status.limit_nanos), "baseLimit": usd(spec.limit_nanos), "currency": spec.currency,
        "percentUsed": percent(status.spent_nanos, status.limit_nanos), "remaining": usd(status.remaining_nanos),
        "daysRemaining": days, "burnRate": usd(status.burn_rate_nanos_per_day), "burnRatePeriod": "day",
        "projectedTotal": None if status.projected_nanos is None else usd(status.projected_nanos),
        "status": status.status, "hardLimit": spec.hard, "onExhausted": spec.on_exhausted,
        "activeAlerts": [{"threshold": pct, "triggeredAt": iso(at),
                          "actions": [action_to_json(a) for t in spec.thresholds if t.percent == pct
                                      for a in t.actions]}
                         for pct, at in status.thresholds_reached],
        "costRestrictions": restrictions_to_json(status, models),
        "activeOverrides": [override_to_json(o, status.as_of_ms) for o in status.overrides],
        "lastUpdated": iso(status.as_of_ms), "stale": status.stale_ms > 0,
        "staleSeconds": round(status.stale_ms / 1000, 3),
        "active": status.in_force, "activeFrom": iso(status.active_from_ms),
        "activeUntil": iso(status.active_until_ms),
    }


def merge_restrictions(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The restrictions of several budgets together: the strictest of each."""
    def narrowest(key: str) -> list[str] | None:
        sets = [set(i[key]) for i in items if i.get(key) is not None]
        return sorted(set.intersection(*sets)) if sets else None

    def least(key: str) -> str | None:
        values = [i[key] for i in items if i.get(key) is not None]
        return min(values, key=lambda v: usd_to_nanos(v)) if values else None

    downgrading, blocked = any(i["modelDowngrading"] for i in items), any(i["blocked"] for i in items)
    return {"modelDowngrading": downgrading, "restrictedModels": narrowest("restrictedModels"),
            "maxCostPerRequest": least("maxCostPerRequest"), "blockNonEssential": blocked,
            "allowedTiers": narrowest("allowedTiers"), "allowedModels": narrowest("allowedModels"),
            "maxPricePerMTok": least("maxPricePerMTok"), "blocked": blocked,
            "requiresApproval": any(i["requiresApproval"] for i in items), "downgrading": downgrading}


def scope_status_json(scope_type: str, scope_id: str, budgets: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /api/v1/budgets/status/{scopeType}/{scopeId}`` from its budgets' status bodies.
    ``aggregateStatus`` is the worst status of the scope's budgets in force now (``status``:
    deprecated); budgets outside their dates are listed (``active: false``) but count for nothing."""
    in_force = [b for b in budgets if b["active"]]
    worst = STATUSES[max((STATUSES.index(b["status"]) for b in in_force), default=0)]
    return {
        "scopeType": JSON_SCOPE[scope_type], "scopeId": scope_id, "aggregateStatus": worst,
        "budgets": budgets, "costRestrictions": merge_restrictions([b["costRestrictions"] for b in in_force]),
        "lastUpdated": min((b["lastUpdated"] for b in budgets), default=None),
        "stale": any(b["stale"] for b in budgets), "status": worst,
    }
