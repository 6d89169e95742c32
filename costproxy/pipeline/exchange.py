"""How one request is spoken to one upstream: the seam between the client's API and the provider's.

``exchange_for(services, plan, model)`` is chosen per attempt along the fallback chain, by the
client's API (``ChatRequest.api``) and the provider's kind:

====================  ============================  ==========================================
client                provider                      upstream API
====================  ============================  ==========================================
chat completions      openai, azure                 chat completions (as today, untouched)
chat completions      anthropic                     Messages, translated (``protocols.anthropic``)
Responses             openai with ``responses_api`` Responses, native: the client's body
Responses             other openai, azure           chat completions, translated
Responses             anthropic                     Messages, translated via the chat form
Messages              anthropic                     Messages, native: the client's body
Messages              openai, azure                 chat completions, translated
====================  ============================  ==========================================

An ``Exchange`` builds the upstream request (path, body with the output cap the budget needs,
extra headers), gives the pipeline a ``UsageReader`` for what comes back (so settlement reads the
provider's own usage, cache reads and writes included), and turns the answer into the client's API:
``reply`` for a body, ``relay`` for a stream.  Native pass-through relays the provider's bytes;
a translation goes upstream answer → chat form → the client's API.  A request with features only
its own API has (``ChatRequest.native_only``) cannot be translated: a model that would need a
translation is refused with a 400 naming them (and dropped when it is only a fallback).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

import orjson
import structlog

from costproxy.errors import InvalidRequest, ProviderError, ProxyError, UpstreamHTTPError
from costproxy.pipeline.plan import Plan, cap_foreign_limits, output_limit_needed, upstream_payload
from costproxy.pipeline.services import Services, step
from costproxy.pipeline.settle import CHAT_USAGE, EMBEDDINGS_USAGE, UsageReader
from costproxy.protocols import anthropic
from costproxy.protocols.anthropic_stream import AnthropicToChat, stream_error
from costproxy.protocols.messages import error_body, message_from_chat
from costproxy.protocols.messages_stream import ChatToMessages
from costproxy.protocols.responses import new_id, response_from_chat, skeleton
from costproxy.protocols.responses_stream import ChatToResponses
from costproxy.protocols.shapes import DONE, frame, typed
from costproxy.protocols.usage import AnthropicUsage, ResponsesUsage
from costproxy.providers.apis import upstream_api
from costproxy.providers.transport import UpstreamResponse
from costproxy.records import frozen
from costproxy.registry import ModelSpec
from costproxy.request import Api
from costproxy.settings import ProviderSettings

log = structlog.get_logger("costproxy")
_RESPONSES_END = ("response.completed", "response.incomplete", "response.failed", "error")


def _fit_thinking(body: dict[str, Any], asked: int | None, cap: int) -> None:
    """A native Messages body whose ``max_tokens`` the budget lowered: its thinking budget must stay
    below it (Anthropic refuses the call otherwise), so it is lowered too — or, when not even the
    1,024-token minimum fits, the request is refused as the budget's (``budget_exceeded``)."""
    thinking = body.get("thinking")
    if not isinstance(thinking, Mapping) or thinking.get("type") != "enabled" or asked is None or asked <= cap:
        return  # not lowered by the budget: the client's own body goes as it is
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < cap:
        return
    fitted = anthropic.fit_thinking(budget, cap)
    if fitted is None:
        raise anthropic.no_room_to_think(cap, asked, "thinking.budget_tokens")
    body["thinking"] = {**thinking, "budget_tokens": fitted}


class Relay(Protocol):
    """Turns an upstream stream into the client's frames."""

    @property
    def finished(self) -> bool:
        """The upstream's last event went by: stop reading."""
        ...

    @property
    def final(self) -> dict[str, Any] | None:
        """The whole answer, when the client's API has one (a Response)."""
        ...

    @property
    def failure(self) -> ProviderError | None:
        """A failure the upstream reported in a frame that was relayed as it is."""
        ...

    def frames(self, raw: bytes, data: Any, done: bool) -> list[bytes]: ...

    def end(self) -> list[bytes]: ...

    def error(self, exc: ProxyError) -> bytes: ...


