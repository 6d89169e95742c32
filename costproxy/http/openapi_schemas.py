"""The component schemas of ``/openapi.json``: every body the ``/api/v1`` API answers, exactly.

Response objects are closed (``additionalProperties: false``) and list the keys always present as
``required``, so a client generated from the document reads every field and a test validates real
responses against them (``tests/integration/test_api_contract.py``).  Input schemas list the
camelCase names and, as ``deprecated`` properties, every alias the server accepts (the snake_case
spellings and the YAML names, see ``costproxy.wire``); names kept in responses only for older
clients are ``deprecated`` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from costproxy.alerts.webhooks import EVENT_TYPES
from costproxy.budgets import codec
from costproxy.budgets.model import STATUSES
from costproxy.ledger.entry import LedgerEntry
from costproxy.routing.selection import CandidateScore, Decision
from costproxy.wire import snake

Schema = dict[str, Any]

S: Schema = {"type": "string"}
N: Schema = {"type": ["string", "null"]}
INT: Schema = {"type": "integer"}
NINT: Schema = {"type": ["integer", "null"]}
B: Schema = {"type": "boolean"}
NUM: Schema = {"type": "number"}
NNUM: Schema = {"type": ["number", "null"]}
ANY_OBJECT: Schema = {"type": "object"}
ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"
TIME: Schema = {"type": "string", "pattern": ISO, "description": "ISO 8601 UTC, milliseconds, Z"}
NTIME: Schema = {"type": ["string", "null"], "pattern": ISO, "description": "ISO 8601 UTC, milliseconds, Z"}
DATE: Schema = {"type": ["string", "null"], "pattern": r"^\d{4}-\d{2}-\d{2}$"}
TIME_INPUT: Schema = {"type": ["string", "number"], "description": (
    "ISO 8601 date-time (without an offset: UTC) or date, or a unix time: seconds below 1e11, "
    "milliseconds from 1e11")}
MONEY_INPUT: Schema = {"type": ["string", "number"], "description": "USD, a decimal string or a number; at most "
                       "1000000, at most 9 decimals"}
SCOPE: Schema = {"type": "string", "enum": ["organization", "team", "project", "user", "key"]}
SCOPE_INPUT: Schema = {"type": "string", "enum": ["organization", "org", "team", "project", "user", "key"],
                       "description": "org is accepted for organization"}
STATUS: Schema = {"type": "string", "enum": list(STATUSES)}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


MONEY = ref("Money")
NMONEY: Schema = {"anyOf": [MONEY, {"type": "null"}]}


def arr(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def dep(schema: Schema, note: str = "") -> Schema:
    """A property kept for older clients; ``note`` names its replacement."""
    return {**schema, "deprecated": True, **({"description": f"deprecated: {note}"} if note else {})}


def closed(props: Mapping[str, Schema], optional: Iterable[str] = ()) -> Schema:
    """A response object: exactly these keys, all present except ``optional`` (and deprecated ones
    stay required: they are always sent until they are removed)."""
    skip = set(optional)
    return {"type": "object", "properties": dict(props), "required": [k for k in props if k not in skip],
            "additionalProperties": False}


def resp(optional: Iterable[str] = (), **props: Schema) -> Schema:
    return closed(props, optional)


def listing(items: Schema, **more: Schema) -> Schema:
    return resp(data=arr(items), **more)


def body(props: Mapping[str, Schema], required: Iterable[str] = (), aliases: Mapping[str, str] | None = None
         ) -> Schema:
    """A request body: the camelCase keys, then each accepted alias as a deprecated property."""
    properties = dict(props)
    for name, schema in props.items():
        if snake(name) != name:
            properties[snake(name)] = dep(schema, f"alias of {name}")
    for alias, name in (aliases or {}).items():
        properties[alias] = dep(props[name], f"alias of {name}")
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = list(required)
    return out


def _field_schema(annotation: str) -> Schema:
    """The JSON type of a dataclass field annotation (deprecated snake_case outputs)."""
    base = annotation.replace(" ", "")
    table = {"str": S, "str|None": N, "int": INT, "int|None": NINT, "bool": B, "float": NUM,
             "dict[str,Any]": ANY_OBJECT, "tuple[str,...]": arr(S)}
    return table.get(base, {})


def legacy(cls: Any, skip: Iterable[str] = (), **extra: Schema) -> dict[str, Schema]:
    """The snake_case fields of a dataclass as deprecated properties (``asdict`` in responses)."""
    out = {f.name: dep(_field_schema(str(f.type))) for f in dataclasses.fields(cls) if f.name not in set(skip)}
    out.update({k: dep(v) for k, v in extra.items()})
    return out


# --- budgets -------------------------------------------------------------------------------------


def _action() -> Schema:
    names = ["notify", "restrict-models", "auto-downgrade", "require-approval", "block-all"]
    targets = {"type": {"enum": names}, "tiers": arr(S), "models": arr(S), "maxPricePerMTok": S,
               "sameProvider": B}
    return {"oneOf": [{"type": "string", "enum": names}, resp(optional=("tiers", "models", "maxPricePerMTok",
                                                                        "sameProvider"), **targets)]}


def budget_schemas() -> dict[str, Schema]:
    action = _action()
    alert_def = resp(threshold=INT, actions=arr(action), notificationChannels=arr(S), message=N)
    targets = resp(optional=("tiers", "models", "maxPricePerMTok", "sameProvider"), tiers=arr(S), models=arr(S),
                   maxPricePerMTok=S, sameProvider=B)
    budget = {
        "id": S, "name": S, "description": S, "scopeType": SCOPE, "scopeId": S, "organizationId": N,
        "amount": MONEY, "currency": {"const": "USD"},
        "period": {"enum": ["daily", "weekly", "monthly", "quarterly", "annual", "total"]}, "timezone": S,
        "startDate": DATE, "endDate": DATE, "recurring": B, "alerts": arr(alert_def),
        "onExhausted": {"enum": ["block", "downgrade", "notify"]}, "downgradeTo": targets,
        "hardLimit": {**B, "readOnly": True}, "tags": arr(S), "parentBudgetId": N,
        "createdAt": {**NTIME, "readOnly": True}, "updatedAt": {**NTIME, "readOnly": True},
        "createdBy": {**N, "readOnly": True}, "source": {"enum": ["config", "api"], "readOnly": True},
        "readOnly": {**B, "readOnly": True},
    }
    alert_in = body({"threshold": INT, "actions": arr(action), "notificationChannels": arr(S), "message": N},
                    ("threshold",), codec.ALERT_ALIASES)
    budget_in = {**budget, "amount": MONEY_INPUT, "scopeType": SCOPE_INPUT, "alerts": arr({"oneOf": [INT, alert_in]}),
                 "startDate": {"type": ["string", "null"]}, "endDate": {"type": ["string", "null"]}}
    return {
        "Money": {"type": "string", "pattern": r"^-?\d+(\.\d{1,9})?$",
                  "description": "USD as a decimal string (input: a string or a number, at most 1000000)",
                  "examples": ["12.5", "0.000150"]},
        "Error": resp(error={"type": "object", "required": ["message", "type", "param", "code"],
                             "properties": {"message": S, "type": S, "param": N, "code": N}}),
        "Budget": closed(budget),
        "BudgetWithStatus": closed({**budget, "status": ref("BudgetStatus")}, optional=("status",)),
        "BudgetInput": body(budget_in, aliases=codec.BUDGET_ALIASES),
        "Override": resp(id=S, budgetId=S, type={"enum": ["increase", "approval"]}, amount=NMONEY, startsAt=NTIME,
                         expiresAt=NTIME, reason=S, createdBy=N, createdAt=NTIME, revokedAt=NTIME, revokedBy=N,
                         active=B),
        "OverrideInput": body({"type": {"enum": ["increase", "approval"]}, "amount": MONEY_INPUT,
                               "startsAt": TIME_INPUT, "expiresAt": TIME_INPUT,
                               "durationMinutes": {"type": "number", "minimum": 1, "maximum": 527040},
                               "reason": S}, ("type", "reason")),
        **usage_schemas(),
    }


def status_schemas() -> dict[str, Schema]:
    """The status API's bodies (``costproxy.budgets.status_json``)."""
    active_alert = resp(threshold=INT, triggeredAt=NTIME, actions=arr(_action()), acknowledged=B, acknowledgedBy=N,
                        acknowledgedAt=NTIME, note=N)
    return {
        "ActiveAlert": active_alert,
        "CostRestrictions": resp(
            modelDowngrading=B, restrictedModels={"type": ["array", "null"], "items": S},
            maxCostPerRequest=NMONEY, blockNonEssential={**B, "description": (
                "true while the proxy refuses new requests charged to this budget (block-all reached, "
                "require-approval reached without an approval, or a hard budget with nothing left); "
                "costproxy has no per-request priority, so only an override lets essential work through")},
            allowedTiers={"type": ["array", "null"], "items": S}, allowedModels={"type": ["array", "null"], "items": S},
            maxPricePerMTok=N, blocked=B, requiresApproval=B, downgrading=dep(B, "modelDowngrading")),
        "BudgetStatus": resp(
            budgetId=S, name=S, scopeType=SCOPE, scopeId=S, period=S, periodKey=S, periodStart=NTIME,
            periodEnd=NTIME, currentAmount=MONEY, currentSpend={**MONEY, "description": "equals currentAmount"},
            reserved=MONEY, limit=MONEY, baseLimit=MONEY, currency=S, percentUsed=NUM, remaining=MONEY,
            daysRemaining=NNUM, burnRate=MONEY, burnRatePeriod={"const": "day"}, projectedTotal=NMONEY,
            status=STATUS, hardLimit=B, onExhausted=S, activeAlerts=arr(ref("ActiveAlert")),
            costRestrictions=ref("CostRestrictions"), activeOverrides=arr(ref("Override")), lastUpdated=NTIME,
            stale=B, staleSeconds=NUM,
            active={**B, "description": "whether the budget applies now: false before its startDate, after its "
                    "endDate, or past the first period of a non-recurring budget; then nothing is charged to it "
                    "and its costRestrictions are empty"},
            activeFrom={**NTIME, "description": "when the budget starts to apply (null: always did)"},
            activeUntil={**NTIME, "description": "when it stops applying (null: never)"}),
        "ScopeStatus": resp(scopeType=SCOPE, scopeId=S, aggregateStatus=STATUS, budgets=arr(ref("BudgetStatus")),
                            costRestrictions=ref("CostRestrictions"), lastUpdated=NTIME, stale=B,
                            status=dep(STATUS, "aggregateStatus")),
    }


