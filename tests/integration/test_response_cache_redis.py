"""The response cache on Redis (database 13): replicas share entries; TTL and the byte bound hold."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from costproxy.budgets.redis import redis_client
from costproxy.cache.redis import RedisResponseCache
from costproxy.http.app import create_app
from costproxy.http.state import STORE
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "temperature": 0, "max_tokens": 30, "messages": [{"role": "user", "content": "Hi"}]}
RULES = {"cache.yaml": {"version": 1, "rules": [{"id": "cache", "name": "cache", "priority": 1, "continue": True,
                                                 "actions": [{"type": "cache", "params": {"share": "org"}}]}]}}


async def test_replicas_share_entries(aiohttp_client: Any, simulator: Any, write_config: Any,
                                      redis_space: RedisSpace) -> None:  # noqa: F811
    path = write_config(simulator[0], rules=RULES, extra={"budgets": {"key_prefix": redis_space.prefix}})
    clients = []
    for port in (18301, 18302):
        settings = load_test_settings(path, COSTPROXY_STORE_URL=redis_space.url)
        clients.append(await aiohttp_client(create_app(replace(settings, server=replace(settings.server, port=port)))))
    a, b = clients
    async with a.post("/api/v1/keys", headers=ADMIN, json={"user": "alice", "org": "acme"}) as resp:
        alice = {"Authorization": f"Bearer {(await resp.json())['key']}"}
    async with b.post("/api/v1/keys", headers=ADMIN, json={"user": "bob", "org": "acme"}) as resp:
        bob = {"Authorization": f"Bearer {(await resp.json())['key']}"}
    async with a.post("/v1/chat/completions", json=CHAT, headers=alice) as resp:
        assert resp.status == 200 and resp.headers["x-costproxy-cache"] == "miss"
        first = await resp.json()
    async with b.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bob) as resp:
        assert resp.status == 200 and resp.headers["x-costproxy-cache"] == "hit"  # another replica, same org
        assert first["choices"][0]["message"]["content"].split()[0] in await resp.text()

    async def mirrored() -> bool:  # the hit is in the shared ledger stream, mirrored into every replica's file
        return "cache_hit" in [e.status for e in await a.app[STORE].recent_entries(10)]

    await eventually(mirrored, what="the cache hit mirrored into the other replica's ledger")
    async with b.get("/api/v1/cache", headers=ADMIN) as resp:
        stats = await resp.json()
        assert stats["entries"] == 1 and stats["bytes"] > 0
    async with b.delete("/api/v1/cache", headers=ADMIN) as resp:
        assert (await resp.json())["deleted"] == 1
    async with a.post("/v1/chat/completions", json=CHAT, headers=alice) as resp:
        assert resp.headers["x-costproxy-cache"] == "miss"
    assert len(simulator[1].calls) == 2


async def test_the_byte_bound_and_lifetimes_hold(redis_space: RedisSpace) -> None:  # noqa: F811
    redis = redis_client(redis_space.url)
    try:
        cache = RedisResponseCache(redis, redis_space.prefix, max_bytes=3000, max_entry_bytes=1500)
        assert await cache.put("a", b"x" * 1000, 60)
        assert await cache.put("b", b"y" * 1000, 1)
        assert not await cache.put("huge", b"z" * 1501, 60)
        assert await cache.put("c", b"z" * 1000, 90)
        assert await cache.put("d", b"w" * 500, 120)  # over 3000: b, the soonest to expire, is evicted
        assert await cache.get("b") is None and await cache.get("a") == b"x" * 1000
        stats = await cache.stats()
        assert (stats.entries, stats.bytes) == (3, 2500)
        assert 0 < await redis.pttl(cache.entry_prefix + "a") <= 60_000
        await cache.put("e", b"v" * 10, 1)

        async def expired() -> bool:  # Redis expires it by itself, within its second
            return await cache.get("e") is None

        await eventually(expired, what="the 1 s entry expired by Redis")
        stats = await cache.stats()  # its index row no longer counts (it did until the next write)
        assert (stats.entries, stats.bytes) == (3, 2500)
        assert await cache.purge() >= 3 and (await cache.stats()).bytes == 0
        assert await cache.get("a") is None
    finally:
        await redis.aclose()