@frozen
class Exchange:
    plan: Plan
    model: ModelSpec
    provider: ProviderSettings
    upstream: Api  # the API spoken to the provider

    @property
    def client(self) -> Api:
        return self.plan.request.api

    @property
    def native(self) -> bool:
        return self.upstream is self.client

    @property
    def path(self) -> str:
        """The upstream endpoint, after the provider's base URL."""
        if self.upstream is not Api.CHAT:
            return self.upstream.value  # "responses" or "messages"
        return self.plan.ctx.endpoint if self.client is Api.CHAT else "chat/completions"

    @property
    def headers(self) -> Mapping[str, str] | None:
        return self.plan.request.upstream_headers or None if self.native else None

    def reader(self) -> UsageReader:
        """A fresh reader of this upstream's usage (stream readers keep state)."""
        if self.upstream is Api.MESSAGES:
            return AnthropicUsage()
        if self.upstream is Api.RESPONSES:
            return ResponsesUsage()
        return EMBEDDINGS_USAGE if self.path == "embeddings" else CHAT_USAGE

    def payload(self) -> bytes:
        """The upstream body, built once per model (``Plan.payloads``)."""
        if self.upstream is Api.CHAT:
            return upstream_payload(self.plan, self.model)
        key = f"{self.model.id}#{self.upstream.value}"
        cached = self.plan.payloads.get(key)
        if cached is None:
            cached = self.plan.payloads[key] = orjson.dumps(self._body())
        return cached

    def _body(self) -> dict[str, Any]:
        plan, model = self.plan, self.model
        cap = plan.output_caps[model.id]
        if not self.native:  # a Claude upstream for a chat-form request
            try:
                return anthropic.messages_request(plan.body, model.upstream_model, cap)
            except InvalidRequest as exc:
                if plan.request.api is Api.RESPONSES and exc.param in RESPONSES_FIELDS:
                    # the chat form's name for it: the client sent the Responses field
                    field = RESPONSES_FIELDS[exc.param]
                    raise InvalidRequest(exc.message.replace(f"'{exc.param}'", f"'{field}'")
                                         .replace(exc.param, field), param=field) from None
                raise
        body = {k: v for k, v in (plan.request.native or {}).items() if k != "previous_response_id"}
        body["model"] = model.upstream_model
        if self.upstream is Api.MESSAGES:
            body["max_tokens"] = cap  # required; never above what the client asked
            cap_foreign_limits(body, "max_tokens", cap)
            _fit_thinking(body, plan.request.max_output_tokens, cap)
        else:
            if output_limit_needed(plan, model):
                body["max_output_tokens"] = cap
            cap_foreign_limits(body, "max_output_tokens", cap)
        plan.billable.tools.send(self.upstream, body)  # no more tool calls than were reserved
        return body

    def reply(self, response: UpstreamResponse) -> tuple[bytes, dict[str, Any]]:
        """The upstream's answer in the client's API: its bytes as they are when native."""
        if self.native:
            return response.body, response.data
        chat = anthropic.chat_completion(response.data) if self.upstream is Api.MESSAGES else response.data
        answer = self._from_chat(chat)
        return orjson.dumps(answer), answer

    def _from_chat(self, chat: dict[str, Any]) -> dict[str, Any]:
        native = self.plan.request.native or {}
        if self.client is Api.RESPONSES:
            return response_from_chat(chat, native, new_id("resp"), native.get("previous_response_id"))
        if self.client is Api.MESSAGES:
            return message_from_chat(chat, new_id("msg"))
        return chat

    def relay(self) -> Relay:
        if self.upstream is Api.CHAT and self.client is Api.CHAT:
            return ChatRelay(self.plan.request.include_usage, self.provider.name)
        if self.native:
            return NativeRelay(self.client, self.provider.name)
        return TranslatedRelay(self._decoder(), self._encoder(), self.provider.name)

    def _decoder(self) -> AnthropicToChat | None:
        return AnthropicToChat(self.provider.name) if self.upstream is Api.MESSAGES else None

    def _encoder(self) -> ChatEncoder | ChatToResponses | ChatToMessages:
        plan = self.plan
        native = plan.request.native or {}
        if self.client is Api.RESPONSES:
            return ChatToResponses(skeleton(native, new_id("resp"), self.model.upstream_model,
                                            previous_response_id=native.get("previous_response_id")))
        if self.client is Api.MESSAGES:
            return ChatToMessages(new_id("msg"), plan.input_tokens)
        return ChatEncoder(plan.request.include_usage)


