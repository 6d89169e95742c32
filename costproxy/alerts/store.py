"""Where alerting state lives: webhook subscriptions, deliveries, events, acknowledgements, read-only
tokens and the once-only claims that keep alerts from firing twice.

Everything is a small JSON document of a ``kind`` (``subscriptions``, ``tokens``, ``acks``,
``events``, ``deliveries:<subscription id>``) with an id and a timestamp, plus *claims*: names set
once (``INSERT OR IGNORE`` here, ``SET NX`` in Redis) that decide which caller does a thing —
fire a threshold for a budget period, make attempt *n* of a delivery.  A claim may expire, so a
crashed owner's work is taken over after its lease.

``SqliteAlertStore`` keeps them in the embedded SQLite file (one process owns it, so the change
version is a local counter); ``RedisAlertStore`` (``alert_redis.py``) keeps them in Redis so every
replica shares one set.  The tables are created by ``ALERT_MIGRATIONS`` with their own version
table, so they never collide with the ledger's or the budgets' migration numbers.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Protocol

from costproxy.store.sqlite import SqliteStore, apply_migrations

CONFIG_KINDS = ("subscriptions", "tokens", "acks")  # changes bump the version other replicas poll

ALERT_MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE alert_docs (
            kind TEXT NOT NULL, id TEXT NOT NULL, ts_ms INTEGER NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (kind, id)
        );
        CREATE INDEX alert_docs_ts ON alert_docs (kind, ts_ms);
        CREATE TABLE alert_claims (name TEXT PRIMARY KEY, value TEXT NOT NULL, expires_ms INTEGER)
    """),
]


def migrate_alerts(conn: sqlite3.Connection) -> int:
    """Apply pending alert migrations (own version table); returns the resulting version."""
    return apply_migrations(conn, "alert_schema_version", ALERT_MIGRATIONS)


class AlertStore(Protocol):
    async def put(self, kind: str, item_id: str, body: dict[str, Any], ts_ms: int) -> None: ...

    async def get(self, kind: str, item_id: str) -> dict[str, Any] | None: ...

    async def delete(self, kind: str, item_id: str) -> bool: ...

    async def items(self, kind: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Documents of ``kind``, newest first."""
        ...

    async def prune(self, kind: str, keep: int) -> int:
        """Drop all but the ``keep`` newest documents of ``kind``; returns how many went."""
        ...

    async def claim(self, name: str, value: str, now_ms: int, ttl_ms: int | None) -> bool:
        """Set ``name`` unless it is set and unexpired; True if this call set it."""
        ...

    async def claimed(self, name: str) -> str | None: ...

    async def expire_claims(self, now_ms: int) -> int:
        """Forget expired claims (Redis expires its keys by itself)."""
        ...

    async def version(self) -> int: ...

    async def close(self) -> None: ...


class SqliteAlertStore:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._version = 0

    async def open(self) -> None:
        await self.store.run(lambda: migrate_alerts(self.store.conn()))

    async def put(self, kind: str, item_id: str, body: dict[str, Any], ts_ms: int) -> None:
        text = json.dumps(body, separators=(",", ":"))
        await self.store.run(lambda: self.store.conn().execute(
            "INSERT OR REPLACE INTO alert_docs (kind, id, ts_ms, body) VALUES (?, ?, ?, ?)",
            (kind, item_id, ts_ms, text)))
        self._version += kind in CONFIG_KINDS

    async def get(self, kind: str, item_id: str) -> dict[str, Any] | None:
        row = await self.store.run(lambda: self.store.conn().execute(
            "SELECT body FROM alert_docs WHERE kind = ? AND id = ?", (kind, item_id)).fetchone())
        return None if row is None else dict(json.loads(row[0]))

    async def delete(self, kind: str, item_id: str) -> bool:
        count = await self.store.run(lambda: self.store.conn().execute(
            "DELETE FROM alert_docs WHERE kind = ? AND id = ?", (kind, item_id)).rowcount)
        self._version += kind in CONFIG_KINDS and count > 0
        return bool(count)

    async def items(self, kind: str, limit: int | None = None) -> list[dict[str, Any]]:
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT body FROM alert_docs WHERE kind = ? ORDER BY ts_ms DESC, id DESC LIMIT ?",
            (kind, -1 if limit is None else limit)).fetchall())
        return [dict(json.loads(r[0])) for r in rows]

    async def prune(self, kind: str, keep: int) -> int:
        return int(await self.store.run(lambda: self.store.conn().execute(
            "DELETE FROM alert_docs WHERE kind = ? AND id NOT IN (SELECT id FROM alert_docs WHERE kind = ?"
            " ORDER BY ts_ms DESC, id DESC LIMIT ?)", (kind, kind, keep)).rowcount))

    async def claim(self, name: str, value: str, now_ms: int, ttl_ms: int | None) -> bool:
        expires = None if ttl_ms is None else now_ms + ttl_ms
        return bool(await self.store.run(lambda: self.store.conn().execute(
            "INSERT INTO alert_claims (name, value, expires_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
            " SET value = excluded.value, expires_ms = excluded.expires_ms"
            " WHERE alert_claims.expires_ms IS NOT NULL AND alert_claims.expires_ms <= ?",
            (name, value, expires, now_ms)).rowcount))

    async def claimed(self, name: str) -> str | None:
        row = await self.store.run(lambda: self.store.conn().execute(
            "SELECT value FROM alert_claims WHERE name = ?", (name,)).fetchone())
        return None if row is None else str(row[0])

    async def expire_claims(self, now_ms: int) -> int:
        return int(await self.store.run(lambda: self.store.conn().execute(
            "DELETE FROM alert_claims WHERE expires_ms IS NOT NULL AND expires_ms <= ?", (now_ms,)).rowcount))

    async def version(self) -> int:
        return self._version

    async def close(self) -> None:
        return None  # the SqliteStore belongs to the application
