"""The HTTP middlewares (``http/middlewares.py``) called directly on mocked requests: request ids,
OpenAI-shaped (and Anthropic-shaped) errors, the body limit, client and admin authentication and
the trusted chaining proxy. No server and no socket: ``make_mocked_request`` builds the request."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from costproxy.errors import RuleRejected
from costproxy.http.middlewares import auth_middleware, errors_middleware
from costproxy.http.state import ADMIN_ROLE, KEYRING, PRINCIPAL, REQUEST_ID, SETTINGS, TRUSTED_HEADERS
from costproxy.identity.principal import KeyRecord, KeyRing, Principal, hash_key
from costproxy.settings import Settings, TrustedProxySettings
from tests.conftest import ADMIN_TOKEN, ConfigFactory, load_test_settings

SECRET = "cp-test-secret-for-alice"
ALICE = KeyRecord(id="key-alice", key_hash=hash_key(SECRET), prefix=SECRET[:7], user="alice", team="core", org="acme")
REVOKED_SECRET = "cp-test-secret-revoked"
REVOKED = KeyRecord(id="key-old", key_hash=hash_key(REVOKED_SECRET), prefix="cp-test", user="bob", revoked_at=1.0)
CHAIN_SECRET = "relaycore-shared-secret"


@pytest.fixture
def settings(write_config: ConfigFactory) -> Settings:
    loaded = load_test_settings(write_config("http://upstream.invalid/v1"))
    relay = TrustedProxySettings(name="relaycore", secret_env="RELAY_SECRET", secret=CHAIN_SECRET,
                                 sources=("127.0.0.0/8",))
    return replace(loaded, trusted_proxies=(relay,))


def app_for(settings: Settings) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    app[KEYRING] = KeyRing([ALICE, REVOKED])
    return app


def mocked(app: web.Application, path: str = "/v1/chat/completions", method: str = "POST", *,
           remote: str = "127.0.0.1", **headers: str) -> web.Request:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (remote, 50_000) if name == "peername" \
        else default
    return make_mocked_request(method, path, headers=named, app=app, transport=transport)


async def ok(request: web.Request) -> web.StreamResponse:
    return web.json_response({"ok": True})


def body_of(response: web.StreamResponse) -> Any:
    assert isinstance(response, web.Response) and response.body is not None
    return json.loads(response.body)  # type: ignore[arg-type]


async def through_both(request: web.Request, handler: Any = ok) -> web.StreamResponse:
    """The order of ``http/app.py``: errors outside, auth inside."""

    async def authenticated(req: web.Request) -> web.StreamResponse:
        return await auth_middleware(req, handler)

    return await errors_middleware(request, authenticated)


# --- request id and errors -----------------------------------------------------------------------


async def test_a_trusted_proxys_request_id_is_kept_and_a_hostile_one_replaced(settings: Settings) -> None:
    app = app_for(settings)
    seen: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request[REQUEST_ID])
        raise RuleRejected("closed for the weekend")

    chained = {"x_costproxy_proxy_secret": CHAIN_SECRET}
    kept = await errors_middleware(mocked(app, x_request_id="trace-42", **chained), handler)
    replaced = await errors_middleware(mocked(app, x_request_id="x" * 129, **chained), handler)
    assert seen[0] == "trace-42" and kept.headers["x-costproxy-request-id"] == "trace-42"
    assert seen[1].startswith("req_") and replaced.headers["x-costproxy-request-id"] == seen[1]


async def test_a_clients_request_id_is_ignored_without_the_trusted_proxys_secret(settings: Settings) -> None:
    """DESIGN §3.2: X-Request-ID is believed only from a trusted chaining proxy; any client could
    otherwise file its request under another team's id (GET /api/v1/requests/{id} showed both)."""
    app = app_for(settings)
    seen: list[tuple[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append((request[REQUEST_ID], structlog.contextvars.get_contextvars().get("client_request_id")))
        return web.json_response({})

    await errors_middleware(mocked(app, x_request_id="victims-id"), handler)
    await errors_middleware(mocked(app, x_request_id="victims-id", x_costproxy_proxy_secret="wrong"), handler)
    await errors_middleware(mocked(app, x_request_id="victims-id", remote="10.1.2.3",  # not from its sources
                                   x_costproxy_proxy_secret=CHAIN_SECRET), handler)
    await errors_middleware(mocked(app, "/api/v1/usage", "GET", x_request_id="victims-id",
                                   authorization=f"Bearer {ADMIN_TOKEN}"), handler)
    assert len(seen) == 4
    for request_id, logged in seen:
        assert request_id.startswith("req_") and logged == "victims-id"  # kept in the log lines only
    await errors_middleware(mocked(app), handler)
    assert seen[-1][0].startswith("req_") and seen[-1][1] is None


async def test_a_proxy_error_becomes_an_openai_error_body(settings: Settings) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise RuleRejected("closed for the weekend")

    response = await errors_middleware(mocked(app_for(settings)), handler)
    error = body_of(response)["error"]
    assert response.status == 403 and set(error) == {"message", "type", "param", "code"}
    assert error["message"] == "closed for the weekend" and error["code"] == RuleRejected.code


async def test_the_messages_api_gets_anthropics_error_shape(settings: Settings) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise RuleRejected("closed for the weekend")

    response = await errors_middleware(mocked(app_for(settings), "/v1/messages"), handler)
    body = body_of(response)
    assert body["type"] == "error" and body["error"]["message"] == "closed for the weekend"


async def test_a_bug_in_a_handler_is_answered_500_without_its_details(settings: Settings) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise KeyError("secret internal detail")

    response = await errors_middleware(mocked(app_for(settings)), handler)
    error = body_of(response)["error"]
    assert response.status == 500 and "secret internal detail" not in error["message"]


async def test_unknown_routes_and_methods_are_openai_errors(settings: Settings) -> None:
    async def missing(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    async def wrong_method(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMethodNotAllowed("PUT", ["POST", "GET"])

    app = app_for(settings)
    not_found = await errors_middleware(mocked(app, "/v1/nothing"), missing)
    assert not_found.status == 404 and "/v1/nothing" in body_of(not_found)["error"]["message"]
    not_allowed = await errors_middleware(mocked(app, method="PUT"), wrong_method)
    assert not_allowed.status == 405 and not_allowed.headers["Allow"] == "GET, POST"


async def test_a_declared_body_over_the_limit_is_refused_before_the_handler(settings: Settings) -> None:
    called: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        called.append(True)
        return await ok(request)

    too_big = str(settings.server.max_body_bytes + 1)
    response = await errors_middleware(mocked(app_for(settings), content_length=too_big), handler)
    assert response.status == 413 and called == []
    assert body_of(response)["error"]["code"] == "body_too_large"


# --- client authentication -----------------------------------------------------------------------


async def test_a_client_key_becomes_its_principal(settings: Settings) -> None:
    for header in ({"authorization": f"Bearer {SECRET}"}, {"api_key": SECRET}, {"x_api_key": SECRET}):
        request = mocked(app_for(settings), **header)
        assert (await through_both(request)).status == 200
        assert request[PRINCIPAL] == ALICE.principal() and request[TRUSTED_HEADERS] == {}


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "missing API key"),
    ({"authorization": "Bearer cp-not-a-key"}, "invalid, revoked or expired"),
    ({"authorization": f"Bearer {REVOKED_SECRET}"}, "invalid, revoked or expired"),
])
async def test_missing_wrong_and_revoked_keys_are_401(settings: Settings, headers: dict[str, str],
                                                      message: str) -> None:
    response = await through_both(mocked(app_for(settings), **headers))
    error = body_of(response)["error"]
    assert response.status == 401 and message in error["message"] and error["code"] == "invalid_api_key"


async def test_identity_headers_from_an_untrusted_caller_are_ignored(settings: Settings) -> None:
    request = mocked(app_for(settings), authorization=f"Bearer {SECRET}", x_costproxy_team="finance",
                     x_costproxy_user="mallory")
    assert (await through_both(request)).status == 200
    assert request[PRINCIPAL] == ALICE.principal() and request[TRUSTED_HEADERS] == {}


async def test_a_trusted_chaining_proxy_may_assert_identity(settings: Settings) -> None:
    request = mocked(app_for(settings), authorization=f"Bearer {SECRET}", x_costproxy_proxy_secret=CHAIN_SECRET,
                     x_costproxy_team="finance", x_costproxy_task_type="math")
    assert (await through_both(request)).status == 200
    principal: Principal = request[PRINCIPAL]
    assert (principal.key_id, principal.user, principal.team) == ("key-alice", "alice", "finance")
    assert principal.via == "trusted-proxy:relaycore"
    assert request[TRUSTED_HEADERS] == {"x-costproxy-team": "finance", "x-costproxy-task-type": "math"}


async def test_a_wrong_chaining_secret_or_source_trusts_nothing(settings: Settings) -> None:
    guessed = mocked(app_for(settings), x_costproxy_proxy_secret="guess", x_costproxy_team="finance")
    assert (await through_both(guessed)).status == 401 and PRINCIPAL not in guessed
    elsewhere = mocked(app_for(settings), remote="203.0.113.9", authorization=f"Bearer {SECRET}",
                       x_costproxy_proxy_secret=CHAIN_SECRET, x_costproxy_team="finance")
    assert (await through_both(elsewhere)).status == 200  # the key holds; the headers do not
    assert elsewhere[PRINCIPAL] == ALICE.principal() and elsewhere[TRUSTED_HEADERS] == {}


# --- admin authentication and public paths -------------------------------------------------------


async def test_the_admin_api_takes_the_admin_token_only(settings: Settings) -> None:
    app = app_for(settings)
    admin = mocked(app, "/api/v1/budgets", "GET", authorization=f"Bearer {ADMIN_TOKEN}")
    assert (await through_both(admin)).status == 200 and admin[ADMIN_ROLE] == "admin"
    client_key = await through_both(mocked(app, "/api/v1/budgets", "GET", authorization=f"Bearer {SECRET}"))
    assert client_key.status == 401 and "invalid admin token" in body_of(client_key)["error"]["message"]
    missing = await through_both(mocked(app, "/api/v1/budgets", "GET"))
    assert missing.status == 401 and "missing admin token" in body_of(missing)["error"]["message"]


async def test_without_an_admin_token_the_admin_api_is_off(settings: Settings) -> None:
    app = app_for(replace(settings, admin=replace(settings.admin, token=None)))
    response = await through_both(mocked(app, "/api/v1/budgets", "GET", authorization="Bearer anything"))
    assert response.status == 403 and "admin API is disabled" in body_of(response)["error"]["message"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"])
async def test_public_paths_need_no_key(settings: Settings, path: str) -> None:
    assert (await through_both(mocked(app_for(settings), path, "GET"))).status == 200
