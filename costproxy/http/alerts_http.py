"""Wiring of the budget and alerting HTTP surface: ``install(app)`` is called once by ``create_app``.

It adds the routes (budgets, usage and reports, webhooks, scoped tokens, ``/openapi.json``), one
middleware, and a ``cleanup_ctx`` that runs after the services context (it needs the accounts):

- opens the alert store (the app's SQLite file, or Redis when the store is ``redis://``) and the
  ``AlertCatalog`` (subscriptions, read-only tokens, acknowledgements) refreshed every
  ``alerts.refresh_interval_s``; registers ``EXTRAS["scoped_tokens"]`` for the auth middleware;
- starts the ``AlertManager`` with its own HTTP session and subscribes it to the budget accounts;
- on exit stops deliveries (pending ones stay stored and resume at the next start) and closes.

The middleware is where request-level events come from: a ``BudgetExceeded`` leaving a proxy
handler is a ``request.blocked`` (the accounts also see refusals that the pipeline then retries
with a cheaper chain, so they are not the place to count them), and a response whose served model
differs from the concrete model requested is a ``model.switched``.  It also keeps scope-limited
read-only tokens to the routes they may call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import structlog
from aiohttp import web

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.manager import AlertManager, AlertSettings, parse_alert_settings
from costproxy.alerts.sender import SenderSettings, WebhookSender
from costproxy.alerts.store import AlertStore, SqliteAlertStore
from costproxy.budgets.accounts import Accounts
from costproxy.budgets.book import BudgetBook
from costproxy.budgets.codec import parse_budget_config
from costproxy.budgets.model import window_at
from costproxy.errors import BudgetExceeded, ConfigError, Forbidden, StoreUnavailable
from costproxy.http import budgets_api, openapi, tokens_api, webhooks_api
from costproxy.http import usage_api as budget_usage_api
from costproxy.http.budgets_api import CATALOG, MANAGER, catalog_of, manager_of
from costproxy.http.state import ADMIN_ROLE, EXTRAS, PRINCIPAL, REQUEST_ID, SERVICES, SETTINGS, STORE
from costproxy.identity.access_tokens import ROLE_PREFIX
from costproxy.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("costproxy.alerts.manager")


def install(app: web.Application) -> None:
    for module in (budgets_api, budget_usage_api, webhooks_api, tokens_api, openapi):
        module.add_routes(app)
    app.middlewares.append(budget_events_middleware)
    app.cleanup_ctx.append(alerts_ctx)


# --- middleware --------------------------------------------------------------------------------


@web.middleware
async def budget_events_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/api/"):
        role = request.get(ADMIN_ROLE)
        if role is not None and role.startswith(ROLE_PREFIX):
            _check_token_route(request, role)
        return await handler(request)
    try:
        response = await handler(request)
    except BudgetExceeded as exc:
        manager = manager_of(request.app)
        if manager is not None:
            manager.request_blocked(request.get(REQUEST_ID, ""), request.get(PRINCIPAL), exc.details, exc.message,
                                    request.headers.get("x-correlation-id"))
        raise
    requested = response.headers.get("x-costproxy-requested-model")
    if requested is not None:
        _switched(request, requested, response.headers.get("x-costproxy-model"))
    return response


def _check_token_route(request: web.Request, role: str) -> None:
    catalog = catalog_of(request.app)
    token = catalog.tokens.by_role(role) if catalog is not None else None
    if token is None or not token.may_call(request.method, request.path):
        raise Forbidden(f"this read-only token may not call {request.method} {request.path}")


def _switched(request: web.Request, requested: str, served: str | None) -> None:
    manager = manager_of(request.app)
    if manager is None or served is None or not manager.wants("model.switched"):
        return
    asked = request.app[SERVICES].registry.resolve(requested)
    if asked is not None and asked.id != served:  # a concrete model was asked for and another answered
        manager.model_switched(request.get(REQUEST_ID, ""), request.get(PRINCIPAL), requested, served,
                               request.headers.get("x-correlation-id"))


# --- life cycle --------------------------------------------------------------------------------


async def open_alert_store(settings: Settings, app: web.Application, accounts: Accounts) -> AlertStore:
    if settings.store_url.startswith(("redis://", "rediss://")):
        from costproxy.alerts.store_redis import RedisAlertStore
        from costproxy.budgets.redis import RedisBudgetAccounts, redis_client

        if isinstance(accounts, RedisBudgetAccounts):
            prefix = accounts.keys.prefix
        else:
            prefix = parse_budget_config(settings.raw.get("budgets"), str(settings.config_path)).settings.key_prefix
        return RedisAlertStore(redis_client(settings.store_url), prefix, settings.store_url.split("@")[-1])
    store = SqliteAlertStore(app[STORE])
    await store.open()
    return store


def _manager(app: web.Application, catalog: AlertCatalog, store: AlertStore, config: AlertSettings,
             session: aiohttp.ClientSession) -> AlertManager:
    accounts = app[SERVICES].accounts
    sender = WebhookSender(catalog, store, session, SenderSettings(
        max_attempts=config.max_attempts, backoff_base_s=config.backoff_base_s, backoff_max_s=config.backoff_max_s,
        timeout_s=config.timeout_s, concurrency=config.concurrency))
    if not isinstance(accounts, BudgetBook):
        return AlertManager(catalog, store, sender, config)
    book = accounts

    def period_end(budget_id: str, at_ms: int) -> int | None:
        spec = book.budgets.get(budget_id)
        return None if spec is None else window_at(spec, at_ms).end_ms

    manager = AlertManager(catalog, store, sender, config, budgets=book.budgets, clock=book.clock,
                           period_end=period_end)
    book.subscribe(manager.observe)
    return manager


async def alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = parse_alert_settings(settings.raw.get("alerts"), str(settings.config_path))
    if settings.raw.get("webhooks") is not None:  # reserved by settings.py; never silently ignored
        raise ConfigError(str(settings.config_path), "webhooks", "webhook subscriptions are managed through "
                          "/api/v1/webhooks; delivery settings live under alerts:")
    store = await open_alert_store(settings, app, app[SERVICES].accounts)
    catalog = AlertCatalog(store)
    try:
        await catalog.load()
    except StoreUnavailable as exc:
        log.error("alert_catalog_unavailable", error=str(exc))  # retried by the refresh loop
    app[EXTRAS][CATALOG] = catalog
    app[EXTRAS]["scoped_tokens"] = _token_roles(catalog)
    session, manager = None, None
    if config.enabled:  # its own session: a slow receiver never holds an upstream connection
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=config.concurrency * 2))
        manager = _manager(app, catalog, store, config, session)
        await manager.start()
        app[EXTRAS][MANAGER] = manager
    refresher = asyncio.create_task(_refresh(catalog, config.refresh_interval_s), name="costproxy-alert-catalog")
    yield
    refresher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await refresher
    if manager is not None and session is not None:
        await manager.stop()
        await session.close()
    await store.close()


def _token_roles(catalog: AlertCatalog) -> Callable[[str], str | None]:
    def role(presented: str) -> str | None:
        token = catalog.tokens.lookup(presented, int(time.time() * 1000))
        return None if token is None else token.role

    return role


async def _refresh(catalog: AlertCatalog, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await catalog.refresh()
        except StoreUnavailable as exc:
            log.warning("alert_catalog_refresh_failed", error=str(exc))
