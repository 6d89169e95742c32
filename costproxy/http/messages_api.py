"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

The edge parses the Messages body into its chat form (``protocols.messages``) and runs the one
pipeline; a Claude model (``kind: anthropic``) gets the client's body as it is, any other model the
translation (see ``pipeline.exchange``).  Clients authenticate with a costproxy key in ``x-api-key``
(as Anthropic's SDKs send it) or ``Authorization: Bearer``.  ``anthropic-version`` and
``anthropic-beta`` are forwarded to a Claude upstream (the provider's configured version applies
when the client sends none).  Errors have Anthropic's shape (the error middleware picks it for
these paths): ``{"type": "error", "error": {"type", "message", "code"}}``.

``count_tokens`` answers ``{"input_tokens": n}``: the provider's own count for a Claude model whose
provider has ``count_tokens: true``, the proxy's tokenizer count of the chat form otherwise.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from costproxy.errors import UpstreamBadResponse
from costproxy.http.proxy import answer, drained, parsed, read_json, request_context
from costproxy.http.state import REQUEST_ID, SERVICES
from costproxy.pipeline.plan import count_input, encoding_for
from costproxy.protocols.messages import parse_messages
from costproxy.registry import ModelSpec
from costproxy.request import ChatRequest
from costproxy.routing.concrete import unknown_model
from costproxy.routing.router import virtual_mode
from costproxy.settings import ProviderSettings

FORWARDED_HEADERS = ("anthropic-version", "anthropic-beta")
PATHS = ("/v1/messages", "/messages")


def anthropic_path(path: str) -> bool:
    """Whether errors on ``path`` take Anthropic's shape."""
    return path.startswith(PATHS)


def _forwarded(request: web.Request) -> dict[str, str]:
    return {name: request.headers[name] for name in FORWARDED_HEADERS
            if name in request.headers and len(request.headers[name]) <= 512}


@drained
async def create_message(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    ctx = request_context(request, "messages")
    chat = await parsed(services, ctx, _parse(request))
    return await answer(request, services, ctx, chat)


async def _parse(request: web.Request) -> ChatRequest:
    return parse_messages(await read_json(request), _forwarded(request))


async def count_tokens(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    body = await read_json(request)
    chat = parse_messages({**body, "max_tokens": 1, "stream": False}, _forwarded(request))
    model = services.registry.resolve(chat.model) if chat.model else None
    if model is None and chat.model and not virtual_mode(chat.model)[0]:  # as /v1/messages answers it
        raise unknown_model(chat.model)
    if model is not None:
        provider = services.settings.providers[model.provider]
        if provider.kind == "anthropic" and provider.count_tokens:
            return web.json_response({"input_tokens": await _provider_count(request, chat, model, provider)})
    requested = chat.model or services.settings.default_model or "auto"
    tokens = await count_input(services, chat, encoding_for(services, requested, "chat"))
    return web.json_response({"input_tokens": tokens})


async def _provider_count(request: web.Request, chat: ChatRequest, model: ModelSpec,
                          provider: ProviderSettings) -> int:
    """Anthropic's own count of the client's body (without the fields the count endpoint refuses)."""
    services = request.app[SERVICES]
    body = {k: v for k, v in (chat.native or {}).items() if k not in ("max_tokens", "stream")}
    body["model"] = model.upstream_model
    response = await services.upstream.call(provider, "messages/count_tokens", model.upstream_model,
                                            orjson.dumps(body), request[REQUEST_ID],
                                            headers=chat.upstream_headers or None)
    counted = response.data.get("input_tokens")
    if isinstance(counted, bool) or not isinstance(counted, int):
        raise UpstreamBadResponse(f"provider {provider.name} answered a count without input_tokens")
    return counted


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/messages", create_message)
        app.router.add_post(f"{prefix}/messages/count_tokens", count_tokens)
