"""OpenAI-compatible endpoints: parse the request, run the pipeline, write JSON or relay SSE.

Everything between parsing and writing (plan, reserve, call, settle, events) is the pipeline's;
a request that fails to parse is still recorded through ``pipeline.run.refuse``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from costproxy.cache.capture import Capture
from costproxy.cache.policy import HEADER as CACHE_HEADER
from costproxy.errors import ProxyError
from costproxy.http import feedback_api
from costproxy.http.bodies import read_body, sized_when_read
from costproxy.http.headers import RuleHeaders
from costproxy.http.state import PRINCIPAL, REQUEST_ID, ROUTER, SERVICES, SETTINGS, TRUSTED_HEADERS
from costproxy.ledger.entry import LedgerEntry
from costproxy.money import format_usd
from costproxy.pipeline.admission import limit_headers
from costproxy.pipeline.cached import ReplayRun, cache_label, teed
from costproxy.pipeline.plan import Plan
from costproxy.pipeline.run import (
    StreamRun,
    UnaryResult,
    refuse,
    run_stream,
    run_unary,
    shutting_down,
    withdrawn,
)
from costproxy.pipeline.services import Services
from costproxy.registry import ModelSpec
from costproxy.request import ChatRequest, Endpoint, RequestContext, parse_body, parse_request
from costproxy.routing.concrete import unknown_model


def request_context(request: web.Request, endpoint: str) -> RequestContext:
    trusted = request.get(TRUSTED_HEADERS, {})
    asked = request.headers.get(CACHE_HEADER)
    if asked is not None and _may_ask_cache(request):
        trusted = {**trusted, CACHE_HEADER: asked}
    return RequestContext(
        request_id=request[REQUEST_ID],
        principal=request[PRINCIPAL],
        endpoint=endpoint,
        headers=trusted,
        client_headers=RuleHeaders(request.headers),
        correlation_id=request.headers.get("x-correlation-id"),
        tenant=trusted.get("x-tenant-id"),
    )


def _may_ask_cache(request: web.Request) -> bool:
    """``x-costproxy-cache`` counts from any caller (``cache.header: all``) or from a trusted
    chaining proxy (``trusted``, the default); otherwise it is ignored like other control headers."""
    allowed = request.app[SETTINGS].cache.header
    return allowed == "all" or (allowed == "trusted" and request[PRINCIPAL].via.startswith("trusted-proxy"))


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (``InvalidJSON``, ``BodyTooLarge`` otherwise)."""
    return parse_body(await read_body(request))


async def read_request(request: web.Request, endpoint: Endpoint) -> ChatRequest:
    return parse_request(endpoint, await read_json(request))


def cost_headers(plan: Plan, model: ModelSpec, entry: LedgerEntry | None) -> dict[str, str]:
    headers = {**limit_headers(plan),
        "x-costproxy-request-id": plan.ctx.request_id,
        "x-costproxy-model": model.id,
        "x-costproxy-provider": model.provider,
        "x-costproxy-requested-model": plan.requested_model,
        "x-costproxy-max-cost-usd": format_usd(plan.worst_case_nanos),
    }
    if plan.route.decision_id:
        headers["x-costproxy-decision-id"] = plan.route.decision_id
    if entry is not None:
        headers["x-costproxy-cost-usd"] = format_usd(entry.cost_nanos)
        headers["x-costproxy-baseline-cost-usd"] = format_usd(entry.baseline_nanos)
        headers["x-costproxy-usage"] = "reported" if entry.usage_reported else "estimated"
        if plan.budget_remaining_nanos is not None:  # what this request left (others may spend too)
            headers["x-costproxy-budget-remaining-usd"] = format_usd(
                max(0, plan.budget_remaining_nanos - entry.cost_nanos))
    else:
        headers["x-costproxy-cost-usd"] = "pending"  # streams: exact cost in the final SSE comment
    label = cache_label(plan)
    if label is not None:
        headers[CACHE_HEADER] = label
        if label == "hit":
            headers["x-costproxy-cost-usd"] = "0"
        elif label == "uncacheable" and plan.cache is not None and plan.cache.reason:
            headers["x-costproxy-cache-reason"] = plan.cache.reason
    return headers


async def parsed(services: Services, ctx: RequestContext, parse: Awaitable[ChatRequest]) -> ChatRequest:
    """The request a route parsed at its edge; a body it cannot parse is refused (ledgered) and raised."""
    try:
        return await parse
    except ProxyError as exc:
        await refuse(services, ctx, None, exc)
        raise
    except asyncio.CancelledError:  # the drain deadline while the body was still arriving
        await withdrawn(services, ctx, None, None, None)
        raise


