"""OpenAI-compatible endpoints: parse, run the pipeline, answer in JSON or relay SSE."""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from aiohttp import web

from costproxy.budgets.accounts import Reservation
from costproxy.errors import InvalidJSON, InvalidRequest, ProviderError, ProxyError
from costproxy.http.state import METRICS, PRINCIPAL, REQUEST_ID, SERVICES, TRUSTED_HEADERS
from costproxy.ledger.entry import LedgerEntry
from costproxy.money import format_usd
from costproxy.pipeline import (
    Outcome,
    Plan,
    RequestContext,
    Services,
    call_unary,
    observe_chunk,
    open_stream,
    plan,
    reserve,
    settle,
)
from costproxy.providers.client import UpstreamStream

log = structlog.get_logger("costproxy")


async def read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        raise InvalidJSON("request body is empty; expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidJSON(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJSON("request body must be a JSON object")
    return body


def request_context(request: web.Request, endpoint: str) -> RequestContext:
    trusted = request.get(TRUSTED_HEADERS, {})
    return RequestContext(
        request_id=request[REQUEST_ID],
        principal=request[PRINCIPAL],
        endpoint=endpoint,
        headers=trusted,
        correlation_id=request.headers.get("x-correlation-id"),
        tenant=trusted.get("x-tenant-id"),
    )


def cost_headers(plan_: Plan, outcome: Outcome, entry: LedgerEntry | None) -> dict[str, str]:
    headers = {
        "x-costproxy-request-id": plan_.ctx.request_id,
        "x-costproxy-model": outcome.model.id,
        "x-costproxy-provider": outcome.model.provider,
        "x-costproxy-requested-model": plan_.requested_model,
        "x-costproxy-max-cost-usd": format_usd(plan_.worst_case_nanos),
    }
    if plan_.route.decision_id:
        headers["x-costproxy-decision-id"] = plan_.route.decision_id
    if entry is not None:
        headers["x-costproxy-cost-usd"] = format_usd(entry.cost_nanos)
        headers["x-costproxy-baseline-cost-usd"] = format_usd(entry.baseline_nanos)
        headers["x-costproxy-usage"] = "reported" if entry.usage_reported else "estimated"
        if plan_.budget_remaining_nanos is not None:  # what this request left (others may spend too)
            headers["x-costproxy-budget-remaining-usd"] = format_usd(
                max(0, plan_.budget_remaining_nanos - entry.cost_nanos))
    else:
        headers["x-costproxy-cost-usd"] = "pending"  # streams: exact cost in the final SSE comment
    return headers


def log_completed(request: web.Request, entry: LedgerEntry) -> None:
    metrics = request.app[METRICS].for_request(entry.endpoint, entry.served_model or "-", entry.status)
    metrics.requests.inc()
    metrics.cost.inc(entry.cost_nanos)
    metrics.baseline.inc(entry.baseline_nanos)
    metrics.tokens_in.inc(entry.prompt_tokens)
    metrics.tokens_out.inc(entry.completion_tokens)
    metrics.latency.observe(entry.latency_ms / 1000)
    log.info("request_completed", endpoint=entry.endpoint, model=entry.served_model,
             requested=entry.requested_model, decision_id=entry.decision_id, status=entry.status,
             http_status=entry.http_status, tokens_in=entry.prompt_tokens, tokens_out=entry.completion_tokens,
             cost_usd=format_usd(entry.cost_nanos), usage=("reported" if entry.usage_reported else "estimated"),
             key_id=entry.key_id, team=entry.team, user=entry.user, duration_ms=entry.latency_ms)


def make_handler(endpoint: str) -> Any:
    async def handler(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        body = await read_body(request)
        if endpoint == "embeddings" and body.get("stream"):
            raise InvalidRequest("embeddings cannot be streamed", param="stream")
        the_plan, reservation = await reserve(services, await plan(services, request_context(request, endpoint),
                                                                   body))
        if the_plan.stream:
            return await relay_stream(request, services, the_plan, reservation)
        return await answer_unary(request, services, the_plan, reservation)

    return handler


def _mark_failed(outcome: Outcome, exc: ProxyError) -> None:
    outcome.status = "error"
    outcome.http_status = exc.status
    outcome.error_code = exc.code


async def answer_unary(request: web.Request, services: Services, plan_: Plan,
                       reservation: Reservation) -> web.StreamResponse:
    outcome = Outcome(model=plan_.primary)
    entry: LedgerEntry | None = None
    try:
        response = await call_unary(services, plan_, outcome)
    except ProxyError as exc:
        _mark_failed(outcome, exc)
        raise
    finally:
        entry = await settle(services, plan_, reservation, outcome)
        log_completed(request, entry)
    headers = cost_headers(plan_, outcome, entry)
    headers["content-type"] = "application/json"
    return web.Response(body=response.body, status=response.status, headers=headers)


async def relay_stream(request: web.Request, services: Services, plan_: Plan,
                       reservation: Reservation) -> web.StreamResponse:
    outcome = Outcome(model=plan_.primary)
    try:
        upstream = await open_stream(services, plan_, outcome)
    except ProxyError as exc:
        _mark_failed(outcome, exc)
        log_completed(request, await settle(services, plan_, reservation, outcome))
        raise
    response = web.StreamResponse(status=200, headers={
        **cost_headers(plan_, outcome, None),
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
    })
    try:
        await response.prepare(request)
        await _pump(response, upstream, plan_, outcome)
    except (ConnectionResetError, ConnectionError) as exc:
        outcome.status, outcome.http_status = "client_disconnected", 499
        outcome.error_code = exc.__class__.__name__
    except ProviderError as exc:
        _mark_failed(outcome, exc)
        await _send_stream_error(response, exc)
    finally:
        upstream.close()
        entry = await settle(services, plan_, reservation, outcome)
        services.router.record_result(outcome.model, ok=outcome.status != "error")
        log_completed(request, entry)
    if outcome.status == "ok":
        await _write_quietly(response, _cost_comment(entry))
    return response


async def _pump(response: web.StreamResponse, upstream: UpstreamStream, plan_: Plan, outcome: Outcome) -> None:
    async for raw, data in upstream.events():
        if data is None:
            if upstream.done:
                break
            await response.write(raw)
            continue
        relay = observe_chunk(outcome, data)
        if plan_.client_wants_usage:
            await response.write(raw)
        elif relay:
            if "usage" in data:  # asked for by us, not the client: strip it
                raw = _without_usage(raw, data)
            await response.write(raw)
    await response.write(b"data: [DONE]\n\n")


_NULL_USAGE = (b',"usage":null', b', "usage": null')


def _without_usage(raw: bytes, data: dict[str, Any]) -> bytes:
    """The frame minus the ``usage`` key the client did not ask for.

    Providers that were asked for usage put ``"usage":null`` in every chunk; cutting those bytes
    is exact (inside a JSON string the quotes would be escaped) and avoids re-serialising every
    chunk.  Anything else is re-serialised without the key.
    """
    if data["usage"] is None:
        for pattern in _NULL_USAGE:
            if raw.count(pattern) == 1:
                return raw.replace(pattern, b"")
    return b"data: " + orjson.dumps({k: v for k, v in data.items() if k != "usage"}) + b"\n\n"


async def _send_stream_error(response: web.StreamResponse, exc: ProxyError) -> None:
    if response.prepared:
        await _write_quietly(response, b"data: " + orjson.dumps(exc.body()) + b"\n\n")


def _cost_comment(entry: LedgerEntry) -> bytes:
    payload = {"request_id": entry.request_id, "model": entry.served_model,
               "cost_usd": format_usd(entry.cost_nanos), "usage": "reported" if entry.usage_reported else "estimated",
               "prompt_tokens": entry.prompt_tokens, "completion_tokens": entry.completion_tokens}
    return b": costproxy " + orjson.dumps(payload) + b"\n\n"


async def _write_quietly(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except (ConnectionError, RuntimeError):
        pass


async def list_models(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    created = int(time.time())
    data: list[dict[str, Any]] = [
        {"id": m.id, "object": "model", "created": created, "owned_by": m.provider,
         "costproxy": {"kind": m.kind, "tier": m.tier, "context_window": m.context_window,
                       "capabilities": sorted(m.capabilities),
                       "price_per_mtok": {"input": str(m.price.input), "output": str(m.price.output),
                                          "cached_input": None if m.price.cached_input is None
                                          else str(m.price.cached_input)}}}
        for m in services.registry.models.values()
    ]
    for virtual in VIRTUAL_MODELS:
        data.append({"id": virtual, "object": "model", "created": created, "owned_by": "costproxy",
                     "costproxy": {"kind": "virtual"}})
    return web.json_response({"object": "list", "data": data})


VIRTUAL_MODELS = ("auto", "auto:economy", "auto:balanced", "auto:quality")


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", make_handler("chat/completions"))
        app.router.add_post(f"{prefix}/completions", make_handler("completions"))
        app.router.add_post(f"{prefix}/embeddings", make_handler("embeddings"))
        app.router.add_get(f"{prefix}/models", list_models)
