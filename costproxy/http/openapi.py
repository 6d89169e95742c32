"""The OpenAPI 3.1 document of the ``/api/v1`` integration API, served at ``GET /openapi.json``.

Built once from plain data (no I/O); the schemas live in ``openapi_schemas``.  Money is a decimal
string in USD everywhere (``Money``); requests accept a decimal string or a JSON number and are
converted exactly to nano-USD.  Times are ISO 8601 UTC in responses; requests accept ISO 8601 or
unix seconds/milliseconds.  Keys are camelCase; snake_case spellings are accepted on input.
Authentication: ``Authorization: Bearer <admin token>`` for everything, or a read-only token
(``cpro-…``) for the reads marked ``x-costproxy-read-only: true``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from aiohttp import web

from costproxy.errors import InvalidRequest
from costproxy.http.openapi_schemas import (
    ANY_OBJECT,
    INT,
    MONEY,
    NINT,
    NTIME,
    NUM,
    SCOPE,
    SCOPE_INPUT,
    TIME_INPUT,
    B,
    N,
    S,
    Schema,
    arr,
    body,
    listing,
    ref,
    report_row,
    resp,
    schemas,
)

JSON = "application/json"
LIMIT: Schema = {"type": "integer", "minimum": 1, "maximum": 1000}
OFFSET: Schema = {"type": "integer", "minimum": 0, "maximum": 10**12}
HOURS: Schema = {"type": "number", "minimum": 0, "maximum": 87_840}
IDEMPOTENCY_KEY: Schema = {"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 256},
                           "description": "default: metadata.requestId. Within 7 days the same record sent again "
                                          "with this key charges nothing (200, duplicate); a different record "
                                          "(amount, source, timestamp, description or metadata) is refused (409)"}


PREFERRED: Schema = {
    "type": ["object", "null"], "properties": {"model": S, "selected": B, "code": N, "reason": N},
    "description": "with constraints.preferredModel: whether it was selected; when not (its provider has no key, "
                   "a policy or the budget rules it out), the model is what auto chooses and code/reason say why "
                   "(null without a preference)"}


def op(summary: str, response: Schema | None = None, *, request: Schema | None = None, status: int = 200,
       params: tuple[Schema, ...] = (), read_only: bool = True, tag: str = "budgets",
       also: dict[int, str] | None = None, refusals: dict[int, str] | None = None) -> Schema:
    """One operation; ``also``: more statuses answering the same schema, with what each means;
    ``refusals``: errors worth naming (an ``Error`` body, like every other error status)."""
    answer = {"content": {JSON: {"schema": response or ANY_OBJECT}}}
    responses: Schema = {str(status): {"description": "OK", **answer}}
    responses.update({str(code): {"description": meaning, **answer} for code, meaning in (also or {}).items()})
    responses.update({str(code): {"description": meaning, "content": {JSON: {"schema": ref("Error")}}}
                      for code, meaning in (refusals or {}).items()})
    responses["default"] = {"description": "error", "content": {JSON: {"schema": ref("Error")}}}
    operation: Schema = {"summary": summary, "tags": [tag], "x-costproxy-read-only": read_only,
                         "responses": responses}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": request}}}
    if params:
        operation["parameters"] = list(params)
    return operation


def query(name: str, schema: Schema = S, description: str = "") -> Schema:
    """A query parameter; its snake_case spelling is accepted too (``group_by``)."""
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def path(name: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": S}


def _budget_paths() -> dict[str, Schema]:
    bid = (path("budgetId"),)
    return {
        "/api/v1/budgets": {
            "get": op("List budgets", listing(ref("BudgetWithStatus")),
                      params=(query("scopeType", SCOPE_INPUT), query("scopeId"), query("tag"),
                              query("withStatus", B, "add each budget's status"))),
            "post": op("Create a budget", ref("Budget"), request=ref("BudgetInput"), status=201, read_only=False)},
        "/api/v1/budgets/status/{scopeType}/{scopeId}": {"get": op(
            "Status of every budget of a scope, the worst status, the restrictions in force", ref("ScopeStatus"),
            params=({**path("scopeType"), "schema": SCOPE_INPUT}, path("scopeId")))},
        "/api/v1/budgets/{budgetId}": {
            "get": op("A budget", ref("Budget"), params=bid),
            "put": op("Replace a budget", ref("Budget"), request=ref("BudgetInput"), params=bid, read_only=False),
            "patch": op("Update some fields of a budget", ref("Budget"), request=ref("BudgetInput"), params=bid,
                        read_only=False),
            "delete": op("Delete a budget", resp(id=S, deleted=B, budget=ref("Budget")), params=bid,
                         read_only=False)},
        "/api/v1/budgets/{budgetId}/status": {"get": op("Budget status", ref("BudgetStatus"), params=bid)},
        "/api/v1/budgets/{budgetId}/check-constraints": {"post": op(
            "Can a request of this cost proceed?", resp(
                canProceed=B, reason=S, suggestedActions=arr(S), budgetId=S, estimatedCost=MONEY, currency=S,
                status=S, remaining=MONEY, limit=MONEY, currentAmount=MONEY, currentSpend=MONEY, hardLimit=B,
                blockNonEssential=B, stale=B),
            request=body({"estimatedCost": ref("Money")}, ("estimatedCost",)), params=bid)},
        "/api/v1/budgets/{budgetId}/overrides": {
            "get": op("Overrides (temporary increases, approvals)", listing(ref("Override")), params=bid),
            "post": op("Grant an override", ref("Override"), request=ref("OverrideInput"), status=201, params=bid,
                       read_only=False)},
        "/api/v1/budgets/{budgetId}/overrides/{overrideId}": {"delete": op(
            "Revoke an override", ref("Override"), params=(*bid, path("overrideId")), read_only=False)},
        "/api/v1/budgets/{budgetId}/alerts": {"get": op(
            "Active alerts of the current period", resp(budgetId=S, periodKey=S, data=arr(ref("ActiveAlert"))),
            params=bid)},
        "/api/v1/budgets/{budgetId}/alerts/{threshold}/acknowledge": {"post": op(
            "Acknowledge a fired threshold", resp(budgetId=S, periodKey=S, threshold=INT, acknowledged=B,
                                                  acknowledgedBy=N, acknowledgedAt=NTIME, note=N),
            request=body({"note": S}), params=(*bid, path("threshold")), read_only=False)},
        "/api/v1/budgets/{budgetId}/audit": {"get": op(
            "Change history", listing(resp(timestamp=NTIME, actor=N, action=S, budgetId=S, detail=ANY_OBJECT)),
            params=(*bid, query("limit", LIMIT)))},
    }


def _budget_spend_paths() -> dict[str, Schema]:
    bid = (path("budgetId"),)
    time_range = query("timeRange", S, "current (default), previous, all, <n>h, <n>d or <start>/<end> (ISO 8601 "
                                       "or unix seconds/milliseconds)")
    spent = {"amount": MONEY, "requests": INT}
    return {
        "/api/v1/budgets/{budgetId}/usage": {
            "get": op("Usage charged to the budget, newest first",
                      resp(budgetId=S, timeRange=ref("TimeRange"), data=arr(ref("UsageRecord"))),
                      params=(*bid, time_range, query("source"), query("limit", LIMIT), query("offset", OFFSET))),
            "post": op("Record usage from another system", resp(
                ("usage", "idempotencyKey"), budgetId=S, duplicate=B, usage=ref("UsageRecord"),
                idempotencyKey=N, status=ref("BudgetStatus")), request=ref("UsageInput"), status=201,
                params=(*bid, IDEMPOTENCY_KEY), read_only=False,
                also={200: "a duplicate (the same record under the same idempotency key within 7 days): "
                           "nothing charged"},
                refusals={409: "idempotency_key_reused: the idempotency key was used within 7 days for a "
                               "different record; nothing charged, this one ledgered as refused"})},
        "/api/v1/budgets/{budgetId}/usage/summary": {"get": op(
            "Usage totals by source and model", resp(
                budgetId=S, currency=S, timeRange=ref("TimeRange"), totals=ref("Totals"),
                bySource=arr(resp(source=S, **spent)), byModel=arr(resp(model=N, **spent)), limit=MONEY,
                currentAmount=MONEY, remaining=MONEY, status=S), params=(*bid, time_range))},
        "/api/v1/budgets/{budgetId}/reports": {"get": op(
            "Spend report", resp(budgetId=S, currency=S, timeRange=ref("TimeRange"), groupBy=S, totals=ref("Totals"),
                                 limit=MONEY, data=arr(report_row("key")), topSpenders=arr(report_row("userId")),
                                 modelUsage=arr(report_row("model"))),
            params=(*bid, time_range, query("groupBy", {"enum": ["day", "week", "model", "user", "team",
                                                                  "project", "key", "source"]})))},
    }


def _webhook_paths() -> dict[str, Schema]:
    wid, did = path("webhookId"), path("deliveryId")

    def wop(summary: str, response: Schema | None = None, **kw: Any) -> Schema:
        return op(summary, response, tag="webhooks", read_only=False, **kw)

    events_enum = {"type": "array", "items": S}
    return {
        "/api/v1/webhooks": {
            "get": wop("List subscriptions", listing(ref("Subscription"), eventTypes=events_enum)),
            "post": wop("Subscribe", ref("Subscription"), request=ref("SubscriptionInput"), status=201)},
        "/api/v1/webhooks/{webhookId}": {
            "get": wop("A subscription", ref("Subscription"), params=(wid,)),
            "patch": wop("Change a subscription", ref("Subscription"), request=ref("SubscriptionInput"),
                         params=(wid,)),
            "delete": wop("Unsubscribe", resp(id=S, deleted=B), params=(wid,))},
        "/api/v1/webhooks/{webhookId}/rotate-secret": {"post": wop("New signing secret", ref("Subscription"),
                                                                  params=(wid,))},
        "/api/v1/webhooks/{webhookId}/test": {"post": wop("Send a test event", ref("Delivery"), status=202,
                                                         params=(wid,))},
        "/api/v1/webhooks/{webhookId}/deliveries": {"get": wop(
            "Delivery history, newest first", resp(subscriptionId=S, data=arr(ref("Delivery"))),
            params=(wid, query("status", {"enum": ["pending", "delivered", "failed"]}), query("limit", LIMIT)))},
        "/api/v1/webhooks/{webhookId}/deliveries/{deliveryId}": {"get": wop("A delivery with every attempt",
                                                                           ref("Delivery"), params=(wid, did))},
        "/api/v1/webhooks/{webhookId}/deliveries/{deliveryId}/redeliver": {"post": wop(
            "Send the same event again (a new delivery)", ref("Delivery"), status=202, params=(wid, did))},
        "/api/v1/events": {"get": op("Recent events", listing(ref("Event")),
                                     params=(query("type"), query("limit", LIMIT)), tag="webhooks")},
        "/api/v1/tokens": {"get": op("List read-only tokens", listing(ref("Token")), tag="tokens", read_only=False),
                           "post": op("Create a read-only token (shown once)", ref("Token"), status=201,
                                      tag="tokens", read_only=False, request=ref("TokenInput"))},
        "/api/v1/tokens/{tokenId}": {"get": op("A token", ref("Token"), params=(path("tokenId"),), tag="tokens",
                                               read_only=False),
                                     "delete": op("Revoke a token", ref("Token"), params=(path("tokenId"),),
                                                  tag="tokens", read_only=False)},
    }


def _other_paths() -> dict[str, Schema]:
    select_body = body({
        "requestId": S, "content": body({"messages": arr(ANY_OBJECT)}) | {"additionalProperties": True},
        "metadata": body({"userId": S, "teamId": S, "organizationId": S, "projectId": S, "taskType": S,
                          "qualityRequirement": S, "budgetPriority": S, "tags": arr(S)},
                         aliases={"org": "organizationId", "organization": "organizationId", "user": "userId",
                                  "team": "teamId", "project": "projectId"}),
        "constraints": body({"preferredModel": S, "excludedModels": arr(S), "maxCost": ref("Money"),
                             "minQuality": NUM, "requiredCapabilities": arr(S)})})
    cap = {"type": "integer", "minimum": 1, "description": (
        "the chat request's output cap: the worst case (maxOutputTokens) is priced for at most this many "
        "output tokens, and outputTokens is held to it")}
    chat_fields = {"messages": arr(ANY_OBJECT), "tools": arr(ANY_OBJECT), "functions": arr(ANY_OBJECT),
                   "tool_choice": {"type": ["string", "object"]}, "function_call": {"type": ["string", "object"]},
                   "response_format": ANY_OBJECT, "prediction": ANY_OBJECT, "web_search_options": ANY_OBJECT,
                   "max_tokens": cap, "max_completion_tokens": cap}
    estimate_body = body({
        "models": arr(S) | {"description": "the models to price (default: every chat model)"},
        "outputTokens": {"type": "integer", "minimum": 0, "description": (
            "the output expected, priced in estimatedCost (default 0; at most the output cap)")},
        "content": body({"messages": arr(ANY_OBJECT), "max_tokens": cap, "max_completion_tokens": cap})
        | {"additionalProperties": True, "description": (
            "the chat request to price, as it would be sent; without it, its fields below go beside "
            "models and outputTokens, and any other key is a 400 naming it")},
        **chat_fields})
    impact = resp(("remainingBefore", "remainingAfter", "percentOfRemaining"), estimatedCost=MONEY,
                  worstCaseCost=MONEY, remainingBefore=MONEY, remainingAfter=MONEY,
                  percentOfRemaining={"type": ["number", "null"]})
    alternative = resp(model=S, expectedQuality=NUM, estimatedCost=MONEY, eligible=B, reasonExcluded=N)
    pricing = resp(currency=S, per=S, input=S, cachedInput=N, output=S, source=S, asOf=N)
    return {
        "/api/v1/keys": {"get": op("List client keys", listing(ref("Key")), tag="keys"),
                         "post": op("Issue a client key (shown once)", ref("Key"), status=201, read_only=False,
                                    request=ref("KeyInput"), tag="keys")},
        "/api/v1/keys/{keyId}": {"delete": op("Revoke a client key", ref("Key"), params=(path("keyId"),),
                                              read_only=False, tag="keys")},
        "/api/v1/usage": {"get": op("Latest ledger entries, newest first", listing(ref("LedgerEntry")),
                                    params=(query("limit", LIMIT),), tag="usage")},
        "/api/v1/usage/summary": {"get": op(
            "Spend and savings grouped", resp(groupBy=S, currency=S, data=arr(ref("UsageSummaryRow"))),
            params=(query("groupBy", {"enum": ["model", "team", "user", "key", "project", "organization", "org"]}),
                    query("hours", HOURS)), tag="usage")},
        "/api/v1/requests/{requestId}": {"get": op("Ledger entries of a request", listing(ref("LedgerEntry")),
                                                   params=(path("requestId"),), tag="usage")},
        "/api/v1/models/select": {"post": op("Select a model without calling it", resp(
            requestId=S, selectedModel=S, provider=S, decisionId=N, alternatives=arr(alternative), reasoning=arr(S),
            rulesFired=arr(ref("FiredRule")), taskType=S, difficulty=NUM, inputTokens=INT, expectedOutputTokens=INT,
            estimatedCost=MONEY, currency=S, budgetImpact=impact, qualityExpectation={"type": ["number", "null"]},
            qualityTarget={"type": ["number", "null"]}, mixShare={"type": ["number", "null"]}, fallbackChain=arr(S),
            preferredModel=PREFERRED),
            request=select_body, tag="models",
            refusals={404: "a scope-limited read-only token asked for a principal outside its scopes (metadata "
                           "userId, teamId, organizationId or projectId; param names it)"})},
        "/api/v1/models/estimate": {"post": op(
            "Cost of a request on each model", listing(resp(model=S, inputTokens=INT, outputTokens=INT,
                                                            maxOutputTokens=INT, estimatedCost=MONEY,
                                                            worstCaseCost=MONEY), currency=S),
            request=estimate_body, tag="models")},
        "/api/v1/models/capabilities": {"get": op("Models, capabilities and prices", listing(resp(
            model=S, provider=S, kind=S, tier=S, servable=B, notServableReason=N, contextWindow=INT,
            maxOutputTokens=INT, capabilities=arr(S),
            pricing=pricing)), tag="models")},
        "/api/v1/decisions/{decisionId}": {"get": op("Why a model was chosen", ref("Decision"),
                                                     params=(path("decisionId"),), tag="models")},
    }


def _console_paths() -> dict[str, Schema]:
    """The calls the web console reads (any client may)."""
    sums = ref("Sums")
    sums_props = {"requests": INT, "amount": MONEY, "baseline": MONEY, "saving": MONEY, "savingPercent": NUM}
    tokens = {"promptTokens": INT, "completionTokens": INT}
    span = (query("range", S, "<n>h or <n>d (default 7d; 30d for rules)"),
            query("from", TIME_INPUT, "start (ISO 8601 or unix seconds/milliseconds)"), query("to", TIME_INPUT))
    filters = tuple(query(g, S, f"only this {g} ('(none)': requests without one)")
                    for g in ("team", "user", "project", "key", "model", "provider", "org", "organization"))
    spend = resp(
        groupBy=S, labels=arr(S), series=arr(resp(("other",), key=N, label=S, amounts=arr(MONEY), other=INT)),
        rows=arr(resp(key=N, label=S, **sums_props, **tokens, percent=NUM)), totals=resp(**sums_props, **tokens),
        currency=S, timezone=S, bucket={"enum": ["hour", "day", "week"]}, range=S,
        **{"from": NTIME, "to": NTIME}, filters={"type": "object", "additionalProperties": S})
    overview = resp(
        currency=S, timezone=S, generatedAt=NTIME, today=resp(**sums_props, **{"from": NTIME}, refused=INT),
        period=resp(**sums_props, label=S, **{"from": NTIME, "to": NTIME}, refused=INT, forecast=MONEY),
        autoShare=arr(resp(model=S, requests=INT, amount=MONEY, percent=NUM)),
        budgetsAtRisk=arr(ref("BudgetStatus")), recentAlerts=arr(ref("Event")), serverMs=NUM)
    reload = {"anyOf": [resp(at=NTIME, ok=B, summary=S, errors=arr(resp(file=N, ruleId=N, field=N, message=S))),
                        {"type": "null"}]}
    rule = resp(id=S, name=S, description=S, priority=INT, enabled=B, mode=S, rollout=NUM, file=S, operator=S,
                conditions=arr(resp(field=S, operator=S, value={})), actions=arr(resp(type=S, params=ANY_OBJECT)),
                **{"continue": B})
    return {
        "/api/v1/analytics/overview": {"get": op(
            "Spend today and this month, saving, forecast, budgets at risk, alerts, refusals, auto share", overview,
            params=(query("tz", S, "IANA time zone of 'today' and 'this month' (default UTC)"),), tag="analytics")},
        "/api/v1/analytics/spend": {"get": op(
            "Spend grouped by team, user, project, key, model or provider over time (JSON or CSV)", spend,
            params=(query("groupBy", {"enum": ["team", "user", "project", "key", "model", "provider", "org",
                                               "organization"]}),
                    *span, query("bucket", {"enum": ["auto", "hour", "day", "week"]}), query("tz"),
                    query("top", INT, "series drawn (the rest is '(other)')"),
                    query("format", {"enum": ["json", "csv"]}), *filters), tag="analytics")},
        "/api/v1/analytics/rules": {"get": op(
            "Spend and saving of the requests each applied steering rule touched",
            resp(currency=S, range=S, **{"from": NTIME, "to": NTIME},
                 data=arr(resp(ruleId=S, name=N, inForce=B, **sums_props)), noRule=sums),
            params=span, tag="analytics")},
        "/api/v1/rules": {"get": op(
            "The steering rule set in force, when it was loaded, and the last reload's validation errors; "
            "the same for the quality profiles file",
            resp(directory=N, digest=S, files=arr(S), loadedAt=NTIME, valid=B, lastReload=reload, rules=arr(rule),
                 quality=resp(file=N, source=S, digest=S, loadedAt=NTIME, valid=B, lastReload={"anyOf": [
                     resp(at=NTIME, ok=B, summary=S, error=N), {"type": "null"}]})),
            tag="models")},
        "/api/v1/decisions": {"get": op(
            "Recent routing decisions, newest first, with what each saved",
            listing(ref("DecisionSummary"), kept=INT), params=(query("limit", INT),), tag="models")},
    }


def _limit_paths() -> dict[str, Schema]:
    """Rate limits (``http/ratelimits_api.py``) and the response cache's figures."""
    lid = (path("limitId"),)
    status = listing(resp(rateLimitId=S, scopeType=SCOPE, scopeId=S, metric={"enum": ["requests", "tokens"]},
                          limitPerMinute=INT, burst=INT, remaining=INT, resetMs=INT, reset=S), enabled=B)
    stats = resp(("entries", "bytes", "maxBytes", "maxEntryBytes"), enabled=B, defaultTtlSeconds=INT, share=S,
                 header=S, entries=INT, bytes=INT, maxBytes=INT, maxEntryBytes=INT)
    return {
        "/api/v1/rate-limits": {
            "get": op("List rate limits (the YAML ones are readOnly)", listing(ref("RateLimit"), enabled=B),
                      params=(query("scopeType", SCOPE_INPUT), query("scopeId")), tag="limits"),
            "post": op("Create a rate limit", ref("RateLimit"), request=ref("RateLimitInput"), status=201,
                       read_only=False, tag="limits")},
        "/api/v1/rate-limits/status": {"get": op(
            "The limits a caller draws from and what each has left now", status, tag="limits",
            params=tuple(query(name) for name in ("keyId", "user", "team", "project", "org")))},
        "/api/v1/rate-limits/{limitId}": {
            "get": op("One rate limit", ref("RateLimit"), params=lid, tag="limits"),
            "put": op("Replace a rate limit", ref("RateLimit"), request=ref("RateLimitInput"), params=lid,
                      read_only=False, tag="limits"),
            "patch": op("Update some fields of a rate limit", ref("RateLimit"), request=ref("RateLimitInput"),
                        params=lid, read_only=False, tag="limits"),
            "delete": op("Delete a rate limit", ref("RateLimitDeleted"), params=lid, read_only=False,
                         tag="limits")},
        "/api/v1/cache": {
            "get": op("Response cache: entries, bytes and bounds", stats, tag="cache"),
            "delete": op("Drop every cached answer", resp(deleted=INT), read_only=False, tag="cache")},
    }


