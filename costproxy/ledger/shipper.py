"""Shippers: copy ledger entries, in batches and off the request path, into the PostgreSQL ledger.

They read only from where entries are already durable, so nothing is lost while PostgreSQL is
away: rows wait there and are retried with backoff, ``healthy`` turns False (``/readyz`` shows
it, ``ledger_postgres_write_failing`` is logged once) and turns True again after a write.

- ``LocalShipper`` (SQLite store): the replica's own SQLite ledger, by ``seq``; the origin is an
  id kept in the SQLite file (``budget_marks``).  If PostgreSQL already holds more of that origin
  than the file does (the file was restored from a backup or replaced), the file gets a new origin
  and ships everything it holds under it, leaving out the entries PostgreSQL already has from the
  old origin (same request id and time), instead of colliding with what was shipped before.
- ``StreamShipper`` (Redis store): the per-organisation Redis streams, by stream id; the origin
  is the stream's key.  One replica ships at a time (a lease in Redis, taken over within
  ``lease_s`` if its holder dies); its positions are published for trimming under the replica id
  ``postgres`` (``ledger/trim.py``), so a stream is never trimmed below what PostgreSQL holds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from costproxy.background import stop_if_cancelled
from costproxy.budgets.lua import RedisKeys
from costproxy.errors import StoreUnavailable
from costproxy.ledger.entry import LedgerEntry, entry_from_row
from costproxy.ledger.postgres import PostgresLedger, Row
from costproxy.ledger.trim import id_order, next_id
from costproxy.store.sqlite import SqliteStore

log = structlog.get_logger("costproxy.ledger")
POSTGRES_REPLICA = "postgres"  # the replica id under which the stream shipper's positions are published
MAX_BACKOFF_S = 5.0
DEPLOYMENT_CHECK_S = 60.0  # how often the stream shipper renews its deployment's mark in PostgreSQL
DEPLOYMENT_FRESH_S = 300.0  # another deployment's mark younger than this: it ships the same origins
_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class Shipper:
    """The loop and the health both shippers share; ``step`` ships one batch and returns its size."""

    def __init__(self, ledger: PostgresLedger, *, batch: int = 500, interval_s: float = 0.25) -> None:
        self.ledger = ledger
        self.batch = batch
        self.interval_s = interval_s
        self.shipped = 0
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._step_since: float | None = None  # when the step now running began
        self.peer_stale: str | None = None  # Redis mode: why the replica that ships cannot write (its word)
        self.warning: str | None = None  # a misconfiguration it found (shown in /readyz)
        self._wake = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Writing: no failure since the last write, and no step stuck for longer than the ledger's
        call bound (``store.ledger_timeout_s``) — a server that does not answer is not healthy."""
        if self._failing_since is not None:
            return False
        return self._step_since is None or time.monotonic() - self._step_since <= self.ledger.timeout_s

    @property
    def error(self) -> str | None:
        if self.last_error is None and not self.healthy:
            return (f"shipping has made no progress for over {self.ledger.timeout_s:g} s "
                    "(store.ledger_timeout_s): PostgreSQL does not answer")
        return self.last_error

    async def _step(self) -> int:
        self._step_since = time.monotonic()
        try:
            return await self.step()
        finally:
            self._step_since = None

    def wake(self, *_: Any) -> None:
        self._wake.set()

    async def step(self) -> int:
        raise NotImplementedError

    async def run(self) -> None:
        delay = self.interval_s
        while True:
            stop_if_cancelled()
            try:
                while await self._step() >= self.batch:  # a backlog: ship it without waiting
                    stop_if_cancelled()
                self._ok()
                await self._share(None)
                delay = self.interval_s
            except (StoreUnavailable, RedisError, OSError) as exc:
                stop_if_cancelled()
                self._failed(exc)
                if isinstance(exc, StoreUnavailable):
                    await self._share(exc.message)
                delay = min(MAX_BACKOFF_S, max(delay * 2, self.interval_s))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Ship what is left (shutdown); an unreachable server leaves it durable for the next start."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.step() > 0:
                    pass
        except (StoreUnavailable, RedisError, OSError, TimeoutError) as exc:
            log.warning("ledger_postgres_drain_incomplete", error=str(exc)[:300])

    async def _share(self, failure: str | None) -> None:
        """Tell the other replicas whether this one fails to write (Redis mode); nothing to tell else."""

    def _ok(self) -> None:
        if self._failing_since is not None:
            log.info("ledger_postgres_write_recovered", after_s=round(time.monotonic() - self._failing_since, 3))
        self._failing_since, self.last_error = None, None
        self.ledger.stale = self.peer_stale

    def _failed(self, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, StoreUnavailable) else str(exc)
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("ledger_postgres_write_failing", error=message[:300])
        self.last_error = message
        if isinstance(exc, StoreUnavailable):  # entries wait that PostgreSQL would not take: reports refuse
            self.ledger.stale = message