async def answer(request: web.Request, services: Services, ctx: RequestContext,
                 chat: ChatRequest) -> web.StreamResponse:
    """Run a parsed request through the pipeline and write its answer, streamed or whole."""
    if chat.stream:
        capture = feedback_api.capture_for_judge(request, ctx, chat)  # a sampled share is captured
        response, entry = await relay_stream(request, await run_stream(services, ctx, chat), capture)
        if capture is not None:
            feedback_api.offer_stream_to_judge(request, chat, entry, capture)
        return response
    result = await run_unary(services, ctx, chat)
    feedback_api.offer_to_judge(request, chat, result)  # a sampled share, judged in the background
    return unary_response(services, result)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def drained(handler: Handler) -> Handler:
    """A proxied endpoint's handler, ended by the drain deadline if still running then
    (``Services.end_in_flight``): its client is told ``server_shutting_down`` — a unary 503 here, a
    stream's last error event in ``StreamRun.relay`` — instead of a dropped connection.  Its body's
    size is checked when it reads it (``bodies.sized_when_read``): a 413 is ledgered like any refusal."""
    @sized_when_read
    @functools.wraps(handler)
    async def running(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        task = asyncio.current_task()
        assert task is not None
        services.in_flight.add(task)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            if task not in services.cut:
                raise
            task.uncancel()  # ended by the drain deadline, not by the client: it is told so
            raise shutting_down() from None
        finally:
            services.in_flight.discard(task)
            services.cut.discard(task)

    return running


def make_handler(endpoint: Endpoint) -> Handler:
    @drained
    async def handler(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        ctx = request_context(request, endpoint)
        chat = await parsed(services, ctx, read_request(request, endpoint))
        return await answer(request, services, ctx, chat)

    return handler


def unary_response(services: Services, result: UnaryResult) -> web.Response:
    """The answer of ``run_unary`` (in the client's API), with the ``x-costproxy-*`` headers."""
    headers = cost_headers(result.plan, services.registry.models[result.entry.served_model or ""], result.entry)
    headers["content-type"] = "application/json"
    return web.Response(body=result.body, status=result.response.status, headers=headers)


async def relay_stream(request: web.Request, run: StreamRun | ReplayRun,
                       capture: Capture | None = None) -> tuple[web.StreamResponse, LedgerEntry]:
    """Relay a stream (settled when it ends) as server-sent events; returns the ledger entry too.
    ``capture`` reads every frame the client is sent (the judge's copy of the answer)."""
    response = web.StreamResponse(status=200, headers={
        **cost_headers(run.plan, run.model, None),
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    })

    async def start() -> None:
        await response.prepare(request)

    entry = await run.relay(start, teed(response.write, capture))
    return response, entry


def model_json(request: web.Request, model: ModelSpec, created: int) -> dict[str, Any]:
    problem = request.app[ROUTER].unservable.get(model.id)
    price = model.price
    return {"id": model.id, "object": "model", "created": created, "owned_by": model.provider,
            "costproxy": {"kind": model.kind, "tier": model.tier, "context_window": model.context_window,
                          "capabilities": sorted(model.capabilities), "servable": problem is None,
                          "unservable_reason": problem,
                          "price_per_mtok": {"input": str(price.input), "output": str(price.output),
                                             **{name: None if (v := getattr(price, name)) is None else str(v)
                                                for name in ("cached_input", "cache_write", "cache_write_1h")}}}}


def virtual_json(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "costproxy",
            "costproxy": {"kind": "virtual", "servable": True}}


async def list_models(request: web.Request) -> web.Response:
    """The models this deployment can serve (``?all=true``: every model, each saying whether it can)."""
    registry = request.app[SERVICES].registry
    everything = request.query.get("all", "").lower() in ("1", "true", "yes")
    unservable = request.app[ROUTER].unservable
    created = int(time.time())
    data = [model_json(request, m, created) for m in registry.models.values() if everything or m.id not in unservable]
    data.extend(virtual_json(name, created) for name in VIRTUAL_MODELS)
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if name in VIRTUAL_MODELS:
        return web.json_response(virtual_json(name, int(time.time())))
    model = request.app[SERVICES].registry.resolve(name)
    if model is None:
        raise unknown_model(name)
    return web.json_response(model_json(request, model, int(time.time())))


VIRTUAL_MODELS = ("auto", "auto:economy", "auto:balanced", "auto:quality")


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        for endpoint in Endpoint:
            app.router.add_post(f"{prefix}/{endpoint.value}", make_handler(endpoint))
        app.router.add_get(f"{prefix}/models", list_models)
        app.router.add_get(f"{prefix}/models/{{model}}", retrieve_model)
