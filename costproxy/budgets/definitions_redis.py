"""Budget definitions shared by replicas: budgets and overrides as JSON in Redis hashes.

Every change runs one Lua script (``DEFINE``) that checks existence, writes, bumps
``P:{defs}:version`` and appends the audit record to ``P:{defs}:audit`` atomically; replicas poll
the version every ``refresh_interval_s`` and reload when it moved.  All these keys share the
``{defs}`` hash tag, so the script is valid on a Redis Cluster too.
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
from costproxy.budgets.lua import DEFINE, RedisKeys
from costproxy.budgets.model import BudgetOverride, BudgetSpec


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDefinitions:
    """Budgets and overrides as JSON in Redis hashes; each change bumps a version and is audited."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys
        self._define = redis.register_script(DEFINE)

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
        return bool(await self._define(keys=keys, args=[mode, item_id, body, orjson.dumps(asdict(audit))]))

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
