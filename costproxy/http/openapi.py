"""The OpenAPI 3.1 document of the ``/api/v1`` integration API, served at ``GET /openapi.json``.

Built once from plain data (no I/O).  Money is a decimal string in USD everywhere (``Money``);
requests accept a decimal string or a JSON number and are converted exactly to nano-USD.
Authentication: ``Authorization: Bearer <admin token>`` for everything, or a read-only token
(``cpro-…``) for the reads marked ``x-costproxy-read-only: true``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from aiohttp import web

from costproxy.alerts.webhooks import EVENT_TYPES

JSON = "application/json"
Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] = (), **props: Schema) -> Schema:
    schema: Schema = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def listing(items: Schema) -> Schema:
    return obj(("data",), data=arr(items))


S: Schema = {"type": "string"}
N: Schema = {"type": ["string", "null"]}
INT: Schema = {"type": "integer"}
B: Schema = {"type": "boolean"}
NUM: Schema = {"type": "number"}
TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
MONEY = ref("Money")
LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 1000}
OFFSET: Schema = {"type": "integer", "minimum": 0, "maximum": 10**12}
HOURS: Schema = {"type": "number", "minimum": 0, "maximum": 87_840}
IDEMPOTENCY_KEY: Schema = {"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 256},
                           "description": "a second record with this key within 7 days charges nothing"}
SCOPE: Schema = {"type": "string", "enum": ["organization", "team", "project", "user", "key"]}


def _schemas() -> dict[str, Schema]:
    action: Schema = {"oneOf": [{"type": "string", "enum": ["notify", "auto-downgrade", "require-approval",
                                                             "block-all"]},
                                obj(("type",), type={"const": "restrict-models"}, tiers=arr(S), models=arr(S),
                                    maxPricePerMTok=S)]}
    alert_def = obj(("threshold",), threshold=INT, actions=arr(action), notificationChannels=arr(S), message=N)
    active_alert = obj(threshold=INT, triggeredAt=TIME, actions=arr(action), acknowledged=B, acknowledgedBy=N,
                       acknowledgedAt=TIME, note=N)
    restrictions = obj(downgrading=B, allowedTiers={"type": ["array", "null"], "items": S},
                       restrictedModels={"type": ["array", "null"], "items": S}, maxPricePerMTok=N,
                       maxCostPerRequest=N, blocked=B, requiresApproval=B)
    return {
        "Money": {"type": "string", "pattern": r"^-?\d+(\.\d{1,9})?$",
                  "description": "USD as a decimal string (input: string or number, at most 1000000)",
                  "examples": ["12.5", "0.000150"]},
        "Error": obj(("error",), error=obj(("message", "type", "code"), message=S, type=S, param=N, code=S)),
        "Budget": obj(
            ("scopeType", "scopeId", "amount"), id=S, name=S, description=S, scopeType=SCOPE, scopeId=S,
            organizationId=N, amount=MONEY, currency={"const": "USD"},
            period={"enum": ["daily", "weekly", "monthly", "quarterly", "annual", "total"]}, timezone=S,
            startDate=N, endDate=N, recurring=B, alerts=arr(alert_def),
            onExhausted={"enum": ["block", "downgrade", "notify"]}, hardLimit=B, tags=arr(S), parentBudgetId=N,
            createdAt={**TIME, "readOnly": True}, updatedAt={**TIME, "readOnly": True},
            createdBy={**N, "readOnly": True}, source={"enum": ["config", "api"], "readOnly": True},
            readOnly={**B, "readOnly": True}),
        "CostRestrictions": restrictions,
        "BudgetStatus": obj(
            budgetId=S, name=S, scopeType=SCOPE, scopeId=S, period=S, periodKey=S, periodStart=TIME,
            periodEnd=TIME, currentAmount=MONEY, reserved=MONEY, limit=MONEY, baseLimit=MONEY, currency=S,
            percentUsed=NUM, remaining=MONEY, daysRemaining={"type": ["number", "null"]}, burnRate=MONEY,
            burnRatePeriod={"const": "day"}, projectedTotal={"anyOf": [MONEY, {"type": "null"}]},
            status={"enum": ["normal", "warning", "critical", "exhausted"]}, hardLimit=B, onExhausted=S,
            activeAlerts=arr(active_alert), costRestrictions=ref("CostRestrictions"),
            activeOverrides=arr(ref("Override")), lastUpdated=TIME, stale=B, staleSeconds=NUM),
        "UsageRecord": obj(("amount",), amount=MONEY, currency={"const": "USD"}, timestamp=TIME,
                           source={"enum": ["relaycore", "auterity", "manual"]}, description=S,
                           metadata=obj(requestId=S, modelId=S, userId=S, teamId=S, projectId=S, tags=arr(S))),
        "Override": obj(("type", "reason"), id=S, budgetId=S, type={"enum": ["increase", "approval"]},
                        amount={"anyOf": [MONEY, {"type": "null"}]}, startsAt=TIME, expiresAt=TIME,
                        durationMinutes={"type": "number", "writeOnly": True}, reason=S, createdBy=N,
                        createdAt=TIME, revokedAt=TIME, revokedBy=N, active=B),
    }


def _alert_schemas() -> dict[str, Schema]:
    return {
        "Subscription": obj(("url",), id=S, url={"type": "string", "format": "uri"},
                            events=arr({"enum": list(EVENT_TYPES)}), format={"enum": ["json", "slack"]},
                            budgetIds=arr(S), scopes=arr(obj(scopeType=SCOPE, scopeId=S)), enabled=B,
                            description=S, secret={"type": "string",
                                                   "description": "whole at creation and rotation, else masked"},
                            createdAt=TIME, updatedAt=TIME, createdBy=N),
        "Delivery": obj(id=S, subscriptionId=S, eventId=S, eventType=S,
                        status={"enum": ["pending", "delivered", "failed"]}, attemptCount=INT,
                        lastStatusCode={"type": ["integer", "null"]}, lastError=N, createdAt=TIME,
                        nextAttemptAt=TIME, finishedAt=TIME, event=ref("Event"),
                        attempts=arr(obj(at=TIME, statusCode={"type": ["integer", "null"]}, error=N, durationMs=INT))),
        "Event": obj(("id", "type", "source", "timestamp", "payload"), id=S, type={"enum": list(EVENT_TYPES)},
                     source=S, timestamp=TIME, correlationId=N, payload={"type": "object"}),
        "Token": obj(id=S, prefix=S, name=S, role={"const": "read-only"}, scopes=arr(obj(scopeType=SCOPE, scopeId=S)),
                     createdAt=TIME, createdBy=N, expiresAt=TIME, revokedAt=TIME, revokedBy=N, active=B,
                     token={"type": "string", "description": "only in the creation response"}),
        "Key": obj(id=S, prefix=S, name=S, user=N, team=N, org=N, project=N, createdAt=NUM,
                   revokedAt={"type": ["number", "null"]}, expiresAt={"type": ["number", "null"]}, active=B,
                   lastUsedAt={"type": ["number", "null"], "description": "unix seconds, from the ledger"},
                   requests={"type": "integer", "description": "requests in the ledger"},
                   key={"type": "string", "description": "only in the creation response"}),
    }


def op(summary: str, response: Schema | None = None, *, body: Schema | None = None, status: int = 200,
       params: tuple[Schema, ...] = (), read_only: bool = True, tag: str = "budgets") -> Schema:
    operation: Schema = {"summary": summary, "tags": [tag], "x-costproxy-read-only": read_only,
                         "responses": {str(status): {"description": "OK", "content": {
                             JSON: {"schema": response or {"type": "object"}}}},
                             "default": {"description": "error", "content": {JSON: {"schema": ref("Error")}}}}}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    if params:
        operation["parameters"] = list(params)
    return operation


def query(name: str, schema: Schema = S, description: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": S}


def _budget_paths() -> dict[str, Schema]:
    bid = (path("budgetId"),)
    return {
        "/api/v1/budgets": {
            "get": op("List budgets", listing(ref("Budget")), params=(query("scopeType", SCOPE), query("scopeId"),
                                                                     query("tag"), query("withStatus", B))),
            "post": op("Create a budget", ref("Budget"), body=ref("Budget"), status=201, read_only=False)},
        "/api/v1/budgets/status/{scopeType}/{scopeId}": {"get": op(
            "Status of every budget of a scope", obj(scopeType=S, scopeId=S, status=S, budgets=arr(ref("BudgetStatus")),
                                                      costRestrictions=ref("CostRestrictions"), lastUpdated=TIME,
                                                      stale=B), params=(path("scopeType"), path("scopeId")))},
        "/api/v1/budgets/{budgetId}": {
            "get": op("A budget", ref("Budget"), params=bid),
            "put": op("Replace a budget", ref("Budget"), body=ref("Budget"), params=bid, read_only=False),
            "patch": op("Update some fields of a budget", ref("Budget"), body=ref("Budget"), params=bid,
                        read_only=False),
            "delete": op("Delete a budget", obj(id=S, deleted=B, budget=ref("Budget")), params=bid, read_only=False)},
        "/api/v1/budgets/{budgetId}/status": {"get": op("Budget status", ref("BudgetStatus"), params=bid)},
    }


def _budget_spend_paths() -> dict[str, Schema]:
    bid = (path("budgetId"),)
    time_range = query("timeRange", S, "current (default), previous, all, <n>h, <n>d or <start>/<end>")
    return {
        "/api/v1/budgets/{budgetId}/usage": {
            "get": op("Usage charged to the budget", listing(ref("UsageRecord")),
                      params=(*bid, time_range, query("source"), query("limit", LIMIT), query("offset", OFFSET))),
            "post": op("Record usage from another system", obj(budgetId=S, duplicate=B, usage=ref("UsageRecord"),
                                                                 status=ref("BudgetStatus")),
                       body=ref("UsageRecord"), status=201, params=(*bid, IDEMPOTENCY_KEY), read_only=False)},
        "/api/v1/budgets/{budgetId}/usage/summary": {"get": op(
            "Usage totals by source and model", obj(totals={"type": "object"}, bySource=arr({"type": "object"}),
                                                    byModel=arr({"type": "object"})), params=(*bid, time_range))},
        "/api/v1/budgets/{budgetId}/check-constraints": {"post": op(
            "Can a request of this cost proceed?", obj(("canProceed",), canProceed=B, reason=S,
                                                       suggestedActions=arr(S), remaining=MONEY, status=S),
            body=obj(("estimatedCost",), estimatedCost=MONEY), params=bid)},
        "/api/v1/budgets/{budgetId}/reports": {"get": op(
            "Spend report", obj(totals={"type": "object"}, data=arr({"type": "object"}),
                                topSpenders=arr({"type": "object"}), modelUsage=arr({"type": "object"})),
            params=(*bid, time_range, query("groupBy", {"enum": ["day", "week", "model", "user", "team",
                                                                  "project", "key", "source"]})))},
        "/api/v1/budgets/{budgetId}/overrides": {
            "get": op("Overrides (temporary increases, approvals)", listing(ref("Override")), params=bid),
            "post": op("Grant an override", ref("Override"), body=ref("Override"), status=201, params=bid,
                       read_only=False)},
        "/api/v1/budgets/{budgetId}/overrides/{overrideId}": {"delete": op(
            "Revoke an override", ref("Override"), params=(*bid, path("overrideId")), read_only=False)},
        "/api/v1/budgets/{budgetId}/alerts": {"get": op("Active alerts of the current period", listing(
            {"type": "object"}), params=bid)},
        "/api/v1/budgets/{budgetId}/alerts/{threshold}/acknowledge": {"post": op(
            "Acknowledge a fired threshold", {"type": "object"}, body=obj(note=S),
            params=(*bid, path("threshold")), read_only=False)},
        "/api/v1/budgets/{budgetId}/audit": {"get": op("Change history", listing({"type": "object"}), params=bid)},
    }


def _webhook_paths() -> dict[str, Schema]:
    wid, did = path("webhookId"), path("deliveryId")

    def wop(summary: str, response: Schema | None = None, **kw: Any) -> Schema:
        return op(summary, response, tag="webhooks", read_only=False, **kw)

    return {
        "/api/v1/webhooks": {"get": wop("List subscriptions", listing(ref("Subscription"))),
                             "post": wop("Subscribe", ref("Subscription"), body=ref("Subscription"), status=201)},
        "/api/v1/webhooks/{webhookId}": {
            "get": wop("A subscription", ref("Subscription"), params=(wid,)),
            "patch": wop("Change a subscription", ref("Subscription"), body=ref("Subscription"), params=(wid,)),
            "delete": wop("Unsubscribe", obj(id=S, deleted=B), params=(wid,))},
        "/api/v1/webhooks/{webhookId}/rotate-secret": {"post": wop("New signing secret", ref("Subscription"),
                                                                  params=(wid,))},
        "/api/v1/webhooks/{webhookId}/test": {"post": wop("Send a test event", ref("Delivery"), status=202,
                                                         params=(wid,))},
        "/api/v1/webhooks/{webhookId}/deliveries": {"get": wop(
            "Delivery history", listing(ref("Delivery")), params=(wid, query("status"), query("limit", INT)))},
        "/api/v1/webhooks/{webhookId}/deliveries/{deliveryId}": {"get": wop("A delivery", ref("Delivery"),
                                                                           params=(wid, did))},
        "/api/v1/webhooks/{webhookId}/deliveries/{deliveryId}/redeliver": {"post": wop(
            "Send the event again", ref("Delivery"), status=202, params=(wid, did))},
        "/api/v1/events": {"get": op("Recent events", listing(ref("Event")),
                                     params=(query("type"), query("limit", INT)), tag="webhooks")},
        "/api/v1/tokens": {"get": op("List read-only tokens", listing(ref("Token")), tag="tokens", read_only=False),
                           "post": op("Create a read-only token", ref("Token"), status=201, tag="tokens",
                                      read_only=False, body=obj(name=S, scopes=arr(obj(scopeType=SCOPE, scopeId=S)),
                                                                expiresAt=INT, expiresInSeconds=INT))},
        "/api/v1/tokens/{tokenId}": {"get": op("A token", ref("Token"), params=(path("tokenId"),), tag="tokens",
                                               read_only=False),
                                     "delete": op("Revoke a token", ref("Token"), params=(path("tokenId"),),
                                                  tag="tokens", read_only=False)},
    }


def _other_paths() -> dict[str, Schema]:
    select_body = obj(requestId=S, content=obj(messages=arr({"type": "object"})),
                      metadata=obj(userId=S, teamId=S, organizationId=S, projectId=S, taskType=S,
                                   qualityRequirement=S, budgetPriority=S, tags=arr(S)),
                      constraints=obj(preferredModel=S, excludedModels=arr(S), maxCost=MONEY, minQuality=NUM,
                                      requiredCapabilities=arr(S)))
    return {
        "/api/v1/keys": {"get": op("List client keys", listing(ref("Key")), tag="keys"),
                         "post": op("Issue a client key (shown once)", ref("Key"), status=201, read_only=False,
                                    body=obj(name=S, user=S, team=S, org=S, project=S, expiresAt=NUM), tag="keys")},
        "/api/v1/keys/{keyId}": {"delete": op("Revoke a client key", ref("Key"), params=(path("keyId"),),
                                              read_only=False, tag="keys")},
        "/api/v1/usage": {"get": op("Recent ledger entries", listing({"type": "object"}),
                                    params=(query("limit", LIMIT),), tag="usage")},
        "/api/v1/usage/summary": {"get": op("Spend and savings grouped", obj(groupBy=S, data=arr({"type": "object"})),
                                            params=(query("groupBy"), query("hours", HOURS)), tag="usage")},
        "/api/v1/requests/{requestId}": {"get": op("Ledger entries of a request", listing({"type": "object"}),
                                                   params=(path("requestId"),), tag="usage")},
        "/api/v1/models/select": {"post": op("Select a model without calling it", obj(
            selectedModel=S, alternatives=arr({"type": "object"}), reasoning=arr(S), estimatedCost=MONEY,
            budgetImpact={"type": "object"}, qualityExpectation={"type": ["number", "null"]},
            fallbackChain=arr(S)), body=select_body, tag="models")},
        "/api/v1/models/estimate": {"post": op("Cost of a request on each model", listing({"type": "object"}),
                                               body={"type": "object"}, tag="models")},
        "/api/v1/models/capabilities": {"get": op("Models, capabilities and prices", listing({"type": "object"}),
                                                  tag="models")},
        "/api/v1/decisions/{decisionId}": {"get": op("Why a model was chosen", {"type": "object"},
                                                     params=(path("decisionId"),), tag="models")},
    }


def _console_paths() -> dict[str, Schema]:
    """The calls the web console reads (any client may)."""
    sums = obj(requests=INT, amount=MONEY, baseline=MONEY, saving=MONEY, savingPercent=NUM)
    span = (query("range", S, "<n>h or <n>d (default 7d; 30d for rules)"), query("from", TIME), query("to", TIME))
    filters = tuple(query(g, S, f"only this {g} ('(none)': requests without one)")
                    for g in ("team", "user", "project", "key", "model", "provider", "org"))
    spend = obj(groupBy=S, bucket={"enum": ["hour", "day", "week"]}, timezone=S, labels=arr(S),
                series=arr(obj(key=N, label=S, amounts=arr(MONEY))), rows=arr(sums), totals=sums)
    return {
        "/api/v1/analytics/overview": {"get": op(
            "Spend today and this month, saving, forecast, budgets at risk, alerts, refusals, auto share",
            obj(today=sums, period=sums, autoShare=arr({"type": "object"}), budgetsAtRisk=arr(ref("BudgetStatus")),
                recentAlerts=arr(ref("Event")), serverMs=NUM),
            params=(query("tz", S, "IANA time zone of 'today' and 'this month' (default UTC)"),), tag="analytics")},
        "/api/v1/analytics/spend": {"get": op(
            "Spend grouped by team, user, project, key, model or provider over time (JSON or CSV)", spend,
            params=(query("groupBy", {"enum": ["team", "user", "project", "key", "model", "provider", "org"]}),
                    *span, query("bucket", {"enum": ["auto", "hour", "day", "week"]}), query("tz"),
                    query("top", INT, "series drawn (the rest is '(other)')"),
                    query("format", {"enum": ["json", "csv"]}), *filters), tag="analytics")},
        "/api/v1/analytics/rules": {"get": op(
            "Spend and saving of the requests each applied steering rule touched",
            obj(data=arr(obj(ruleId=S, name=N, inForce=B, requests=INT, amount=MONEY, saving=MONEY)), noRule=sums),
            params=span, tag="analytics")},
        "/api/v1/rules": {"get": op(
            "The steering rule set in force, when it was loaded, and the last reload's validation errors",
            obj(digest=S, files=arr(S), loadedAt=TIME, valid=B, rules=arr({"type": "object"}),
                lastReload=obj(at=TIME, ok=B, errors=arr(obj(file=S, ruleId=S, field=S, message=S)))),
            tag="models")},
        "/api/v1/decisions": {"get": op(
            "Recent routing decisions, newest first, with what each saved", listing({"type": "object"}),
            params=(query("limit", INT),), tag="models")},
    }


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "costproxy integration API", "version": "1.0.0",
                 "description": "Budgets, usage, model selection, webhooks and tokens. Webhook deliveries are "
                                "signed: X-Costproxy-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "
                                "'<t>.<body>')>."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": {**_schemas(), **_alert_schemas()}},
        "paths": {**_other_paths(), **_budget_paths(), **_budget_spend_paths(), **_webhook_paths(),
                  **_console_paths()},
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve)
