"""The composition root: ``create_app`` builds the whole application from ``Settings``.

Start-up order (``cleanup_ctx`` tears down in reverse):

1. tracing: the tracer, shut down (flushed) last;
2. store: the SQLite file (ledger, keys), the client key store and its refresher;
3. upstream HTTP session;
4. services: tokenizer encodings (off the loop), budget accounts, the router and its rules
   reloader, the pipeline's ``Services``; request logs and metrics subscribe to its events;
5. alerts: the catalog (webhooks, read-only tokens, acks) and the alert manager, subscribed to
   budget events and to the pipeline's ``RequestBlocked`` / ``ModelSwitched``.

The middleware order is the one list ``MIDDLEWARES``; every piece of state is a typed key of
``http.state``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.manager import AlertManager
from costproxy.alerts.sender import SenderSettings, WebhookSender
from costproxy.alerts.store import AlertStore
from costproxy.analyzer.encodings import STARTUP_ENCODINGS, load_encoding, load_encodings
from costproxy.analyzer.tokens import TokenCounter
from costproxy.background import cancel_and_wait, stop_if_cancelled
from costproxy.budgets.model import window_at
from costproxy.errors import StoreUnavailable
from costproxy.http import (
    analytics_api,
    budgets_api,
    console,
    feedback_api,
    keys_api,
    messages_api,
    middlewares,
    openapi,
    proxy,
    ratelimits_api,
    responses_api,
    routing_api,
    selection_api,
    tokens_api,
    usage_api,
    webhooks_api,
)
from costproxy.http.state import (
    ALERT_CATALOG,
    ALERTS,
    BACKEND,
    BUDGETS,
    CLOCK,
    DRAINING,
    HTTP_SESSION,
    KEY_STORE,
    KEYRING,
    LEDGER,
    METRICS,
    ROUTER,
    SERVICES,
    SETTINGS,
    STORE,
    TRACER,
)
from costproxy.identity.key_store import KeyStore
from costproxy.identity.principal import KeyRecord, KeyRing
from costproxy.observability import (
    budget_event_metrics,
    make_metrics,
    make_tracing,
    refusal_and_cache_metrics,
    request_observer,
)
from costproxy.pipeline.events import EventBus
from costproxy.pipeline.services import Services
from costproxy.providers.client import UpstreamClient
from costproxy.routing.router import build_router
from costproxy.settings import Settings
from costproxy.store.backend import open_backend

log = structlog.get_logger("costproxy")

MIDDLEWARES = (middlewares.errors_middleware, middlewares.tracing_middleware, middlewares.auth_middleware)
ROUTES = (proxy, responses_api, messages_api, keys_api, selection_api, budgets_api, usage_api, webhooks_api,
          tokens_api, openapi, analytics_api, routing_api, ratelimits_api, feedback_api)
KEY_REFRESH_SECONDS = 2.0
RULES_POLL_SECONDS = 2.0

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (observability.make_tracing)
    from opentelemetry.sdk.trace.export import SpanExporter


def create_app(settings: Settings, *, span_exporter: SpanExporter | None = None,
               clock: Callable[[], float] = time.time, metrics_dir: str | None = None) -> web.Application:
    """The application for ``settings``; ``clock`` (tests) is the wall clock of budgets, alerts and
    ledger entries;
    ``metrics_dir``: the directory where several workers keep their metrics (``http.server``)."""
    tracing = make_tracing(settings.tracing, span_exporter)
    chain = [m for m in MIDDLEWARES if tracing.enabled or m is not middlewares.tracing_middleware]
    # bodies are decoded from their Content-Encoding by http.bodies.read_body, errors in the endpoint's shape
    app = web.Application(middlewares=chain, client_max_size=settings.server.max_body_bytes,
                          handler_args={"auto_decompress": False})
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[METRICS] = make_metrics(metrics_dir)
    app[TRACER] = tracing.tracer

    async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(tracing.shutdown)

    app.cleanup_ctx.extend([tracing_ctx, _backend_ctx(clock), _session_ctx, _services_ctx, _alerts_ctx,
                            feedback_api.learning_ctx])
    for module in ROUTES:
        module.add_routes(app)
    console.install(app)  # the web console at /ui; its session is accepted on /api/v1 (http/console_auth.py)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


def _background(coroutine: Coroutine[Any, Any, None], name: str) -> Callable[[], Awaitable[None]]:
    """Start a background task; the returned function cancels it and waits for it to end."""
    task = asyncio.create_task(coroutine, name=name)

    async def stop() -> None:
        await cancel_and_wait([task])

    return stop


# --- store and client keys -----------------------------------------------------------------------


def _backend_ctx(clock: Callable[[], float]) -> Callable[[web.Application], AsyncIterator[None]]:
    async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
        backend = app[BACKEND] = await open_backend(app[SETTINGS], clock=clock)
        app[STORE], app[KEY_STORE], app[BUDGETS] = backend.local, backend.client_keys, backend.budgets
        app[LEDGER] = backend.ledger
        seen, records = await _load_keys(backend.client_keys)
        app[KEYRING] = KeyRing(records, loaded=seen is not None)
        if backend.budgets is not None:
            backend.budgets.subscribe(budget_event_metrics(app[METRICS].registry))
        stop = _background(_refresh_keys(app, seen), "costproxy-key-refresh")
        yield
        await stop()
        await backend.close()

    return backend_ctx


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


# --- services: accounts, router, pipeline --------------------------------------------------------


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # o200k_base now (the default); the others when a request first needs them (tens of MB each)
    encodings = await asyncio.to_thread(load_encodings, STARTUP_ENCODINGS, directory=settings.encodings_dir)
    router = app[ROUTER] = await asyncio.to_thread(build_router, settings)
    counter = TokenCounter(encodings, functools.partial(load_encoding, directory=settings.encodings_dir))
    services = app[SERVICES] = Services(
        settings=settings, registry=settings.registry, counter=counter,
        upstream=UpstreamClient(app[HTTP_SESSION]), accounts=app[BACKEND].accounts, router=router,
        tracer=app[TRACER], limits=app[BACKEND].limits, cache=app[BACKEND].cache, clock=app[CLOCK],
        events=EventBus(deferred=True))  # the log line and metrics after the answer, not before it
    services.events.subscribe(request_observer(app[METRICS]))
    services.events.subscribe(refusal_and_cache_metrics(app[METRICS].registry))
    stop = _background(_reload_rules(app), "costproxy-rules-reload")
    stop_quality = _background(_reload_quality(app), "costproxy-quality-reload")
    yield
    await stop_quality()
    await stop()


async def _reload_rules(app: web.Application) -> None:
    """Hot reload of ``rules/``: poll for changes off the loop; a bad file keeps the last good set."""
    holder = app[ROUTER].rules
    if holder is None:
        return
    while True:
        await asyncio.sleep(RULES_POLL_SECONDS)
        result = await asyncio.to_thread(holder.reload_if_changed)
        if result is None:
            continue
        if result.ok:
            log.info("rules_reloaded", summary=result.summary())
        else:
            log.error("rules_reload_failed", errors=[str(e) for e in result.errors], kept=holder.current.digest)


async def _reload_quality(app: web.Application) -> None:
    """Hot reload of the quality file, like the rules: a bad file keeps the last good profiles."""
    router = app[ROUTER]
    if router.quality_file is None:
        return
    while True:
        await asyncio.sleep(RULES_POLL_SECONDS)
        result = await asyncio.to_thread(router.reload_quality_if_changed)
        if result is not None and result.ok:
            log.info("quality_reloaded", summary=result.summary())
        elif result is not None:
            log.error("quality_reload_failed", error=result.error, kept=result.digest)


# --- alerts --------------------------------------------------------------------------------------


def _alert_manager(app: web.Application, catalog: AlertCatalog, store: AlertStore,
                   session: aiohttp.ClientSession) -> AlertManager:
    config = app[SETTINGS].alerts
    sender = WebhookSender(catalog, store, session, SenderSettings(
        max_attempts=config.max_attempts, backoff_base_s=config.backoff_base_s, backoff_max_s=config.backoff_max_s,
        timeout_s=config.timeout_s, concurrency=config.concurrency))
    book = app[BUDGETS]
    if book is None:
        manager = AlertManager(catalog, store, sender, config)
    else:
        budgets = book.budgets

        def period_end(budget_id: str, at_ms: int) -> int | None:
            spec = budgets.get(budget_id)
            return None if spec is None else window_at(spec, at_ms).end_ms

        manager = AlertManager(catalog, store, sender, config, budgets=budgets, clock=book.clock,
                               period_end=period_end)
        book.subscribe(manager.observe)
    app[SERVICES].events.subscribe(manager.observe_request)
    return manager


async def _alerts_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = settings.alerts
    store = app[BACKEND].alerts
    catalog = app[ALERT_CATALOG] = AlertCatalog(store)
    try:
        await catalog.load()
    except StoreUnavailable as exc:
        log.error("alert_catalog_unavailable", error=str(exc))  # retried by the refresh loop
    session, manager = None, None
    if config.enabled:  # its own session: a slow receiver never holds an upstream connection
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=config.concurrency * 2))
        manager = _alert_manager(app, catalog, store, session)
        await manager.start()
    app[ALERTS] = manager
    stop = _background(_refresh_catalog(catalog, config.refresh_interval_s), "costproxy-alert-catalog")
    yield
    await stop()
    if manager is not None and session is not None:
        await manager.stop()
        await session.close()


async def _refresh_catalog(catalog: AlertCatalog, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        stop_if_cancelled()
        try:
            await catalog.refresh()
        except StoreUnavailable as exc:
            log.warning("alert_catalog_refresh_failed", error=str(exc))


# --- probes --------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: started, not draining, and the ledger writer is writing (a replica whose ledger cannot
    be written keeps its rows and stops taking traffic until it can)."""
    app = request.app
    if app.get(DRAINING):
        return web.json_response({"status": "draining"}, status=503)
    if ALERTS not in app:  # set by the last start-up step
        return web.json_response({"status": "starting"}, status=503)
    if not app[KEYRING].loaded:  # started while the key store was unreachable: no key can be checked yet
        return web.json_response({"status": "keys_unavailable"}, status=503)
    store, backend = app[STORE], app[BACKEND]
    body: dict[str, Any] = {"status": "ready" if store.healthy else "ledger_unwritable",
                            "ledgerBacklog": store.backlog, "store": backend.kind}
    if not store.healthy:
        body["ledgerError"] = store.last_error
    body["ledger"] = await backend.ledger_health()  # a PostgreSQL ledger that cannot be written: rows wait durably
    pending = getattr(backend.accounts, "pending", None)
    if callable(pending):
        body["settlementsPending"] = pending()  # Redis away: settlements wait in the durable outbox
    return web.json_response(body, status=200 if store.healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].exposition(), headers={"content-type": CONTENT_TYPE_LATEST})


