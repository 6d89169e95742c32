"""The web console over HTTP: sign-in and sessions, CSRF, security headers, static assets, and the
read-only token staying read-only and scoped when it comes through the console."""

from __future__ import annotations

import re
from typing import Any

from costproxy.http.console import SECURITY_HEADERS, asset_version
from costproxy.http.state import CONSOLE_SESSIONS
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
BUDGET = {"name": "Core", "scopeType": "team", "scopeId": "core", "amount": "5", "period": "monthly"}


async def sign_in(proxy: Proxy, token: str, **extra: str) -> str:
    """Sign in through the form; returns the CSRF token of the new session."""
    resp = await proxy.client.post("/ui/login", data={"token": token, **extra}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert token not in cookie
    session = await (await proxy.client.get("/ui/session")).json()
    return str(session["csrfToken"])


async def scoped_token(proxy: Proxy, **body: Any) -> str:
    resp = await proxy.client.post("/api/v1/tokens", json=body, headers=ADMIN)
    assert resp.status == 201
    return str((await resp.json())["token"])


async def test_pages_need_a_session_and_root_goes_to_the_console(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/ui"
    resp = await proxy.client.get("/ui/budgets", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/ui/login?next=/ui/budgets"
    login = await proxy.client.get("/ui/login")
    assert login.status == 200 and 'name="token"' in await login.text()
    for name, value in SECURITY_HEADERS.items():
        assert login.headers[name] == value
    assert "script-src 'self'" in login.headers["Content-Security-Policy"]
    assert (await proxy.client.get("/ui/session")).status == 401


async def test_admin_sign_in_then_every_page_is_hardened_and_free_of_secrets(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await sign_in(proxy, ADMIN_TOKEN)
    for path in ("/ui", "/ui/budgets", "/ui/budgets/some-id", "/ui/reports", "/ui/alerts", "/ui/keys", "/ui/routing"):
        resp = await proxy.client.get(path)
        text = await resp.text()
        assert resp.status == 200, path
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert ADMIN_TOKEN not in text and "<script>" not in text and "style=" not in text
        assert re.search(r'<script type="module" src="/ui/static/console.js\?v=\w+">', text)
    assert (await proxy.client.get("/ui/login", allow_redirects=False)).status == 303  # already signed in


async def test_wrong_tokens_are_refused_and_throttled(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    for attempt in range(10):
        resp = await proxy.client.post("/ui/login", data={"token": f"wrong-{attempt}"}, allow_redirects=False)
        assert resp.status == 401 and "not valid" in await resp.text()
        assert "Set-Cookie" not in resp.headers
    resp = await proxy.client.post("/ui/login", data={"token": ADMIN_TOKEN}, allow_redirects=False)
    assert resp.status == 429  # even the right token waits once an address failed ten times
    empty = await proxy.client.post("/ui/login", data={}, allow_redirects=False)
    assert empty.status == 429


async def test_cross_site_sign_in_and_open_redirects_are_refused(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/ui/login", data={"token": ADMIN_TOKEN}, allow_redirects=False,
                                   headers={"Origin": "https://evil.example"})
    assert resp.status == 403
    for target in ("https://evil.example/", "//evil.example", "/ui/../x\\y", "/api/v1/keys"):
        resp = await proxy.client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": target},
                                       allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"] == "/ui", target
    resp = await proxy.client.post("/ui/login", data={"token": ADMIN_TOKEN, "next": "/ui/keys"},
                                   allow_redirects=False)
    assert resp.headers["Location"] == "/ui/keys"


async def test_api_accepts_the_session_and_writes_need_csrf(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    assert (await proxy.client.get("/api/v1/budgets")).status == 401
    csrf = await sign_in(proxy, ADMIN_TOKEN)
    assert (await proxy.client.get("/api/v1/budgets")).status == 200
    missing = await proxy.client.post("/api/v1/budgets", json=BUDGET)
    assert missing.status == 403 and "CSRF" in (await missing.json())["error"]["message"]
    wrong = await proxy.client.post("/api/v1/budgets", json=BUDGET, headers={"X-CSRF-Token": csrf[:-1] + "x"})
    assert wrong.status == 403
    foreign = await proxy.client.post("/api/v1/budgets", json=BUDGET,
                                      headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"})
    assert foreign.status == 403 and "cross-origin" in (await foreign.json())["error"]["message"]
    created = await proxy.client.post("/api/v1/budgets", json=BUDGET, headers={"X-CSRF-Token": csrf})
    assert created.status == 201
    assert (await created.json())["createdBy"] == "admin"
    bad = await proxy.client.post("/api/v1/budgets", json={**BUDGET, "amount": "lots"},
                                  headers={"X-CSRF-Token": csrf})
    body = await bad.json()
    assert bad.status == 400 and body["error"]["param"] == "amount" and set(body["error"]) == {
        "message", "type", "param", "code"}


async def test_sign_out_needs_csrf_and_ends_the_session(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    csrf = await sign_in(proxy, ADMIN_TOKEN)
    refused = await proxy.client.post("/ui/logout", data={"csrf": "nope"}, allow_redirects=False)
    assert refused.status == 403
    assert (await proxy.client.get("/api/v1/budgets")).status == 200
    out = await proxy.client.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False)
    assert out.status == 303 and out.headers["Location"] == "/ui/login"
    assert len(proxy.app[CONSOLE_SESSIONS]) == 0
    assert (await proxy.client.get("/api/v1/budgets")).status == 401
    assert (await proxy.client.get("/ui", allow_redirects=False)).status == 303


async def test_an_expired_session_is_signed_out(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await sign_in(proxy, ADMIN_TOKEN)
    proxy.app[CONSOLE_SESSIONS].idle_s = 0  # every session is now idle for longer than allowed
    assert (await proxy.client.get("/api/v1/budgets")).status == 401
    assert (await proxy.client.get("/ui/keys", allow_redirects=False)).status == 303


async def test_read_only_token_session_stays_read_only(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    token = await scoped_token(proxy, name="finance")
    csrf = await sign_in(proxy, token)
    session = await (await proxy.client.get("/ui/session")).json()
    assert session["readOnly"] is True and session["role"] == "read-only" and "finance" in session["label"]
    page = await (await proxy.client.get("/ui/budgets")).text()
    assert 'class="readonly"' in page and token not in page
    assert (await proxy.client.get("/api/v1/keys")).status == 200
    for method, path, body in (("POST", "/api/v1/budgets", BUDGET), ("POST", "/api/v1/keys", {}),
                               ("DELETE", "/api/v1/keys/key_x", None), ("POST", "/api/v1/webhooks", {"url": "x"})):
        resp = await proxy.client.request(method, path, json=body, headers={"X-CSRF-Token": csrf})
        assert resp.status == 403, (method, path)


async def test_scoped_token_sees_its_scope_only_and_revocation_ends_its_session(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    for budget in (BUDGET, {**BUDGET, "name": "Other", "scopeId": "other"}):
        assert (await proxy.client.post("/api/v1/budgets", json=budget, headers=ADMIN)).status == 201
    other_key = await proxy.new_key(user="bob", team="other")
    for key in (proxy.key, other_key):
        chat = {"model": "small", "messages": [{"role": "user", "content": "hi"}]}
        resp = await proxy.client.post("/v1/chat/completions", json=chat, headers=proxy.auth(key))
        assert resp.status == 200
    created = await proxy.client.post("/api/v1/tokens", headers=ADMIN, json={
        "name": "core lead", "scopes": [{"scopeType": "team", "scopeId": "core"}]})
    token = await created.json()
    await sign_in(proxy, token["token"])
    budgets = await (await proxy.client.get("/api/v1/budgets")).json()
    assert [b["scopeId"] for b in budgets["data"]] == ["core"]
    spend = await (await proxy.client.get("/api/v1/analytics/spend?groupBy=team&range=1h")).json()
    assert [r["key"] for r in spend["rows"]] == ["core"]
    assert (await proxy.client.get("/api/v1/keys")).status == 403
    assert (await proxy.client.get("/api/v1/decisions")).status == 403
    keys_page = await proxy.client.get("/ui/keys")
    assert keys_page.status == 403
    assert 'href="/ui/keys"' not in await (await proxy.client.get("/ui")).text()
    assert (await proxy.client.delete(f"/api/v1/tokens/{token['id']}", headers=ADMIN)).status == 200
    assert (await proxy.client.get("/api/v1/budgets")).status == 401
    assert (await proxy.client.get("/ui", allow_redirects=False)).status == 303


async def test_a_bearer_token_wins_over_the_cookie(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    await sign_in(proxy, ADMIN_TOKEN)
    resp = await proxy.client.get("/api/v1/budgets", headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401


async def test_static_assets_are_served_from_the_package(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy()
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css"),
                       ("vendor/chart.umd.min.js", "text/javascript")):
        resp = await proxy.client.get(f"/ui/static/{name}?v={asset_version()}")
        assert resp.status == 200 and resp.content_type == kind
        assert "immutable" in resp.headers["Cache-Control"] and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert (await proxy.client.get("/ui/static/console.js")).headers["Cache-Control"] == "no-cache"
    for name in ("missing.js", "../__init__.py", "..%2F__init__.py", "vendor/VENDORED"):
        assert (await proxy.client.get(f"/ui/static/{name}")).status == 404, name
