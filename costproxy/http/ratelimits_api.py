"""Rate limits through the API, and the response cache's figures.

``GET    /api/v1/rate-limits``                 every limit (``?scopeType=&scopeId=``); YAML ones are ``readOnly``
``POST   /api/v1/rate-limits``                 create (admin)
``GET    /api/v1/rate-limits/{id}``            one limit
``PUT    /api/v1/rate-limits/{id}``  ``PATCH``  ``DELETE``   replace, update, delete (admin; not YAML limits)
``GET    /api/v1/rate-limits/status``          the limits a caller draws from and what is left now:
                                              ``?keyId=&user=&team=&project=&org=``
``GET    /api/v1/cache``                       entries, bytes and bounds of the response cache
``DELETE /api/v1/cache``                       drop every cached answer (admin)

Bodies use the API's camelCase names (``scopeType``: organization, team, project, user, key;
``scopeId``: an id or ``*``; ``requestsPerMinute``, ``tokensPerMinute``, ``burstRequests``,
``burstTokens``).  Changes apply to the next request on this replica, and on the others within
``rate_limits.refresh_interval_s`` (Redis).
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from costproxy.errors import InvalidRequest, NotFound
from costproxy.http.budgets_api import actor
from costproxy.http.keys_api import json_body, require_admin
from costproxy.http.state import BACKEND, SETTINGS
from costproxy.identity.principal import Principal
from costproxy.ratelimits.limiter import RateLimiter
from costproxy.ratelimits.model import Draw, duration, limit_from_json, limit_to_json
from costproxy.wire import JSON_SCOPE, query_value, scope_kind

PRINCIPAL_QUERY = {"keyId": "key_id", "user": "user", "team": "team", "project": "project", "org": "org"}


def limiter_of(request: web.Request) -> RateLimiter:
    limiter = request.app[BACKEND].limits
    if limiter is None:
        raise NotFound("rate limits are not available in this deployment")
    return limiter


async def list_limits(request: web.Request) -> web.Response:
    limiter, query = limiter_of(request), request.query
    raw_kind, scope_id = query_value(query, "scopeType"), query_value(query, "scopeId")
    kind = None if raw_kind is None else scope_kind(raw_kind)
    data = [limit_to_json(limit) for limit in limiter.all() if (kind is None or limit.scope_type == kind)
            and (scope_id is None or limit.scope_id == scope_id)]
    return web.json_response({"data": data, "enabled": limiter.settings.enabled})


async def create_limit(request: web.Request) -> web.Response:
    require_admin(request)
    body = await json_body(request)
    body.setdefault("id", "rl_" + uuid.uuid4().hex[:16])
    if body["id"] == "status":
        raise InvalidRequest("'status' is reserved (GET /api/v1/rate-limits/status); choose another id", param="id")
    stored = await limiter_of(request).create(limit_from_json(body), actor(request))
    return web.json_response(limit_to_json(stored), status=201)


async def get_limit(request: web.Request) -> web.Response:
    return web.json_response(limit_to_json(limiter_of(request).require(request.match_info["limit_id"])))


async def replace_limit(request: web.Request) -> web.Response:
    return await _update_limit(request, merge=False)


async def patch_limit(request: web.Request) -> web.Response:
    return await _update_limit(request, merge=True)


async def _update_limit(request: web.Request, *, merge: bool) -> web.Response:
    """PUT replaces the limit with the body; PATCH applies the body's fields over the current one."""
    require_admin(request)
    limiter = limiter_of(request)
    current = limiter.require(request.match_info["limit_id"])
    body = await json_body(request)
    if body.setdefault("id", current.id) != current.id:
        raise InvalidRequest("the id in the body must match the URL", param="id")
    stored = await limiter.update(limit_from_json(body, base=current if merge else None), actor(request))
    return web.json_response(limit_to_json(stored))


async def delete_limit(request: web.Request) -> web.Response:
    require_admin(request)
    deleted = await limiter_of(request).delete(request.match_info["limit_id"], actor(request))
    return web.json_response({**limit_to_json(deleted), "deleted": True})


async def limit_status(request: web.Request) -> web.Response:
    """What a caller (given by its key, user, team, project and org) may still send now."""
    fields: dict[str, Any] = {}
    for name, attr in PRINCIPAL_QUERY.items():
        value = query_value(request.query, name)
        if value is not None:
            if not value.strip() or len(value) > 256:
                raise InvalidRequest(f"'{name}' must be a non-empty id of at most 256 characters", param=name)
            fields[attr] = value
    if not fields:
        raise InvalidRequest(f"name the caller: one or more of {', '.join(PRINCIPAL_QUERY)}")
    limiter = limiter_of(request)
    draws = await limiter.status(Principal(**fields))
    return web.json_response({"enabled": limiter.settings.enabled, "data": [_draw_json(d) for d in draws]})


def _draw_json(draw: Draw) -> dict[str, Any]:
    reading = draw.reading
    return {"rateLimitId": draw.applied.limit.id, "scopeType": JSON_SCOPE[draw.applied.scope_type],
            "scopeId": draw.applied.scope_id, "metric": draw.metric, "limitPerMinute": draw.meter.rate,
            "burst": draw.meter.burst, "remaining": reading.remaining, "resetMs": reading.reset_ms,
            "reset": duration(reading.reset_ms)}


async def cache_stats(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS].cache
    cache = request.app[BACKEND].cache
    body: dict[str, Any] = {"enabled": settings.enabled and cache is not None, "defaultTtlSeconds":
                            settings.default_ttl_s, "share": settings.share, "header": settings.header}
    if cache is not None:
        stats = await cache.stats()
        body.update(entries=stats.entries, bytes=stats.bytes, maxBytes=stats.max_bytes,
                    maxEntryBytes=stats.max_entry_bytes)
    return web.json_response(body)


async def purge_cache(request: web.Request) -> web.Response:
    require_admin(request)
    cache = request.app[BACKEND].cache
    if cache is None:
        raise NotFound("the response cache is not available in this deployment")
    return web.json_response({"deleted": await cache.purge()})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/rate-limits", list_limits)
    app.router.add_post("/api/v1/rate-limits", create_limit)
    app.router.add_get("/api/v1/rate-limits/status", limit_status)
    app.router.add_get("/api/v1/rate-limits/{limit_id}", get_limit)
    app.router.add_put("/api/v1/rate-limits/{limit_id}", replace_limit)
    app.router.add_patch("/api/v1/rate-limits/{limit_id}", patch_limit)
    app.router.add_delete("/api/v1/rate-limits/{limit_id}", delete_limit)
    app.router.add_get("/api/v1/cache", cache_stats)
    app.router.add_delete("/api/v1/cache", purge_cache)