def usage_schemas() -> dict[str, Schema]:
    meta = {"requestId": N, "modelId": N, "userId": N, "teamId": N, "projectId": N, "tags": arr(S)}
    return {
        "UsageRecord": resp(
            id=NINT, amount=MONEY, currency={"const": "USD"}, timestamp=NTIME, source=S, description=S,
            metadata=closed(meta), endpoint=S, status=S, keyId=N, promptTokens=INT, completionTokens=INT,
            usageReported=B, periods={"type": "object", "additionalProperties": S}),
        "UsageInput": body({"amount": MONEY_INPUT, "currency": {"const": "USD"}, "timestamp": TIME_INPUT,
                            "source": {"enum": ["relaycore", "auterity", "manual"]}, "description": S,
                            "metadata": body({k: S for k in meta if k != "tags"} | {"tags": arr(S)})},
                           ("amount",)),
        "TimeRange": resp(label=S, **{"from": NTIME, "to": NTIME}, periodKey=N),
        "Totals": resp(amount=MONEY, requests=INT, promptTokens=INT, completionTokens=INT, baselineAmount=MONEY,
                       savings=MONEY, averageCost=MONEY),
    }


def report_row(key: str) -> Schema:
    return closed({key: N, "amount": MONEY, "requests": INT, "percent": NUM, "promptTokens": INT,
                   "completionTokens": INT})


