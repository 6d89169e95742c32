"""Webhook subscriptions, their delivery history, and the recent events (admin API).

``GET|POST  /api/v1/webhooks``                          list, create (the secret is shown once, at creation)
``GET|PATCH|DELETE /api/v1/webhooks/{id}``              one subscription
``POST /api/v1/webhooks/{id}/rotate-secret``           a new signing secret (shown once)
``POST /api/v1/webhooks/{id}/test``                    send a signed ``webhook.test`` event now
``GET  /api/v1/webhooks/{id}/deliveries``              history, newest first (``?status=&limit=``)
``GET  /api/v1/webhooks/{id}/deliveries/{deliveryId}`` one delivery with every attempt
``POST /api/v1/webhooks/{id}/deliveries/{deliveryId}/redeliver``  send the same event again
``GET  /api/v1/events``                                recent events (``?type=&limit=``); read-only tokens too

Subscriptions are admin-only (their URLs often carry secrets, Slack's do).  A subscription body:
``{url, events?: [type…], format?: json|slack, budgetIds?: […], scopes?: [{scopeType, scopeId}],
enabled?, description?, secret?}``.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.manager import AlertManager
from costproxy.alerts.webhooks import (
    DELIVERY_STATES,
    EVENT_TYPES,
    Subscription,
    WebhookInvalid,
    new_secret,
    subscription_from_json,
)
from costproxy.budgets.codec import SCOPE_FROM_JSON
from costproxy.errors import InvalidRequest, NotFound
from costproxy.http.budgets_api import actor, catalog_of, manager_of, viewer
from costproxy.http.keys_api import json_body, require_admin


def _alerting(request: web.Request) -> tuple[AlertCatalog, AlertManager]:
    catalog, manager = catalog_of(request.app), manager_of(request.app)
    if catalog is None or manager is None:
        raise NotFound("alerting is disabled in this deployment (alerts.enabled: false)")
    return catalog, manager


def _subscription(request: web.Request) -> tuple[AlertCatalog, AlertManager, Subscription]:
    require_admin(request)
    catalog, manager = _alerting(request)
    sub = catalog.subscriptions.get(request.match_info["webhook_id"])
    if sub is None:
        raise NotFound(f"no webhook subscription {request.match_info['webhook_id']!r}")
    return catalog, manager, sub


def _now_ms(manager: AlertManager) -> int:
    return int(manager.sender.wall() * 1000)


async def _parse(request: web.Request, manager: AlertManager, sub_id: str,
                 base: Subscription | None) -> Subscription:
    body = await json_body(request)
    try:
        return subscription_from_json(body, sub_id=sub_id, now_ms=_now_ms(manager), actor=actor(request), base=base)
    except WebhookInvalid as exc:
        raise InvalidRequest(str(exc), param=exc.field) from None


async def list_webhooks(request: web.Request) -> web.Response:
    require_admin(request)
    catalog, _ = _alerting(request)
    subs = sorted(catalog.subscriptions.values(), key=lambda s: s.created_at_ms)
    return web.json_response({"data": [s.to_json() for s in subs], "eventTypes": list(EVENT_TYPES)})


async def create_webhook(request: web.Request) -> web.Response:
    require_admin(request)
    catalog, manager = _alerting(request)
    sub = await _parse(request, manager, "whk_" + uuid.uuid4().hex[:16], None)
    await catalog.put_subscription(sub)
    return web.json_response(sub.to_json(reveal_secret=True), status=201)


async def get_webhook(request: web.Request) -> web.Response:
    return web.json_response(_subscription(request)[2].to_json())


async def update_webhook(request: web.Request) -> web.Response:
    catalog, manager, sub = _subscription(request)
    updated = await _parse(request, manager, sub.id, sub)
    await catalog.put_subscription(updated)
    return web.json_response(updated.to_json(reveal_secret=updated.secret != sub.secret))


async def delete_webhook(request: web.Request) -> web.Response:
    catalog, _, sub = _subscription(request)
    await catalog.delete_subscription(sub.id)
    return web.json_response({"id": sub.id, "deleted": True})


async def rotate_secret(request: web.Request) -> web.Response:
    catalog, manager, sub = _subscription(request)
    rotated = subscription_from_json({"secret": new_secret()}, sub_id=sub.id, now_ms=_now_ms(manager),
                                     actor=actor(request), base=sub)
    await catalog.put_subscription(rotated)
    return web.json_response(rotated.to_json(reveal_secret=True))


async def test_webhook(request: web.Request) -> web.Response:
    _, manager, sub = _subscription(request)
    delivery = await manager.send_test(sub, actor(request))
    return web.json_response(delivery.to_json(), status=202)


async def list_deliveries(request: web.Request) -> web.Response:
    _, manager, sub = _subscription(request)
    state = request.query.get("status")
    if state is not None and state not in DELIVERY_STATES:
        raise InvalidRequest(f"'status' must be one of {', '.join(DELIVERY_STATES)}", param="status")
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise InvalidRequest("'limit' must be an integer", param="limit") from None
    found = await manager.sender.history(sub.id, limit, state)
    return web.json_response({"subscriptionId": sub.id, "data": [d.to_json(with_event=False) for d in found]})


async def get_delivery(request: web.Request) -> web.Response:
    _, manager, sub = _subscription(request)
    delivery = await manager.sender.get(sub.id, request.match_info["delivery_id"])
    if delivery is None:
        raise NotFound(f"no delivery {request.match_info['delivery_id']!r} for webhook {sub.id!r}")
    return web.json_response(delivery.to_json())


async def redeliver(request: web.Request) -> web.Response:
    _, manager, sub = _subscription(request)
    delivery = await manager.sender.get(sub.id, request.match_info["delivery_id"])
    if delivery is None:
        raise NotFound(f"no delivery {request.match_info['delivery_id']!r} for webhook {sub.id!r}")
    again = await manager.sender.redeliver(delivery)
    return web.json_response(again.to_json(), status=202)


async def list_events(request: web.Request) -> web.Response:
    _, manager = _alerting(request)
    kind = request.query.get("type")
    try:
        limit = min(1000, max(1, int(request.query.get("limit", "100"))))
    except ValueError:
        raise InvalidRequest("'limit' must be an integer", param="limit") from None
    token = viewer(request)
    events = []
    for event in await manager.store.items("events"):
        payload = event.get("payload", {})
        scope = (SCOPE_FROM_JSON.get(str(payload.get("scopeType"))) or "", str(payload.get("scopeId")))
        if (kind is None or event["type"] == kind) and (token is None or token.sees(*scope)):
            events.append(event)
        if len(events) >= limit:
            break
    return web.json_response({"data": events})


def add_routes(app: web.Application) -> None:
    add = app.router
    add.add_get("/api/v1/webhooks", list_webhooks)
    add.add_post("/api/v1/webhooks", create_webhook)
    add.add_get("/api/v1/webhooks/{webhook_id}", get_webhook)
    add.add_patch("/api/v1/webhooks/{webhook_id}", update_webhook)
    add.add_delete("/api/v1/webhooks/{webhook_id}", delete_webhook)
    add.add_post("/api/v1/webhooks/{webhook_id}/rotate-secret", rotate_secret)
    add.add_post("/api/v1/webhooks/{webhook_id}/test", test_webhook)
    add.add_get("/api/v1/webhooks/{webhook_id}/deliveries", list_deliveries)
    add.add_get("/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}", get_delivery)
    add.add_post("/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", redeliver)
    add.add_get("/api/v1/events", list_events)
