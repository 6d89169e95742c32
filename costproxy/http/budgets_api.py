"""Budgets in the RelayCore/Auterity shapes of DESIGN §3.6: CRUD, status, constraints, overrides, alerts.

``GET    /api/v1/budgets``                                  list (``?scopeType=&scopeId=&tag=&withStatus=``)
``POST   /api/v1/budgets``                                  create (admin)
``GET    /api/v1/budgets/{id}``                             one definition
``PUT    /api/v1/budgets/{id}``  ``PATCH``  ``DELETE``      replace, update, delete (admin)
``GET    /api/v1/budgets/status/{scopeType}/{scopeId}``     every budget of a scope, worst status, restrictions
``GET    /api/v1/budgets/{id}/status``                      spend, burn rate, projection, active alerts
``POST   /api/v1/budgets/{id}/check-constraints``           ``{estimatedCost}`` → canProceed, reason, suggestedActions
``GET|POST /api/v1/budgets/{id}/overrides``, ``DELETE …/overrides/{overrideId}``  temporary increases, approvals
``GET    /api/v1/budgets/{id}/alerts``, ``POST …/alerts/{threshold}/acknowledge``  active alerts (ack: admin)
``GET    /api/v1/budgets/{id}/audit``                       who changed what

Reads accept the admin token and read-only tokens (a scope-limited token sees only its scopes'
budgets; others answer 404 as if absent).  Status comes from the accounts' local state — the
in-process counters on SQLite; on Redis the replica's cache, refreshed every
``budgets.refresh_interval_s`` — so it answers while Redis is away, flagged ``stale`` with its age.
Every handler first brings the definitions up to the store's (``current_definitions``: on Redis one
version read, a reload if another replica changed them), so a budget created, changed or deleted
through any replica is seen by the next call to any other.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from costproxy.alerts.catalog import Ack, AlertCatalog
from costproxy.alerts.manager import AlertManager
from costproxy.alerts.store import SqliteAlertStore
from costproxy.budgets.book import BudgetAccounts
from costproxy.budgets.codec import (
    iso,
    override_from_json,
    override_to_json,
    spec_from_json,
    spec_to_json,
    usd,
)
from costproxy.budgets.definitions import AuditRecord, new_override_id
from costproxy.budgets.model import BudgetOverride, BudgetSpec
from costproxy.budgets.status import BudgetStatus
from costproxy.budgets.status_json import refusing, scope_status_json, status_to_json
from costproxy.errors import InvalidRequest, NotFound, StoreUnavailable
from costproxy.http.keys_api import int_param, json_body, require_admin
from costproxy.http.state import ADMIN_ROLE, ALERT_CATALOG, ALERTS, BUDGETS, ROUTER, SERVICES
from costproxy.identity.access_tokens import ScopedToken
from costproxy.money import MoneyError, usd_to_nanos
from costproxy.registry import ModelSpec
from costproxy.wire import canonical, query_value, scope_kind, spellings

# --- access ------------------------------------------------------------------------------------


def accounts_of(request: web.Request) -> BudgetAccounts:
    accounts = request.app[BUDGETS]
    if accounts is None:
        raise NotFound("budgets are disabled in this deployment (budgets.enabled: false)")
    return accounts


def catalog_of(app: web.Application) -> AlertCatalog | None:
    return app.get(ALERT_CATALOG)


def manager_of(app: web.Application) -> AlertManager | None:
    return app.get(ALERTS)


def viewer(request: web.Request) -> ScopedToken | None:
    """The read-only token of this request, if it is one (None for the admin token)."""
    catalog = catalog_of(request.app)
    return None if catalog is None else catalog.tokens.by_role(request.get(ADMIN_ROLE))


def visible(request: web.Request, spec: BudgetSpec) -> bool:
    token = viewer(request)
    return token is None or token.sees(spec.scope_type, spec.scope_id)


def budget_for(request: web.Request) -> tuple[BudgetAccounts, BudgetSpec]:
    accounts = accounts_of(request)
    budget_id = request.match_info["budget_id"]
    spec = accounts.budgets.get(budget_id)
    if spec is None or not visible(request, spec):
        raise NotFound(f"no budget with id {budget_id!r}")
    return accounts, spec


def actor(request: web.Request) -> str:
    """Who did it: ``X-Costproxy-Actor`` if given (the admin token is shared), else the role."""
    named = request.headers.get("x-costproxy-actor", "").strip()
    return named[:128] if named else str(request.get(ADMIN_ROLE) or "admin")


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Store failures while reading or changing budgets answer 503 in OpenAI's error shape, saying what
    Redis did (``store.outage``)."""
    try:
        yield
    except _store_failures() as exc:
        if "redis.exceptions" not in sys.modules:  # SQLite: the file could not be read or written
            raise StoreUnavailable(f"the budget store failed: {exc}") from None
        from costproxy.store.outage import problem

        raise StoreUnavailable(f"the budget store {problem(exc)}") from None


