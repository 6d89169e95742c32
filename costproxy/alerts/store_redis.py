"""Alerting state shared by every replica through Redis (``store: redis://…``).

Layout (``P`` is ``budgets.key_prefix``; one hash tag so a Cluster keeps it in one slot)::

    P:{alerts}:d:<kind>    hash    id -> JSON document
    P:{alerts}:t:<kind>    zset    id by timestamp (newest-first listing, pruning)
    P:{alerts}:version     counter bumped by changes to subscriptions, tokens, acknowledgements
    P:{alerts}:c:<name>    string  a claim (SET NX, optionally with an expiry)

Every Redis failure surfaces as ``StoreUnavailable`` (HTTP 503 on the admin API); the alert
manager treats it as "try again later" and the request path never waits for any of this.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from costproxy.alerts.store import CONFIG_KINDS
from costproxy.errors import StoreUnavailable
from costproxy.store.outage import problem


class RedisAlertStore:
    def __init__(self, redis: Redis, prefix: str = "cp", label: str = "redis") -> None:
        self.redis = redis
        self.base = f"{prefix}:{{alerts}}"
        self.label = label

    def _docs(self, kind: str) -> str:
        return f"{self.base}:d:{kind}"

    def _times(self, kind: str) -> str:
        return f"{self.base}:t:{kind}"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"the alert store ({self.label}) {problem(exc)}")  # what Redis did (store.outage)

    async def put(self, kind: str, item_id: str, body: dict[str, Any], ts_ms: int) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._docs(kind), item_id, orjson.dumps(body))
                pipe.zadd(self._times(kind), {item_id: ts_ms})
                if kind in CONFIG_KINDS:
                    pipe.incr(f"{self.base}:version")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def get(self, kind: str, item_id: str) -> dict[str, Any] | None:
        try:
            raw = await self.redis.hget(self._docs(kind), item_id)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return None if raw is None else dict(orjson.loads(raw))

    async def delete(self, kind: str, item_id: str) -> bool:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._docs(kind), item_id)
                pipe.zrem(self._times(kind), item_id)
                if kind in CONFIG_KINDS:
                    pipe.incr(f"{self.base}:version")
                removed, _, *_ = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return bool(removed)

    async def items(self, kind: str, limit: int | None = None) -> list[dict[str, Any]]:
        try:
            ids: Any = await self.redis.zrevrange(self._times(kind), 0, -1 if limit is None else limit - 1)
            if not ids:
                return []
            bodies: Any = await self.redis.hmget(self._docs(kind), ids)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return [dict(orjson.loads(b)) for b in bodies if b is not None]

    async def prune(self, kind: str, keep: int) -> int:
        try:
            old: Any = await self.redis.zrange(self._times(kind), 0, -keep - 1)
            if not old:
                return 0
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._docs(kind), *old)
                pipe.zrem(self._times(kind), *old)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return len(old)

    async def claim(self, name: str, value: str, now_ms: int, ttl_ms: int | None) -> bool:
        try:
            return bool(await self.redis.set(f"{self.base}:c:{name}", value, nx=True,
                                             px=None if ttl_ms is None else max(1, ttl_ms)))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def claimed(self, name: str) -> str | None:
        try:
            raw = await self.redis.get(f"{self.base}:c:{name}")
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    async def expire_claims(self, now_ms: int) -> int:
        return 0  # keys carry their own expiry

    async def version(self) -> int:
        try:
            return int(await self.redis.get(f"{self.base}:version") or 0)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def close(self) -> None:
        return None  # the Redis client is shared: its owner (store.backend) closes it
