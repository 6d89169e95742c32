"""Read-only scoped tokens for agents and dashboards (admin only; see ``costproxy.identity.access_tokens``).

``POST   /api/v1/tokens``        ``{name?, scopes?: [{scopeType, scopeId}], expiresAt? | expiresInSeconds?}``
                                 → the token, shown once (only its SHA-256 is stored)
``GET    /api/v1/tokens``        every token (no secrets)
``GET    /api/v1/tokens/{id}``   one token
``DELETE /api/v1/tokens/{id}``   revoke (effective at once here, on other replicas within
                                 ``alerts.refresh_interval_s``)
"""

from __future__ import annotations

import time
from dataclasses import replace

from aiohttp import web

from costproxy.alerts.catalog import AlertCatalog
from costproxy.errors import InvalidRequest, NotFound
from costproxy.http.budgets_api import actor, catalog_of
from costproxy.http.keys_api import json_body, require_admin
from costproxy.identity.access_tokens import TokenInvalid, issue


def _catalog(request: web.Request) -> AlertCatalog:
    require_admin(request)
    catalog = catalog_of(request.app)
    if catalog is None:
        raise NotFound("scoped tokens need the alert store, which is disabled (alerts.enabled: false)")
    return catalog


def _now_ms() -> int:
    return int(time.time() * 1000)


async def create_token(request: web.Request) -> web.Response:
    catalog = _catalog(request)
    try:
        secret, token = issue(await json_body(request), now_ms=_now_ms(), actor=actor(request))
    except TokenInvalid as exc:
        raise InvalidRequest(str(exc), param=exc.field) from None
    await catalog.put_token(token)
    return web.json_response({**token.to_json(_now_ms()), "token": secret}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    catalog = _catalog(request)
    now = _now_ms()
    return web.json_response({"data": [t.to_json(now) for t in catalog.tokens.all()]})


async def get_token(request: web.Request) -> web.Response:
    catalog = _catalog(request)
    token = catalog.tokens.get(request.match_info["token_id"])
    if token is None:
        raise NotFound(f"no token {request.match_info['token_id']!r}")
    return web.json_response(token.to_json(_now_ms()))


async def revoke_token(request: web.Request) -> web.Response:
    catalog = _catalog(request)
    token = catalog.tokens.get(request.match_info["token_id"])
    if token is None:
        raise NotFound(f"no token {request.match_info['token_id']!r}")
    if token.revoked_at_ms is None:
        token = replace(token, revoked_at_ms=_now_ms(), revoked_by=actor(request))
        await catalog.put_token(token)
    return web.json_response(token.to_json(_now_ms()))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/v1/tokens", create_token)
    app.router.add_get("/api/v1/tokens", list_tokens)
    app.router.add_get("/api/v1/tokens/{token_id}", get_token)
    app.router.add_delete("/api/v1/tokens/{token_id}", revoke_token)