# --- webhooks, tokens, keys, ledger ---------------------------------------------------------------


def alert_schemas() -> dict[str, Schema]:
    scope = resp(scopeType=SCOPE, scopeId=S)
    sub = {"url": {"type": "string", "format": "uri", "description": (
        "an absolute http:// or https:// URL: a host name or IP address (IPv6 in brackets), an optional port "
        "from 1 to 65535, no space or control character; anything else is a 400 naming url")},
           "events": arr({"enum": list(EVENT_TYPES)}),
           "format": {"enum": ["json", "slack"]}, "budgetIds": arr(S), "scopes": arr(scope), "enabled": B,
           "description": S}
    secret = {"type": "string", "description": "whole (whsec_…) at creation and rotation, else masked; the "
                                               "HMAC-SHA256 key is this whole string, whsec_ prefix included"}
    scope_in = body({"scopeType": SCOPE_INPUT, "scopeId": S}, ("scopeType", "scopeId"))
    return {
        "Subscription": resp(id=S, **sub, secret=secret, createdAt=NTIME, updatedAt=NTIME, createdBy=N),
        "SubscriptionInput": body({"id": S, **sub, "scopes": arr(scope_in), "secret": secret}),
        "Delivery": resp(("event",), id=S, subscriptionId=S, eventId=S, eventType=S,
                         status={"enum": ["pending", "delivered", "failed"]}, attemptCount=INT, lastStatusCode=NINT,
                         lastError=N, createdAt=NTIME, nextAttemptAt=NTIME, finishedAt=NTIME, event=ref("Event"),
                         attempts=arr(resp(at=NTIME, statusCode=NINT, error=N, durationMs=INT))),
        "Event": resp(id=S, type={"enum": list(EVENT_TYPES)}, source=S, timestamp=TIME, correlationId=N,
                      payload=ANY_OBJECT),
        "Token": resp(("token",), id=S, prefix=S, name=S, role={"const": "read-only"}, scopes=arr(scope),
                      createdAt=NTIME, createdBy=N, expiresAt=NTIME, revokedAt=NTIME, revokedBy=N, active=B,
                      token={"type": "string", "description": "only in the creation response"}),
        "TokenInput": body({"name": S, "scopes": arr(scope_in), "expiresAt": TIME_INPUT,
                            "expiresInSeconds": {"type": "integer", "minimum": 1}}),
        "Key": resp(
            ("lastUsedAt", "requests", "key"), id=S, prefix=S, name=S, userId=N, teamId=N, organizationId=N,
            projectId=N, createdAt=NTIME, expiresAt=NTIME, revokedAt=NTIME, active=B,
            user=dep(N, "userId"), team=dep(N, "teamId"), org=dep(N, "organizationId"),
            project=dep(N, "projectId"), lastUsedAt={**NTIME, "description": "from the ledger (list only)"},
            requests={"type": "integer", "description": "requests in the ledger (list only)"},
            key={"type": "string", "description": "the cp-… key, only in the creation response"}),
        "KeyInput": body({"name": S, "userId": S, "teamId": S, "organizationId": S, "projectId": S,
                          "expiresAt": TIME_INPUT, "expiresInSeconds": {"type": "integer", "minimum": 1}},
                         aliases={"user": "userId", "team": "teamId", "org": "organizationId",
                                  "organization": "organizationId", "project": "projectId"}),
        "LedgerEntry": closed({
            "requestId": S, "timestamp": NTIME, "endpoint": S, "status": S, "httpStatus": INT, "keyId": N,
            "userId": N, "teamId": N, "organizationId": N, "projectId": N, "requestedModel": N, "servedModel": N,
            "provider": N, "decisionId": N, "promptTokens": INT, "completionTokens": INT, "cachedTokens": INT,
            "cacheWriteTokens": INT, "cacheWrite1hTokens": INT, "cost": MONEY, "baseline": MONEY,
            "currency": {"const": "USD"}, "usageReported": B, "stream": B, "latencyMs": INT, "errorCode": N,
            "taskType": N, "correlationId": N, "tenant": N, "source": S, "metadata": ANY_OBJECT,
            **legacy(LedgerEntry, skip=("endpoint", "status", "provider", "stream", "tenant", "source",
                                        "metadata"), cost_usd=S, baseline_usd=S)}),
        "UsageSummaryRow": resp(
            ("model", "team", "user", "project", "org"), key=N, requests=INT, amount=MONEY, baseline=MONEY,
            saving=MONEY, promptTokens=INT, completionTokens=INT,
            cacheHits={"type": "integer", "description": "answers from the response cache (cost 0)"},
            cacheSaving={**MONEY, "description": "what those answers would have cost from the provider"},
            costUsd=dep(MONEY, "amount"),
            baselineUsd=dep(MONEY, "baseline"), savingUsd=dep(MONEY, "saving"),
            **{g: dep(N, "key (the group's value under the groupBy name)")
               for g in ("model", "team", "user", "project", "org")}),
    }


