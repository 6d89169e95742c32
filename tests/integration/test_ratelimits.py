"""Rate limits through the app: headers, refusals, tokens corrected at settlement, every edge, the API."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from costproxy.ratelimits.model import duration
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "big", "messages": [{"role": "user", "content": "Say hello to the team please"}], "max_tokens": 50}


def limits(*items: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"rate_limits": {**settings, "limits": list(items)}}


async def chat(proxy: Proxy, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
    return await proxy.client.post("/v1/chat/completions", json=body or CHAT, headers=proxy.auth(key))


async def test_requests_per_minute_headers_and_a_ledgered_refusal(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=limits({"id": "keys", "scope_type": "key", "scope_id": "*",
                                           "requests_per_minute": 3}))
    seen = []
    for _ in range(3):
        resp = await chat(proxy)
        assert resp.status == 200, await resp.text()
        seen.append((resp.headers["x-ratelimit-limit-requests"], resp.headers["x-ratelimit-remaining-requests"]))
        assert "x-ratelimit-limit-tokens" not in resp.headers  # no token limit applies
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]
    assert resp.headers["x-ratelimit-reset-requests"].endswith("s")
    refused = await chat(proxy)
    assert refused.status == 429
    body = await refused.json()
    assert body["error"]["code"] == "rate_limited" and body["error"]["type"] == "rate_limit_error"
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert "Rate limit reached for key" in body["error"]["message"]
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 20  # 3 per minute: one request every 20 s
    assert 0 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert "x-should-retry" not in refused.headers  # SDKs may retry it (unlike budget_exceeded)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(proxy.sim.calls) == 3
    entries = await proxy.ledger()
    assert [e.status for e in entries] == ["ok", "ok", "ok", "refused"]
    assert entries[-1].error_code == "rate_limited" and entries[-1].http_status == 429 and entries[-1].cost_nanos == 0


async def test_each_key_has_its_own_bucket_and_a_named_limit_replaces_the_default(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=limits(
        {"id": "keys", "scope_type": "key", "scope_id": "*", "requests_per_minute": 1},
        {"id": "team-core", "scope_type": "team", "scope_id": "core", "requests_per_minute": 100}))
    other = await proxy.new_key(user="bob", team="core", org="acme")
    assert (await chat(proxy)).status == 200
    assert (await chat(proxy)).status == 429
    ok = await chat(proxy, key=other)  # bob's key has a bucket of its own
    assert ok.status == 200
    # the tightest limit is reported: the key's (0 left), not the team's (98 left)
    assert ok.headers["x-ratelimit-limit-requests"] == "1" and ok.headers["x-ratelimit-remaining-requests"] == "0"
    bob = (await proxy.ledger())[-1].key_id
    resp = await proxy.client.post("/api/v1/rate-limits", headers=ADMIN, json={
        "id": "bob", "scopeType": "key", "scopeId": bob, "requestsPerMinute": 5})
    assert resp.status == 201
    again = await chat(proxy, key=other)  # bob's own limit replaces the default: 5 per minute, 1 already drawn
    assert again.status == 200 and again.headers["x-ratelimit-limit-requests"] == "5"


class FrozenClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def clocked_proxy(aiohttp_client: Any, simulator: Any, write_config: Any, clock: FrozenClock,
                        **config: Any) -> Proxy:
    from costproxy.http.app import create_app
    from tests.conftest import load_test_settings

    url, sim = simulator
    app = create_app(load_test_settings(write_config(url, **config)), clock=clock)
    client = await aiohttp_client(app)
    key = await Proxy(client, app, "", sim).new_key(user="alice", team="core", org="acme", project="p1")
    return Proxy(client, app, key, sim)


async def test_tokens_are_drawn_at_the_worst_case_and_corrected_to_the_usage(
        aiohttp_client: Any, simulator: Any, write_config: Any) -> None:
    clock = FrozenClock()
    proxy = await clocked_proxy(aiohttp_client, simulator, write_config, clock, extra=limits(
        {"id": "t", "scope_type": "user", "scope_id": "alice", "tokens_per_minute": 6000}))
    first = await chat(proxy)
    assert first.status == 200, await first.text()
    call = proxy.sim.calls[-1]
    drawn = 6000 - int(first.headers["x-ratelimit-remaining-tokens"])
    prompt = (await first.json())["usage"]["prompt_tokens"]
    assert drawn >= prompt + 50  # the prompt (as the proxy counts it) plus every allowed output token
    assert first.headers["x-ratelimit-reset-tokens"] == duration(drawn * 10)  # refills 100 tokens a second
    second = await chat(proxy)
    used_first = call.prompt_tokens + call.completion_tokens
    # after its settlement the first request holds only the tokens it used (the clock stood still)
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 6000 - used_first - drawn
    clock.now += 60  # a minute later the bucket is full again
    third = await chat(proxy)
    assert int(third.headers["x-ratelimit-remaining-tokens"]) == 6000 - drawn


async def test_a_request_larger_than_the_token_limit_is_refused_for_good(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=limits({"id": "t", "scope_type": "org", "scope_id": "acme",
                                           "tokens_per_minute": 1000}))
    resp = await chat(proxy, {**CHAT, "max_tokens": 2000})
    assert resp.status == 429
    body = await resp.json()
    assert body["error"]["code"] == "exceeds_rate_limit" and "max_tokens" in body["error"]["message"]
    assert resp.headers["x-should-retry"] == "false" and "retry-after" not in resp.headers
    assert not proxy.sim.calls
    assert (await chat(proxy, {**CHAT, "max_tokens": 100})).status == 200  # nothing was drawn


async def test_a_budget_refusal_gives_the_tokens_back_and_carries_the_headers(make_proxy: ProxyFactory) -> None:
    budget = {"id": "gated", "scope_type": "user", "scope_id": "alice", "limit_usd": "10", "period": "daily",
              "thresholds": [{"percent": 50, "actions": ["require-approval"]}]}
    proxy = await make_proxy(extra={**limits({"id": "t", "scope_type": "user", "scope_id": "alice",
                                              "requests_per_minute": 10, "tokens_per_minute": 100_000}),
                                    "budgets": [budget]})
    await api(proxy, "POST", "/api/v1/budgets/gated/usage", 201, {"amount": "6", "source": "manual"})
    resp = await chat(proxy)
    assert resp.status == 429 and (await resp.json())["error"]["code"] == "budget_exceeded"
    assert resp.headers["x-ratelimit-remaining-requests"] == "9"  # the request counts ...
    status = await proxy.client.get("/api/v1/rate-limits/status?user=alice&org=acme", headers=ADMIN)
    tokens = [d for d in (await status.json())["data"] if d["metric"] == "tokens"]
    assert tokens[0]["remaining"] == 100_000  # ... its tokens were given back


async def test_errors_before_admission_carry_the_headers_too(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=limits({"id": "r", "scope_type": "key", "scope_id": "*", "requests_per_minute": 5}))
    resp = await proxy.client.post("/v1/chat/completions", data=b"{not json", headers=proxy.auth())
    assert resp.status == 400
    assert resp.headers["x-ratelimit-limit-requests"] == "5" and resp.headers["x-ratelimit-remaining-requests"] == "5"


async def test_streams_are_limited_and_their_tokens_corrected(aiohttp_client: Any, simulator: Any,
                                                              write_config: Any) -> None:
    proxy = await clocked_proxy(aiohttp_client, simulator, write_config, FrozenClock(), extra=limits(
        {"id": "t", "scope_type": "key", "scope_id": "*", "requests_per_minute": 2, "tokens_per_minute": 50_000}))
    resp = await chat(proxy, {**CHAT, "stream": True})
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-requests"] == "1"
    assert "[DONE]" in await resp.text()
    call = proxy.sim.calls[-1]
    key_id = (await proxy.ledger())[-1].key_id
    status = await api(proxy, "GET", f"/api/v1/rate-limits/status?keyId={key_id}&org=acme", 200)
    tokens = next(d for d in status["data"] if d["metric"] == "tokens")
    assert 50_000 - tokens["remaining"] == call.prompt_tokens + call.completion_tokens
    assert (await chat(proxy, {**CHAT, "stream": True})).status == 200
    assert (await chat(proxy, {**CHAT, "stream": True})).status == 429


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/completions", {"model": "legacy", "prompt": "Say hi", "max_tokens": 5}),
    ("/v1/embeddings", {"model": "embed", "input": "hello"}),
    ("/v1/responses", {"model": "big", "input": "Say hi", "max_output_tokens": 20}),
    ("/v1/messages", {"model": "big", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
])
async def test_every_edge_is_limited(make_proxy: ProxyFactory, path: str, body: dict[str, Any]) -> None:
    proxy = await make_proxy(extra=limits({"id": "r", "scope_type": "key", "scope_id": "*", "requests_per_minute": 1}))
    first = await proxy.client.post(path, json=body, headers=proxy.auth())
    assert first.status == 200, await first.text()
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    second = await proxy.client.post(path, json=body, headers=proxy.auth())
    assert second.status == 429 and "retry-after" in second.headers
    error = await second.json()
    if path == "/v1/messages":  # Anthropic's error shape on its API
        assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    else:
        assert error["error"]["code"] == "rate_limited"


async def test_the_openai_sdk_sees_a_rate_limit_error(make_proxy: ProxyFactory) -> None:
    import openai

    proxy = await make_proxy(extra=limits({"id": "r", "scope_type": "key", "scope_id": "*", "requests_per_minute": 1}))
    client = openai.AsyncOpenAI(api_key=proxy.key, base_url=str(proxy.client.make_url("/v1")), max_retries=0)
    proxy.closers.append(client.close)
    raw = await client.chat.completions.with_raw_response.create(**CHAT)
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(**CHAT)
    assert info.value.code == "rate_limited"


# --- the API -------------------------------------------------------------------------------------------


async def api(proxy: Proxy, method: str, path: str, status: int, body: Any = None,
              headers: dict[str, str] | None = None) -> Any:
    resp = await proxy.client.request(method, path, headers=headers or ADMIN,
                                      data=None if body is None else orjson.dumps(body))
    text = await resp.text()
    assert resp.status == status, text
    return orjson.loads(text) if text else None


async def test_rate_limit_crud_and_the_limit_applies_at_once(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=limits({"id": "yaml", "scope_type": "org", "scope_id": "other",
                                           "requests_per_minute": 9}))
    listed = await api(proxy, "GET", "/api/v1/rate-limits", 200)
    assert [(x["id"], x["readOnly"], x["scopeType"]) for x in listed["data"]] == [("yaml", True, "organization")]
    created = await api(proxy, "POST", "/api/v1/rate-limits", 201,
                        {"scopeType": "user", "scopeId": "alice", "requestsPerMinute": 1, "name": "alice"})
    assert created["id"].startswith("rl_") and created["source"] == "api" and created["createdAt"]
    limit_id = created["id"]
    assert (await chat(proxy)).status == 200
    assert (await chat(proxy)).status == 429
    patched = await api(proxy, "PATCH", f"/api/v1/rate-limits/{limit_id}", 200, {"requestsPerMinute": 1000})
    assert patched["requestsPerMinute"] == 1000 and patched["name"] == "alice"
    assert patched["createdAt"] == created["createdAt"]
    assert (await chat(proxy)).status == 200  # the bucket refills at the new rate
    replaced = await api(proxy, "PUT", f"/api/v1/rate-limits/{limit_id}", 200,
                         {"scopeType": "user", "scopeId": "alice", "tokensPerMinute": 10_000})
    assert replaced["requestsPerMinute"] is None and replaced["tokensPerMinute"] == 10_000
    assert (await api(proxy, "GET", f"/api/v1/rate-limits/{limit_id}", 200))["tokensPerMinute"] == 10_000
    filtered = await api(proxy, "GET", "/api/v1/rate-limits?scopeType=user&scopeId=alice", 200)
    assert [x["id"] for x in filtered["data"]] == [limit_id]
    await api(proxy, "DELETE", f"/api/v1/rate-limits/{limit_id}", 200)
    await api(proxy, "GET", f"/api/v1/rate-limits/{limit_id}", 404)
    resp = await chat(proxy)
    assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers


@pytest.mark.parametrize(("body", "param"), [
    ({"scopeType": "team", "scopeId": "core"}, None),  # neither per-minute figure
    ({"scopeType": "galaxy", "scopeId": "x", "requestsPerMinute": 1}, "scopeType"),
    ({"scopeType": "team", "scopeId": "x", "requestsPerMinute": "10"}, "requestsPerMinute"),
    ({"scopeType": "team", "scopeId": "x", "requestsPerMinute": 1.5}, "requestsPerMinute"),
    ({"scopeType": "team", "scopeId": "x", "requestsPerMinute": True}, "requestsPerMinute"),
    ({"scopeType": "team", "scopeId": "x", "requestsPerMinute": 0}, "requestsPerMinute"),
    ({"scopeType": "team", "scopeId": "x", "requestsPerMinute": 10**11}, "requestsPerMinute"),
    ({"scopeType": "team", "scopeId": "x", "tokensPerMinute": 5, "burstRequests": 5}, "burstRequests"),
    ({"scopeType": "team", "scopeId": "", "requestsPerMinute": 1}, "scopeId"),
    ({"scopeType": "team", "scopeId": ["x"], "requestsPerMinute": 1}, "scopeId"),
    ({"scopeType": "team", "scopeId": "x", "requestsPerMinute": 1, "color": "red"}, "color"),
    ({"id": "status", "scopeType": "team", "scopeId": "x", "requestsPerMinute": 1}, "id"),
])
async def test_bad_limits_are_400s_naming_the_field(make_proxy: ProxyFactory, body: dict[str, Any],
                                                    param: str | None) -> None:
    proxy = await make_proxy()
    error = (await api(proxy, "POST", "/api/v1/rate-limits", 400, body))["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    if param is not None:
        assert param in (error["param"] or "") or param in error["message"]


async def test_yaml_limits_are_read_only_a_scope_has_one_limit_and_writes_need_the_admin(
        make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra=limits({"id": "yaml", "scope_type": "team", "scope_id": "core",
                                           "requests_per_minute": 9}))
    assert (await api(proxy, "DELETE", "/api/v1/rate-limits/yaml", 403))["error"]["code"] == "forbidden"
    await api(proxy, "PATCH", "/api/v1/rate-limits/yaml", 403, {"requestsPerMinute": 1})
    clash = await api(proxy, "POST", "/api/v1/rate-limits", 400,
                      {"scopeType": "team", "scopeId": "core", "requestsPerMinute": 1})
    assert "already has rate limit 'yaml'" in clash["error"]["message"]
    await api(proxy, "POST", "/api/v1/rate-limits", 201, {"id": "a", "scopeType": "key", "scopeId": "*",
                                                           "requestsPerMinute": 1})
    await api(proxy, "POST", "/api/v1/rate-limits", 400, {"id": "a", "scopeType": "user", "scopeId": "z",
                                                           "requestsPerMinute": 1})
    token = await api(proxy, "POST", "/api/v1/tokens", 201, {"name": "viewer"})
    viewer = {"Authorization": f"Bearer {token['token']}"}
    assert len((await api(proxy, "GET", "/api/v1/rate-limits", 200, headers=viewer))["data"]) == 2
    await api(proxy, "POST", "/api/v1/rate-limits", 403, {"scopeType": "user", "scopeId": "q",
                                                           "requestsPerMinute": 1}, headers=viewer)
    await api(proxy, "DELETE", "/api/v1/rate-limits/a", 403, headers=viewer)
    await api(proxy, "GET", "/api/v1/rate-limits", 401, headers={"Authorization": f"Bearer {proxy.key}"})
    await api(proxy, "GET", "/api/v1/rate-limits/status", 400)


async def test_limits_are_kept_across_a_restart(make_proxy: ProxyFactory, write_config: Any, simulator: Any,
                                                aiohttp_client: Any) -> None:
    from costproxy.http.app import create_app
    from tests.conftest import load_test_settings

    proxy = await make_proxy(extra=limits({"id": "r", "scope_type": "user", "scope_id": "alice",
                                           "requests_per_minute": 2}))
    await api(proxy, "POST", "/api/v1/rate-limits", 201, {"id": "api-one", "scopeType": "team", "scopeId": "core",
                                                           "requestsPerMinute": 50})
    assert (await chat(proxy)).status == 200
    assert (await chat(proxy)).status == 200
    await proxy.client.close()  # checkpoints the buckets
    url, _ = simulator
    again = await aiohttp_client(create_app(load_test_settings(write_config(url, extra=limits(
        {"id": "r", "scope_type": "user", "scope_id": "alice", "requests_per_minute": 2})))))
    listed = await again.get("/api/v1/rate-limits", headers=ADMIN)
    assert "api-one" in [x["id"] for x in (await listed.json())["data"]]
    resp = await again.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 429  # the two requests of the minute before the restart still count


async def test_metrics_count_refusals_by_code_and_what_the_cache_saved(make_proxy: ProxyFactory) -> None:
    rules = {"cache.yaml": {"version": 1, "rules": [{"id": "c", "name": "c", "priority": 1, "continue": True,
                                                     "actions": [{"type": "cache"}]}]}}
    proxy = await make_proxy(rules=rules, extra=limits({"id": "r", "scope_type": "key", "scope_id": "*",
                                                        "requests_per_minute": 2}))
    body = {**CHAT, "temperature": 0}
    assert (await chat(proxy, body)).status == 200
    assert (await chat(proxy, body)).headers["x-costproxy-cache"] == "hit"
    assert (await chat(proxy, body)).status == 429
    text = await (await proxy.client.get("/metrics")).text()
    miss = (await proxy.ledger())[0]
    assert 'costproxy_refusals_total{code="rate_limited"} 1.0' in text
    assert f"costproxy_cache_saved_nanos_total {float(miss.cost_nanos)}" in text
    assert 'status="cache_hit"' in text


async def test_disabled_limits_are_not_enforced(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(extra={"rate_limits": {"enabled": False, "limits": [
        {"id": "r", "scope_type": "key", "scope_id": "*", "requests_per_minute": 1}]}})
    for _ in range(3):
        resp = await chat(proxy)
        assert resp.status == 200 and "x-ratelimit-limit-requests" not in resp.headers
    listed = await api(proxy, "GET", "/api/v1/rate-limits", 200)
    assert listed["enabled"] is False and len(listed["data"]) == 1


async def test_ledger_entries_are_stamped_by_the_same_clock_as_budgets_and_limits(
        aiohttp_client: Any, simulator: Any, write_config: Any) -> None:
    clock = FrozenClock(1_900_000_000.0)  # 2030: far from the machine's own clock
    proxy = await clocked_proxy(aiohttp_client, simulator, write_config, clock)
    assert (await chat(proxy)).status == 200
    entry = (await proxy.ledger())[-1]
    assert entry.ts_ms == 1_900_000_000_000
