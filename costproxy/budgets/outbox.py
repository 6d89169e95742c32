"""A durable queue of settlements that could not reach the shared budget store (Redis mode).

Each item is one ``Settlement`` (a settle/release/usage/refusal exactly as it will be sent to
Redis: the settle script's keys and arguments, ledger entry included), stored as JSON,
committed to the replica's own SQLite file (``budget_outbox``) with ``PRAGMA synchronous=FULL``
before ``put`` returns: once the caller has been answered, neither a SIGKILL nor a power cut loses
it.  Items are read back in the order they were put and deleted one by one, each only after the
store applied it, so a crash during a replay repeats at most the item in flight (the settle script
makes that repeat a no-op).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import orjson

from costproxy.store.sqlite import SqliteStore, rollback


@dataclass(slots=True)
class Settlement:
    """One settle script call: what Redis must apply, and what the accounts need afterwards."""

    keys: list[str]
    args: list[str | int]
    budget_ids: tuple[str, ...]
    period_keys: tuple[str, ...]
    request_id: str
    home: str = ""  # partition of the ledger stream
    reserved_nanos: int = 0  # what the reservation held (an overrun is a charge above it)

    def body(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_body(cls, body: str) -> Settlement:
        data = orjson.loads(body)
        return cls(data["keys"], data["args"], tuple(data["budget_ids"]), tuple(data["period_keys"]),
                   data["request_id"], data.get("home", ""), int(data.get("reserved_nanos", 0)))


class SettlementOutbox:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.count = 0  # items waiting (kept in step with the table by this process)

    async def load(self) -> int:
        self.count = await self.store.run(
            lambda: int(self.store.conn().execute("SELECT COUNT(*) FROM budget_outbox").fetchone()[0]))
        return self.count

    async def put(self, settlement: Settlement) -> None:
        """Commit ``settlement`` durably (fsync'd) before returning; ``StoreUnavailable`` if not."""
        await self.store.run(self._put_sync, settlement.body())
        self.count += 1

    def _put_sync(self, body: str) -> None:
        conn = self.store.conn()
        conn.execute("PRAGMA synchronous=FULL")  # this commit reaches the disk, not just the OS
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT INTO budget_outbox (body) VALUES (?)", (body,))
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")

    async def head(self, limit: int = 100) -> list[tuple[int, str]]:
        """The oldest ``limit`` items as ``(seq, body)``."""
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT seq, body FROM budget_outbox ORDER BY seq LIMIT ?", (limit,)).fetchall())
        return [(int(r[0]), str(r[1])) for r in rows]

    async def delete(self, seq: int) -> None:
        deleted = await self.store.run(
            lambda: self.store.conn().execute("DELETE FROM budget_outbox WHERE seq = ?", (seq,)).rowcount)
        self.count = max(0, self.count - int(deleted))

    async def replay(self, apply: Callable[[Settlement], Awaitable[None]]) -> int:
        """``apply`` every item, oldest first, deleting each once applied; returns how many.  An
        exception from ``apply`` (the store is away again) leaves that item and the rest queued."""
        done = 0
        while self.count:
            batch = await self.head()
            if not batch:
                self.count = 0
                break
            for seq, body in batch:
                await apply(Settlement.from_body(body))
                await self.delete(seq)  # killed before this line: the next replay is a no-op
                done += 1
        return done