def exchange_for(services: Services, plan: Plan, model: ModelSpec) -> Exchange:
    """The exchange for ``model``; a 400 when its provider would need a translation the request's
    features do not allow, or when its provider cannot serve the endpoint."""
    provider = services.settings.providers[model.provider]
    request = plan.request
    api = upstream_api(provider, request.api)
    if api is not request.api and request.native_only:
        raise InvalidRequest(
            f"model {model.id!r} cannot serve {', '.join(request.native_only)}: provider {provider.name!r} "
            f"does not speak the {request.api.value} API natively, and these have no chat completions form",
            param="model")
    if api is Api.MESSAGES and plan.ctx.endpoint in ("completions", "embeddings"):
        raise InvalidRequest(f"model {model.id!r} is served through Anthropic's Messages API, which has no "
                             f"/{plan.ctx.endpoint}", param="model")
    return Exchange(plan, model, provider, api)


async def fit_chain(services: Services, plan: Plan) -> Plan:
    """Before reserving: count the prompt with the primary's provider when its operator asked for
    that (``count_tokens``), build the primary's upstream body (a body that cannot be sent is a 400,
    never a half-done request), and drop the fallbacks that cannot serve this request."""
    plan = await _provider_count(services, plan)
    chain: list[ModelSpec] = []
    for position, model in enumerate(plan.route.chain):
        try:
            exchange = exchange_for(services, plan, model)
            if position == 0 or exchange.upstream is not Api.CHAT:
                exchange.payload()
        except InvalidRequest:
            if position == 0:
                raise
            continue
        chain.append(model)
    if len(chain) == len(plan.route.chain):
        return plan
    fitted = replace(plan, route=replace(plan.route, chain=tuple(chain)))
    return replace(fitted, worst_case_nanos=max(fitted.worst_case_of(m) for m in chain))


async def _provider_count(services: Services, plan: Plan) -> Plan:
    """The prompt as the primary's provider counts it (Anthropic's ``/messages/count_tokens``); the
    worst case then holds the larger of that and the proxy's own count.  A failed count keeps the
    proxy's count."""
    model = plan.primary
    provider = services.settings.providers[model.provider]
    if provider.kind != "anthropic" or not provider.count_tokens:
        return plan
    exchange = exchange_for(services, plan, model)
    body = {k: v for k, v in exchange._body().items() if k in _COUNTED}
    try:
        with step(services, "costproxy.count_tokens_upstream", {"costproxy.provider": provider.name}):
            response = await services.upstream.call(provider, "messages/count_tokens", model.upstream_model,
                                                    orjson.dumps(body), plan.ctx.request_id, headers=exchange.headers)
    except ProviderError as exc:
        log.warning("provider_count_failed", provider=provider.name, error=exc.message)
        return plan
    counted = response.data.get("input_tokens")
    if not isinstance(counted, int) or isinstance(counted, bool) or counted <= plan.input_tokens:
        return plan
    counted_plan = replace(plan, input_tokens=counted, billable=replace(plan.billable, tokens=counted))
    return replace(counted_plan, worst_case_nanos=max(counted_plan.worst_case_of(m) for m in plan.route.chain))


_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")


# --- stream relays -------------------------------------------------------------------------------


class ChatRelay:
    """Chat chunks to a chat client, byte for byte; the usage chunk the proxy asked for on the
    client's behalf is stripped again (``without_usage``)."""

    final: dict[str, Any] | None = None
    failure: ProviderError | None = None

    def __init__(self, include_usage: bool, provider: str = "") -> None:
        self.include_usage = include_usage
        self.provider = provider
        self.finished = False

    def frames(self, raw: bytes, data: Any, done: bool) -> list[bytes]:
        if not isinstance(data, dict):
            if data is None and done:
                self.finished = True
                return []
            return [raw]
        if _chat_error(data):  # the upstream's own error event ends the stream: relayed as it came, once
            self.failure, self.finished = stream_error(data, self.provider), True
            return [raw]
        if self.include_usage or "usage" not in data:
            return [raw]
        choices = data.get("choices")  # asked for by us, not the client: strip it, or drop a usage-only chunk
        if data["usage"] is not None and isinstance(choices, list) and not choices:
            return []
        return [without_usage(raw, data)]

    def end(self) -> list[bytes]:
        return [] if self.failure is not None else [DONE]

    def error(self, exc: ProxyError) -> bytes:
        return frame(exc.body())


