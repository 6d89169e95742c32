"""Where client keys live: this replica's SQLite file, or Redis when replicas share a store.

``KeyStore`` is what the app, the admin API and the CLI use; the request path never reads it
(auth answers from the in-memory ``KeyRing``, reloaded whenever ``version()`` moves).  Both
stores raise ``StoreUnavailable`` (HTTP 503 ``store_unavailable``) when they cannot be reached.

- ``SqliteKeyStore``: the ``api_keys`` table of the local file; ``version()`` is SQLite's
  ``PRAGMA data_version``, which moves when another connection (the CLI) commits;
- ``RedisKeyStore`` (``key_store_redis.py``): records shared by every replica, with a version
  counter bumped in the same atomic step as each change.

Which one a replica uses is decided once, by ``store.backend.open_backend``.
"""

from __future__ import annotations

from typing import Protocol

from costproxy.identity.principal import KeyRecord
from costproxy.store.sqlite import SqliteStore


class KeyStore(Protocol):
    async def insert(self, record: KeyRecord) -> None:
        """Store a new key (its hash only: a ``KeyRecord`` never holds the secret)."""

    async def revoke(self, key_id: str, now: float) -> bool:
        """Mark an active key revoked at ``now``; ``False`` when no active key has that id."""

    async def load_all(self) -> list[KeyRecord]:
        """Every key, revoked ones included."""

    async def version(self) -> int:
        """A number that changes whenever a key is inserted or revoked (cheap: polled every ~2 s)."""

    async def close(self) -> None:
        """Release what the store opened itself."""


class SqliteKeyStore:
    """The ``api_keys`` table of a ``SqliteStore`` opened (and closed) by the caller."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def insert(self, record: KeyRecord) -> None:
        await self.store.insert_key(record)

    async def revoke(self, key_id: str, now: float) -> bool:
        return await self.store.revoke_key(key_id, now)

    async def load_all(self) -> list[KeyRecord]:
        return await self.store.load_keys()

    async def version(self) -> int:
        return await self.store.data_version()

    async def close(self) -> None:
        return None