def _feedback_paths() -> dict[str, Schema]:
    """Feedback on answers (``http/feedback_api.py``): the admin token, the request's own cp- key, or a
    read-only token within its scopes."""
    feedback = resp(requestId=S, source=S, score=NUM, comment=N, model=N, taskType=N, difficultyBucket=NINT,
                    weight=NUM, learned=B, createdBy=S, createdAt=NTIME, updatedAt=NTIME)
    given = body({"requestId": {"type": "string", "minLength": 1, "maxLength": 256},
                  "score": {"type": "number", "minimum": 0, "maximum": 1},
                  "thumbs": {"enum": ["up", "down"]},
                  "source": {"enum": ["user", "agent", "eval", "judge"]},
                  "comment": {"type": "string", "maxLength": 4000}}, required=("requestId", "source"))
    return {FEEDBACK: {
        "post": op("Feedback on one request's answer (score in [0, 1] or thumbs up/down); one per source, "
                   "sending it again replaces it (also the request's own cp- key, and read-only tokens for "
                   "requests of their scopes); source eval only from the admin token or a trusted proxy, "
                   "source judge only from the proxy's own judge", feedback, request=given, status=201,
                   tag="learning", also={200: "this source's feedback on the request was already recorded "
                                              "(replaced, or unchanged when identical)",
                                         403: "this caller may not send feedback of this source"}),
        "get": op("Every source's feedback on a request", resp(requestId=S, model=N, taskType=N, status=S,
                                                                data=arr(feedback)),
                  params=(query("requestId", S, "the request id (the x-costproxy-request-id response header)"),),
                  tag="learning")}}