# --- selection and routing -------------------------------------------------------------------------


def routing_schemas() -> dict[str, Schema]:
    fired = resp(ruleId=S, mode=S, applied=B, rule_id=dep(S, "ruleId"))
    score = closed({"model": S, "provider": S, "tier": S, "expectedQuality": NUM, "qualitySource": S,
                    "expectedCost": MONEY, "worstCaseCost": MONEY, "outputCap": INT, "eligible": B,
                    "reasonExcluded": N, "proven": B,
                    "learned": nullable(resp(prior=NUM, evidence=NUM, mean=NUM, lower=NUM, upper=NUM)),
                    **legacy(CandidateScore, skip=("model", "provider", "tier", "eligible", "learned", "proven"))})
    decision = closed({"id": S, "model": S, "scores": arr(score), "reasons": arr(S), "fallbackChain": arr(S),
                       "qualityTarget": NUM, "expectedQuality": NUM, "estimatedCost": MONEY,
                       "worstCaseCost": MONEY, "outputCap": INT, "taskType": S, "difficulty": NUM, "mode": S,
                       "pressure": NUM, "mixShare": NNUM,
                       **legacy(Decision, skip=("id", "model", "scores", "reasons", "difficulty", "mode",
                                                "pressure", "mix_share"), fallback_chain=arr(S))})
    outcome = resp(servedModel=N, status=S, cost=MONEY, baseline=MONEY, saving=MONEY, savingPercent=NUM,
                   usageReported=B)
    return {
        "FiredRule": fired,
        "Decision": resp(decision=decision, requestId=S, requestedModel=S, rulesFired=arr(ref("FiredRule")),
                         createdAt=NTIME, candidates=INT, eligible=INT, scoresKept=B),
        "DecisionSummary": resp(
            id=S, requestId=S, requestedModel=S, model=S, createdAt=NTIME, taskType=S, mode=S, expectedQuality=NUM,
            qualityTarget=NUM, estimatedCost=MONEY, provider=N, rulesFired=arr(S), candidates=INT, eligible=INT,
            mixShare=NNUM, outcome=nullable(outcome)),
        "Sums": resp(requests=INT, amount=MONEY, baseline=MONEY, saving=MONEY, savingPercent=NUM),
    }


