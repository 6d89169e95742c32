"""Client keys shared by every replica through Redis (``store: redis://…``).

Layout (``P`` is ``budgets.key_prefix``; one hash tag, so a Redis Cluster keeps it in one slot)::

    P:{keys}:records  hash    key id -> the KeyRecord as JSON (its SHA-256 ``key_hash``, never the secret)
    P:{keys}:hashes   hash    key_hash -> key id (keeps hashes unique)
    P:{keys}:version  counter bumped by the same script that inserts or revokes

Each change is one Lua script, so a replica that sees the version move and reloads can never
see the change without its version bump or the other way round.  A revoke is a compare-and-set
on the record's JSON (re-encoding floats in Lua would round ``created_at``): two concurrent
revokes of one key both answer, one of them ``True``.

Replicas poll ``version()`` and reload every record when it moved (``app._refresh_keys``); while
Redis is away auth answers from the keys last loaded, and inserting or revoking raises
``StoreUnavailable`` (HTTP 503 ``store_unavailable``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, replace

import orjson
from redis.asyncio import Redis

from costproxy.errors import InternalError, StoreUnavailable
from costproxy.identity.principal import KeyRecord
from costproxy.store.outage import reachable

INSERT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return redis.call('INCR', KEYS[3])
"""

REVOKE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return redis.call('INCR', KEYS[2])
"""

REVOKE_ATTEMPTS = 5


def record_json(record: KeyRecord) -> bytes:
    return orjson.dumps(asdict(record))


def record_from_json(data: bytes | str) -> KeyRecord:
    return KeyRecord(**orjson.loads(data))


class RedisKeyStore:
    def __init__(self, redis: Redis, *, prefix: str = "cp", label: str = "redis") -> None:
        self.redis = redis
        self.records = f"{prefix}:{{keys}}:records"
        self.hashes = f"{prefix}:{{keys}}:hashes"
        self.version_key = f"{prefix}:{{keys}}:version"
        self.label = label
        self._insert = redis.register_script(INSERT)
        self._revoke = redis.register_script(REVOKE)

    def _reachable(self, action: str) -> contextlib.AbstractContextManager[None]:
        return reachable(self.label, "key store", action)

    async def insert(self, record: KeyRecord) -> None:
        with self._reachable("create the key"):
            done = await self._insert(keys=[self.records, self.hashes, self.version_key],
                                      args=[record.id, record.key_hash, record_json(record)])
        if not done:
            raise InternalError(f"a key with id {record.id} or the same hash already exists")

    async def revoke(self, key_id: str, now: float) -> bool:
        with self._reachable("revoke the key"):
            for _ in range(REVOKE_ATTEMPTS):
                current = await self.redis.hget(self.records, key_id)
                if current is None:
                    return False
                record = record_from_json(current)
                if not record.active:
                    return False
                revoked = record_json(replace(record, revoked_at=now))
                if await self._revoke(keys=[self.records, self.version_key], args=[key_id, current, revoked]):
                    return True
        raise StoreUnavailable(f"key {key_id} kept changing while being revoked; try again")

    async def load_all(self) -> list[KeyRecord]:
        with self._reachable("load the client keys"):
            rows = await self.redis.hgetall(self.records)
        return [record_from_json(body) for body in rows.values()]

    async def version(self) -> int:
        with self._reachable("read the key version"):
            return int(await self.redis.get(self.version_key) or 0)

    async def close(self) -> None:
        return None  # the Redis client is shared: its owner (store.backend) closes it
