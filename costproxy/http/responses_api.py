"""OpenAI's Responses API: ``POST /v1/responses``, ``GET`` / ``DELETE /v1/responses/{id}`` and
``GET /v1/responses/{id}/input_items`` (also without ``/v1``).

The edge parses the Responses body into its chat form (``protocols.responses``) and runs the one
pipeline: a model whose provider has ``responses_api: true`` gets the client's body as it is
(reasoning items, built-in tools, ``include``…), any other model the translation (see
``pipeline.exchange``).  ``previous_response_id`` is resolved here, from the proxy's own store
(``store.responses``): the stored conversation (input and output) is put before the new input, so a
follow-up works whichever model answers it.  A response is stored unless the request says
``store: false`` (or ``responses.enabled`` is false); it belongs to the caller who created it.
Errors have OpenAI's shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from costproxy.errors import InvalidRequest, NotFound
from costproxy.http.proxy import drained, parsed, read_json, relay_stream, request_context, unary_response
from costproxy.http.state import PRINCIPAL, REQUEST_ID, RESPONSES, SERVICES, SETTINGS, STORE, TRUSTED_HEADERS
from costproxy.ledger.entry import Status
from costproxy.pipeline.run import run_stream, run_unary
from costproxy.protocols.responses import parse_responses
from costproxy.request import ChatRequest
from costproxy.store.responses import ResponseStore, owner_of


def _owner(request: web.Request) -> str:
    return owner_of(request[PRINCIPAL], request.get(TRUSTED_HEADERS, {}).get("x-tenant-id"))


async def _parse(request: web.Request) -> ChatRequest:
    body = await read_json(request)
    previous = body.get("previous_response_id")
    history: list[Any] | None = None
    if previous is not None:
        if not isinstance(previous, str) or not previous:
            raise InvalidRequest("'previous_response_id' must be a non-empty string", param="previous_response_id")
        stored = await request.app[RESPONSES].get(previous, _owner(request))
        if stored is None:
            raise NotFound(f"Previous response with id '{previous}' not found.", param="previous_response_id")
        history = stored.conversation()
    return parse_responses(body, history)


async def _keep(request: web.Request, chat: ChatRequest, response: dict[str, Any] | None, entry_status: str) -> None:
    """Store the answer unless the client said ``store: false`` or the call did not complete."""
    store = request.app[RESPONSES]
    native = chat.native or {}
    if (not store.settings.enabled or native.get("store") is False or response is None
            or entry_status not in (Status.OK, Status.CACHE_HIT) or not isinstance(response.get("id"), str)):
        return
    await store.save(_owner(request), request[REQUEST_ID], list(native.get("input") or []), response)


@drained
async def create_response(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    ctx = request_context(request, "responses")
    chat = await parsed(services, ctx, _parse(request))
    if chat.stream:
        run = await run_stream(services, ctx, chat)
        response, entry = await relay_stream(request, run)
        await _keep(request, chat, run.final, entry.status)
        return response
    result = await run_unary(services, ctx, chat)
    await _keep(request, chat, result.data, result.entry.status)
    return unary_response(services, result)


async def _stored(request: web.Request) -> tuple[ResponseStore, Any]:
    store = request.app[RESPONSES]
    response_id = request.match_info["response_id"]
    stored = await store.get(response_id, _owner(request))
    if stored is None:
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return store, stored


async def get_response(request: web.Request) -> web.Response:
    if request.query.get("stream") in ("true", "1"):
        raise InvalidRequest("a stored response cannot be streamed again; GET it without stream", param="stream")
    _, stored = await _stored(request)
    return web.json_response(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    response_id = request.match_info["response_id"]
    if not await request.app[RESPONSES].delete(response_id, _owner(request)):
        raise NotFound(f"Response with id '{response_id}' not found.", param="response_id")
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def input_items(request: web.Request) -> web.Response:
    """The stored input items (history included), newest first unless ``order=asc``."""
    _, stored = await _stored(request)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be asc or desc", param="order")
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100", param="limit")
    items = [{"id": f"item_{stored.id}_{i}", **item} if isinstance(item, dict) and "id" not in item else item
             for i, item in enumerate(stored.input)]
    if order == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item.get("id") if isinstance(item, dict) else None for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return web.json_response({"object": "list", "data": page, "has_more": len(items) > limit,
                              "first_id": page[0].get("id") if page else None,
                              "last_id": page[-1].get("id") if page else None})


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = ResponseStore(app[STORE], settings.responses)
    await store.open()
    app[RESPONSES] = store
    yield


def add_routes(app: web.Application) -> None:
    """The routes, and the store's start-up (after the SQLite store of ``create_app`` opened)."""
    app.cleanup_ctx.append(_store_ctx)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/responses", create_response)
        app.router.add_get(f"{prefix}/responses/{{response_id}}", get_response)
        app.router.add_delete(f"{prefix}/responses/{{response_id}}", delete_response)
        app.router.add_get(f"{prefix}/responses/{{response_id}}/input_items", input_items)