class LocalShipper(Shipper):
    def __init__(self, local: SqliteStore, ledger: PostgresLedger, **options: Any) -> None:
        super().__init__(ledger, **options)
        self.local = local
        self.origin: str | None = None
        self.position: int | None = None
        self._replaced: tuple[str, int] | None = None  # (old origin, last seq that may duplicate it)
        local.on_flushed.append(self.wake)

    async def _start(self) -> None:
        origin = await self.local.run(self._origin_sync, None)
        held = (await self.ledger.positions(origin)).get(origin, (0, 0))[0]
        rows = await self.local.query("SELECT COALESCE(MAX(seq), 0) AS top FROM ledger")
        top = int(rows[0]["top"])
        if held > top or (held and not await self._same_row(origin, held)):
            replaced = origin
            origin = await self.local.run(self._origin_sync, "sqlite:" + uuid.uuid4().hex)
            log.warning("ledger_origin_replaced", old=replaced, new=origin, postgres_holds=held, file_holds=top,
                        hint="this SQLite file is not the one that shipped before (restored or replaced): "
                             "it ships as a new origin, without the entries already shipped")
            self._replaced, held = (replaced, top), 0
        self.origin, self.position = origin, held

    async def _same_row(self, origin: str, seq: int) -> bool:
        """Whether the file's row ``seq`` is the one PostgreSQL holds as ``origin``'s row ``seq``."""
        mine = await self.local.query("SELECT request_id, ts_ms FROM ledger WHERE seq = ?", (seq,))
        theirs = await self.ledger.fetch("SELECT l.request_id, l.ts_ms FROM costproxy_ledger l"
                                         " WHERE l.origin = ? AND l.origin_id = ?", [origin, str(seq)])
        if not theirs:  # quarantined there, or never a row: nothing to compare
            return True
        return bool(mine) and (mine[0]["request_id"], mine[0]["ts_ms"]) == (theirs[0]["request_id"],
                                                                             theirs[0]["ts_ms"])

    def _origin_sync(self, new: str | None) -> str:
        conn = self.local.conn()
        if new is not None:
            conn.execute("INSERT OR REPLACE INTO budget_marks (name, value) VALUES ('ledger_origin', ?)", (new,))
            return new
        row = conn.execute("SELECT value FROM budget_marks WHERE name = 'ledger_origin'").fetchone()
        return str(row[0]) if row is not None else self._origin_sync("sqlite:" + uuid.uuid4().hex)

    async def step(self) -> int:
        if self.origin is None or self.position is None:
            await self._start()
        assert self.origin is not None and self.position is not None
        rows = await self.local.query("SELECT * FROM ledger WHERE seq > ? ORDER BY seq LIMIT ?",
                                      (self.position, self.batch))
        if not rows:
            return 0
        batch: list[Row] = [(str(r["seq"]), entry_from_row(dict(r))) for r in rows]
        last = int(rows[-1]["seq"])
        if self._replaced is not None:
            batch = await self._not_shipped_before(batch, last)
        await self.ledger.write(self.origin, batch, (last, 0))
        self.position = last
        self.shipped += len(batch)
        return len(batch)

    async def _not_shipped_before(self, batch: list[Row], last: int) -> list[Row]:
        assert self._replaced is not None
        old, until = self._replaced
        ids = [e.request_id for _, e in batch if isinstance(e, LedgerEntry)]
        marks = ", ".join("?" for _ in ids)
        rows = await self.ledger.fetch(f"SELECT l.request_id, l.ts_ms FROM costproxy_ledger l WHERE l.origin = ?"
                                       f" AND l.request_id IN ({marks})", [old, *ids])
        seen = {(r["request_id"], r["ts_ms"]) for r in rows}
        if last >= until:
            self._replaced = None
        return [(oid, e) for oid, e in batch if not (isinstance(e, LedgerEntry) and (e.request_id, e.ts_ms) in seen)]

    async def backlog(self) -> int:
        if self.position is None:
            return 0
        rows = await self.local.query("SELECT COUNT(*) AS n FROM ledger WHERE seq > ?", (self.position,))
        return int(rows[0]["n"])


