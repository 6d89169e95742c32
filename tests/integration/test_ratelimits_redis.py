"""Rate limits on Redis (database 13): two replicas share a limit, the Lua script computes what the
pure algorithm does, API changes spread, and an unreachable Redis follows ``on_store_error``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from costproxy.budgets.redis import redis_client
from costproxy.errors import StoreUnavailable
from costproxy.http.app import create_app
from costproxy.ratelimits.gcra import Meter, admit, corrected, level
from costproxy.ratelimits.redis import RedisBuckets
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisServer, RedisSpace, own_redis, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "hi [[sim:tokens=3]]"}]}
Factory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_replica(aiohttp_client: Any, simulator: Any, write_config: Any, redis_space: RedisSpace) -> Factory:  # noqa: F811
    async def make(port: int, limits: list[dict[str, Any]], url: str | None = None,
                   **settings: Any) -> TestClient[Any, Any]:
        path = write_config(simulator[0], extra={
            "budgets": {"key_prefix": redis_space.prefix},
            "rate_limits": {"refresh_interval_s": 0.1, **settings, "limits": limits}})
        loaded = load_test_settings(path, COSTPROXY_STORE_URL=url or redis_space.url)
        loaded = replace(loaded, server=replace(loaded.server, port=port))
        return await aiohttp_client(create_app(loaded))

    return make


async def new_key(client: TestClient[Any, Any]) -> str:
    async with client.post("/api/v1/keys", headers=ADMIN, json={"user": "alice", "team": "core", "org": "acme"}) as r:
        assert r.status == 201
        return str((await r.json())["key"])


async def test_two_replicas_share_one_limit(make_replica: Factory) -> None:
    limit = [{"id": "team", "scope_type": "team", "scope_id": "core", "requests_per_minute": 5}]
    a, b = await make_replica(18201, limit), await make_replica(18202, limit)
    key = await new_key(a)
    auth = {"Authorization": f"Bearer {key}"}
    await eventually(lambda: _status_of(b, auth, 200))  # b knows the key (its refresher) and draws 1
    results = await asyncio.gather(*(client.post("/v1/chat/completions", json=CHAT, headers=auth)
                                     for client in (a, b, a, b, a, b)))
    statuses = sorted(r.status for r in results)
    assert statuses == [200, 200, 200, 200, 429, 429]  # 5 per minute across both replicas, b's probe included
    refused = next(r for r in results if r.status == 429)
    assert int(refused.headers["retry-after"]) >= 1 and refused.headers["x-ratelimit-remaining-requests"] == "0"


async def _status_of(client: TestClient[Any, Any], auth: dict[str, str], status: int) -> bool:
    async with client.post("/v1/chat/completions", json=CHAT, headers=auth) as resp:
        return resp.status == status


async def test_a_limit_created_on_one_replica_applies_on_the_other(make_replica: Factory) -> None:
    a, b = await make_replica(18203, []), await make_replica(18204, [])
    key = await new_key(a)
    auth = {"Authorization": f"Bearer {key}"}
    async with a.post("/api/v1/rate-limits", headers=ADMIN, json={
            "id": "alice", "scopeType": "user", "scopeId": "alice", "requestsPerMinute": 2}) as resp:
        assert resp.status == 201
    async with b.post("/api/v1/rate-limits", headers=ADMIN, json={
            "id": "alice2", "scopeType": "user", "scopeId": "alice", "requestsPerMinute": 7}) as resp:
        # b may not have seen a's limit yet: the script refuses a second limit for one scope anyway
        assert resp.status == 400

    async def limited() -> bool:
        async with b.post("/v1/chat/completions", json=CHAT, headers=auth) as r:
            return r.headers.get("x-ratelimit-limit-requests") == "2"

    await eventually(limited)
    async with b.delete("/api/v1/rate-limits/alice", headers=ADMIN) as resp:
        assert resp.status == 200


async def test_the_lua_script_computes_what_the_pure_algorithm_does(redis_space: RedisSpace) -> None:  # noqa: F811
    clock = [1_800_000_000.0]
    redis = redis_client(redis_space.url)
    buckets = RedisBuckets(redis, redis_space.prefix, clock=lambda: clock[0])
    rng = random.Random(13)
    meters = [Meter("rl:user:alice:r", 7, 7, 1), Meter("rl:user:alice:t", 1000, 1500, 0)]
    state = {m.bucket: (0, 0) for m in meters}  # the pure model: fill, at
    try:
        for _ in range(400):
            clock[0] += rng.choice([0, 0.001, 0.05, 0.4, 3.0, 9.0])
            now = int(clock[0] * 1000)
            asked = [replace(meters[0]), replace(meters[1], cost=rng.randint(0, 1700))]
            levels = [level(*state[m.bucket], m.rate, now) for m in asked]
            expected = admit(asked, levels)
            got = await buckets.admit("acme", asked)
            assert (got.admitted, got.fills, got.wait_ms, got.never) == \
                (expected.admitted, expected.fills, expected.wait_ms, expected.never)
            if expected.admitted:
                state.update({m.bucket: (f, now) for m, f in zip(asked, expected.fills, strict=True)})
                if rng.random() < 0.5:  # settle: the actual tokens differ from the worst case
                    delta = rng.randint(-asked[1].cost, 300)
                    await buckets.correct("acme", [asked[1]], [delta])
                    token = asked[1].bucket
                    state[token] = (corrected(level(*state[token], asked[1].rate, now), delta), now)
    finally:
        await redis.aclose()


async def test_buckets_expire_once_drained(redis_space: RedisSpace) -> None:  # noqa: F811
    redis = redis_client(redis_space.url)
    try:
        buckets = RedisBuckets(redis, redis_space.prefix)
        await buckets.admit("acme", [Meter("rl:key:k1:r", 60_000, 60_000, 1)])  # drains in 1 ms
        ttl = await redis.pttl(f"{redis_space.prefix}:{{acme}}:rl:key:k1:r")
        assert 0 < ttl <= 1001  # kept no longer than it takes to drain, plus a second
    finally:
        await redis.aclose()


@pytest.mark.parametrize(("policy", "status"), [("allow", 200), ("refuse", 503)])
async def test_an_unreachable_redis_follows_on_store_error(make_replica: Factory, own_redis: RedisServer,  # noqa: F811
                                                            tmp_path: Path, policy: str, status: int) -> None:
    url = own_redis.endpoint + "/0"
    limit = [{"id": "k", "scope_type": "key", "scope_id": "*", "requests_per_minute": 100}]
    client = await make_replica(18205, limit, url=url, on_store_error=policy)
    key = await new_key(client)
    auth = {"Authorization": f"Bearer {key}"}
    async with client.post("/v1/chat/completions", json=CHAT, headers=auth) as resp:
        assert resp.status == 200 and resp.headers["x-ratelimit-remaining-requests"] == "99"
    own_redis.stop()
    async with client.post("/v1/chat/completions", json=CHAT, headers=auth) as resp:
        body = await resp.json()
        assert resp.status == status, body
        if status == 503:
            assert body["error"]["code"] == "store_unavailable"
        else:
            assert "x-ratelimit-remaining-requests" not in resp.headers


async def test_a_store_error_is_a_store_unavailable(redis_space: RedisSpace) -> None:  # noqa: F811
    redis = redis_client("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        with pytest.raises(StoreUnavailable):
            await RedisBuckets(redis, "x").admit("acme", [Meter("b", 1, 1, 1)])
    finally:
        await redis.aclose()
