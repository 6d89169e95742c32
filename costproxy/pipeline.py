"""The one place that sequences a request (DESIGN §2).

``plan``     count tokens → route (analyze, steering, select; done by the ``Router``) → worst case
``reserve``  the worst case on every budget of the caller's chain (``Accounts``)
``call``     the upstream, falling back along the chain on retryable failures before any byte
             reached the client
``settle``   from the usage the provider reported (or counted, for streams without usage), in a
             ``finally`` so failures release and disconnects still charge what was generated.

The handlers in ``proxy.py`` turn a ``Plan`` and its result into HTTP; nothing here knows aiohttp.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import orjson
from opentelemetry.trace import NoOpTracer, Tracer

from costproxy.analyzer.tokens import TokenCounter
from costproxy.budgets.accounts import Accounts, BudgetView, Reservation
from costproxy.errors import BudgetExceeded, ContextTooLong, InvalidRequest, ProviderError, UnknownModel
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry
from costproxy.providers.client import UpstreamClient, UpstreamResponse, UpstreamStream
from costproxy.registry import ENDPOINT_KIND, ModelSpec, Registry, Usage
from costproxy.settings import ProviderSettings, Settings

# Texts longer than this (in characters) are tokenized on a worker thread, off the event loop.
OFFLOOP_TOKENIZE_CHARS = 32_000


@dataclass(frozen=True, slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)  # trusted costproxy/tenant headers
    correlation_id: str | None = None
    tenant: str | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RouteInput:
    ctx: RequestContext
    body: Mapping[str, Any]
    requested: str
    input_tokens: int
    budget: BudgetView


@dataclass(frozen=True, slots=True)
class Route:
    chain: tuple[ModelSpec, ...]  # primary first, then fallbacks
    decision_id: str | None = None
    max_output_tokens: int | None = None  # cap demanded by rules/budgets
    task_type: str | None = None
    reasons: tuple[str, ...] = ()
    baseline: ModelSpec | None = None


class Router(Protocol):
    def route(self, request: RouteInput) -> Route: ...

    def record_result(self, model: ModelSpec, ok: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Plan:
    ctx: RequestContext
    body: dict[str, Any]
    requested_model: str
    route: Route
    input_tokens: int
    stream: bool
    client_wants_usage: bool
    output_caps: dict[str, int]  # model id -> max output tokens sent upstream
    worst_case_nanos: int
    budget_remaining_nanos: int | None = None  # least left on a hard budget of the chain, before the call

    @property
    def primary(self) -> ModelSpec:
        return self.route.chain[0]


@dataclass(slots=True)
class Outcome:
    """What happened, filled in as the call proceeds; ``settle`` turns it into a ledger entry."""

    model: ModelSpec
    usage: Usage = field(default_factory=lambda: Usage(reported=False))
    status: str = "ok"
    http_status: int = 200
    error_code: str | None = None
    streamed_text: list[str] = field(default_factory=list)
    usage_seen: bool = False
    cost_nanos: int = 0


@dataclass
class Services:
    settings: Settings
    registry: Registry
    counter: TokenCounter
    upstream: UpstreamClient
    accounts: Accounts
    router: Router
    clock: Callable[[], float] = time.time
    tracer: Tracer = field(default_factory=NoOpTracer)


_ID_PREFIX = os.urandom(8).hex()  # per process: ids stay unique across replicas and restarts
_id_counter = itertools.count()


def new_request_id() -> str:
    return f"req_{_ID_PREFIX}{next(_id_counter):08x}"


class _NoSpan:
    """Stands in for a span when tracing is off: entering, attributes and exit cost nothing."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def step(services: Services, name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A span for one pipeline step, or a free stand-in when the tracer is the no-op tracer."""
    tracer = services.tracer
    if isinstance(tracer, NoOpTracer):
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes)


# --- plan ---------------------------------------------------------------------------------------


