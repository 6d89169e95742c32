"""The composition root: builds the aiohttp application from ``Settings``.

Start-up order (``cleanup_ctx`` tears down in reverse): ledger store → tokenizer encodings (loaded
off the event loop) → upstream HTTP session → client keys → budget accounts → router → services.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import NoOpTracer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from costproxy.analyzer.encodings import load_encodings
from costproxy.analyzer.tokens import TokenCounter
from costproxy.budgets.accounts import Accounts
from costproxy.budgets.factory import open_accounts
from costproxy.errors import StoreUnavailable
from costproxy.http import keys_api as admin_routes
from costproxy.http import middlewares, proxy, selection_api
from costproxy.http.alerts_http import install as install_budget_http
from costproxy.http.state import EXTRAS, HTTP_SESSION, KEY_STORE, KEYRING, METRICS, SERVICES, SETTINGS, STORE, TRACER
from costproxy.identity.key_store import KeyStore, open_key_store
from costproxy.identity.principal import KeyRecord, KeyRing
from costproxy.ledger.mirror import stop_if_cancelled
from costproxy.observability import make_metrics, make_tracer
from costproxy.pipeline import Router, Services
from costproxy.routing.router import SelectionRouter, build_router
from costproxy.settings import Settings
from costproxy.store.sqlite import SqliteStore, sqlite_path

log = structlog.get_logger("costproxy")

AccountsFactory = Callable[[Settings, SqliteStore], Awaitable[Accounts]]
RouterFactory = Callable[[Settings], Awaitable[Router]]


def ledger_path(settings: Settings) -> str:
    """SQLite file of the ledger and keys; with a Redis store it is this replica's local mirror:
    ``store.local_path`` with ``{host}`` and ``{port}`` expanded, relative to the config file."""
    if settings.store_url.startswith(("sqlite:///", "memory://")):
        return sqlite_path(settings.store_url)
    local = settings.store_local_path.format(host=socket.gethostname(), port=settings.server.port)
    return os.path.normpath(settings.config_path.parent / local)


async def default_router(settings: Settings) -> Router:
    return await asyncio.to_thread(build_router, settings)


def create_app(
    settings: Settings,
    *,
    span_exporter: SpanExporter | None = None,
    accounts_factory: AccountsFactory | None = None,
    router_factory: RouterFactory | None = None,
) -> web.Application:
    tracer = make_tracer(settings.tracing, span_exporter)
    chain = [middlewares.errors_middleware, middlewares.auth_middleware]
    if not isinstance(tracer, NoOpTracer):  # no tracing: no middleware layer to pay for
        chain.insert(1, middlewares.tracing_middleware)
    app = web.Application(middlewares=chain, client_max_size=settings.server.max_body_bytes)
    app[SETTINGS] = settings
    app[METRICS] = make_metrics()
    app[TRACER] = tracer
    app[EXTRAS] = {}
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_session_ctx)
    app.cleanup_ctx.append(_services_ctx(accounts_factory or open_accounts, router_factory or default_router))
    proxy.add_routes(app)
    admin_routes.add_routes(app)
    selection_api.add_routes(app)
    install_budget_http(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = SqliteStore(ledger_path(app[SETTINGS]))
    await store.open()
    app[STORE] = store
    keys = app[KEY_STORE] = open_key_store(app[SETTINGS], store)
    seen, records = await _load_keys(keys)
    app[KEYRING] = KeyRing(records)
    refresher = asyncio.create_task(_refresh_keys(app, seen), name="costproxy-key-refresh")
    yield
    refresher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await refresher
    await keys.close()
    await store.close()


KEY_REFRESH_SECONDS = 2.0


async def _load_keys(keys: KeyStore) -> tuple[int | None, list[KeyRecord]]:
    """Version and keys at start-up; an unreachable store starts empty (the refresher retries)."""
    try:
        return await keys.version(), await keys.load_all()
    except StoreUnavailable as exc:
        log.error("client_keys_unavailable", error=str(exc))
        return None, []


async def _refresh_keys(app: web.Application, seen: int | None) -> None:
    """Pick up keys created or revoked by another process (the CLI, another replica) within ~2 s.
    While the key store is unreachable, auth keeps answering from the keys last loaded."""
    keys = app[KEY_STORE]
    while True:
        await asyncio.sleep(KEY_REFRESH_SECONDS)
        stop_if_cancelled()  # redis-py can swallow a cancellation: the loop checks on every turn
        try:
            version = await keys.version()
            if version != seen:
                app[KEYRING].replace(await keys.load_all())
                seen = version
        except StoreUnavailable:
            continue


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, ttl_dns_cache=300, keepalive_timeout=60)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True, raise_for_status=False)
    app[HTTP_SESSION] = session
    yield
    await session.close()


def _services_ctx(accounts_factory: AccountsFactory,
                  router_factory: RouterFactory) -> Callable[[web.Application], AsyncIterator[None]]:
    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        from costproxy.providers.client import UpstreamClient

        settings = app[SETTINGS]
        encodings = await asyncio.to_thread(load_encodings, directory=settings.encodings_dir)
        accounts = await accounts_factory(settings, app[STORE])
        app[SERVICES] = Services(
            settings=settings,
            registry=settings.registry,
            counter=TokenCounter(encodings),
            upstream=UpstreamClient(app[HTTP_SESSION]),
            accounts=accounts,
            router=await router_factory(settings),
            tracer=app[TRACER],
        )
        reloader = asyncio.create_task(_reload_rules(app), name="costproxy-rules-reload")
        yield
        reloader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reloader
        close = getattr(accounts, "close", None)
        if close is not None:
            await close()

    return services_ctx


RULES_POLL_SECONDS = 2.0


async def _reload_rules(app: web.Application) -> None:
    """Hot reload of ``rules/``: poll for changes off the loop; a bad file keeps the last good set."""
    router = app[SERVICES].router
    if not isinstance(router, SelectionRouter) or router.rules is None:
        return
    holder = router.rules
    while True:
        await asyncio.sleep(RULES_POLL_SECONDS)
        result = await asyncio.to_thread(holder.reload_if_changed)
        if result is None:
            continue
        if result.ok:
            log.info("rules_reloaded", summary=result.summary())
        else:
            log.error("rules_reload_failed", errors=[str(e) for e in result.errors],
                      kept=holder.current.digest)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready = SERVICES in request.app
    return web.json_response({"status": "ready" if ready else "starting"}, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


def run(settings: Settings, **kwargs: Any) -> None:
    app = create_app(settings, **kwargs)
    web.run_app(app, host=settings.server.host, port=settings.server.port,
                access_log=web_access_logger() if settings.server.access_log else None, print=None)


def web_access_logger() -> Any:
    import logging

    return logging.getLogger("aiohttp.access")
