"""Where cached answers live: the ``ResponseCache`` contract and its SQLite implementation.

An entry is an opaque value (the stored answer as JSON bytes, see ``pipeline.cached``) under its
key (``cache.policy.cache_key``), with a lifetime.  Bounds: an entry larger than
``cache.max_entry_bytes`` is not stored; when all entries together pass ``cache.max_bytes`` the ones
that expire soonest are evicted first.  An expired entry is never served.

SQLite (the embedded default): table ``response_cache`` (its own versioned migrations) in the
local file; this process keeps the keys, lifetimes and sizes in memory (one process owns the
file), so a miss costs no disk read and the byte total is exact.  Redis: ``cache/redis.py``.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol

from costproxy.records import frozen
from costproxy.store.sqlite import SqliteStore, apply_migrations

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE response_cache (
            key TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL,
            size INTEGER NOT NULL, value BLOB NOT NULL
        );
        CREATE INDEX response_cache_expiry ON response_cache (expires_ms)
    """),
]
EVICT_BATCH = 64


@frozen
class CacheStats:
    entries: int
    bytes: int
    max_bytes: int
    max_entry_bytes: int


class ResponseCache(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: int) -> bool:
        """Store ``value`` for ``ttl_s`` seconds; False when it is over the entry bound."""
        ...

    async def stats(self) -> CacheStats: ...

    async def purge(self) -> int:
        """Delete every entry; returns how many there were."""
        ...

    async def close(self) -> None: ...


class SqliteResponseCache:
    def __init__(self, store: SqliteStore, *, max_bytes: int, max_entry_bytes: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.clock = clock
        self._entries: dict[str, tuple[int, int]] = {}  # key -> (expires ms, size)
        self._bytes = 0
        self._expiries: list[tuple[int, str]] = []  # (expires ms, key), a heap

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def open(self) -> None:
        now = self._now()

        def load() -> list[tuple[str, int, int]]:
            conn = self.store.conn()
            apply_migrations(conn, "response_cache_schema_version", MIGRATIONS)
            conn.execute("DELETE FROM response_cache WHERE expires_ms <= ?", (now,))
            return [tuple(row) for row in conn.execute("SELECT key, expires_ms, size FROM response_cache")]

        for key, expires, size in await self.store.run(load):
            self._remember(key, expires, size)

    def _remember(self, key: str, expires: int, size: int) -> None:
        self._entries[key] = (expires, size)
        self._bytes += size
        heapq.heappush(self._expiries, (expires, key))

    async def get(self, key: str) -> bytes | None:
        known = self._entries.get(key)
        if known is None:
            return None
        now = self._now()
        if known[0] <= now:
            self._forget(key)
            await self.store.execute("DELETE FROM response_cache WHERE key = ? AND expires_ms <= ?", (key, now))
            return None
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT value FROM response_cache WHERE key = ? AND expires_ms > ?", (key, now)).fetchall())
        return bytes(rows[0][0]) if rows else None

    def _forget(self, key: str) -> None:
        known = self._entries.pop(key, None)
        if known is not None:
            self._bytes -= known[1]

    async def put(self, key: str, value: bytes, ttl_s: int) -> bool:
        size = len(value)
        if size > self.max_entry_bytes:
            return False
        now = self._now()
        expires = now + ttl_s * 1000
        self._forget(key)
        self._remember(key, expires, size)
        evicted = self._evictions(now)

        def write() -> None:
            conn = self.store.conn()
            conn.execute("BEGIN")
            try:
                conn.execute("INSERT OR REPLACE INTO response_cache (key, expires_ms, created_ms, size, value)"
                             " VALUES (?, ?, ?, ?, ?)", (key, expires, now, size, value))
                conn.executemany("DELETE FROM response_cache WHERE key = ?", [(k,) for k in evicted])
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        await self.store.run(write)
        return True

    def _evictions(self, now: int) -> list[str]:
        """The keys to delete so that the total fits ``max_bytes``: expired ones, then those that
        expire soonest (a heap of lifetimes; entries replaced since are skipped when popped)."""
        evicted: list[str] = []
        heap = self._expiries
        while heap and (heap[0][0] <= now or self._bytes > self.max_bytes):
            expires, key = heapq.heappop(heap)
            known = self._entries.get(key)
            if known is not None and known[0] == expires:
                self._forget(key)
                evicted.append(key)
        if len(heap) > 2 * len(self._entries) + 1024:  # drop what replaced entries left behind
            self._expiries = [(expires, key) for key, (expires, _) in self._entries.items()]
            heapq.heapify(self._expiries)
        return evicted

    async def stats(self) -> CacheStats:
        now = self._now()
        live = [size for expires, size in self._entries.values() if expires > now]
        return CacheStats(len(live), sum(live), self.max_bytes, self.max_entry_bytes)

    async def purge(self) -> int:
        count = len(self._entries)
        await self.store.execute("DELETE FROM response_cache")
        self._entries.clear()
        self._expiries.clear()
        self._bytes = 0
        return count

    async def close(self) -> None:
        return None  # the SQLite file is the backend's