async def count_input(services: Services, endpoint: str, body: Mapping[str, Any], encoding: str) -> int:
    counter = services.counter
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty list", param="messages")

        def run() -> int:
            return counter.count_chat(messages, encoding, tools=body.get("tools"),
                                      tool_choice=body.get("tool_choice"),
                                      response_format=body.get("response_format"))
    elif endpoint == "completions":
        prompt = body.get("prompt")
        if prompt is None:
            raise InvalidRequest("'prompt' is required", param="prompt")

        def run() -> int:
            return counter.count_completion_prompt(prompt, encoding)
    else:
        data = body.get("input")
        if data is None or data == [] or data == "":
            raise InvalidRequest("'input' is required", param="input")

        def run() -> int:
            return counter.count_embedding_input(data, encoding)
    if _rough_size(body) > OFFLOOP_TOKENIZE_CHARS:
        return await asyncio.to_thread(run)
    return run()


def _rough_size(body: Mapping[str, Any]) -> int:
    """Characters of text in the body, bounded work: enough to decide where to tokenize."""
    total = 0
    for key in ("messages", "prompt", "input"):
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


def requested_model_name(services: Services, body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        if services.settings.default_model:
            return services.settings.default_model
        raise InvalidRequest("'model' is required", param="model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model")
    return model


def encoding_for(services: Services, requested: str, kind: str) -> str:
    spec = services.registry.resolve(requested)
    if spec is not None:
        return spec.encoding
    baseline = services.registry.baseline()
    if baseline is not None and baseline.kind == kind:
        return baseline.encoding
    return "o200k_base"


def output_cap(model: ModelSpec, body: Mapping[str, Any], input_tokens: int, route_cap: int | None) -> int:
    """Most output tokens this call may produce: request, route cap, model limit, context left."""
    if model.kind == "embedding":
        return 0
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    limits = [model.max_output_tokens or model.context_window, model.context_window - input_tokens]
    if isinstance(asked, int) and not isinstance(asked, bool):
        limits.append(asked)
    if route_cap is not None:
        limits.append(route_cap)
    cap = min(limits)
    if cap <= 0:
        raise ContextTooLong(
            f"{input_tokens} prompt tokens leave no room for output in {model.id}'s "
            f"context window of {model.context_window} tokens", param="messages")
    return cap


async def plan(services: Services, ctx: RequestContext, body: dict[str, Any]) -> Plan:
    kind = ENDPOINT_KIND[ctx.endpoint]
    requested = requested_model_name(services, body)
    with step(services, "costproxy.count_tokens") as span:
        input_tokens = await count_input(services, ctx.endpoint, body, encoding_for(services, requested, kind))
        span.set_attribute("costproxy.tokens.input", input_tokens)
    with step(services, "costproxy.budget_view"):
        budget = await services.accounts.view(ctx.principal)
    with step(services, "costproxy.route") as span:
        route = services.router.route(RouteInput(ctx=ctx, body=body, requested=requested,
                                                 input_tokens=input_tokens, budget=budget))
        span.set_attribute("costproxy.model.requested", requested)
        if span is not _NO_SPAN:
            span.set_attribute("costproxy.route.chain", [m.id for m in route.chain])
        if route.decision_id:
            span.set_attribute("costproxy.decision_id", route.decision_id)
    if not route.chain:
        raise UnknownModel(f"model {requested!r} is not served here", param="model")
    caps: dict[str, int] = {}
    chain: list[ModelSpec] = []
    for position, model in enumerate(route.chain):
        try:
            caps[model.id] = output_cap(model, body, input_tokens, route.max_output_tokens)
        except ContextTooLong:
            if position == 0:
                raise
            continue  # a fallback that cannot hold this prompt is dropped
        chain.append(model)
    worst = max(m.worst_case_cost(input_tokens, caps[m.id]) for m in chain)
    stream = bool(body.get("stream")) and kind != "embedding"
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    return Plan(ctx=ctx, body=body, requested_model=requested, route=replace(route, chain=tuple(chain)),
                input_tokens=input_tokens, stream=stream, client_wants_usage=wants_usage,
                output_caps=caps, worst_case_nanos=worst, budget_remaining_nanos=budget.remaining_nanos)


async def reserve(services: Services, plan_: Plan) -> tuple[Plan, Reservation]:
    """Reserve the worst case of the whole chain; if the budget cannot hold that, keep only the
    models whose worst case fits what the primary needs (a fallback never overspends)."""
    accounts, ctx = services.accounts, plan_.ctx
    try:
        with step(services, "costproxy.reserve") as span:
            span.set_attribute("costproxy.reserve.nanos", plan_.worst_case_nanos)
            return plan_, await accounts.reserve(ctx.request_id, ctx.principal, plan_.worst_case_nanos)
    except BudgetExceeded:
        primary = plan_.primary
        need = primary.worst_case_cost(plan_.input_tokens, plan_.output_caps[primary.id])
        if need == plan_.worst_case_nanos:
            raise
    chain = tuple(m for m in plan_.route.chain
                  if m.worst_case_cost(plan_.input_tokens, plan_.output_caps[m.id]) <= need)
    narrowed = replace(plan_, route=replace(plan_.route, chain=chain), worst_case_nanos=need)
    return narrowed, await accounts.reserve(ctx.request_id, ctx.principal, need)


def upstream_payload(plan: Plan, model: ModelSpec) -> bytes:
    body = dict(plan.body)
    body["model"] = model.upstream_model
    if plan.stream:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True  # needed to settle exactly; stripped if the client didn't ask
        body["stream_options"] = options
    key, value = _output_limit(plan, model)
    if key is not None:
        body[key] = value
    return orjson.dumps(body)


def _output_limit(plan: Plan, model: ModelSpec) -> tuple[str | None, int]:
    """The output-limit field to inject, if the cap is tighter than what the upstream would apply."""
    if model.kind == "embedding":
        return None, 0
    cap = plan.output_caps[model.id]
    body = plan.body
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    upstream_default = min(model.max_output_tokens or model.context_window,
                           model.context_window - plan.input_tokens)
    if asked == cap or (asked is None and cap >= upstream_default):
        return None, 0
    if "max_completion_tokens" in body:
        return "max_completion_tokens", cap
    if plan.ctx.endpoint == "chat/completions" and "reasoning" in model.capabilities:
        return "max_completion_tokens", cap
    return "max_tokens", cap


# --- usage and settlement ------------------------------------------------------------------------


def usage_from(data: Mapping[str, Any]) -> Usage | None:
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    if not isinstance(cached, int):
        cached = 0
    return Usage(prompt_tokens=prompt, completion_tokens=completion or 0, cached_tokens=cached, reported=True)


def final_usage(services: Services, plan: Plan, outcome: Outcome) -> Usage:
    if outcome.usage_seen:
        return outcome.usage
    text = "".join(outcome.streamed_text)
    completion = services.counter.estimate_completion_from_text(text, outcome.model.encoding) if text else 0
    return Usage(prompt_tokens=plan.input_tokens, completion_tokens=completion, reported=False)


def ledger_entry(services: Services, plan: Plan, outcome: Outcome, usage: Usage) -> LedgerEntry:
    ctx = plan.ctx
    baseline = plan.route.baseline
    return LedgerEntry(
        request_id=ctx.request_id,
        ts_ms=int(services.clock() * 1000),
        endpoint=ctx.endpoint,
        status=outcome.status,
        http_status=outcome.http_status,
        key_id=ctx.principal.key_id,
        user=ctx.principal.user,
        team=ctx.principal.team,
        org=ctx.principal.org,
        project=ctx.principal.project,
        requested_model=plan.requested_model,
        served_model=outcome.model.id,
        provider=outcome.model.provider,
        decision_id=plan.route.decision_id,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cost_nanos=outcome.cost_nanos,
        baseline_nanos=baseline.cost(usage) if baseline is not None else outcome.cost_nanos,
        usage_reported=usage.reported,
        stream=plan.stream,
        latency_ms=int((time.monotonic() - ctx.started) * 1000),
        error_code=outcome.error_code,
        task_type=plan.route.task_type,
        correlation_id=ctx.correlation_id,
        tenant=ctx.tenant,
    )


async def settle(services: Services, plan: Plan, reservation: Reservation, outcome: Outcome) -> LedgerEntry:
    """Charge what was used (nothing if the call failed before any usage) and write the ledger."""
    usage = final_usage(services, plan, outcome)
    produced = usage.reported or usage.completion_tokens > 0 or outcome.status == "client_disconnected"
    outcome.usage = usage
    outcome.cost_nanos = outcome.model.cost(usage) if (outcome.status == "ok" or produced) else 0
    if outcome.cost_nanos == 0 and outcome.status != "ok":
        usage = replace(usage, prompt_tokens=0, completion_tokens=0, cached_tokens=0)
    entry = ledger_entry(services, plan, outcome, usage)
    with step(services, "costproxy.settle") as span:
        span.set_attribute("costproxy.cost_nanos", entry.cost_nanos)
        span.set_attribute("costproxy.usage_reported", entry.usage_reported)
        if outcome.cost_nanos == 0 and outcome.status != "ok":
            await asyncio.shield(services.accounts.release(reservation, entry))
        else:
            await asyncio.shield(services.accounts.settle(reservation, entry))
    return entry


# --- calling the upstream ------------------------------------------------------------------------


def provider_of(services: Services, model: ModelSpec) -> ProviderSettings:
    return services.settings.providers[model.provider]


T = TypeVar("T")


async def along_chain(services: Services, plan: Plan, outcome: Outcome, span_name: str,
                      attempt: Callable[[ProviderSettings, ModelSpec, bytes], Awaitable[T]]) -> T:
    """Try each model of the chain until one answers; ``outcome.model`` names the one tried last.

    A retryable failure (timeout, connection error, 429, 5xx) moves on to the next model; any
    other failure, or the last model's, is raised.  Every attempt feeds the circuit breakers.
    """
    last: ProviderError | None = None
    for model in plan.route.chain:
        outcome.model = model
        try:
            with step(services, span_name, {"costproxy.model": model.id, "costproxy.provider": model.provider}):
                return await attempt(provider_of(services, model), model, upstream_payload(plan, model))
        except ProviderError as exc:
            services.router.record_result(model, ok=False)
            last = exc
            if not exc.retryable:
                raise
    assert last is not None
    raise last


async def call_unary(services: Services, plan: Plan, outcome: Outcome) -> UpstreamResponse:
    """Call along the chain; the first success wins and its usage (or text) is recorded."""
    ctx = plan.ctx

    async def attempt(provider: ProviderSettings, model: ModelSpec, payload: bytes) -> UpstreamResponse:
        return await services.upstream.call(provider, ctx.endpoint, model.upstream_model, payload, ctx.request_id)

    response = await along_chain(services, plan, outcome, "costproxy.upstream", attempt)
    services.router.record_result(outcome.model, ok=True)
    usage = usage_from(response.data)
    if usage is not None:
        outcome.usage, outcome.usage_seen = usage, True
    else:
        outcome.streamed_text.extend(_texts_of(response.data))
    return response


async def open_stream(services: Services, plan: Plan, outcome: Outcome) -> UpstreamStream:
    """Open the stream along the chain; the breakers learn its outcome when it ends."""
    ctx = plan.ctx

    async def attempt(provider: ProviderSettings, model: ModelSpec, payload: bytes) -> UpstreamStream:
        return await services.upstream.open_stream(provider, ctx.endpoint, model.upstream_model, payload,
                                                   ctx.request_id)

    return await along_chain(services, plan, outcome, "costproxy.upstream_open_stream", attempt)


def _texts_of(data: Mapping[str, Any]) -> list[str]:
    texts: list[str] = []
    choices = data.get("choices")
    if not isinstance(choices, list):
        return texts
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        for holder in (choice.get("message"), choice.get("delta")):
            if isinstance(holder, dict):
                texts.extend(_message_texts(holder))
        if isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return texts


def _message_texts(message: Mapping[str, Any]) -> list[str]:
    texts = [v for k in ("content", "reasoning_content", "refusal") if isinstance(v := message.get(k), str)]
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                texts.extend(v for k in ("name", "arguments") if isinstance(v := function.get(k), str))
    return texts


def observe_chunk(outcome: Outcome, data: Any) -> bool:
    """Track usage and text of one stream event; ``True`` if the event must reach the client."""
    if not isinstance(data, dict):
        return True
    usage = usage_from(data)
    if usage is not None:
        outcome.usage, outcome.usage_seen = usage, True
    else:
        outcome.streamed_text.extend(_texts_of(data))
    choices = data.get("choices")
    is_usage_only = usage is not None and isinstance(choices, list) and not choices
    return not is_usage_only


def strip_usage(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "usage"}


def chain_names(models: Sequence[ModelSpec]) -> list[str]:
    return [m.id for m in models]
