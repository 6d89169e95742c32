"""The web console at ``/ui``: server-rendered page shells, static assets, sign-in and sign-out.

Each page is a shell (navigation, headings, forms with their labels) from ``costproxy/ui/pages``;
the console's script (``costproxy/ui/static/*.js``, an ES module, no inline code) fills it from the
same ``/api/v1`` that other systems call, with the session cookie instead of a bearer token.
Charts use the vendored Chart.js (``scripts/vendor-ui-assets``); nothing is loaded from elsewhere.

Every console response carries a strict Content-Security-Policy (scripts, styles and requests from
the proxy itself only, no inline script or style, no framing), ``X-Frame-Options: DENY``,
``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin``; pages are ``no-store``.
No secret is ever written into a page: the CSRF token comes from ``GET /ui/session``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from importlib import resources

from aiohttp import web

from costproxy.errors import StoreUnavailable
from costproxy.http import console_auth
from costproxy.http.bodies import read_body
from costproxy.http.budgets_api import catalog_of
from costproxy.http.console_auth import COOKIE, current_session, role_for_token, safe_next, same_origin
from costproxy.http.state import CONSOLE_SESSIONS, LOGIN_THROTTLE, SETTINGS, STORE
from costproxy.identity.sessions import Session, csrf_matches
from costproxy.ledger import analytics
from costproxy.records import frozen

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
                    "Cross-Origin-Opener-Policy": "same-origin"}
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".md": "text/plain", ".json": "application/json",
                 ".png": "image/png", ".svg": "image/svg+xml"}


@frozen
class Screen:
    path: str
    page: str  # fragment file and data-page
    title: str
    admin_api: bool = False  # needs calls a scope-limited token may not make (keys, decisions, rules)


SCREENS = (
    Screen("/ui", "overview", "Overview"),
    Screen("/ui/budgets", "budgets", "Budgets"),
    Screen("/ui/reports", "reports", "Cost reports"),
    Screen("/ui/alerts", "alerts", "Alerts"),
    Screen("/ui/keys", "keys", "Keys", admin_api=True),
    Screen("/ui/routing", "routing", "Routing", admin_api=True),
)
BUDGET_SCREEN = Screen("/ui/budgets/{budget_id}", "budget", "Budget")


# --- assets --------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def fragment(name: str) -> str:
    return resources.files("costproxy.ui").joinpath("pages", f"{name}.html").read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def static_files() -> dict[str, bytes]:
    """Every file under ``costproxy/ui/static`` (read once, on first use), by relative path."""
    root = resources.files("costproxy.ui").joinpath("static")
    found: dict[str, bytes] = {}
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        for item in folder.iterdir():
            if item.is_dir():
                pending.append((item, f"{prefix}{item.name}/"))
            elif not item.name.startswith("."):
                found[prefix + item.name] = item.read_bytes()
    return found


@lru_cache(maxsize=1)
def asset_version() -> str:
    digest = hashlib.sha256()
    for name, data in sorted(static_files().items()):
        digest.update(name.encode() + data)
    return digest.hexdigest()[:12]


def harden(response: web.StreamResponse, *, cache: str = "no-store") -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = cache
    return response


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    data = static_files().get(name)
    suffix = name[name.rfind("."):] if "." in name else ""
    if data is None or suffix not in CONTENT_TYPES:
        return harden(web.Response(status=404, text="not found"))
    cache = "public, max-age=31536000, immutable" if request.query.get("v") == asset_version() else "no-cache"
    return harden(web.Response(body=data, content_type=CONTENT_TYPES[suffix]), cache=cache)


# --- pages ---------------------------------------------------------------------------------------


def scoped(request: web.Request, session: Session) -> bool:
    catalog = catalog_of(request.app)
    token = catalog.tokens.get(session.token_id) if catalog is not None and session.token_id else None
    return token is not None and bool(token.scopes)


def _nav(current: str, session: Session, limited: bool) -> str:
    links = []
    for screen in SCREENS:
        if limited and screen.admin_api:
            continue
        here = ' aria-current="page"' if screen.page == current or (current == "budget" and
                                                                     screen.page == "budgets") else ""
        links.append(f'<li><a href="{screen.path}"{here}>{html.escape(screen.title)}</a></li>')
    who = html.escape(session.label)
    mode = "read-only" if session.read_only else "admin"
    return (f'<nav class="top" aria-label="Console"><a class="brand" href="/ui">costproxy</a>'
            f'<ul class="links">{"".join(links)}</ul>'
            f'<form class="signout" method="post" action="/ui/logout"><span class="who">{who} · {mode}</span>'
            '<input type="hidden" name="csrf" value="" data-csrf-field>'
            '<button type="submit">Sign out</button></form></nav>')


def layout(title: str, page: str, main: str, nav: str = "", body_attrs: str = "") -> str:
    v = asset_version()
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · costproxy</title>"
        f'<link rel="icon" href="/ui/static/favicon.svg?v={v}" type="image/svg+xml">'
        f'<link rel="stylesheet" href="/ui/static/console.css?v={v}"></head>'
        f'<body data-page="{page}"{body_attrs}><a class="skip" href="#main">Skip to content</a>{nav}'
        f'<main id="main" tabindex="-1">{main}</main>'
        '<div id="toast" role="status" aria-live="polite"></div>'
        f'<script src="/ui/static/vendor/chart.umd.min.js?v={v}" defer></script>'
        f'<script type="module" src="/ui/static/console.js?v={v}"></script></body></html>')


def render(request: web.Request, screen: Screen, session: Session) -> web.StreamResponse:
    limited = scoped(request, session)
    if limited and screen.admin_api:
        return harden(web.Response(status=403, content_type="text/html", text=layout(
            screen.title, "denied", '<h1>Not available</h1><p>This read-only token is limited to some budget '
            'scopes; this screen needs a wider token.</p>', _nav(screen.page, session, limited))))
    attrs = (f' data-role="{"read-only" if session.read_only else "admin"}"'
             f' data-scoped="{"1" if limited else "0"}"' + (' class="readonly"' if session.read_only else ""))
    text = layout(screen.title, screen.page, fragment(screen.page), _nav(screen.page, session, limited), attrs)
    return harden(web.Response(content_type="text/html", text=text))


def page_handler(screen: Screen) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        found = current_session(request)
        if found is None:
            target = "/ui/login" + ("" if request.path == "/ui" else f"?next={request.path}")
            return harden(redirect(target))
        return render(request, screen, found[1])

    return handler


def redirect(location: str, status: int = 303) -> web.Response:
    return web.Response(status=status, headers={"Location": location})


async def root(request: web.Request) -> web.StreamResponse:
    return harden(redirect("/ui", 302))


# --- sign-in, sign-out, session ---------------------------------------------------------------------


def login_page(request: web.Request, error: str = "", status: int = 200) -> web.StreamResponse:
    nxt = html.escape(safe_next(request.query.get("next")), quote=True)
    disabled = not request.app[SETTINGS].admin_token
    notice = ('<p class="error" role="alert" id="login-error">' + html.escape(error) + "</p>") if error else ""
    if disabled:
        notice = ('<p class="error" role="alert">The console needs the admin API: set COSTPROXY_ADMIN_TOKEN '
                  '(or admin.token_env) and restart.</p>')
    main = fragment("login").replace("{notice}", notice).replace("{next}", nxt)
    return harden(web.Response(status=status, content_type="text/html", text=layout("Sign in", "login", main)))


async def login_form(request: web.Request) -> web.StreamResponse:
    if current_session(request) is not None:
        return harden(redirect(safe_next(request.query.get("next"))))
    return login_page(request)


async def login(request: web.Request) -> web.StreamResponse:
    if not same_origin(request):
        return login_page(request, "Sign-in refused: the form was sent from another site.", 403)
    throttle, address, now = request.app[LOGIN_THROTTLE], request.remote or "-", time.time()
    if not throttle.allowed(address, now):
        return login_page(request, "Too many failed sign-ins from this address; wait a few minutes.", 429)
    await read_body(request)
    form = await request.post()
    token = str(form.get("token", "")).strip()
    found = role_for_token(request.app, token) if token else None
    if found is None:
        throttle.failed(address, now)
        message = "Enter a token." if not token else "That token is not valid (or has expired or been revoked)."
        return login_page(request, message, 401)
    throttle.succeeded(address)
    role, label, token_id = found
    session_id, _ = request.app[CONSOLE_SESSIONS].create(role, label, now, token_id)
    response = redirect(safe_next(str(form.get("next", "")) or None))
    console_auth.set_session_cookie(request, response, session_id)
    return harden(response)


async def logout(request: web.Request) -> web.StreamResponse:
    found = current_session(request)
    if found is not None:
        await read_body(request)
        form = await request.post()
        presented = str(form.get("csrf", "")) or request.headers.get("x-csrf-token")
        if not same_origin(request) or not csrf_matches(found[1], presented):
            return harden(web.Response(status=403, text="sign-out refused: missing CSRF token; reload the page"))
        request.app[CONSOLE_SESSIONS].end(found[0])
    response = redirect("/ui/login")
    console_auth.clear_session_cookie(request, response)
    return harden(response)


async def session_info(request: web.Request) -> web.StreamResponse:
    found = current_session(request)
    if found is None:
        body = {"error": {"message": "not signed in", "type": "authentication_error", "param": None,
                          "code": "invalid_api_key"}}
        return harden(web.json_response(body, status=401))
    session = found[1]
    catalog = catalog_of(request.app)
    token = catalog.tokens.get(session.token_id) if catalog is not None and session.token_id else None
    return harden(web.json_response({
        "role": "read-only" if session.read_only else "admin", "label": session.label,
        "readOnly": session.read_only, "csrfToken": session.csrf,
        "scopes": token.to_json(int(time.time() * 1000))["scopes"] if token is not None else [],
        "expiresAt": request.app[CONSOLE_SESSIONS].expires_at(session), "cookie": COOKIE}))


async def _rollup_ctx(app: web.Application) -> AsyncIterator[None]:
    """Fold the existing ledger into the overview's rollup in the background, once, at start-up, so
    the first overview after a restart does not pay for it."""
    task = asyncio.create_task(analytics.catch_up(app[STORE]), name="costproxy-ledger-rollup")
    yield
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
        await task


def install(app: web.Application) -> None:
    console_auth.install(app)
    app.cleanup_ctx.append(_rollup_ctx)
    app.router.add_get("/", root)
    for screen in SCREENS:
        app.router.add_get(screen.path, page_handler(screen))
    app.router.add_get(BUDGET_SCREEN.path, page_handler(BUDGET_SCREEN))
    app.router.add_get("/ui/", root)
    app.router.add_get("/ui/login", login_form)
    app.router.add_post("/ui/login", login)
    app.router.add_post("/ui/logout", logout)
    app.router.add_get("/ui/session", session_info)
    app.router.add_get("/ui/static/{name:.+}", static)
