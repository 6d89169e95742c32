"""The proxy path against the simulated upstream: responses, headers, errors and the ledger."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from costproxy.http.state import SETTINGS
from costproxy.money import format_usd
from tests.conftest import ADMIN_TOKEN

CHAT = {"model": "big", "messages": [{"role": "user", "content": "Say hello to the team please"}]}


def expected_cost(prompt: int, completion: int, cached: int, price_in: str, price_out: str,
                  price_cached: str | None = None) -> int:
    total = (Decimal(prompt - cached) * Decimal(price_in) + Decimal(completion) * Decimal(price_out)
             + Decimal(cached) * Decimal(price_cached or price_in))
    return int(total * 1000)  # per-1M price -> nano-USD per token is price * 1000


async def test_chat_unary_headers_and_ledger(make_proxy) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "foo_extra": {"x": 1}},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    call = proxy.sim.calls[-1]
    # unknown fields pass through untouched, provider key injected, client key never forwarded
    assert call.body["foo_extra"] == {"x": 1}
    assert call.auth == "sk-provider-secret"
    assert proxy.key not in orjson.dumps(call.headers).decode()
    assert body["usage"]["prompt_tokens"] == call.prompt_tokens
    cost = expected_cost(call.prompt_tokens, call.completion_tokens, 0, "2.50", "10.00")
    assert resp.headers["x-costproxy-model"] == "big"
    assert resp.headers["x-costproxy-cost-usd"] == format_usd(cost)
    assert resp.headers["x-costproxy-request-id"].startswith("req_")
    assert resp.headers["x-costproxy-usage"] == "reported"
    [entry] = await proxy.ledger()
    assert entry.cost_nanos == cost
    assert (entry.user, entry.team, entry.org, entry.project) == ("alice", "core", "acme", "p1")
    assert entry.served_model == "big" and entry.requested_model == "big" and entry.provider == "sim"
    assert entry.usage_reported and entry.status == "ok" and entry.http_status == 200


async def test_cached_tokens_priced_as_cached(make_proxy) -> None:
    proxy = await make_proxy()
    proxy.sim.plan(cached=5)
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 200
    call = proxy.sim.calls[-1]
    [entry] = await proxy.ledger()
    assert entry.cached_tokens == 5
    assert entry.cost_nanos == expected_cost(call.prompt_tokens, call.completion_tokens, 5, "2.50", "10.00", "1.25")


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_relayed_and_settled(make_proxy, include_usage: bool) -> None:
    proxy = await make_proxy()
    body = {**CHAT, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    resp = await proxy.client.post("/v1/chat/completions", json=body, headers=proxy.auth())
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    text = (await resp.read()).decode()
    frames = [f for f in text.split("\n\n") if f.startswith("data: ") and f != "data: [DONE]"]
    usage_frames = [f for f in frames if '"usage":{' in f.replace(" ", "")]
    assert bool(usage_frames) is include_usage  # a usage chunk the client did not ask for is not relayed
    assert "data: [DONE]" in text
    call = proxy.sim.calls[-1]
    assert call.body["stream_options"]["include_usage"] is True  # asked upstream regardless
    [entry] = await proxy.ledger()
    assert entry.usage_reported and entry.stream
    assert entry.cost_nanos == expected_cost(call.prompt_tokens, call.completion_tokens, 0, "2.50", "10.00")
    assert f'"cost_usd":"{format_usd(entry.cost_nanos)}"' in text  # final SSE comment


async def test_stream_without_usage_is_estimated(make_proxy) -> None:
    proxy = await make_proxy()
    proxy.sim.plan(no_usage=True)
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    assert resp.status == 200
    await resp.read()
    [entry] = await proxy.ledger()
    assert not entry.usage_reported
    assert entry.completion_tokens > 0 and entry.cost_nanos > 0


async def test_upstream_drop_mid_stream_charges_what_was_sent(make_proxy) -> None:
    proxy = await make_proxy()
    proxy.sim.plan(drop_after=4, chunk_delay_ms=20)  # abrupt close discards unread buffered chunks
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=proxy.auth())
    text = (await resp.read()).decode()
    assert "upstream_unavailable" in text  # the error is told to the client in the stream
    [entry] = await proxy.ledger()
    assert entry.status == "error" and not entry.usage_reported and entry.completion_tokens >= 1
    assert entry.cost_nanos > 0


async def test_completions_and_embeddings_and_models(make_proxy) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/completions", json={"model": "legacy", "prompt": "Once upon a time"},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    resp = await proxy.client.post("/v1/embeddings", json={"model": "embed", "input": ["a b c", "d e"]},
                                   headers=proxy.auth())
    assert resp.status == 200, await resp.text()
    call = proxy.sim.calls[-1]
    entries = await proxy.ledger()
    assert entries[-1].prompt_tokens == call.prompt_tokens and entries[-1].completion_tokens == 0
    assert entries[-1].cost_nanos == expected_cost(call.prompt_tokens, 0, 0, "0.02", "0")
    resp = await proxy.client.get("/models", headers=proxy.auth())
    ids = {m["id"] for m in (await resp.json())["data"]}
    assert {"big", "small", "embed", "auto", "auto:economy"} <= ids


@pytest.mark.parametrize(("body", "status", "code"), [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_json"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
    (b'{"model": "big"}', 400, "invalid_request"),
    (b'{"model": "embed", "messages": [{"role": "user", "content": "hi"}]}', 400, "invalid_request"),
])
async def test_bad_requests_get_openai_errors(make_proxy, body: bytes, status: int, code: str) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/chat/completions", data=body,
                                   headers={**proxy.auth(), "content-type": "application/json"})
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code and error["message"] and "type" in error and "param" in error


async def test_body_too_large(make_proxy) -> None:
    proxy = await make_proxy()
    big = {"model": "big", "messages": [{"role": "user", "content": "x" * 70000}]}
    resp = await proxy.client.post("/v1/chat/completions", json=big, headers=proxy.auth())
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "body_too_large"


async def test_a_body_too_large_on_a_proxied_endpoint_leaves_a_refusal_in_the_ledger(make_proxy) -> None:
    """README: every failed request leaves a ledger entry — a declared body over the limit too, on
    every proxied endpoint (refused unread after authentication); count_tokens is not ledgered."""
    proxy = await make_proxy()
    limit = proxy.app[SETTINGS].server.max_body_bytes
    big = {"model": "big", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * (limit + 10)}]}
    paths = ("/v1/chat/completions", "/chat/completions", "/v1/messages", "/v1/responses")
    for path in paths:
        resp = await proxy.client.post(path, json=big, headers=proxy.auth())
        assert resp.status == 413, path
        text = await resp.text()
        assert "body_too_large" in text and "bytes exceeds the limit of" in text, text
        assert resp.headers["x-costproxy-request-id"]
    entries = await proxy.ledger()
    assert [(e.status, e.error_code, e.cost_nanos) for e in entries] == [("refused", "body_too_large", 0)] * 4
    assert all(e.key_id is not None for e in entries)
    resp = await proxy.client.post("/v1/chat/completions", json=big, headers=proxy.auth("cp-unknown"))
    assert resp.status == 401  # no principal: nothing to ledger, as for any unauthenticated call
    resp = await proxy.client.post("/v1/messages/count_tokens", json=big, headers=proxy.auth())
    assert resp.status == 413 and len(await proxy.ledger()) == 4


async def test_auth_errors(make_proxy) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth("cp-wrong"))
    assert resp.status == 401
    created = await proxy.client.post("/api/v1/keys", json={"user": "bob"},
                                      headers={"Authorization": "Bearer test-admin-token"})
    assert created.status == 201
    record = await created.json()
    assert record["key"].startswith("cp-")
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth(record["key"]))
    assert resp.status == 200
    revoked = await proxy.client.delete(f"/api/v1/keys/{record['id']}",
                                        headers={"Authorization": "Bearer test-admin-token"})
    assert revoked.status == 200 and (await revoked.json())["active"] is False
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth(record["key"]))
    assert resp.status == 401
    listed = await proxy.client.get("/api/v1/keys", headers={"Authorization": "Bearer test-admin-token"})
    assert all("key" not in k and "key_hash" not in k for k in (await listed.json())["data"])


@pytest.mark.parametrize(("fault", "status", "code"), [
    ("500", 500, "upstream_error"),
    ("429", 429, "upstream_rate_limited"),
    ("400", 400, "upstream_error"),
    ("malformed", 502, "upstream_bad_response"),
    ("drop", 502, "upstream_unavailable"),
])
async def test_upstream_failures_mapped_and_recorded(make_proxy, fault: str, status: int, code: str) -> None:
    proxy = await make_proxy()
    proxy.sim.plan(fault=fault)
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == status
    assert (await resp.json())["error"]["code"] == code
    [entry] = await proxy.ledger()
    assert entry.status == "error" and entry.error_code == code
    if fault == "malformed":  # a 2xx the provider may bill, whose answer is lost: its worst case, estimated
        assert entry.cost_nanos > 0 and not entry.usage_reported
    else:
        assert entry.cost_nanos == 0


async def test_upstream_timeout(make_proxy) -> None:
    proxy = await make_proxy(provider_overrides={"timeouts": {"connect": 1, "read": 0.3, "first_byte": 0.3,
                                                              "stream_idle": 0.3}})
    proxy.sim.plan(latency_ms=2000)
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 504 and (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_untrusted_identity_headers_ignored(make_proxy) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT,
                                   headers={**proxy.auth(), "X-Costproxy-Team": "other"})
    assert resp.status == 200
    [entry] = await proxy.ledger()
    assert entry.team == "core"


async def test_trusted_proxy_may_assert_identity(make_proxy) -> None:
    from costproxy.settings import TrustedProxySettings

    proxy = await make_proxy(settings_changes={"trusted_proxies": (
        TrustedProxySettings(name="relaycore", secret_env="X", secret="s3cret", sources=("127.0.0.0/8",)),)})
    headers = {**proxy.auth(), "X-Costproxy-Proxy-Secret": "s3cret", "X-Costproxy-Team": "relay-team",
               "X-Costproxy-User": "carol", "X-Tenant-ID": "t1"}
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 200
    [entry] = await proxy.ledger()
    assert (entry.team, entry.user, entry.tenant) == ("relay-team", "carol", "t1")


async def test_a_client_cannot_file_its_request_under_another_teams_request_id(make_proxy, capsys) -> None:
    """DESIGN §3.2: X-Request-ID from a caller without the trusted proxy's secret is ignored — else
    any key could put its request under another team's id (GET /api/v1/requests/{id} showed both)."""
    from costproxy.settings import TrustedProxySettings

    proxy = await make_proxy(settings_changes={"trusted_proxies": (
        TrustedProxySettings(name="relaycore", secret_env="X", secret="s3cret", sources=("127.0.0.0/8",)),)})
    victim = await proxy.new_key(team="victim", user="vic")
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth(victim))
    assert resp.status == 200
    victims_id = resp.headers["x-costproxy-request-id"]
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT,
                                   headers={**proxy.auth(), "X-Request-ID": victims_id})
    assert resp.status == 200 and resp.headers["x-costproxy-request-id"] != victims_id
    own_id = resp.headers["x-costproxy-request-id"]
    logged = capsys.readouterr()
    line = next(line for line in (logged.out + logged.err).splitlines()
                if "request_completed" in line and own_id in line)
    assert victims_id in line and "client_request_id" in line  # what the client sent, in its log line only
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    entries = (await (await proxy.client.get(f"/api/v1/requests/{victims_id}", headers=admin)).json())["data"]
    assert [e["teamId"] for e in entries] == ["victim"]
    assert {c.headers.get("x-request-id") for c in proxy.sim.calls} == {victims_id, own_id}
    # a trusted chaining proxy still names the request
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers={
        **proxy.auth(), "X-Costproxy-Proxy-Secret": "s3cret", "X-Request-ID": "relay-req-1"})
    assert resp.status == 200 and resp.headers["x-costproxy-request-id"] == "relay-req-1"
    assert [e.request_id for e in await proxy.ledger()][-1] == "relay-req-1"


