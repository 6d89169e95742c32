"""Console sign-in, sign-out and the session's path into ``/api/v1``.

Sign in with the admin token or a read-only token (``cpro-…``).  The browser then holds only a
random session id in an HttpOnly, SameSite=Strict cookie (``costproxy_session``; ``Secure`` when
the request came over HTTPS); the session itself lives server-side (``costproxy.identity.sessions``).

The ``/api/v1`` authentication accepts the session when a request has no ``Authorization`` header
(the auth middleware calls ``api_session_role``): it grants exactly the role of the token signed in
with, and a scope-limited token's session may call only the routes that token may, so scoped tokens
stay limited and read-only ones stay read-only.  Writes made with the cookie must carry the session's CSRF token in
``X-CSRF-Token`` (the console's script reads it from ``GET /ui/session``) and, when the browser
sends ``Origin``, come from the proxy's own origin; SameSite=Strict already keeps the cookie off
cross-site requests, so each is a second lock on the same door.  Sign-in checks ``Origin`` too
(no login CSRF) and is throttled per client address.
"""

from __future__ import annotations

import hmac
import time
from urllib.parse import urlsplit

from aiohttp import web

from costproxy.errors import Forbidden
from costproxy.http.budgets_api import catalog_of
from costproxy.http.state import CONSOLE_SESSIONS, LOGIN_THROTTLE, SETTINGS
from costproxy.identity.access_tokens import TOKEN_PREFIX, ScopedToken
from costproxy.identity.sessions import LoginThrottle, Session, SessionStore, csrf_matches

COOKIE = "costproxy_session"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def install(app: web.Application) -> None:
    app[CONSOLE_SESSIONS] = SessionStore()
    app[LOGIN_THROTTLE] = LoginThrottle()


def same_origin(request: web.Request) -> bool:
    """True unless the browser says the request comes from another origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc.lower() == (request.host or "").lower()


def role_for_token(app: web.Application, token: str) -> tuple[str, str, str | None] | None:
    """``(role, label, read-only token id)`` for a token presented at sign-in, or None."""
    admin = app[SETTINGS].admin_token
    if not admin:
        return None
    if hmac.compare_digest(token.encode(), admin.encode()):
        return "admin", "admin", None
    catalog = catalog_of(app)
    if catalog is None or not token.startswith(TOKEN_PREFIX):
        return None
    found = catalog.tokens.lookup(token, int(time.time() * 1000))
    if found is None:
        return None
    label = f"{found.name or 'read-only token'} ({found.prefix}…)"
    return found.role, label, found.id


def _token_of(app: web.Application, session: Session) -> ScopedToken | None:
    catalog = catalog_of(app)
    return catalog.tokens.get(session.token_id) if catalog is not None and session.token_id else None


def current_session(request: web.Request) -> tuple[str, Session] | None:
    """The live session of this request's cookie, or None; a revoked read-only token ends it."""
    session_id = request.cookies.get(COOKIE)
    if not session_id or not request.app[SETTINGS].admin_token:
        return None
    store = request.app[CONSOLE_SESSIONS]
    session = store.lookup(session_id, time.time())
    if session is None:
        return None
    if session.token_id is not None:
        catalog = catalog_of(request.app)
        token = catalog.tokens.get(session.token_id) if catalog is not None else None
        if token is None or not token.active(int(time.time() * 1000)):
            store.end_for_token(session.token_id)
            return None
    return session_id, session


def api_session_role(request: web.Request) -> str | None:
    """The role a console session grants on ``/api/v1`` (no session: None); writes need CSRF."""
    found = current_session(request)
    if found is None:
        return None
    session = found[1]
    token = _token_of(request.app, session)
    if token is not None and not token.may_call(request.method, request.path):
        raise Forbidden(f"this read-only token may not call {request.method} {request.path}")
    if request.method not in SAFE_METHODS:
        if not same_origin(request):
            raise Forbidden("cross-origin write refused: the console only writes from its own origin")
        if not csrf_matches(session, request.headers.get("x-csrf-token")):
            raise Forbidden("this console write needs the session's CSRF token in the X-CSRF-Token header "
                            "(reload the page)")
    return session.role


def set_session_cookie(request: web.Request, response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(COOKIE, session_id, httponly=True, samesite="Strict", path="/", secure=request.secure)


def clear_session_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=request.secure)


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: a console path only (no open redirect)."""
    if value and value.startswith("/ui") and not value.startswith("/ui/login") and "//" not in value \
            and "\\" not in value:
        return value
    return "/ui"
