"""Before the call: tokens in, the route, output caps, the worst case, and the reservation.

The worst case is what the whole chain could cost if every allowed output token is produced for
every one of the ``n`` choices; it is what ``reserve`` holds on the caller's budgets.  The upstream
body is built here too, before anything is reserved, so a body that cannot be serialised is a 400
and never a half-done request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import field, replace
from typing import Any

import orjson
import structlog

from costproxy.analyzer.server_tools import ServerTool, server_tools, stored_prompt_bounds, tool_bounds
from costproxy.analyzer.worst_case import BillableInput, WorstCase, output_cap_within, worst_case
from costproxy.budgets.accounts import BudgetView, Reservation
from costproxy.cache.policy import CachePlan
from costproxy.errors import BudgetExceeded, ContextTooLong, InvalidRequest, UnknownModel, UnpricedTool
from costproxy.pipeline.services import NO_SPAN, Services, step
from costproxy.providers.apis import upstream_api
from costproxy.ratelimits.model import Admission
from costproxy.records import frozen
from costproxy.registry import ENDPOINT_KIND, ModelSpec
from costproxy.request import ANY_OUTPUT_CAP_FIELDS, OUTPUT_CAP_FIELDS, Api, ChatRequest, Endpoint, RequestContext
from costproxy.routing.policy import EMPTY, Constraints
from costproxy.routing.route import MIN_USEFUL_OUTPUT, Route, RouteInput

log = structlog.get_logger("costproxy")
# Texts longer than this (in characters) are tokenized on a worker thread, off the event loop.
OFFLOOP_TOKENIZE_CHARS = 32_000


@frozen
class Plan:
    ctx: RequestContext
    request: ChatRequest
    requested_model: str
    route: Route
    input_tokens: int  # the proxy's count (or the provider's, when larger)
    output_caps: dict[str, int]  # model id -> max output tokens sent upstream (per choice)
    worst_case_nanos: int
    billable: BillableInput
    budget: BudgetView = field(default_factory=BudgetView)
    payloads: dict[str, bytes] = field(default_factory=dict)  # model id -> upstream body, built once
    admission: Admission | None = None  # the rate limits it was admitted under (pipeline.admission)
    cache: CachePlan | None = None  # the response cache's part, when asked for (pipeline.cached)
    unpriced_tools: tuple[str, ...] = ()  # provider-side tool kinds without a fee, passed (no hard budget)

    @property
    def primary(self) -> ModelSpec:
        return self.route.chain[0]

    @property
    def stream(self) -> bool:
        return self.request.stream

    @property
    def body(self) -> Mapping[str, Any]:
        return self.request.body

    @property
    def budget_remaining_nanos(self) -> int | None:
        """Least left on a hard budget of the chain, before the call."""
        return self.budget.remaining_nanos

    def worst_case_on(self, model: ModelSpec) -> WorstCase:
        """The most ``model`` can bill for this request (``analyzer.worst_case``): every billable
        input with the model's tokenizer margin, or the byte bound when money is tight, and every
        allowed output token of every choice."""
        return worst_case(self.billable, model, self.output_caps[model.id], remaining_nanos=self.budget.remaining_nanos)

    def worst_case_of(self, model: ModelSpec) -> int:
        """``worst_case_on``'s amount, in nano-USD."""
        return self.worst_case_on(model).nanos


async def count_billable(services: Services, request: ChatRequest, encoding: str) -> BillableInput:
    """Every billable input of the request (``TokenCounter.billable``), off the loop when large."""
    counter, body, endpoint = services.counter, request.body, request.endpoint.value
    if not counter.has(encoding):  # loaded on first use, never on the event loop
        await asyncio.to_thread(counter.load, encoding)
    if _rough_size(body) > OFFLOOP_TOKENIZE_CHARS:
        return await asyncio.to_thread(counter.billable, endpoint, body, encoding)
    return counter.billable(endpoint, body, encoding)


async def count_input(services: Services, request: ChatRequest, encoding: str) -> int:
    """Input tokens of the request as the proxy counts them (for estimates and selection)."""
    return (await count_billable(services, request, encoding)).tokens


def _rough_size(body: Mapping[str, Any]) -> int:
    """Characters of text in the body, bounded work: enough to decide where to tokenize."""
    total = 0
    for key in ("messages", "prompt", "input", "tools", "functions"):
        value = body.get(key)
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    content = item.get("content")
                    total += len(content) if isinstance(content, str) else 256
                elif isinstance(item, str):
                    total += len(item)
                else:
                    total += 8
    return total


def requested_model_name(services: Services, request: ChatRequest) -> str:
    if request.model is not None:
        return request.model
    if services.settings.default_model:
        return services.settings.default_model
    raise InvalidRequest("'model' is required", param="model")


def encoding_for(services: Services, requested: str, kind: str) -> str:
    spec = services.registry.resolve(requested)
    if spec is not None:
        return spec.encoding
    baseline = services.registry.baseline()
    if baseline is not None and baseline.kind == kind:
        return baseline.encoding
    return "o200k_base"


