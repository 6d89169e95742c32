"""Every ``web.AppKey`` of the application, in one place."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.trace import Tracer

from costproxy.identity.key_store import KeyStore
from costproxy.identity.principal import KeyRing, Principal
from costproxy.observability import Metrics
from costproxy.pipeline import Services
from costproxy.settings import Settings
from costproxy.store.sqlite import SqliteStore

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
STORE = web.AppKey("store", SqliteStore)
KEYRING = web.AppKey("keyring", KeyRing)
KEY_STORE: web.AppKey[KeyStore] = web.AppKey("key_store")  # where keys are written (SQLite or Redis)
METRICS = web.AppKey("metrics", Metrics)
TRACER = web.AppKey("tracer", Tracer)
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
EXTRAS = web.AppKey("extras", dict[str, Any])  # components added by optional subsystems

# Per-request storage, set by the middlewares.
REQUEST_ID = web.RequestKey("request_id", str)
PRINCIPAL = web.RequestKey("principal", Principal)
ADMIN_ROLE = web.RequestKey("admin_role", str)  # "admin" or a read-only role
TRUSTED_HEADERS = web.RequestKey("trusted_headers", dict[str, str])
