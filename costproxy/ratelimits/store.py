"""Rate limits in the embedded default: buckets in this process's memory, limits in SQLite.

One process owns the SQLite file (as for budgets), so the authoritative bucket state lives in its
memory and an admission is a few integer operations on the event loop: no lock, no round trip.
Every ``checkpoint_interval_s`` (and at close) the buckets that changed are written to
``rate_limit_buckets``, and start-up reads them back, so a restart does not hand every caller a
fresh minute's burst; at worst it forgets the last interval's draws.  Drained buckets are
forgotten (an empty bucket equals no state), in memory and in the file.

Limits managed through the API live in ``rate_limit_defs`` (one row per limit, the scope unique).
Both tables come from ``MIGRATIONS`` with their own version table.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence

import structlog

from costproxy.background import cancel_and_wait
from costproxy.errors import StoreUnavailable
from costproxy.ratelimits.gcra import Meter, Reading, Verdict, admit, corrected, expiry_ms, level
from costproxy.ratelimits.model import RateLimit, limit_body, limit_from_body, scope_name
from costproxy.store.sqlite import SqliteStore, apply_migrations

log = structlog.get_logger("costproxy.ratelimits")

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE rate_limit_defs (
            id TEXT PRIMARY KEY, scope TEXT NOT NULL UNIQUE, body TEXT NOT NULL, updated_at_ms INTEGER NOT NULL
        );
        CREATE TABLE rate_limit_buckets (
            bucket TEXT PRIMARY KEY, fill INTEGER NOT NULL, at_ms INTEGER NOT NULL, rate INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL
        ) WITHOUT ROWID
    """),
]


async def ensure_schema(store: SqliteStore) -> None:
    await store.run(lambda: apply_migrations(store.conn(), "rate_limit_schema_version", MIGRATIONS))


class SqliteLimitDefinitions:
    """API-managed limits in the SQLite file (one process owns it: the version is local)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._version = 0

    async def load(self) -> tuple[list[RateLimit], int]:
        rows = await self.store.run(lambda: self.store.conn().execute("SELECT body FROM rate_limit_defs").fetchall())
        return [limit_from_body(row[0]) for row in rows], self._version

    async def version(self) -> int:
        return self._version

    async def put(self, limit: RateLimit, *, create: bool) -> str | None:
        def write() -> str | None:
            conn = self.store.conn()
            holder = conn.execute("SELECT id FROM rate_limit_defs WHERE scope = ?", (scope_name(limit),)).fetchone()
            if holder is not None and holder[0] != limit.id:
                return f"{limit.scope_type} {limit.scope_id!r} already has rate limit {holder[0]!r}"
            exists = conn.execute("SELECT 1 FROM rate_limit_defs WHERE id = ?", (limit.id,)).fetchone() is not None
            if exists == create:
                return f"a rate limit with id {limit.id!r} already exists" if create else f"no rate limit {limit.id!r}"
            conn.execute("INSERT OR REPLACE INTO rate_limit_defs (id, scope, body, updated_at_ms) VALUES (?, ?, ?, ?)",
                         (limit.id, scope_name(limit), limit_body(limit), limit.updated_at_ms or 0))
            return None

        problem = await self.store.run(write)
        self._version += problem is None
        return problem

    async def delete(self, limit_id: str) -> bool:
        changed = await self.store.execute("DELETE FROM rate_limit_defs WHERE id = ?", (limit_id,)) > 0
        self._version += changed
        return changed


class LocalBuckets:
    """Bucket state in memory, checkpointed to ``rate_limit_buckets`` (see the module docstring)."""

    def __init__(self, store: SqliteStore, *, clock: Callable[[], float] = time.time,
                 checkpoint_interval_s: float = 5.0) -> None:
        self.store = store
        self.clock = clock
        self.checkpoint_interval_s = checkpoint_interval_s
        self._state: dict[str, tuple[int, int, int]] = {}  # bucket -> (fill, at_ms, rate)
        self._dirty: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        now = self._now()
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT bucket, fill, at_ms, rate FROM rate_limit_buckets WHERE expires_ms > ?", (now,)).fetchall())
        for bucket, fill, at_ms, rate in rows:
            self._state[bucket] = (fill, at_ms, rate)
        self._task = asyncio.create_task(self._checkpoint_loop(), name="costproxy-rate-limit-checkpoint")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        try:
            await self.checkpoint()
        except StoreUnavailable as exc:
            log.error("rate_limit_checkpoint_failed", error=str(exc))

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _levels(self, keys: Sequence[str], meters: Sequence[Meter], now: int) -> list[int]:
        state = self._state
        levels = []
        for key, meter in zip(keys, meters, strict=True):
            held = state.get(key)
            levels.append(0 if held is None else level(held[0], held[1], meter.rate, now))
        return levels

    async def admit(self, partition: str, meters: Sequence[Meter]) -> Verdict:
        now = self._now()
        keys = [f"{partition}:{meter.bucket}" for meter in meters]
        verdict = admit(meters, self._levels(keys, meters, now))
        if verdict.admitted:
            for key, meter, fill in zip(keys, meters, verdict.fills, strict=True):
                self._state[key] = (fill, now, meter.rate)
            self._dirty.update(keys)
        return verdict

    async def correct(self, partition: str, meters: Sequence[Meter], deltas: Sequence[int]) -> None:
        now = self._now()
        keys = [f"{partition}:{meter.bucket}" for meter in meters]
        for key, meter, current, delta in zip(keys, meters, self._levels(keys, meters, now), deltas, strict=True):
            self._state[key] = (corrected(current, delta), now, meter.rate)
        self._dirty.update(keys)

    async def peek(self, partition: str, meters: Sequence[Meter]) -> tuple[Reading, ...]:
        keys = [f"{partition}:{meter.bucket}" for meter in meters]
        levels = self._levels(keys, meters, self._now())
        return tuple(Reading(m.rate, m.burst, fill) for m, fill in zip(meters, levels, strict=True))

    async def checkpoint(self) -> None:
        """Write the buckets changed since the last checkpoint; forget the drained ones."""
        now = self._now()
        dirty, self._dirty = self._dirty, set()
        writes, drops = [], []
        for bucket in dirty:
            fill, at_ms, rate = self._state[bucket]
            if level(fill, at_ms, rate, now) == 0:
                drops.append((bucket,))
                del self._state[bucket]
            else:
                writes.append((bucket, fill, at_ms, rate, at_ms + expiry_ms(fill, rate)))
        for bucket, (fill, at_ms, rate) in list(self._state.items()):
            if level(fill, at_ms, rate, now) == 0:  # drained since: an empty bucket is no state
                del self._state[bucket]

        def write() -> None:
            conn = self.store.conn()
            conn.execute("BEGIN")
            try:
                conn.executemany("INSERT OR REPLACE INTO rate_limit_buckets (bucket, fill, at_ms, rate, expires_ms)"
                                 " VALUES (?, ?, ?, ?, ?)", writes)
                conn.executemany("DELETE FROM rate_limit_buckets WHERE bucket = ?", drops)
                conn.execute("DELETE FROM rate_limit_buckets WHERE expires_ms <= ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        if writes or drops:
            try:
                await self.store.run(write)
            except (StoreUnavailable, sqlite3.Error):
                self._dirty |= dirty - {d[0] for d in drops}  # written next time
                raise

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            try:
                await self.checkpoint()
            except StoreUnavailable as exc:
                log.warning("rate_limit_checkpoint_failed", error=str(exc))
