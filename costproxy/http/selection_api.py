"""Selection without calling a model, in the RelayCore/Auterity shapes (DESIGN §3.6).

``POST /api/v1/models/select``   request, metadata, constraints → selected model, alternatives,
                                 reasoning, estimated cost, budget impact, fallback chain
``POST /api/v1/models/estimate`` the cost of a request on given (or all) models: ``{models?,
                                 outputTokens?, content}`` or the chat fields it reads at the top
                                 level; ``max_tokens`` caps the worst case
``GET  /api/v1/models/capabilities``  what every model can do and costs
``GET  /api/v1/decisions/{id}``  why a decision was taken (kept for the last 10,000 decisions; every
                                  candidate's score for the last 1,000, the chosen one's before that)
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from aiohttp import web

from costproxy.analyzer.server_tools import server_tools
from costproxy.analyzer.tasks import TASK_TYPES
from costproxy.errors import BudgetExceeded, InvalidRequest, ModelNotAllowed, NotFound, ProviderNotConfigured
from costproxy.http.budgets_api import viewer
from costproxy.http.keys_api import json_body
from costproxy.http.state import BUDGETS, ROUTER, SERVICES
from costproxy.identity.principal import Principal
from costproxy.money import MoneyError, format_usd, usd_to_nanos
from costproxy.pipeline.plan import count_input
from costproxy.registry import CAPABILITIES, Usage
from costproxy.request import Api, Endpoint, RequestContext, parse_request
from costproxy.routing.decisions import DecisionRecord
from costproxy.routing.policy import QUALITY_MODES, Constraints
from costproxy.routing.route import RouteInput
from costproxy.routing.router import Explanation, virtual_mode
from costproxy.routing.selection import CandidateScore
from costproxy.steering.evaluate import FiredRule
from costproxy.wire import JSON_SCOPE, canonical, iso_seconds, optional_name, with_deprecated

PRIORITY_MODES = {"low": "quality", "medium": "balanced", "high": "economy", "critical": "economy"}
SELECT_KEYS = ("requestId", "content", "metadata", "constraints")
IDENTITY_KEYS = ("userId", "teamId", "organizationId", "projectId", "taskType")
MAX_OUTPUT_TOKENS = 100_000_000  # /models/estimate: far above any model's output, far below what money formats
METADATA_KEYS = ("userId", "teamId", "organizationId", "projectId", "taskType", "qualityRequirement",
                 "budgetPriority", "tags")
METADATA_ALIASES = {"org": "organizationId", "organization": "organizationId", "user": "userId",
                    "team": "teamId", "project": "projectId"}
ESTIMATE_KEYS = ("models", "outputTokens", "content")
# the fields of a chat request that /models/estimate reads (the tokens they add, the search fee, the
# output cap): the ones it takes beside models and outputTokens without 'content'
ESTIMATE_CHAT_KEYS = ("messages", "tools", "functions", "tool_choice", "function_call", "response_format",
                      "prediction", "web_search_options", "max_tokens", "max_completion_tokens")
CONSTRAINT_KEYS = ("preferredModel", "excludedModels", "maxCost", "minQuality", "requiredCapabilities")




SCOPE_PARAMS = {"org": "organizationId", "team": "teamId", "project": "projectId", "user": "userId"}


def _principal(metadata: dict[str, Any]) -> Principal:
    return Principal(user=metadata.get("userId"), team=metadata.get("teamId"),
                     org=metadata.get("organizationId"), project=metadata.get("projectId"), via="api")


def _may_ask_for(request: web.Request, principal: Principal) -> None:
    """A scope-limited token asks only for principals inside its scopes: every identity in
    ``metadata`` must be one of them.  The answer reads the budgets of every scope named (remaining
    amount, the tightest budget's name, threshold restrictions), and such a token sees only its own
    scopes' budgets — the same 404 as ``GET /api/v1/budgets/status/{scopeType}/{scopeId}`` for a
    scope it does not see."""
    token = viewer(request)
    if token is None or not token.scopes:
        return
    for kind, value in principal.scopes():
        if not token.sees(kind, value):
            raise NotFound(f"no budgets visible for {JSON_SCOPE[kind]} {value!r}: this token is limited to its "
                           "scopes, and selection for a principal reads the budgets of every scope it names",
                           param=f"metadata.{SCOPE_PARAMS[kind]}")


def _api_constraints(raw: Any, metadata: dict[str, Any]) -> tuple[str, Constraints]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidRequest("'constraints' must be an object", param="constraints")
    raw = canonical(raw, CONSTRAINT_KEYS, where="constraints")
    quality, priority = metadata.get("qualityRequirement"), metadata.get("budgetPriority")
    if quality is not None and quality not in QUALITY_MODES:  # ignored, it would answer another question
        raise InvalidRequest(f"'qualityRequirement' must be one of {', '.join(QUALITY_MODES)}",
                             param="metadata.qualityRequirement")
    if priority is not None and priority not in PRIORITY_MODES:
        raise InvalidRequest(f"'budgetPriority' must be one of {', '.join(PRIORITY_MODES)}",
                             param="metadata.budgetPriority")
    mode = quality if quality is not None else PRIORITY_MODES.get(str(priority))
    excluded = raw.get("excludedModels") or []
    capabilities = raw.get("requiredCapabilities") or []
    if not isinstance(excluded, list) or not isinstance(capabilities, list):
        raise InvalidRequest("'excludedModels' and 'requiredCapabilities' must be lists", param="constraints")
    unknown = [c for c in capabilities if c not in CAPABILITIES]
    if unknown:
        raise InvalidRequest(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITIES)}")
    try:
        max_cost = usd_to_nanos(raw["maxCost"], what="maxCost") if raw.get("maxCost") is not None else None
    except MoneyError as exc:
        raise InvalidRequest(str(exc), param="constraints.maxCost") from None
    if max_cost is not None and max_cost < 0:  # no model fits below zero: a caller's mistake, not a 422
        raise InvalidRequest("'maxCost' must not be negative", param="constraints.maxCost")
    min_quality = raw.get("minQuality")
    if min_quality is not None and (isinstance(min_quality, bool) or not isinstance(min_quality, (int, float))
                                    or not 0 <= min_quality <= 1):
        raise InvalidRequest("'minQuality' must be a number from 0 to 1", param="constraints.minQuality")
    preferred = raw.get("preferredModel") or "auto"
    if not isinstance(preferred, str):
        raise InvalidRequest("'preferredModel' must be a string", param="constraints.preferredModel")
    return preferred, Constraints(
        quality_mode=mode, excluded_models=frozenset(str(m) for m in excluded),
        required_capabilities=frozenset(capabilities), max_cost_nanos=max_cost,
        min_quality=float(min_quality) if min_quality is not None else None,
        reasons=("API constraints",) if raw else ())


async def _explain(request: web.Request) -> tuple[Explanation, dict[str, Any], int]:
    services = request.app[SERVICES]
    body = canonical(await json_body(request), SELECT_KEYS)
    content = body.get("content") or {}
    metadata = body.get("metadata") or {}
    if not isinstance(content, dict) or not isinstance(metadata, dict):
        raise InvalidRequest("'content' and 'metadata' must be objects")
    metadata = canonical(metadata, METADATA_KEYS, METADATA_ALIASES, where="metadata")
    preferred, extra = _api_constraints(body.get("constraints"), metadata)
    for name in IDENTITY_KEYS:
        optional_name(metadata.get(name), f"metadata.{name}")
    chat = {k: v for k, v in content.items() if k != "model"}
    chat["model"] = preferred
    request_id = optional_name(body.get("requestId"), "requestId") or "sel_" + uuid.uuid4().hex
    task = metadata.get("taskType")
    if task is not None and task not in TASK_TYPES:  # ignored, the answer would be for another task
        raise InvalidRequest(f"'taskType' must be one of {', '.join(TASK_TYPES)}", param="metadata.taskType")
    headers = {"x-costproxy-task-type": task} if isinstance(task, str) else {}
    principal = _principal(metadata)
    _may_ask_for(request, principal)
    ctx = RequestContext(request_id=request_id, principal=principal, endpoint="chat/completions",
                         headers=headers)
    tokens = await count_input(services, parse_request(Endpoint.CHAT, chat), "o200k_base")
    budgets = request.app[BUDGETS]
    if budgets is not None:  # the view from definitions no older than a change that already answered
        await budgets.current()
    view = await services.accounts.view(ctx.principal)
    router = request.app[ROUTER]
    answer: dict[str, Any] = {"requestId": request_id, "preferredModel": None}

    def auto() -> Explanation:
        return router.explain(RouteInput(ctx=ctx, body={**chat, "model": "auto"}, requested="auto",
                                         input_tokens=tokens, budget=view), extra=extra)

    named = not virtual_mode(preferred)[0]
    try:
        explanation = router.explain(
            RouteInput(ctx=ctx, body=chat, requested=preferred, input_tokens=tokens, budget=view), extra=extra)
    except (ProviderNotConfigured, ModelNotAllowed, BudgetExceeded) as exc:
        if not named:
            raise
        # a preference, not a pin: what auto would choose instead, and why the preferred model is not it
        # (an unknown model name stays an error: it is the caller's mistake, not the deployment's state)
        explanation = auto()
        answer["preferredModel"] = {"model": preferred, "selected": False, "code": exc.code, "reason": exc.message}
    else:
        if named:
            answer["preferredModel"] = {"model": preferred, "selected": True, "code": None, "reason": None}
            if extra.max_cost_nanos is not None or extra.min_quality is not None:
                # the API's maxCost and minQuality bound the preferred model as they bound auto's choice:
                # selection's own eligibility of that model says whether it meets them
                chosen, instead = explanation.route.chain[0].id, auto()
                score = next((s for s in (instead.decision.scores if instead.decision else ()) if s.model == chosen),
                             None)
                if score is not None and not score.eligible:
                    explanation = instead
                    answer["preferredModel"] = {"model": preferred, "selected": False, "code": "constraint_not_met",
                                                "reason": score.reason_excluded}
    remaining = view.remaining_nanos
    return explanation, answer, -1 if remaining is None else remaining


async def select_model(request: web.Request) -> web.Response:
    explanation, extra, remaining = await _explain(request)
    route, decision = explanation.route, explanation.decision
    chosen = route.chain[0]
    profile = explanation.profile
    estimated = chosen.cost(Usage(prompt_tokens=profile.input_tokens,
                                  completion_tokens=profile.expected_output_tokens))
    scores = {s.model: s for s in decision.scores} if decision else {}
    alternatives = [{"model": s.model, "expectedQuality": round(s.expected_quality, 4),
                     "estimatedCost": format_usd(s.expected_cost_nanos), "eligible": s.eligible,
                     "reasonExcluded": s.reason_excluded}
                    for s in sorted(scores.values(), key=lambda s: s.expected_cost_nanos) if s.model != chosen.id]
    impact: dict[str, Any] = {"estimatedCost": format_usd(estimated),
                              "worstCaseCost": format_usd(decision.worst_case_nanos if decision else
                                                          chosen.worst_case_cost(profile.input_tokens,
                                                                                 chosen.max_output_tokens))}
    if remaining >= 0:
        impact.update(remainingBefore=format_usd(remaining), remainingAfter=format_usd(max(0, remaining - estimated)),
                      percentOfRemaining=round(100 * estimated / remaining, 4) if remaining else None)
    return web.json_response({
        **extra,
        "selectedModel": chosen.id,
        "provider": chosen.provider,
        "decisionId": route.decision_id,
        "alternatives": alternatives,
        "reasoning": list(route.reasons),
        "rulesFired": [fired_json(f) for f in explanation.steering.fired],
        "taskType": profile.task_type,
        "difficulty": round(profile.difficulty, 4),
        "inputTokens": profile.input_tokens,
        "expectedOutputTokens": profile.expected_output_tokens,
        "estimatedCost": format_usd(estimated),
        "currency": "USD",
        "budgetImpact": impact,
        "qualityExpectation": round(decision.expected_quality, 4) if decision else None,
        "qualityTarget": round(decision.quality_target, 4) if decision else None,
        # learning.mixing: the share of this traffic the mix sends to its cheaper model (README)
        "mixShare": round(decision.mix_share, 4) if decision and decision.mix_share is not None else None,
        "fallbackChain": [m.id for m in route.chain[1:]],
    })


def _estimate_body(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, chat request)`` of a ``/models/estimate`` body: ``{models?, outputTokens?,
    content}`` with the chat request under ``content`` (any of its fields), or the chat request's
    fields the estimate reads (``ESTIMATE_CHAT_KEYS``) beside ``models`` and ``outputTokens``.  Any
    other key is a 400 naming it: it would change nothing in the estimate."""
    if "content" in raw:
        body = canonical(raw, ESTIMATE_KEYS)
        if not isinstance(body["content"], dict):
            raise InvalidRequest("'content' must be an object: the chat request to price (messages, tools, "
                                 "max_tokens, …)", param="content")
        return body, body["content"]
    try:
        body = canonical(raw, (*ESTIMATE_KEYS[:2], *ESTIMATE_CHAT_KEYS))
    except InvalidRequest as exc:
        raise InvalidRequest(f"{exc.message} (a whole chat request goes under 'content'; 'outputTokens' is the "
                             "expected output, 'models' the models to price)", param=exc.param) from None
    return body, {key: value for key, value in body.items() if key in ESTIMATE_CHAT_KEYS}


async def estimate(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body, content = _estimate_body(await json_body(request))
    models = body.get("models")
    if models is None:
        models = list(services.registry.models)
    elif not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
        raise InvalidRequest("'models' must be a non-empty list of model ids (leave it out for every model)",
                             param="models")
    output = body.get("outputTokens")
    if output is None:
        output = 0
    elif isinstance(output, bool) or not isinstance(output, int) or not 0 <= output <= MAX_OUTPUT_TOKENS:
        raise InvalidRequest(f"'outputTokens' must be an integer from 0 to {MAX_OUTPUT_TOKENS:,}",
                             param="outputTokens")
    chat = parse_request(Endpoint.CHAT, content)
    searches = [(tool.kind, 1) for tool in server_tools(Api.CHAT, chat.body)]  # web_search_options: one fee
    rows: list[tuple[int, dict[str, Any]]] = []
    for name in models:
        model = services.registry.resolve(str(name))
        if model is None:
            raise InvalidRequest(f"unknown model {name!r}", param="models")
        if model.kind != "chat":
            continue
        tokens = await count_input(services, chat, model.encoding)
        fees = model.tool_cost(searches)
        # the output one call may produce: the model's limit, and the request's max_tokens /
        # max_completion_tokens as the proxy would cap and reserve for it
        cap = min(x for x in (model.max_output_tokens or model.context_window, chat.max_output_tokens) if x)
        expected = min(output, cap)
        cost = model.cost(Usage(prompt_tokens=tokens, completion_tokens=expected)) + fees
        worst = model.worst_case_cost(tokens, cap) + fees
        rows.append((cost, {"model": model.id, "inputTokens": tokens, "outputTokens": expected,
                            "maxOutputTokens": cap, "estimatedCost": format_usd(cost),
                            "worstCaseCost": format_usd(worst)}))
    rows.sort(key=lambda row: row[0])
    return web.json_response({"currency": "USD", "data": [row for _, row in rows]})


async def capabilities(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    unservable = request.app[ROUTER].unservable  # model id -> why this deployment cannot call it
    data = [{"model": m.id, "provider": m.provider, "kind": m.kind, "tier": m.tier,
             "servable": m.id not in unservable, "notServableReason": unservable.get(m.id),
             "contextWindow": m.context_window, "maxOutputTokens": m.max_output_tokens,
             "capabilities": sorted(m.capabilities),
             "pricing": {"currency": "USD", "per": "1M tokens", "input": str(m.price.input),
                         "cachedInput": None if m.price.cached_input is None else str(m.price.cached_input),
                         "output": str(m.price.output), "source": m.price.source,
                         "asOf": m.price.as_of.isoformat() if m.price.as_of else None}}
            for m in services.registry.models.values()]
    return web.json_response({"data": data})


async def decision(request: web.Request) -> web.Response:
    record = request.app[ROUTER].decisions.get(request.match_info["decision_id"])
    if record is None:
        raise NotFound(f"no decision {request.match_info['decision_id']} (the last 10,000 are kept)")
    return web.json_response(decision_json(record))


def fired_json(fired: FiredRule) -> dict[str, Any]:
    return {"ruleId": fired.rule_id, "mode": fired.mode, "applied": fired.applied,
            "rule_id": fired.rule_id}  # rule_id: deprecated


def score_json(score: CandidateScore) -> dict[str, Any]:
    return with_deprecated({
        "model": score.model, "provider": score.provider, "tier": score.tier,
        "expectedQuality": score.expected_quality, "qualitySource": score.quality_source,
        "expectedCost": format_usd(score.expected_cost_nanos), "worstCaseCost": format_usd(score.worst_case_nanos),
        "outputCap": score.output_cap, "eligible": score.eligible, "reasonExcluded": score.reason_excluded,
        "proven": score.proven,  # False: too few calibration rows on the task, no feedback yet
        "learned": None if score.learned is None else asdict(score.learned),  # prior, evidence, posterior
    }, asdict(score))


def decision_json(record: DecisionRecord) -> dict[str, Any]:
    """``GET /api/v1/decisions/{id}``: camelCase, money as USD strings; the snake_case names and
    nano-USD integers of earlier versions stay inside ``decision`` and its scores, deprecated."""
    d = record.decision
    decision = with_deprecated({
        "id": d.id, "model": d.model, "scores": [score_json(s) for s in d.scores], "reasons": list(d.reasons),
        "fallbackChain": list(d.fallback_chain), "qualityTarget": d.quality_target,
        "expectedQuality": d.expected_quality, "estimatedCost": format_usd(d.estimated_cost_nanos),
        "worstCaseCost": format_usd(d.worst_case_nanos), "outputCap": d.output_cap, "taskType": d.task_type,
        "difficulty": d.difficulty, "mode": d.mode, "pressure": d.pressure, "mixShare": d.mix_share,
    }, {k: v for k, v in asdict(d).items() if k != "mix_share"})  # a new field has no deprecated twin
    return {"decision": decision, "requestId": record.request_id, "requestedModel": record.requested_model,
            "rulesFired": [fired_json(f) for f in record.fired], "createdAt": iso_seconds(record.created_at),
            "candidates": record.candidates, "eligible": record.eligible, "scoresKept": record.scores_kept}


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/models/select", select_model)
    app.router.add_post("/api/v1/models/estimate", estimate)
    app.router.add_get("/api/v1/models/capabilities", capabilities)
    app.router.add_get("/api/v1/decisions/{decision_id}", decision)