def limit_schemas() -> dict[str, Schema]:
    """Rate limits (``ratelimits.model``): a limit answered, and the body that creates or edits one."""
    count: Schema = {"type": "integer", "minimum": 1, "maximum": 10**10}
    figures = {"requestsPerMinute": count, "tokensPerMinute": count, "burstRequests": count, "burstTokens": count}
    limit = {"id": S, "name": S, "description": S, "scopeType": SCOPE,
             "scopeId": {"type": "string", "description": "an id, or * for every scope of the type (each its own)"},
             **{k: nullable(v) for k, v in figures.items()}, "source": {"enum": ["config", "api"]}, "readOnly": B,
             "createdAt": NTIME, "updatedAt": NTIME, "createdBy": N}
    stamps = ("source", "readOnly", "createdAt", "updatedAt", "createdBy")
    return {
        "RateLimit": closed(limit),
        "RateLimitDeleted": closed({**limit, "deleted": B}),
        "RateLimitInput": body({"id": S, "name": S, "description": N, "scopeType": SCOPE_INPUT,
                                "scopeId": S, **{k: nullable(v) for k, v in figures.items()},
                                **{k: {"readOnly": True} for k in stamps}}),
    }


def schemas() -> dict[str, Schema]:
    return {**budget_schemas(), **status_schemas(), **alert_schemas(), **routing_schemas(), **limit_schemas()}