def output_cap(model: ModelSpec, request: ChatRequest, input_tokens: int, route_cap: int | None) -> int:
    """Most output tokens one choice may produce: request, route cap, model limit, context left."""
    if model.kind == "embedding":
        return 0
    limits = [model.max_output_tokens or model.context_window, model.context_window - input_tokens]
    if request.max_output_tokens is not None:
        limits.append(request.max_output_tokens)
    if route_cap is not None:
        limits.append(route_cap)
    cap = min(limits)
    if cap <= 0:
        raise ContextTooLong(
            f"{input_tokens} prompt tokens leave no room for output in {model.id}'s "
            f"context window of {model.context_window} tokens", param="messages")
    return cap


def native_constraints(services: Services, request: ChatRequest, requested: str) -> Constraints:
    """A selected model (``auto``…) for a request with features only its own API has must be one
    whose provider speaks that API; a concrete model is checked by the exchange (a clear 400)."""
    if not request.native_only or services.registry.resolve(requested) is not None:
        return EMPTY
    providers = services.settings.providers
    allowed = frozenset(m.id for m in services.registry.models.values()
                        if upstream_api(providers[m.provider], request.api) is request.api)
    return Constraints(allowed_models=allowed, reasons=(
        f"{', '.join(request.native_only)} need a provider that speaks the {request.api.value} API",))


async def plan(services: Services, ctx: RequestContext, request: ChatRequest) -> Plan:
    kind = ENDPOINT_KIND[request.endpoint]
    requested = requested_model_name(services, request)
    with step(services, "costproxy.count_tokens") as span:
        billable = await count_billable(services, request, encoding_for(services, requested, kind))
        input_tokens = billable.tokens
        tools = server_tools(request.api, native_body(request))
        if tools:
            billable = replace(billable, tools=tool_bounds(request.api, native_body(request), tools,
                                                          services.registry.tool_fees))
        span.set_attribute("costproxy.tokens.input", input_tokens)
    with step(services, "costproxy.budget_view"):
        budget = await services.accounts.view(ctx.principal)
    if budget.remaining_nanos is not None and request.api is Api.RESPONSES \
            and isinstance(native_body(request).get("prompt"), Mapping):  # a stored prompt may carry tools
        billable = replace(billable, tools=stored_prompt_bounds(native_body(request), billable.tools,
                                                                services.registry.tool_fees))
    with step(services, "costproxy.route") as span:
        route = services.router.route(RouteInput(ctx=ctx, body=request.body, requested=requested,
                                                 input_tokens=input_tokens, budget=budget,
                                                 constraints=native_constraints(services, request, requested)))
        span.set_attribute("costproxy.model.requested", requested)
        if span is not NO_SPAN:
            span.set_attribute("costproxy.route.chain", [m.id for m in route.chain])
        if route.decision_id:
            span.set_attribute("costproxy.decision_id", route.decision_id)
    if not route.chain:
        raise UnknownModel(f"model {requested!r} is not served here", param="model")
    unpriced = unpriced_tools(services, request, tools, route.chain)
    if unpriced and budget.remaining_nanos is not None:
        first = unpriced[0]
        raise UnpricedTool(f"the {first.kind!r} tool runs on the provider's side and has no fee in models.yaml's "
                           f"tool_fees, so its cost cannot be bounded under a hard budget: remove the tool, or "
                           f"ask the operator to price it", param=first.param)
    if unpriced:
        log.warning("unpriced_tools_passed", request_id=ctx.request_id, tools=[t.kind for t in unpriced],
                    model=route.chain[0].id)
    caps: dict[str, int] = {}
    chain: list[ModelSpec] = []
    for position, model in enumerate(route.chain):
        try:
            caps[model.id] = output_cap(model, request, input_tokens, route.max_output_tokens)
        except ContextTooLong:
            if position == 0:
                raise
            continue  # a fallback that cannot hold this prompt is dropped
        chain.append(model)
    known: dict[str, int] = {}  # model id -> worst case at its final cap, where fit_caps priced it
    if budget.remaining_nanos is not None:
        fit_caps(billable, chain, caps, budget.remaining_nanos, known)
    if len(chain) != len(route.chain):
        route = replace(route, chain=tuple(chain))
    worst = max(known[m.id] if m.id in known else
                worst_case(billable, m, caps[m.id], remaining_nanos=budget.remaining_nanos).nanos for m in chain)
    return Plan(ctx=ctx, request=request, requested_model=requested, route=route, input_tokens=input_tokens,
                output_caps=caps, worst_case_nanos=worst, billable=billable, budget=budget,
                unpriced_tools=tuple(dict.fromkeys(t.kind for t in unpriced)))


def native_body(request: ChatRequest) -> Mapping[str, Any]:
    """The body in the client's own API (the chat form is derived from it for other APIs)."""
    return request.native if request.native is not None else request.body


def unpriced_tools(services: Services, request: ChatRequest, tools: list[ServerTool],
                   chain: tuple[ModelSpec, ...]) -> list[ServerTool]:
    """The provider-side tools some model of the chain would be sent without a fee for them (a
    model whose provider needs a translation never receives them: no fee applies there)."""
    if not tools:
        return []
    providers = services.settings.providers
    native = [m for m in chain if upstream_api(providers[m.provider], request.api) is request.api]
    return [t for t in tools if any(t.kind not in m.fees for m in native)]