def _chat_error(data: dict[str, Any]) -> bool:
    """A chat stream's error event (``{"error": {...}}``, no choices), as OpenAI sends one mid-stream."""
    return isinstance(data.get("error"), dict) and not data.get("choices")


_NULL_USAGE = (b',"usage":null', b', "usage": null')


def without_usage(raw: bytes, data: dict[str, Any]) -> bytes:
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


# The fields the Responses API's chat form renames (protocols.responses): an error about one names
# the field the client sent
RESPONSES_FIELDS = {"response_format": "text.format", "reasoning_effort": "reasoning.effort",
                    "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
                    "messages": "input"}


class NativeRelay:
    """A Responses or Messages stream to a client of the same API, byte for byte; stops at the
    stream's last event (neither API ends with ``[DONE]``) and keeps a Response for the store."""

    def __init__(self, api: Api, provider: str) -> None:
        self.api = api
        self.provider = provider
        self.finished = False
        self.final: dict[str, Any] | None = None
        self.failure: ProviderError | None = None
        self._sequence = -1  # the last Responses event's sequence_number relayed

    def frames(self, raw: bytes, data: Any, done: bool) -> list[bytes]:
        if isinstance(data, dict):
            kind = data.get("type")
            number = data.get("sequence_number")
            if isinstance(number, int) and not isinstance(number, bool):
                self._sequence = max(self._sequence, number)
            if self.api is Api.MESSAGES:
                self.finished = kind == "message_stop" or kind == "error"
                if kind == "error":
                    self.failure = stream_error(data, self.provider)
            elif kind in _RESPONSES_END:
                self.finished = True
                if kind == "response.completed" or kind == "response.incomplete":
                    self.final = data.get("response") if isinstance(data.get("response"), dict) else None
                else:
                    self.failure = UpstreamHTTPError(f"provider {self.provider} reported {kind}",
                                                     status=502).after_acceptance()  # inside a 2xx stream
        elif data is None and done:
            self.finished = True
            return []
        return [raw]

    def end(self) -> list[bytes]:
        return []

    def error(self, exc: ProxyError) -> bytes:
        if self.api is Api.MESSAGES:
            return typed(error_body(exc))
        return typed({"type": "error", "code": exc.code, "message": exc.message, "param": exc.param,
                      "sequence_number": self._sequence + 1})  # after the upstream's, never back to 0


class ChatEncoder:
    """Chat-form chunks (translated from another upstream API) to a chat client."""

    final: dict[str, Any] | None = None

    def __init__(self, include_usage: bool) -> None:
        self.include_usage = include_usage

    def chunk(self, chunk: Mapping[str, Any]) -> list[bytes]:
        if "usage" in chunk and not self.include_usage:
            return []
        return [frame(chunk)]

    def end(self) -> list[bytes]:
        return [DONE]

    def error(self, exc: ProxyError) -> bytes:
        return frame(exc.body())


class TranslatedRelay:
    """Upstream frames → chat chunks (``decoder``; none for a chat upstream) → the client's API."""

    failure: ProviderError | None = None

    def __init__(self, decoder: AnthropicToChat | None,
                 encoder: ChatEncoder | ChatToResponses | ChatToMessages, provider: str = "") -> None:
        self.decoder = decoder
        self.encoder = encoder
        self.provider = provider
        self.finished = False

    @property
    def final(self) -> dict[str, Any] | None:
        return self.encoder.final

    def frames(self, raw: bytes, data: Any, done: bool) -> list[bytes]:
        if not isinstance(data, dict):
            self.finished = data is None and done
            return []
        if self.decoder is None:
            if _chat_error(data):  # a chat upstream's error event: the client gets its message, in its API
                self.failure, self.finished = stream_error(data, self.provider), True
                return [self.encoder.error(self.failure)]
            chunks: list[dict[str, Any]] = [data]
        else:
            chunks = self.decoder.event(data)
            self.finished = self.decoder.finished
        return [f for chunk in chunks for f in self.encoder.chunk(chunk)]

    def end(self) -> list[bytes]:
        return [] if self.failure is not None else self.encoder.end()

    def error(self, exc: ProxyError) -> bytes:
        return self.encoder.error(exc)
