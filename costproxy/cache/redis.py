"""Cached answers shared by replicas through Redis (``store.url: redis://…``).

Layout (``P`` is ``budgets.key_prefix``; one hash tag, so a Redis Cluster keeps the cache in one
slot and every script is atomic)::

    P:{cache}:e:<key>   string  the entry, with a PX lifetime (Redis expires it by itself)
    P:{cache}:idx       zset    key -> expiry ms: which entries exist, soonest to expire first
    P:{cache}:sz        hash    key -> size in bytes
    P:{cache}:bytes     counter the size of every entry together

``PUT`` writes the entry and its bookkeeping, drops the index rows of entries Redis has expired,
and evicts the soonest-to-expire entries while the total is over ``cache.max_bytes`` — all in one
script, so the total is exact whatever the replicas do at once.  Reading is a plain ``GET``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from redis.asyncio import Redis

from costproxy.budgets.batch import bounded, client_timeout
from costproxy.cache.store import CacheStats
from costproxy.store.outage import reachable

# drop(idx, sz, bytes, entry prefix, member): one entry and its bookkeeping; returns the new total
_DROP = """
local function drop(idx, sz, bytes, prefix, member)
  local size = tonumber(redis.call('HGET', sz, member) or '0')
  redis.call('HDEL', sz, member)
  redis.call('ZREM', idx, member)
  redis.call('DEL', prefix .. member)
  return redis.call('DECRBY', bytes, size)
end
"""

# KEYS: entry, idx, sz, bytes; ARGV: member, value, ttl ms, now ms, max bytes, entry key prefix
PUT = _DROP + """
local now = tonumber(ARGV[4])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)) do
  drop(KEYS[2], KEYS[3], KEYS[4], ARGV[6], member)
end
local old = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local size = string.len(ARGV[2])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], size)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
local total = redis.call('INCRBY', KEYS[4], size - old)
local max = tonumber(ARGV[5])
while total > max do
  local first = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #first == 0 then break end
  total = drop(KEYS[2], KEYS[3], KEYS[4], ARGV[6], first[1])
end
return total
"""

# KEYS: idx, sz, bytes; ARGV: now ms, entry key prefix, batch.  Drops the bookkeeping of entries Redis
# has expired (at most a batch), then returns {live entries, their bytes}: the index rows of expired
# entries were counted until the next write.
STATS = _DROP + """
local now = tonumber(ARGV[1])
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))) do
  drop(KEYS[1], KEYS[2], KEYS[3], ARGV[2], member)
end
return {redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""
STATS_BATCH = 1000

# KEYS: idx, sz, bytes; ARGV: entry key prefix, batch size.  Returns how many entries it deleted.
PURGE = """
local members = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, member in ipairs(members) do
  local size = tonumber(redis.call('HGET', KEYS[2], member) or '0')
  redis.call('HDEL', KEYS[2], member)
  redis.call('ZREM', KEYS[1], member)
  redis.call('DEL', ARGV[1] .. member)
  redis.call('DECRBY', KEYS[3], size)
end
return #members
"""
PURGE_BATCH = 500


class RedisResponseCache:
    def __init__(self, redis: Redis, prefix: str, *, max_bytes: int, max_entry_bytes: int, label: str = "redis",
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.label = label
        self.clock = clock
        base = f"{prefix}:{{cache}}"
        self.entry_prefix = f"{base}:e:"
        self.index, self.sizes, self.total = f"{base}:idx", f"{base}:sz", f"{base}:bytes"
        self.timeout_s = client_timeout(redis)  # on a request's path: within its time for the store
        self._put = redis.register_script(PUT)
        self._purge = redis.register_script(PURGE)
        self._stats = redis.register_script(STATS)

    async def get(self, key: str) -> bytes | None:
        with reachable(self.label, "response cache", "look up a cached answer"):
            value = await bounded(lambda: self.redis.get(self.entry_prefix + key), self.timeout_s)
        if value is None:
            return None
        return value.encode() if isinstance(value, str) else bytes(value)

    async def put(self, key: str, value: bytes, ttl_s: int) -> bool:
        if len(value) > self.max_entry_bytes:
            return False
        now = int(self.clock() * 1000)
        with reachable(self.label, "response cache", "store the answer"):
            await bounded(lambda: self._put(keys=[self.entry_prefix + key, self.index, self.sizes, self.total],
                                            args=[key, value, ttl_s * 1000, now, self.max_bytes, self.entry_prefix]),
                          self.timeout_s)
        return True

    async def stats(self) -> CacheStats:
        now = int(self.clock() * 1000)
        with reachable(self.label, "response cache", "read the cache's size"):
            entries, total = await self._stats(keys=[self.index, self.sizes, self.total],
                                               args=[now, self.entry_prefix, STATS_BATCH])
        return CacheStats(int(entries), int(total or 0), self.max_bytes, self.max_entry_bytes)

    async def purge(self) -> int:
        deleted = 0
        while True:
            with reachable(self.label, "response cache", "purge the cache"):
                count = int(await self._purge(keys=[self.index, self.sizes, self.total],
                                              args=[self.entry_prefix, PURGE_BATCH]))
            deleted += count
            if count < PURGE_BATCH:
                return deleted

    async def close(self) -> None:
        return None  # the Redis client is shared: its owner (store.backend) closes it