def fit_caps(billable: BillableInput, chain: list[ModelSpec], caps: dict[str, int], remaining: int,
             known: dict[str, int] | None = None) -> None:
    """Lower each model's output cap so its worst case fits what the tightest hard budget has left,
    as long as it may still say ``MIN_USEFUL_OUTPUT`` tokens; a model that cannot is left as it is
    (the reservation then refuses it, or narrows the chain to the models that fit).  ``known``
    receives each model's worst case at its final cap (nano-USD), so the plan need not price it again."""
    known = {} if known is None else known
    for model in chain:
        cap = caps[model.id]
        case = worst_case(billable, model, cap, remaining_nanos=remaining)
        known[model.id] = case.nanos
        if model.kind == "embedding" or case.nanos <= remaining:
            continue
        fitted = min(cap, output_cap_within(billable, model, remaining, case.input_tokens))
        if fitted >= min(MIN_USEFUL_OUTPUT, cap) and fitted > 0:
            fitted_nanos = worst_case(billable, model, fitted, remaining_nanos=remaining).nanos
            if fitted_nanos <= remaining:
                caps[model.id], known[model.id] = fitted, fitted_nanos


async def reserve(services: Services, plan_: Plan) -> tuple[Plan, Reservation]:
    """Reserve the worst case of the whole chain; if the budget cannot hold that, keep only the
    models whose worst case fits what the primary needs (a fallback never overspends)."""
    accounts, ctx = services.accounts, plan_.ctx
    try:
        with step(services, "costproxy.reserve") as span:
            span.set_attribute("costproxy.reserve.nanos", plan_.worst_case_nanos)
            return plan_, await accounts.reserve(ctx.request_id, ctx.principal, plan_.worst_case_nanos)
    except BudgetExceeded:
        need = plan_.worst_case_of(plan_.primary)
        if need == plan_.worst_case_nanos:
            raise
    chain = tuple(m for m in plan_.route.chain if plan_.worst_case_of(m) <= need)
    narrowed = replace(plan_, route=replace(plan_.route, chain=chain), worst_case_nanos=need)
    return narrowed, await accounts.reserve(ctx.request_id, ctx.principal, need)


def upstream_payload(plan: Plan, model: ModelSpec) -> bytes:
    """The body sent to ``model``'s provider: the client's, with the upstream model name, the
    output cap the budget needs, and (streams) a request for usage; built once per model."""
    cached = plan.payloads.get(model.id)
    if cached is not None:
        return cached
    body = dict(plan.body)
    body["model"] = model.upstream_model
    if plan.request.native is not None and "reasoning" not in model.capabilities and "reasoning_effort" in body:
        # translated from Messages' thinking or Responses' reasoning.effort: a model that cannot reason
        # refuses the field (400 unsupported_parameter); it answers without thinking instead
        del body["reasoning_effort"]
    if plan.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True  # needed to settle exactly; stripped if the client didn't ask
        body["stream_options"] = options
    body.update(_output_limits(plan, model))
    try:
        payload = plan.payloads[model.id] = orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"the request body cannot be forwarded: {exc} (JSON nests at most 254 levels deep)"
                             ) from None
    return payload


def output_limit_needed(plan: Plan, model: ModelSpec) -> bool:
    """Whether the cap is tighter than what the client asked or the upstream would apply."""
    if model.kind == "embedding":
        return False
    cap = plan.output_caps[model.id]
    asked = plan.request.max_output_tokens
    upstream_default = min(model.max_output_tokens or model.context_window,
                           model.context_window - plan.input_tokens)
    return not (asked == cap or (asked is None and cap >= upstream_default))


def _output_limits(plan: Plan, model: ModelSpec) -> dict[str, int]:
    """The output-limit fields to set, if the cap is tighter than what the upstream would apply:
    every output-cap field the request carries that asks for more than the cap is lowered to it
    (an upstream may honour either ``max_completion_tokens`` or ``max_tokens``, so capping one and
    forwarding the other unchanged would let it bill past the reservation); a request that carries
    none gets the one its endpoint and model read."""
    if not output_limit_needed(plan, model):
        return {}
    cap = plan.output_caps[model.id]
    present = [key for key in OUTPUT_CAP_FIELDS if plan.body.get(key) is not None]
    if present:
        return {key: cap for key in present if not _within(plan.body[key], cap)}
    if plan.request.endpoint is Endpoint.CHAT and "reasoning" in model.capabilities:
        return {"max_completion_tokens": cap}
    return {"max_tokens": cap}


def _within(value: Any, cap: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= cap


def cap_foreign_limits(body: dict[str, Any], own: str, cap: int) -> None:
    """Lower to ``cap`` every output-cap field of another API (``ANY_OUTPUT_CAP_FIELDS`` but
    ``own``) that a native body forwarded as it is carries: a lenient upstream may honour it."""
    for key in ANY_OUTPUT_CAP_FIELDS:
        if key != own and body.get(key) is not None and not _within(body[key], cap):
            body[key] = cap
