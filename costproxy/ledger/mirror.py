"""Each replica's copy of the shared ledger: Redis streams mirrored into the local SQLite file.

In Redis mode the ledger of record is the per-organisation stream ``P:{<org>}:ledger``: the settle
script appends the entry in the same atomic step that moves the money, so the ledger and the
counters can never disagree.  Every replica mirrors every stream into its own SQLite ``ledger``
table (reports, the UI and exports read it there, fast and even while Redis is away).

Exactly once: each batch of rows and the last stream id it contains are written in one SQLite
transaction (``budget_marks``), committed with ``synchronous=FULL`` (on disk, not only in the OS),
so a restart resumes right after the last mirrored entry — no gap, no duplicate — and the position
``positions()`` reports may be published for trimming (``ledger/trim.py``): a stream is trimmed
only below what every live replica's mirror holds this way.

After a read that brought entries the mirror waits ``gather_s`` (50 ms) before reading again, so at
low traffic it writes a few entries per transaction and fsync instead of one per request: at one
request at a time on Redis this cut the proxy's CPU per request from ~1,760 to ~1,140 µs
(``bench/proxy_bench.py``); reports on a replica lag by at most that much more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from costproxy.background import stop_if_cancelled
from costproxy.budgets.lua import RedisKeys
from costproxy.errors import StoreUnavailable
from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import (
    INSERT_LEDGER,
    INSERT_QUARANTINE,
    ROW_ERRORS,
    SqliteStore,
    ledger_row,
    quarantine_row,
    rollback,
)

log = structlog.get_logger("costproxy.budgets.model")


def entry_json(entry: LedgerEntry) -> bytes:
    return orjson.dumps(entry)


def entry_from_json(data: bytes | str) -> LedgerEntry:
    return LedgerEntry(**orjson.loads(data))


class LedgerMirror:
    def __init__(self, redis: Redis, store: SqliteStore, keys: RedisKeys,
                 partitions: Callable[[], set[str]], *, batch: int = 500, block_ms: int = 500,
                 gather_s: float = 0.05) -> None:
        self.redis = redis
        self.store = store
        self.keys = keys
        self.partitions = partitions
        self.batch = batch
        self.block_ms = block_ms
        # After a write, wait this long before reading again: at low traffic each request's entry
        # would otherwise be one read, one transaction and one fsync on its own (reports lag by it)
        self.gather_s = gather_s
        self._last: dict[str, str] = {}
        self._lock = asyncio.Lock()  # one reader at a time: ``run`` and ``catch_up`` share ``_last``
        self.mirrored = 0

    def positions(self) -> dict[str, str]:
        """Partition -> id of the last entry committed to this mirror (only streams it has read)."""
        return {p: self._last[self.keys.ledger(p)] for p in self.partitions() if self.keys.ledger(p) in self._last}

    async def load_marks(self) -> None:
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT name, value FROM budget_marks WHERE name LIKE 'mirror:%'").fetchall())
        self._last = {name[len("mirror:"):]: value for name, value in rows}

    async def run(self) -> None:
        await self.load_marks()
        while True:
            stop_if_cancelled()
            try:
                if await self.step() and self.gather_s > 0:
                    await asyncio.sleep(self.gather_s)
            except (RedisError, OSError, StoreUnavailable) as exc:
                stop_if_cancelled()
                log.warning("ledger_mirror_failed", error=str(exc))
                await asyncio.sleep(1.0)

    async def step(self, block: bool = True) -> int:
        """Read what is new in every partition's stream and write it locally; returns the count."""
        async with self._lock:
            return await self._step(block)

    async def _step(self, block: bool) -> int:
        names = [self.keys.ledger(p) for p in self.partitions()]
        streams: dict[Any, Any] = {name: self._last.get(name, "0-0") for name in names}
        if not streams:
            await asyncio.sleep(self.block_ms / 1000 if block else 0)
            return 0
        reply: Any = await self.redis.xread(streams, count=self.batch, block=self.block_ms if block else None)
        count = 0
        for stream, messages in reply or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            rows = [(mid.decode() if isinstance(mid, bytes) else mid, fields.get(b"e", b""))
                    for mid, fields in messages]
            if rows:
                written = await self.store.run(self._write_sync, name, rows)
                self._last[name] = rows[-1][0]
                count += len(rows)
                for callback in self.store.on_flushed:
                    callback(written)
        self.mirrored += count
        return count

    def _write_sync(self, stream: str, rows: list[tuple[str, bytes]]) -> list[LedgerEntry]:
        """Write one batch of stream entries and the stream mark in one transaction; an entry that
        cannot be a ledger row goes to ``ledger_quarantine`` (mirroring never stops on one)."""
        conn = self.store.conn()
        written: list[LedgerEntry] = []
        conn.execute("PRAGMA synchronous=FULL")  # the mark may be published: it must be on disk
        conn.execute("BEGIN")
        try:
            for _, data in rows:
                try:
                    entry = entry_from_json(data)
                    conn.execute(INSERT_LEDGER, ledger_row(entry))
                    written.append(entry)
                except (*ROW_ERRORS, orjson.JSONDecodeError) as exc:
                    conn.execute(INSERT_QUARANTINE, quarantine_row({"raw": data.decode("utf-8", "replace")}, exc))
                    log.error("ledger_mirror_row_quarantined", stream=stream, error=str(exc)[:200])
            conn.execute("INSERT OR REPLACE INTO budget_marks (name, value) VALUES (?, ?)",
                         ("mirror:" + stream, rows[-1][0]))
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        finally:
            conn.execute("PRAGMA synchronous=NORMAL")
        return written

    async def catch_up(self) -> int:
        """Mirror everything currently in the streams (tests, shutdown); returns the count."""
        async with self._lock:
            # Marks are written with the rows: a step cancelled mid-write may have committed.
            await self.load_marks()
        total = 0
        while True:
            count = await self.step(block=False)
            total += count
            if count == 0:
                return total
