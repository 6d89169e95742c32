"""Request id, structured-log context, the request's time for the store (``store.wait``), errors in
OpenAI's shape (Anthropic's on the Messages API), body limits and authentication."""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from functools import partial

import structlog
from aiohttp import web
from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from costproxy.errors import (
    Forbidden,
    InternalError,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    StoreUnavailable,
    Unauthenticated,
)
from costproxy.http import console_auth, openapi
from costproxy.http.bodies import checks_size_when_read, too_large
from costproxy.http.headers import IDENTITY_HEADERS, SECRET_HEADER, TRUSTED_ONLY
from costproxy.http.messages_api import anthropic_path
from costproxy.http.state import (
    ADMIN_ROLE,
    ALERT_CATALOG,
    KEYRING,
    PRINCIPAL,
    REQUEST_ID,
    SETTINGS,
    TRACER,
    TRUSTED_HEADERS,
)
from costproxy.identity.principal import Principal
from costproxy.pipeline.services import new_request_id
from costproxy.protocols.messages import error_body as messages_error_body
from costproxy.settings import Settings, TrustedProxySettings
from costproxy.store import wait as store_wait

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("costproxy")

PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/ui", "/openapi.json", "/favicon.ico")


def error_response(error: ProxyError, request_id: str | None, *, anthropic: bool = False) -> web.Response:
    """The error in OpenAI's shape, or Anthropic's for the Messages API's paths."""
    response = web.json_response(messages_error_body(error) if anthropic else error.body(), status=error.status)
    for name, value in error.headers.items():
        response.headers[name] = value
    if request_id:
        response.headers["x-costproxy-request-id"] = request_id
    if error.close_connection:  # the rest of the body is unread: the connection cannot carry another request
        response.force_close()
    return response


MAX_REQUEST_ID = 128


def request_id_of(request: web.Request, settings: Settings) -> tuple[str, str | None]:
    """The request's id (the ledger entry's, the upstream call's ``x-request-id``) and the
    ``X-Request-ID`` a caller sent that was not adopted.  DESIGN §3.2: ``X-Request-ID`` is a chaining
    header, believed only from a trusted proxy (its secret, from its sources); from anyone else it
    is ignored — any client could otherwise file its requests under another team's id — and only
    logged (``client_request_id``).  An over-long or non-ASCII id is replaced even from a trusted proxy."""
    asked = request.headers.get("x-request-id")
    if not asked:
        return new_request_id(), None
    if len(asked) <= MAX_REQUEST_ID and asked.isascii() and asked.isprintable() \
            and _trusted_proxy(request, settings) is not None:
        return asked, None
    return new_request_id(), asked[:MAX_REQUEST_ID]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    request_id, ignored = request_id_of(request, settings)
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    if ignored is not None:  # every log line of the request names what the client sent
        structlog.contextvars.bind_contextvars(client_request_id=ignored)
    respond = partial(error_response, request_id=request_id, anthropic=anthropic_path(request.path))
    waiting = store_wait.begin(settings.store.timeout_s)  # the request's time for the store, all calls together
    try:
        limit = settings.server.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit and not checks_size_when_read(request):
            raise too_large(limit, declared)
        return await handler(request)
    except ProxyError as exc:
        return respond(exc)
    except web.HTTPRequestEntityTooLarge:
        return respond(too_large(settings.server.max_body_bytes))
    except web.HTTPNotFound:
        return respond(NotFound(f"no route for {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return respond(MethodNotAllowed(f"{request.method} is not allowed on {request.path} (allowed: {allowed})",
                                        headers={"Allow": allowed}))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return respond(ProxyError(exc.reason or "error"))
    except Exception:  # the outermost boundary: log the bug, answer in OpenAI's shape
        log.exception("unhandled_error", path=request.path)
        return respond(InternalError("internal error; see the proxy log"))
    finally:
        store_wait.end(waiting)


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One OTel server span per request, continuing the caller's ``traceparent``."""
    tracer = request.app[TRACER]
    parent = propagate.extract(dict(request.headers))
    resource = request.match_info.route.resource
    name = f"{request.method} {resource.canonical if resource is not None else request.path}"
    with tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
        span.set_attribute("http.request.method", request.method)
        span.set_attribute("url.path", request.path)
        span.set_attribute("costproxy.request_id", request[REQUEST_ID])
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path == "/" or path.startswith(PUBLIC_PATHS):
        return await handler(request)
    settings = request.app[SETTINGS]
    if path == CLIENT_API_PATH and _client_key(request, settings):  # feedback from the key that made the request
        request[PRINCIPAL] = authenticate_client(request, settings)
        return await handler(request)
    if path.startswith("/api/"):
        request[ADMIN_ROLE] = authenticate_admin(request, settings)
        openapi.check_query(request)
        return await handler(request)
    request[PRINCIPAL] = authenticate_client(request, settings)
    return await handler(request)


