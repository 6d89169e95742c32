"""Spend against one budget: usage recorded by other systems, the usage list and summary, reports.

``POST /api/v1/budgets/{id}/usage``          a usage record (DESIGN §3.6) charged exactly, admin only;
                                             idempotent on ``Idempotency-Key`` or ``metadata.requestId``:
                                             the same record again is a duplicate (200, nothing
                                             charged), another record under a used key a 409
``GET  /api/v1/budgets/{id}/usage``          ledger entries charged to the budget, newest first
``GET  /api/v1/budgets/{id}/usage/summary``  totals by source and by model
``GET  /api/v1/budgets/{id}/reports``        ``?timeRange=&groupBy=day|week|model|user|team|project|key|source``

Everything is read from the ledger (``LEDGER``: the PostgreSQL ledger when ``store.ledger_url`` is
set, else the local SQLite one; in Redis mode this replica's mirror of the shared ledger stream,
a fraction of a second behind); the SQL is in ``ledger/budget_usage.py``.  An entry belongs to a budget when its
``metadata.budgets`` names it; ``timeRange=current``/``previous`` select by the period the entry
was charged to, other ranges by the entry's timestamp.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from costproxy.budgets.book import BudgetAccounts, usage_entry, usage_fingerprint
from costproxy.budgets.codec import iso, usage_from_json, usd
from costproxy.budgets.model import BudgetSpec, window_at
from costproxy.budgets.reports import GROUPS, RangeInvalid, Row, TimeRange, report, time_range, totals
from costproxy.errors import IdempotencyKeyReused, InvalidRequest
from costproxy.http.budgets_api import budget_for, current_definitions, status_json, store_errors
from costproxy.http.keys_api import int_param, json_body, require_admin
from costproxy.http.state import LEDGER, REQUEST_ID
from costproxy.ledger.budget_usage import BUCKET, budget_entries, budget_sums
from costproxy.ledger.entry import LedgerEntry
from costproxy.wire import query_value


async def record_usage(request: web.Request) -> web.Response:
    require_admin(request)
    accounts, spec = budget_for(request)
    now = int(accounts.budgets.clock() * 1000)
    record = usage_from_json(await json_body(request), now_ms=now)  # source: one of codec.USAGE_SOURCES
    key, param = idempotency_key(request, record.request_id)
    entry = usage_entry(record, spec, request[REQUEST_ID])
    try:
        with store_errors():
            recorded = await accounts.record_usage(spec.id, record.amount_nanos, entry, idempotency_key=key,
                                                   fingerprint=usage_fingerprint(spec.id, record.amount_nanos, record))
    except IdempotencyKeyReused as exc:  # param: what to change, the header or the requestId standing in for it
        where = "" if param == "Idempotency-Key" else f"no Idempotency-Key header was sent, so {param} is the key: "
        raise IdempotencyKeyReused(where + exc.message, param=param, details=exc.details) from None
    status_body = await status_json(request, recorded.status)
    if recorded.duplicate:
        return web.json_response({"budgetId": spec.id, "duplicate": True, "idempotencyKey": key,
                                  "status": status_body})
    usage = {**usage_json(entry), "periods": {spec.id: recorded.status.window.key}}
    return web.json_response({"budgetId": spec.id, "duplicate": False, "usage": usage, "idempotencyKey": key,
                              "status": status_body}, status=201)


def idempotency_key(request: web.Request, request_id: str | None) -> tuple[str | None, str]:
    """``Idempotency-Key`` header, else ``metadata.requestId``, and which of the two it is (the
    ``param`` of an error about it): claimed by the accounts together with the charge (never through
    the alert manager), so it holds with alerts disabled too.  The same key with another record
    (``book.usage_fingerprint`` differs) is refused with 409 ``idempotency_key_reused``."""
    sent = request.headers.get("idempotency-key")
    header = None if sent is None else sent.strip()
    if header == "":  # sent empty: taken for "no key", every retry would be charged again
        raise InvalidRequest("the Idempotency-Key header is empty: send a key, or no header", param="Idempotency-Key")
    key, param = (header, "Idempotency-Key") if header else (request_id, "metadata.requestId")
    if key is not None and (len(key) > 256 or not key.isprintable()):
        raise InvalidRequest("an idempotency key must be at most 256 printable characters", param=param)
    return key, param


def usage_json(entry: LedgerEntry, seq: int | None = None) -> dict[str, Any]:
    """A ledger entry in the usage record shape of DESIGN §3.6 (plus what the proxy knows)."""
    meta = entry.metadata
    return {
        "id": seq, "amount": usd(entry.cost_nanos), "currency": "USD", "timestamp": iso(entry.ts_ms),
        "source": entry.source, "description": meta.get("description", ""),
        "metadata": {"requestId": entry.request_id, "modelId": entry.served_model, "userId": entry.user,
                     "teamId": entry.team, "projectId": entry.project, "tags": meta.get("tags", [])},
        "endpoint": entry.endpoint, "status": entry.status, "keyId": entry.key_id,
        "promptTokens": entry.prompt_tokens, "completionTokens": entry.completion_tokens,
        "usageReported": entry.usage_reported, "periods": meta.get("budgets", {}),
    }


def _span(request: web.Request, accounts: BudgetAccounts, spec: BudgetSpec, default: str) -> TimeRange:
    now = int(accounts.budgets.clock() * 1000)
    try:
        return time_range(query_value(request.query, "timeRange") or default, spec, window_at(spec, now), now)
    except RangeInvalid as exc:
        raise InvalidRequest(str(exc), param="timeRange") from None


async def list_usage(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    span = _span(request, accounts, spec, "all")
    limit = int_param(request, "limit", 100, 1, 1000)
    found = await budget_entries(request.app[LEDGER], spec.id, span, source=request.query.get("source"),
                                 limit=limit, offset=int_param(request, "offset", 0, 0, 10**12))
    return web.json_response({"budgetId": spec.id, "timeRange": span.to_json(),
                              "data": [usage_json(entry, seq) for seq, entry in found]})


async def _grouped(request: web.Request, spec: BudgetSpec, span: TimeRange, group: str, *,
                   known_only: bool = False) -> list[Row]:
    return await budget_sums(request.app[LEDGER], spec.id, span, group, known_only=known_only)


def _sums_json(rows: list[Row], name: str) -> list[dict[str, Any]]:
    return [{name: r.key, "amount": usd(r.amount_nanos), "requests": r.requests} for r in rows]


async def usage_summary(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    span = _span(request, accounts, spec, "current")
    sources = await _grouped(request, spec, span, "source")
    models = await _grouped(request, spec, span, "served_model")
    status = await accounts.status(spec.id)
    return web.json_response({
        "budgetId": spec.id, "currency": spec.currency, "timeRange": span.to_json(), "totals": totals(sources),
        "bySource": _sums_json(sources, "source"), "byModel": _sums_json(models, "model"),
        "limit": usd(status.limit_nanos), "currentAmount": usd(status.spent_nanos),
        "remaining": usd(status.remaining_nanos), "status": status.status,
    })


async def reports(request: web.Request) -> web.Response:
    accounts, spec = budget_for(request)
    group = query_value(request.query, "groupBy") or "day"
    if group not in GROUPS:
        raise InvalidRequest(f"'groupBy' must be one of {', '.join(GROUPS)}", param="groupBy")
    span = _span(request, accounts, spec, "current")
    series = await _grouped(request, spec, span, BUCKET)
    column = GROUPS[group]
    grouped = series if column is None else await _grouped(request, spec, span, column)
    spenders = await _grouped(request, spec, span, "user", known_only=True)
    models = await _grouped(request, spec, span, "served_model")
    return web.json_response(report(spec, span, group, grouped, series, spenders, models))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/budgets/{budget_id}/usage", current_definitions(record_usage))
    app.router.add_get("/api/v1/budgets/{budget_id}/usage", current_definitions(list_usage))
    app.router.add_get("/api/v1/budgets/{budget_id}/usage/summary", current_definitions(usage_summary))
    app.router.add_get("/api/v1/budgets/{budget_id}/reports", current_definitions(reports))