def _store_failures() -> tuple[type[Exception], ...]:
    """``RedisError`` once redis is loaded (a Redis store loads it), else ``OSError`` alone: a SQLite
    deployment never imports redis (~9 MB of RSS)."""
    exceptions = sys.modules.get("redis.exceptions")
    return (OSError,) if exceptions is None else (exceptions.RedisError, OSError)


def scope_param(raw: str) -> str:
    return scope_kind(raw)


def servable_models(request: web.Request) -> list[ModelSpec]:
    """The deployment's models a request can be served by (what ``restrictedModels`` lists from)."""
    unservable = request.app[ROUTER].unservable
    return [m for m in request.app[SERVICES].registry.models.values() if m.id not in unservable]


# --- definitions -------------------------------------------------------------------------------


async def list_budgets(request: web.Request) -> web.Response:
    accounts = accounts_of(request)
    raw_kind, scope_id, tag = (query_value(request.query, n) for n in ("scopeType", "scopeId", "tag"))
    kind = scope_param(raw_kind) if raw_kind is not None else None
    specs = [s for s in accounts.budgets.all() if visible(request, s)
             and (kind is None or s.scope_type == kind)
             and (scope_id is None or s.scope_id == scope_id)
             and (tag is None or tag in s.tags)]
    data = [spec_to_json(s) for s in specs]
    if query_value(request.query, "withStatus") in ("1", "true"):
        for item, spec in zip(data, specs, strict=True):
            item["status"] = await status_json(request, await accounts.status(spec.id))
    return web.json_response({"data": data})


async def create_budget(request: web.Request) -> web.Response:
    require_admin(request)
    accounts = accounts_of(request)
    body = await json_body(request)
    if "id" not in body:
        body["id"] = "bud_" + uuid.uuid4().hex[:16]
    with store_errors():
        stored = await accounts.budgets.create(spec_from_json(body), actor(request))
    return web.json_response(spec_to_json(stored), status=201)


async def get_budget(request: web.Request) -> web.Response:
    return web.json_response(spec_to_json(budget_for(request)[1]))