async def test_budget_remaining_header(make_proxy) -> None:
    proxy = await make_proxy(extra={"budgets": {"definitions": [
        {"id": "core-day", "name": "core daily", "scope_type": "team", "scope_id": "core", "limit_usd": "1",
         "period": "daily"}]}})
    resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
    assert resp.status == 200
    [entry] = await proxy.ledger()
    assert resp.headers["x-costproxy-budget-remaining-usd"] == format_usd(1_000_000_000 - entry.cost_nanos)


async def test_an_accepted_call_whose_answer_is_lost_is_charged_not_retried(make_proxy) -> None:
    """The provider answered 200 and then hung: it took (and bills) the call, so the entry is
    charged the worst case the request reserved, marked estimated, and no fallback model is tried
    (a retry elsewhere could bill the same request twice)."""
    proxy = await make_proxy(provider_overrides={"timeouts": {"connect": 1, "read": 0.5, "first_byte": 0.5,
                                                              "stream_idle": 0.5}})
    proxy.sim.plan(fault="hang_body")
    resp = await proxy.client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 40},
                                   headers=proxy.auth())
    assert resp.status == 504 and (await resp.json())["error"]["code"] == "upstream_timeout"
    assert len([c for c in proxy.sim.calls if c.path.endswith("/chat/completions")]) == 1
    [entry] = await proxy.ledger()
    assert entry.status == "error" and entry.error_code == "upstream_timeout"
    assert not entry.usage_reported and entry.completion_tokens == 40 and entry.prompt_tokens > 0
    model = proxy.app[SETTINGS].registry.models[entry.served_model]
    assert entry.cost_nanos == model.price_of(entry.prompt_tokens, entry.completion_tokens) > 0
