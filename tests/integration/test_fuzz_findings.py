"""Regression tests for the defects the fuzzers found (test_openapi_fuzz.py, test_chat_fuzz.py):
each is the shrunk request that failed, with the answer a demanding API user expects."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def openai_error(body: Any, code: str | None = None) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)
            and (code is None or error["code"] == code))


@pytest.mark.parametrize("path", ["/api/v1/tokens", "/api/v1/keys"])
async def test_an_expiry_beyond_the_year_9999_is_a_400_not_a_500(make_proxy: ProxyFactory, path: str) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post(path, headers=ADMIN, json={"expiresInSeconds": 1961148378513156})
    body = await resp.json()
    assert resp.status == 400 and openai_error(body), body
    assert body["error"]["param"] == "expiresInSeconds"
    resp = await proxy.client.post(path, headers=ADMIN, json={"expiresInSeconds": 3600})
    assert resp.status == 201


@pytest.mark.parametrize("role", [{}, [], [None], {"a": 1}])
async def test_a_role_that_is_a_list_or_an_object_is_a_400_and_charges_nothing(make_proxy: ProxyFactory,
                                                                                role: Any) -> None:
    proxy = await make_proxy()
    body = {"model": "small", "max_tokens": 20, "messages": [{"role": role, "content": []}]}
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth())
    answer = await resp.json()
    assert resp.status == 400 and openai_error(answer, "invalid_request"), answer
    assert answer["error"]["param"] == "messages[0].role"
    assert not proxy.sim.calls
    assert all(e.cost_nanos == 0 and e.status == "refused" for e in await proxy.ledger())


@pytest.mark.parametrize("value", [True, 0, 1.5, [], [None]])
async def test_a_legacy_function_call_of_the_wrong_type_is_refused_before_the_provider(
        make_proxy: ProxyFactory, value: Any) -> None:
    proxy = await make_proxy()
    body = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}],
            "functions": [{"name": "f", "parameters": {"type": "object"}}], "function_call": value}
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth())
    answer = await resp.json()
    assert resp.status == 400 and openai_error(answer, "invalid_request"), answer
    assert answer["error"]["param"] == "function_call"
    assert not proxy.sim.calls


@pytest.mark.parametrize("url", ["http://[::1", "http://a b", "http://x:99999/", "http://-x-/"])
async def test_a_malformed_webhook_url_is_a_400_on_create_and_update(make_proxy: ProxyFactory, url: str) -> None:
    """A URL the HTTP client cannot call was stored (201) and every delivery then failed."""
    proxy = await make_proxy()
    resp = await proxy.client.post("/api/v1/webhooks", headers=ADMIN, json={"url": url})
    body = await resp.json()
    assert resp.status == 400 and openai_error(body, "invalid_request"), body
    assert body["error"]["param"] == "url"
    resp = await proxy.client.post("/api/v1/webhooks", headers=ADMIN, json={"url": "http://127.0.0.1:9/hook"})
    assert resp.status == 201, await resp.text()
    sub_id = (await resp.json())["id"]
    resp = await proxy.client.patch(f"/api/v1/webhooks/{sub_id}", headers=ADMIN, json={"url": url})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "url", body