class StreamShipper(Shipper):
    def __init__(self, redis: Redis, keys: RedisKeys, partitions: Callable[[], set[str]], ledger: PostgresLedger,
                 owner: str, *, lease_s: float = 10.0, **options: Any) -> None:
        super().__init__(ledger, **options)
        self.redis = redis
        self.keys = keys
        self.partitions = partitions
        self.owner = owner
        self.lease_ms = int(lease_s * 1000)
        self._extend = redis.register_script(_EXTEND)
        self._held: dict[str, str] | None = None  # partition -> last id in PostgreSQL, while the lease is ours
        self._leased = False
        self._deployment: str | None = None  # this deployment's id, kept in its Redis
        self._checked_at: float | None = None
        self._shared = False  # this replica has published a failure to write

    def positions(self) -> Mapping[str, str] | None:
        """What PostgreSQL holds, per partition, while this replica ships (for ``StreamKeeper``)."""
        return None if self._held is None else dict(self._held)

    @property
    def lease_key(self) -> str:
        return f"{self.keys.prefix}:ledger-postgres"

    @property
    def failing_key(self) -> str:
        """Why the replica that ships cannot write PostgreSQL, while it cannot: the others' reports
        refuse too (their PostgreSQL reads would be as stale as its own)."""
        return f"{self.keys.prefix}:ledger-postgres-failing"

    async def _share(self, failure: str | None) -> None:
        if not self._leased or (failure is None and not self._shared):
            return
        try:
            if failure is None:
                await self.redis.delete(self.failing_key)
            else:
                await self.redis.set(self.failing_key, failure[:500], px=3 * self.lease_ms)
            self._shared = failure is not None
        except RedisError as exc:
            log.warning("ledger_postgres_failure_not_shared", error=str(exc)[:200])

    async def step(self) -> int:
        self._leased = bool(int(await self._extend(keys=[self.lease_key], args=[self.owner, self.lease_ms])))
        if not self._leased:
            self._held = None  # another replica ships
            failing = await self.redis.get(self.failing_key)
            self.peer_stale = None if failing is None else f"the replica that ships says: {_text(failing)}"
            return 0
        self.peer_stale = None
        await self._check_deployment()
        if self._held is None:
            self._shared = True  # just took the lease: clear what a former holder may have published
            stored = await self.ledger.positions(self.keys.prefix + ":")
            self._held = {}
            for partition in self.partitions():
                at = stored.get(self.keys.ledger(partition))
                if at is not None:
                    self._held[partition] = f"{at[0]}-{at[1]}"
        total = 0
        for partition in sorted(self.partitions()):
            total = max(total, await self._ship(partition))
        return total

    async def _check_deployment(self) -> None:
        """Another deployment (another Redis) with the same ``budgets.key_prefix`` writing this ledger
        shares its origins — the stream keys — so entries with colliding stream ids would be lost:
        say so loudly (an error log, ``/readyz``'s ``ledger.warning``) while it lasts."""
        now = time.monotonic()
        if self._checked_at is not None and now - self._checked_at < DEPLOYMENT_CHECK_S:
            return
        if self._deployment is None:
            key = f"{self.keys.prefix}:ledger-deployment"
            await self.redis.set(key, uuid.uuid4().hex, nx=True)
            value = await self.redis.get(key)
            if value is None:
                return
            self._deployment = _text(value)
        others = await self.ledger.mark_deployment(self.keys.prefix, self._deployment, DEPLOYMENT_FRESH_S)
        self._checked_at = now
        if others:
            self.warning = (f"another deployment (another Redis: {', '.join(sorted(others))[:200]}) writes this "
                            f"PostgreSQL ledger with the same budgets.key_prefix {self.keys.prefix!r}: entries with "
                            "colliding stream ids are dropped; give each deployment its own key prefix (or database)")
            log.error("ledger_key_prefix_shared", deployment=self._deployment, others=sorted(others),
                      key_prefix=self.keys.prefix, hint=self.warning)
        else:
            self.warning = None

    async def _ship(self, partition: str) -> int:
        assert self._held is not None
        stream = self.keys.ledger(partition)
        after = self._held.get(partition)
        reply: Any = await self.redis.xrange(stream, min=next_id(after) if after else "-", count=self.batch)
        if not reply:
            return 0
        batch: list[Row] = [(_text(mid), _entry(fields.get(b"e", b""))) for mid, fields in reply]
        last = batch[-1][0]
        await self.ledger.write(stream, batch, id_order(last))
        self._held[partition] = last
        self.shipped += len(batch)
        return len(batch)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry(data: bytes) -> LedgerEntry | str:
    try:
        return LedgerEntry(**orjson.loads(data))
    except (orjson.JSONDecodeError, TypeError) as exc:
        log.error("ledger_stream_entry_unreadable", error=str(exc)[:200])
        return data.decode("utf-8", "replace")