FEEDBACK = "/api/v1/feedback"


@lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "costproxy integration API", "version": "1.1.0",
                 "description": "Budgets, usage, model selection, webhooks and tokens. Keys are camelCase "
                                "(snake_case spellings and the YAML names are accepted on input); times are ISO "
                                "8601 UTC (input: also unix seconds or milliseconds); money is a decimal string "
                                "in USD. Webhook deliveries are signed: X-Costproxy-Signature: t=<unix>,v1=<hex "
                                "HMAC-SHA256(secret, '<t>.<body>')>, where the key is the whole secret, whsec_ "
                                "prefix included."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": schemas()},
        "paths": {**_other_paths(), **_budget_paths(), **_budget_spend_paths(), **_webhook_paths(),
                  **_console_paths(), **_limit_paths(), **_feedback_paths()},
    }


async def serve(request: web.Request) -> web.Response:
    return web.json_response(document())


@lru_cache(maxsize=1)
def _query_names() -> dict[tuple[str, str], frozenset[str]]:
    """(METHOD, path template with every ``{name}`` as ``{}``) -> the query parameters documented."""
    found: dict[tuple[str, str], frozenset[str]] = {}
    for path, operations in document()["paths"].items():
        template = re.sub(r"\{[^}]+\}", "{}", path)
        for method, operation in operations.items():
            if isinstance(operation, dict):
                found[(method.upper(), template)] = frozenset(
                    p["name"] for p in operation.get("parameters", ()) if p.get("in") == "query")
    return found


def _camel(name: str) -> str:
    """``scope_type`` -> ``scopeType``: the snake_case spelling every camelCase key also answers to."""
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def check_query(request: web.Request) -> None:
    """Refuse a query parameter the operation does not document (a misspelt filter such as ``since``
    for ``from`` was ignored, and the answer looked like an answer to the question asked); a route the
    document does not describe is not checked."""
    if not request.query:
        return
    resource = request.match_info.route.resource
    if resource is None:
        return
    known = _query_names().get((request.method, re.sub(r"\{[^}]+\}", "{}", resource.canonical)))
    if known is None:
        return
    unknown = sorted(name for name in request.query if name not in known and _camel(name) not in known)
    if unknown:
        listed = ", ".join(sorted(known)) or "none"
        raise InvalidRequest(f"unknown query parameter {unknown[0]!r} for {request.method} {resource.canonical} "
                             f"(known: {listed})", param=unknown[0])


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve)