async def replace_budget(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    body = await json_body(request)
    if body.setdefault("id", spec.id) != spec.id:
        raise InvalidRequest("the id in the body must match the URL", param="id")
    with store_errors():
        stored = await accounts.budgets.update(spec_from_json(body), actor(request))
    return web.json_response(spec_to_json(stored))


async def patch_budget(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    body = await json_body(request)
    with store_errors():
        stored = await accounts.budgets.update(spec_from_json(body, base=spec), actor(request))
    return web.json_response(spec_to_json(stored))


async def delete_budget(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    with store_errors():
        deleted = await accounts.budgets.delete(spec.id, actor(request))
    return web.json_response({"id": deleted.id, "deleted": True, "budget": spec_to_json(deleted)})


async def audit(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    with store_errors():
        records = await accounts.budgets.audit_log(spec.id, limit=_limit(request, 100))
    return web.json_response({"data": [audit_json(r) for r in records]})


def audit_json(record: AuditRecord) -> dict[str, Any]:
    """One change: ISO time; an override's detail in the override shape of the API."""
    detail = record.detail
    if record.action.startswith("override.") and "budget_id" in detail:
        detail = override_to_json(BudgetOverride(**detail), record.ts_ms)
    return {"timestamp": iso(record.ts_ms), "actor": record.actor, "action": record.action,
            "budgetId": record.budget_id, "detail": detail}


def _limit(request: web.Request, default: int, maximum: int = 1000) -> int:
    return int_param(request, "limit", default, 1, maximum)


# --- status ------------------------------------------------------------------------------------


async def status_json(request: web.Request, status: BudgetStatus) -> dict[str, Any]:
    """``status_to_json`` plus acknowledgements and, where the counters forgot, when alerts fired."""
    data = status_to_json(status, servable_models(request))
    catalog, manager = catalog_of(request.app), manager_of(request.app)
    local_claims = manager is not None and isinstance(manager.store, SqliteAlertStore)
    for alert in data["activeAlerts"]:
        if alert["triggeredAt"] is None and local_claims and manager is not None:
            alert["triggeredAt"] = iso(await manager.fired_at(status.spec.id, status.window.key, alert["threshold"]))
        ack = catalog.ack_for(status.spec.id, status.window.key, alert["threshold"]) if catalog else None
        alert.update(acknowledged=ack is not None, acknowledgedBy=ack.by if ack else None,
                     acknowledgedAt=iso(ack.at_ms) if ack else None, note=ack.note if ack else None)
    return data


def _stale_headers(statuses: list[BudgetStatus]) -> dict[str, str]:
    stale = max((s.stale_ms for s in statuses), default=0)
    return {"x-costproxy-stale-seconds": f"{stale / 1000:.3f}"} if stale else {}


async def budget_status(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    status = await accounts.status(spec.id)
    return web.json_response(await status_json(request, status), headers=_stale_headers([status]))


async def scope_status(request: web.Request) -> web.Response:
    accounts = accounts_of(request)
    kind, scope_id = scope_param(request.match_info["scope_type"]), request.match_info["scope_id"]
    token = viewer(request)
    if token is not None and not token.sees(kind, scope_id):
        raise NotFound(f"no budgets visible for {request.match_info['scope_type']} {scope_id!r}")
    statuses = await accounts.statuses(kind, scope_id)
    budgets = [await status_json(request, s) for s in statuses]
    return web.json_response(scope_status_json(kind, scope_id, budgets), headers=_stale_headers(statuses))


async def check_constraints(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    raw = await json_body(request)
    body, sent = canonical(raw, ("estimatedCost",)), spellings(raw, ("estimatedCost",)).get("estimatedCost")
    if "estimatedCost" not in body:
        raise InvalidRequest("'estimatedCost' is required", param="estimatedCost")
    try:
        nanos = usd_to_nanos(body["estimatedCost"], what=str(sent))
    except MoneyError as exc:
        raise InvalidRequest(str(exc), param=sent) from None
    if nanos < 0:
        raise InvalidRequest(f"'{sent}' must not be negative", param=sent)
    check = await accounts.check(spec.id, nanos)
    status = await accounts.status(spec.id)
    return web.json_response({
        **check.public(), "budgetId": spec.id, "estimatedCost": usd(nanos), "currency": spec.currency,
        "status": status.status, "remaining": usd(status.remaining_nanos), "limit": usd(status.limit_nanos),
        "currentAmount": usd(status.spent_nanos), "currentSpend": usd(status.spent_nanos), "hardLimit": spec.hard,
        "blockNonEssential": refusing(status), "stale": status.stale_ms > 0,
    })


# --- overrides (temporary increases, approvals) -------------------------------------------------


async def list_overrides(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    now = int(accounts.budgets.clock() * 1000)
    return web.json_response({"data": [override_to_json(o, now) for o in accounts.budgets.overrides(spec.id)]})


async def grant_override(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    now = int(accounts.budgets.clock() * 1000)
    override = override_from_json(await json_body(request), budget_id=spec.id, override_id=new_override_id(),
                                  actor=actor(request), now_ms=now)
    with store_errors():
        stored = await accounts.budgets.grant(override, actor(request))
    return web.json_response(override_to_json(stored, now), status=201)


async def revoke_override(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    override_id = request.match_info["override_id"]
    if all(o.id != override_id for o in accounts.budgets.overrides(spec.id)):
        raise NotFound(f"budget {spec.id!r} has no override {override_id!r}")
    with store_errors():
        revoked = await accounts.budgets.revoke(override_id, actor(request))
    return web.json_response(override_to_json(revoked, int(accounts.budgets.clock() * 1000)))


# --- alerts ------------------------------------------------------------------------------------


async def list_alerts(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    status = await status_json(request, await accounts.status(spec.id))
    return web.json_response({"budgetId": spec.id, "periodKey": status["periodKey"], "data": status["activeAlerts"]})


async def acknowledge(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    catalog = catalog_of(request.app)
    if catalog is None:
        raise NotFound("alerting is disabled in this deployment (alerts.enabled: false)")
    raw = request.match_info["threshold"]
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4):
        raise InvalidRequest("the threshold in the URL must be a whole percent", param="threshold")
    threshold = int(raw)
    body = canonical(await json_body(request), ("note",)) if request.can_read_body else {}
    status = await accounts.status(spec.id)
    if threshold not in {pct for pct, _ in status.thresholds_reached}:
        raise InvalidRequest(f"threshold {threshold}% of budget {spec.id!r} has not fired in period "
                             f"{status.window.key}", param="threshold")
    note = body.get("note", "")
    if not isinstance(note, str):
        raise InvalidRequest("'note' must be a string", param="note")
    ack = await catalog.acknowledge(Ack(spec.id, status.window.key, threshold, actor(request),
                                        int(accounts.budgets.clock() * 1000), note))
    return web.json_response({"budgetId": spec.id, "periodKey": ack.period_key, "threshold": threshold,
                              "acknowledged": True, "acknowledgedBy": ack.by, "acknowledgedAt": iso(ack.at_ms),
                              "note": ack.note})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def current_definitions(handler: Handler) -> Handler:
    """``handler`` after the definitions were brought up to the store's (``BudgetAccounts.current``)."""
    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        accounts = request.app[BUDGETS]
        if accounts is not None:
            await accounts.current()
        return await handler(request)

    return run


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/api/v1/budgets", list_budgets),
    ("POST", "/api/v1/budgets", create_budget),
    ("GET", "/api/v1/budgets/status/{scope_type}/{scope_id}", scope_status),
    ("GET", "/api/v1/budgets/{budget_id}", get_budget),
    ("PUT", "/api/v1/budgets/{budget_id}", replace_budget),
    ("PATCH", "/api/v1/budgets/{budget_id}", patch_budget),
    ("DELETE", "/api/v1/budgets/{budget_id}", delete_budget),
    ("GET", "/api/v1/budgets/{budget_id}/status", budget_status),
    ("POST", "/api/v1/budgets/{budget_id}/check-constraints", check_constraints),
    ("GET", "/api/v1/budgets/{budget_id}/overrides", list_overrides),
    ("POST", "/api/v1/budgets/{budget_id}/overrides", grant_override),
    ("DELETE", "/api/v1/budgets/{budget_id}/overrides/{override_id}", revoke_override),
    ("GET", "/api/v1/budgets/{budget_id}/alerts", list_alerts),
    ("POST", "/api/v1/budgets/{budget_id}/alerts/{threshold}/acknowledge", acknowledge),
    ("GET", "/api/v1/budgets/{budget_id}/audit", audit),
]


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, current_definitions(handler))
