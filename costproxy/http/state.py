"""Every ``web.AppKey`` and ``web.RequestKey`` of the application, typed, in one place.

The composition root (``http.app.create_app``) sets each app key once; handlers read them.
"""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
from aiohttp import web
from opentelemetry.trace import Tracer

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.manager import AlertManager
from costproxy.budgets.book import BudgetAccounts
from costproxy.identity.key_store import KeyStore
from costproxy.identity.principal import KeyRing, Principal
from costproxy.identity.sessions import LoginThrottle, SessionStore
from costproxy.learning.judge import Judge
from costproxy.learning.service import Learner
from costproxy.ledger.reader import LedgerReader
from costproxy.observability import Metrics
from costproxy.pipeline.services import Services
from costproxy.routing.router import SelectionRouter
from costproxy.settings import Settings
from costproxy.store.backend import Backend
from costproxy.store.responses import ResponseStore
from costproxy.store.sqlite import SqliteStore

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")  # wall clock of budgets, alerts and the ledger
BACKEND = web.AppKey("backend", Backend)  # everything that persists (store.backend)
DRAINING = web.AppKey("draining", bool)  # set on SIGTERM: readiness false while in-flight requests finish
SERVICES = web.AppKey("services", Services)
STORE = web.AppKey("store", SqliteStore)
LEDGER: web.AppKey[LedgerReader] = web.AppKey("ledger")  # what reports read: PostgreSQL or the SQLite file
KEYRING = web.AppKey("keyring", KeyRing)
KEY_STORE: web.AppKey[KeyStore] = web.AppKey("key_store")  # where keys are written (SQLite or Redis)
METRICS = web.AppKey("metrics", Metrics)
TRACER = web.AppKey("tracer", Tracer)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
ROUTER = web.AppKey("router", SelectionRouter)  # the router of SERVICES, with explain and decisions
BUDGETS: web.AppKey[BudgetAccounts | None] = web.AppKey("budgets")  # None: budgets.enabled is false
ALERT_CATALOG = web.AppKey("alert_catalog", AlertCatalog)  # subscriptions, read-only tokens, acks
ALERTS: web.AppKey[AlertManager | None] = web.AppKey("alerts")  # None: alerts.enabled is false
CONSOLE_SESSIONS = web.AppKey("console_sessions", SessionStore)  # web console sign-ins (http/console_auth.py)
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)
LEARNER = web.AppKey("learner", Learner)  # feedback and online estimates (http/feedback_api.py)
JUDGE: web.AppKey[Judge | None] = web.AppKey("judge")  # None: learning.judge.enabled is false
RESPONSES = web.AppKey("responses", ResponseStore)  # stored Responses (POST /v1/responses, store: true)

# Per-request storage, set by the middlewares.
REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
ADMIN_ROLE = web.RequestKey("admin_role", str)  # "admin" or a read-only role
TRUSTED_HEADERS = web.RequestKey("trusted_headers", dict[str, str])
