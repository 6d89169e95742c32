"""The response cache through the app: opt-in by rule or header, hits at cost 0 in the ledger and the
savings report, streams replayed in every API, partitions, TTL, bounds, failures, the API."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from costproxy.budgets.codec import usd
from tests.conftest import ADMIN_TOKEN, Proxy, ProxyFactory
from tests.integration.conftest import ProtocolProxy
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "big", "temperature": 0, "max_tokens": 60,
        "messages": [{"role": "user", "content": "Classify the sentiment: great phone, awful battery"}]}


def cache_rule(**params: Any) -> dict[str, Any]:
    return {"cache.yaml": {"version": 1, "rules": [{"id": "cache-everything", "name": "cache", "priority": 1,
                                                    "actions": [{"type": "cache", "params": params}],
                                                    "continue": True}]}}


async def post(proxy: Proxy, body: dict[str, Any], path: str = "/v1/chat/completions", key: str | None = None,
               **headers: str) -> Any:
    return await proxy.client.post(path, json=body, headers={**proxy.auth(key), **headers})


def sse_data(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


async def test_a_rule_caches_a_deterministic_request_and_a_hit_costs_nothing(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule(ttl_s=600))
    first = await post(proxy, CHAT)
    assert first.status == 200 and first.headers["x-costproxy-cache"] == "miss"
    second = await post(proxy, CHAT)
    assert second.status == 200, await second.text()
    assert second.headers["x-costproxy-cache"] == "hit" and second.headers["x-costproxy-cost-usd"] == "0"
    assert await second.json() == await first.json()
    assert len(proxy.sim.calls) == 1  # the provider was called once
    miss, hit = await proxy.ledger()
    assert (miss.status, hit.status) == ("ok", "cache_hit")
    assert hit.cost_nanos == 0 and hit.prompt_tokens == 0 and hit.completion_tokens == 0
    assert hit.baseline_nanos == miss.baseline_nanos > 0  # the baseline of the same tokens: counted as saved
    assert hit.metadata["cache"]["saved_nanos"] == miss.cost_nanos
    assert hit.metadata["cache"]["source_request_id"] == miss.request_id
    assert hit.metadata["cache"]["prompt_tokens"] == miss.prompt_tokens
    assert hit.served_model == "big" and hit.http_status == 200 and hit.metadata["rules"] == ["cache-everything"]
    summary = await (await proxy.client.get("/api/v1/usage/summary?groupBy=model", headers=ADMIN)).json()
    [row] = summary["data"]
    assert row["cacheHits"] == 1 and row["cacheSaving"] == usd(miss.cost_nanos)
    assert row["saving"] == usd(2 * miss.baseline_nanos - miss.cost_nanos)


async def test_what_is_not_deterministic_is_never_cached(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule())
    body = {**CHAT, "temperature": 0.7}
    first = await post(proxy, body)
    assert first.headers["x-costproxy-cache"] == "uncacheable"
    assert "temperature 0" in first.headers["x-costproxy-cache-reason"]
    await post(proxy, body)
    assert len(proxy.sim.calls) == 2
    assert (await post(proxy, {**CHAT, "temperature": 0.7, "seed": 7})).headers["x-costproxy-cache"] == "miss"


async def test_the_header_needs_a_caller_allowed_to_send_it(make_proxy: ProxyFactory) -> None:
    strict = await make_proxy()  # cache.header: trusted (the default): a client's header is ignored
    resp = await post(strict, CHAT, **{"x-costproxy-cache": "on"})
    assert resp.status == 200 and "x-costproxy-cache" not in resp.headers
    await post(strict, CHAT, **{"x-costproxy-cache": "on"})
    assert len(strict.sim.calls) == 2
    open_ = await make_proxy(extra={"cache": {"header": "all", "default_ttl_s": 120}})
    open_.sim.reset()  # one simulator serves both proxies
    assert (await post(open_, CHAT, **{"x-costproxy-cache": "on"})).headers["x-costproxy-cache"] == "miss"
    assert (await post(open_, CHAT, **{"x-costproxy-cache": "on"})).headers["x-costproxy-cache"] == "hit"
    refreshed = await post(open_, CHAT, **{"x-costproxy-cache": "refresh"})
    assert refreshed.headers["x-costproxy-cache"] == "refresh"
    off = await post(open_, CHAT, **{"x-costproxy-cache": "off"})
    assert "x-costproxy-cache" not in off.headers
    assert len(open_.sim.calls) == 3  # miss, refresh, off
    bad = await post(open_, CHAT, **{"x-costproxy-cache": "yes"})
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "x-costproxy-cache"
    assert [e.status for e in await open_.ledger()][-1] == "refused"


async def test_a_trusted_proxy_may_ask_and_off_beats_a_rule(make_proxy: ProxyFactory) -> None:
    from costproxy.settings import TrustedProxySettings

    relay = TrustedProxySettings(name="relay", secret_env="RELAY_SECRET", secret="s3cret-relay")
    proxy = await make_proxy(rules=cache_rule(), settings_changes={"trusted_proxies": (relay,)})
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "miss"
    ignored = await post(proxy, CHAT, **{"x-costproxy-cache": "off"})  # a client may not turn it off
    assert ignored.headers["x-costproxy-cache"] == "hit"
    via_relay = {"x-costproxy-proxy-secret": "s3cret-relay", "x-costproxy-cache": "off"}
    off = await post(proxy, CHAT, **via_relay)  # the chaining proxy may
    assert off.status == 200 and "x-costproxy-cache" not in off.headers
    assert len(proxy.sim.calls) == 2
    asked = await post(proxy, {**CHAT, "max_tokens": 7}, **{**via_relay, "x-costproxy-cache": "on"})
    assert asked.headers["x-costproxy-cache"] == "miss"


async def test_entries_are_never_shared_across_principals_unless_configured(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule())
    bob = await proxy.new_key(user="bob", team="core", org="acme")
    await post(proxy, CHAT)
    assert (await post(proxy, CHAT, key=bob)).headers["x-costproxy-cache"] == "miss"
    shared = await make_proxy(rules=cache_rule(share="team"))
    carol = await shared.new_key(user="carol", team="core", org="acme")
    outsider = await shared.new_key(user="dave", team="other", org="acme")
    await post(shared, CHAT)
    assert (await post(shared, CHAT, key=carol)).headers["x-costproxy-cache"] == "hit"
    assert (await post(shared, CHAT, key=outsider)).headers["x-costproxy-cache"] == "miss"


async def test_a_unary_answer_is_replayed_as_a_stream_and_a_stream_is_kept_whole(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule())
    unary = await (await post(proxy, CHAT)).json()
    stream = await post(proxy, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert stream.headers["x-costproxy-cache"] == "hit" and stream.headers["x-costproxy-cost-usd"] == "0"
    text = await stream.text()
    chunks = sse_data(text)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == \
        unary["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == unary["usage"] and text.rstrip().endswith('"usage":"reported","prompt_tokens":0,'
                                                                            '"completion_tokens":0}')
    other = {**CHAT, "max_tokens": 61}  # a different request: streamed first, then asked unary
    streamed = await post(proxy, {**other, "stream": True})
    parts = sse_data(await streamed.text())
    assert all("usage" not in c for c in parts)  # the client did not ask for usage
    again = await post(proxy, other)
    assert again.headers["x-costproxy-cache"] == "hit"
    body = await again.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "".join(c["choices"][0]["delta"].get("content") or ""
                                                               for c in parts if c["choices"])
    assert body["usage"]["completion_tokens"] > 0  # filled from the ledger entry
    assert len(proxy.sim.calls) == 2


async def test_the_openai_sdk_reads_a_replayed_stream(make_proxy: ProxyFactory) -> None:
    import openai

    proxy = await make_proxy(rules=cache_rule())
    client = openai.AsyncOpenAI(api_key=proxy.key, base_url=str(proxy.client.make_url("/v1")), max_retries=0)
    proxy.closers.append(client.close)
    first = await client.chat.completions.create(**CHAT)
    stream = await client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        usage = chunk.usage or usage
    assert text == first.choices[0].message.content and usage is not None
    assert usage.total_tokens == first.usage.total_tokens if first.usage else False
    legacy = {"model": "legacy", "prompt": "Say hi", "max_tokens": 5, "temperature": 0}
    one = await client.completions.create(**legacy)
    streamed = await client.completions.create(**legacy, stream=True)
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == one.choices[0].text
    vector = await client.embeddings.create(model="embed", input="hello")
    again = await client.embeddings.with_raw_response.create(model="embed", input="hello")
    assert again.headers["x-costproxy-cache"] == "hit" and again.parse().data[0].embedding == vector.data[0].embedding
    assert len(proxy.sim.calls) == 3


def rules_dir_with_cache_rule(tmp_path: Any) -> None:
    """``protocol_proxy`` writes no rules of its own: put the cache rule where its config looks."""
    import yaml

    (tmp_path / "rules").mkdir(exist_ok=True)
    for name, document in cache_rule().items():
        (tmp_path / "rules" / name).write_text(yaml.safe_dump(document))


async def test_responses_hits_get_their_own_id_and_can_be_continued(protocol_proxy: ProtocolProxy,
                                                                     tmp_path: Any) -> None:
    rules_dir_with_cache_rule(tmp_path)
    proxy = await protocol_proxy()
    body = {"model": "big", "input": "Name a colour", "temperature": 0, "max_output_tokens": 40}
    first = await (await post(proxy, body, "/v1/responses")).json()
    hit = await post(proxy, body, "/v1/responses")
    assert hit.headers["x-costproxy-cache"] == "hit"
    second = await hit.json()
    assert second["id"] != first["id"] and second["output"] == first["output"]
    follow = await post(proxy, {"model": "big", "input": "and another", "previous_response_id": second["id"]},
                        "/v1/responses")
    assert follow.status == 200, await follow.text()
    stream = await post(proxy, {**body, "stream": True}, "/v1/responses")
    events = sse_data(await stream.text())
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"] == first["output"] and events[-1]["response"]["id"] != first["id"]
    stored = await proxy.client.get(f"/v1/responses/{events[-1]['response']['id']}", headers=proxy.auth())
    assert stored.status == 200  # the streamed hit was stored for follow-ups too


async def test_the_anthropic_sdk_reads_messages_hits(protocol_proxy: ProtocolProxy, tmp_path: Any) -> None:
    import anthropic

    rules_dir_with_cache_rule(tmp_path)
    proxy = await protocol_proxy()
    client = anthropic.AsyncAnthropic(api_key=proxy.key, base_url=str(proxy.client.make_url("")), max_retries=0)
    proxy.closers.append(client.close)
    ask = {"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}],
           "extra_body": {"temperature": 0}}  # this SDK has no temperature argument of its own
    first = await client.messages.create(**ask)
    raw = await client.messages.with_raw_response.create(**ask)
    assert raw.headers["x-costproxy-cache"] == "hit" and (await raw.parse()).content == first.content
    async with client.messages.stream(**ask) as stream:
        final = await stream.get_final_message()
    assert [b.text for b in final.content if b.type == "text"] == [b.text for b in first.content if b.type == "text"]
    assert final.stop_reason == first.stop_reason and final.usage.output_tokens == first.usage.output_tokens


async def test_entries_expire(aiohttp_client: Any, simulator: Any, write_config: Any) -> None:
    from costproxy.http.app import create_app
    from tests.conftest import load_test_settings

    clock = [1_800_000_000.0]
    url, sim = simulator
    app = create_app(load_test_settings(write_config(url, rules=cache_rule(ttl_s=60))), clock=lambda: clock[0])
    client = await aiohttp_client(app)
    proxy = Proxy(client, app, "", sim)
    proxy.key = await proxy.new_key(user="alice", org="acme")
    await post(proxy, CHAT)
    clock[0] += 59
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "hit"
    clock[0] += 2
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "miss"
    hits = [e for e in await proxy.ledger() if e.status == "cache_hit"]
    # one clock: the TTL, the age in the ledger and the entry's time all follow the test's
    assert len(hits) == 1 and hits[0].metadata["cache"]["age_s"] == 59
    assert hits[0].ts_ms == 1_800_000_059_000


async def test_failures_are_not_cached_and_a_hit_releases_its_reservation(make_proxy: ProxyFactory) -> None:
    budget = {"id": "alice", "scope_type": "user", "scope_id": "alice", "limit_usd": "10", "period": "daily"}
    proxy = await make_proxy(rules=cache_rule(), extra={"budgets": [budget]})
    proxy.sim.plan(times=1, fault="500")
    assert (await post(proxy, CHAT)).status == 500
    proxy.sim.plan(times=1, drop_after=2)
    await (await post(proxy, {**CHAT, "stream": True})).text()
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "miss"  # neither failure was kept
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "hit"
    status = await (await proxy.client.get("/api/v1/budgets/alice/status", headers=ADMIN)).json()
    ledger = await proxy.ledger()
    assert status["reserved"] == "0" and status["currentAmount"] == usd(sum(e.cost_nanos for e in ledger))


async def test_bounds_and_the_cache_api(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule(), extra={"cache": {"max_entry_bytes": 1024, "max_bytes": 4096}})
    await post(proxy, {**CHAT, "max_tokens": 2000})  # the simulator's answer fits; a padded request does not
    stats = await (await proxy.client.get("/api/v1/cache", headers=ADMIN)).json()
    assert stats["entries"] == 1 and 0 < stats["bytes"] <= 1024 and stats["maxBytes"] == 4096
    big = {**CHAT, "max_tokens": 2000, "messages": [{"role": "user", "content": "Talk [[sim:tokens=400]]"}]}
    await post(proxy, big)
    assert (await post(proxy, big)).headers["x-costproxy-cache"] == "miss"  # its answer is over 1 KiB
    purge = await proxy.client.delete("/api/v1/cache", headers=ADMIN)
    assert (await purge.json())["deleted"] == 1
    assert (await post(proxy, {**CHAT, "max_tokens": 2000})).headers["x-costproxy-cache"] == "miss"
    token = await (await proxy.client.post("/api/v1/tokens", headers=ADMIN, json={"name": "v"})).json()
    denied = await proxy.client.delete("/api/v1/cache", headers={"Authorization": f"Bearer {token['token']}"})
    assert denied.status == 403


async def test_a_hit_counts_as_a_request_but_uses_no_tokens(make_proxy: ProxyFactory) -> None:
    limits = {"rate_limits": [{"id": "k", "scope_type": "key", "scope_id": "*", "requests_per_minute": 3,
                               "tokens_per_minute": 1_000_000}]}
    proxy = await make_proxy(rules=cache_rule(), extra=limits)
    await post(proxy, CHAT)
    hit = await post(proxy, CHAT)
    assert hit.headers["x-costproxy-cache"] == "hit" and hit.headers["x-ratelimit-remaining-requests"] == "1"
    key_id = (await proxy.ledger())[-1].key_id
    status = await (await proxy.client.get(f"/api/v1/rate-limits/status?keyId={key_id}&org=acme",
                                           headers=ADMIN)).json()
    tokens = next(d for d in status["data"] if d["metric"] == "tokens")
    first = (await proxy.ledger())[0]
    assert 1_000_000 - tokens["remaining"] <= first.prompt_tokens + first.completion_tokens  # the hit gave all back


async def test_a_corrupt_entry_is_a_miss(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule())
    await post(proxy, CHAT)
    from costproxy.http.state import BACKEND

    backend_cache = proxy.app[BACKEND].cache
    assert backend_cache is not None
    rows = await proxy.app[BACKEND].local.query("SELECT key FROM response_cache")
    await backend_cache.put(rows[0]["key"], orjson.dumps({"v": 99}), 60)
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "miss"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
async def test_both_prefixes(make_proxy: ProxyFactory, path: str) -> None:
    proxy = await make_proxy(rules=cache_rule())
    await post(proxy, CHAT, path)
    assert (await post(proxy, CHAT, path)).headers["x-costproxy-cache"] == "hit"


async def test_a_client_leaving_a_replayed_stream_is_still_a_settled_hit(make_proxy: ProxyFactory) -> None:
    proxy = await make_proxy(rules=cache_rule())
    await post(proxy, CHAT)
    resp = await post(proxy, {**CHAT, "stream": True})
    assert resp.headers["x-costproxy-cache"] == "hit"
    await resp.content.readany()
    resp.close()  # hang up after the first bytes

    async def settled() -> bool:  # settled when the replay ends, whenever the client left
        return len(await proxy.ledger()) >= 2

    await eventually(settled, what="the replayed hit in the ledger")
    hit = (await proxy.ledger())[-1]
    assert hit.status == "cache_hit" and hit.cost_nanos == 0
    assert (await post(proxy, CHAT)).headers["x-costproxy-cache"] == "hit"  # nothing broke
