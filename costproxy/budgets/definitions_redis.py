"""Budget definitions shared by replicas: budgets and overrides as JSON in Redis hashes.

Every change runs one Lua script (``DEFINE``) that checks existence, writes, bumps
``P:{defs}:version`` and appends the audit record to ``P:{defs}:audit`` atomically; replicas poll
the version every ``refresh_interval_s`` and reload when it moved.  All these keys share the
``{defs}`` hash tag, so the script is valid on a Redis Cluster too.

Polling alone would let another replica admit requests against the old definitions for up to an
interval after the change answered.  So, before a change returns, the new version is also copied
to every registered partition (``announce``: ``P:{<org>}:dv``, raised, never lowered), where every
reserve script compares it with the version its caller loaded and refuses to reserve on a stale
chain (``lua.py``, "Definitions versions").
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson
from redis.asyncio import Redis

from costproxy.budgets.definitions import (
    AuditRecord,
    override_body,
    override_from_body,
    spec_body,
    spec_from_body,
)
from costproxy.budgets.lua import DEFINE, DEFS_RAISE, RedisKeys
from costproxy.budgets.model import BudgetOverride, BudgetSpec


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDefinitions:
    """Budgets and overrides as JSON in Redis hashes; each change bumps a version and is audited."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._define = redis.register_script(DEFINE)
        self._raise = redis.register_script(DEFS_RAISE)

    async def load(self) -> tuple[list[BudgetSpec], list[BudgetOverride], int]:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.defs("budgets"))
            pipe.hgetall(self.keys.defs("overrides"))
            pipe.get(self.keys.defs("version"))
            specs, overrides, version = await pipe.execute()
        return ([spec_from_body(_text(v)) for v in specs.values()],
                [override_from_body(_text(v)) for v in overrides.values()], int(version or 0))

    async def version(self) -> int:
        return int(await self.redis.get(self.keys.defs("version")) or 0)

    async def _apply(self, table: str, mode: str, item_id: str, body: str, audit: AuditRecord) -> bool:
        keys = [self.keys.defs(table), self.keys.defs("version"), self.keys.defs("audit")]
        version = int(await self._define(keys=keys, args=[mode, item_id, body, orjson.dumps(asdict(audit))]))
        if version:
            await self.announce(version)
        return bool(version)

    async def announce(self, version: int) -> None:
        """Raise the definitions version copy of every registered partition to ``version``: from
        then on no replica reserves there on older definitions.  Read after the change committed,
        ``P:partitions`` holds every partition a stale replica could reserve in but one registered
        later, whose copy is missing or was seeded after that by a replica that registered it
        first and then loaded (lua.py).  So a copy is never written here for a partition that is
        not registered: seeded with this version, a later change that missed it could leave it behind."""
        members: Any = await self.redis.smembers(self.keys.partitions)
        every = {_text(p) for p in members}
        async with self.redis.pipeline(transaction=False) as pipe:  # loads the script first if needed
            for partition in sorted(every):
                await self._raise(keys=[self.keys.defs_seen(partition)], args=[version], client=pipe)
            await pipe.execute()

    async def put_spec(self, spec: BudgetSpec, audit: AuditRecord, *, create: bool) -> bool:
        return await self._apply("budgets", "create" if create else "update", spec.id, spec_body(spec), audit)

    async def delete_spec(self, budget_id: str, audit: AuditRecord) -> bool:
        return await self._apply("budgets", "delete", budget_id, "", audit)

    async def put_override(self, override: BudgetOverride, audit: AuditRecord) -> None:
        await self._apply("overrides", "put", override.id, override_body(override), audit)

    async def audit(self, budget_id: str | None, limit: int) -> list[AuditRecord]:
        found: list[AuditRecord] = []
        rows: Any = await self.redis.xrevrange(self.keys.defs("audit"), count=limit if budget_id is None else 10_000)
        for _, fields in rows:
            record = AuditRecord(**orjson.loads(fields[b"a"]))
            if budget_id is None or record.budget_id == budget_id:
                found.append(record)
            if len(found) >= limit:
                break
        return found