CLIENT_API_PATH = "/api/v1/feedback"  # the one /api path a client key may call


def _client_key(request: web.Request, settings: Settings) -> bool:
    token = bearer_token(request)
    return token is not None and token.startswith("cp-") and token != settings.admin_token


def bearer_token(request: web.Request) -> str | None:
    """The key from ``Authorization: Bearer``, ``api-key`` (Azure-style SDKs) or ``x-api-key``
    (Anthropic's SDKs)."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.headers.get("api-key") or request.headers.get("x-api-key") or None


def authenticate_admin(request: web.Request, settings: Settings) -> str:
    if not settings.admin_token:
        raise Forbidden("the admin API is disabled: set COSTPROXY_ADMIN_TOKEN (or admin.token_env)")
    token = bearer_token(request)
    if token is None:
        role = console_auth.api_session_role(request)  # a web console sign-in, with CSRF checks on writes
        if role is not None:
            return role
        raise Unauthenticated("missing admin token: send 'Authorization: Bearer <admin token>'")
    if hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        return "admin"
    catalog = request.app.get(ALERT_CATALOG)
    scoped = catalog.tokens.lookup(token, int(time.time() * 1000)) if catalog is not None else None
    if scoped is None:
        raise Unauthenticated("invalid admin token")
    if not scoped.may_call(request.method, request.path):
        raise Forbidden(f"this read-only token may not call {request.method} {request.path}")
    return scoped.role


def _trusted_proxy(request: web.Request, settings: Settings) -> TrustedProxySettings | None:
    presented = request.headers.get(SECRET_HEADER)
    if not presented:
        return None
    for proxy in settings.trusted_proxies:
        if proxy.secret and hmac.compare_digest(presented.encode(), proxy.secret.encode()) \
                and _source_allowed(request.remote, proxy.sources):
            return proxy
    return None


def _source_allowed(remote: str | None, sources: tuple[str, ...]) -> bool:
    if not sources:
        return True
    if remote is None:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(source, strict=False) for source in sources)


def authenticate_client(request: web.Request, settings: Settings) -> Principal:
    token = bearer_token(request)
    keyring = request.app[KEYRING]
    record = keyring.lookup(token, time.time()) if token else None
    trusted = _trusted_proxy(request, settings)
    if record is None and trusted is None:
        if token is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer cp-…'")
        if not keyring.loaded:
            raise StoreUnavailable("the client keys could not be read from the store yet (it was unreachable "
                                   "when this replica started): retry shortly")
        raise Unauthenticated("invalid, revoked or expired API key")
    principal = keyring.principal_of(record) if record is not None else Principal(via="trusted-proxy")
    asserted = {name: request.headers[name] for name in TRUSTED_ONLY if name in request.headers}
    if trusted is None:
        if asserted:
            log.warning("untrusted_identity_headers_ignored", headers=sorted(asserted))
        request[TRUSTED_HEADERS] = {}
        return principal
    request[TRUSTED_HEADERS] = asserted
    fields = {attr: request.headers[h] for h, attr in IDENTITY_HEADERS.items() if h in request.headers}
    return Principal(key_id=principal.key_id, user=fields.get("user", principal.user),
                     team=fields.get("team", principal.team), org=fields.get("org", principal.org),
                     project=fields.get("project", principal.project), via=f"trusted-proxy:{trusted.name}")

