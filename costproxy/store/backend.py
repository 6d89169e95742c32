"""The one storage backend of a replica, chosen once from ``settings.store``.

``open_backend`` returns a ``Backend`` that bundles everything that persists:

- ``local``: this replica's SQLite file, always: the ledger itself (SQLite mode) or its mirror of
  the shared Redis stream, the durable settlement outbox, stored Responses, the console rollup;
- ``accounts``: the money gate of the pipeline (``SqliteBudgetAccounts``, ``RedisBudgetAccounts``,
  or ``LedgerAccounts`` when budgets are disabled), and ``budgets`` — the same object when it
  enforces budgets (the budget API and alerts need it), else ``None``;
- ``client_keys``: where ``cp-`` keys are written (the local file, or Redis shared by replicas);
- ``alerts``: webhook subscriptions, deliveries, events, acknowledgements, read-only tokens;
- ``ledger``: "the ledger" as reports read it (``ledger/reader.py``): the PostgreSQL ledger when
  ``store.ledger_url`` is set — written by a shipper from the local SQLite ledger (SQLite mode) or
  from the shared Redis streams (Redis mode), see ``ledger/shipper.py`` — else ``local``;
- ``limits``: the rate limiter (limits and buckets: in memory with a SQLite checkpoint, or Redis);
- ``cache``: the response cache (a SQLite table, or TTL keys in Redis).

In Redis mode the backend owns one command client for all of them (fail-fast timeouts) and one
client for the ledger mirror's long blocking reads; nothing else opens a pool.  ``close`` releases
everything in reverse order.  The CLI opens only what it needs: ``open_client_keys``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from costproxy.alerts.store import AlertStore, SqliteAlertStore
from costproxy.background import cancel_and_wait
from costproxy.budgets.accounts import Accounts, LedgerAccounts
from costproxy.budgets.book import BudgetAccounts
from costproxy.budgets.definitions import BudgetStore, SqliteDefinitions, ensure_budget_schema
from costproxy.budgets.sqlite import SqliteBudgetAccounts
from costproxy.cache.store import ResponseCache, SqliteResponseCache
from costproxy.identity.key_store import KeyStore, SqliteKeyStore
from costproxy.lean_imports import import_redis
from costproxy.ledger.reader import LedgerReader
from costproxy.ratelimits.limiter import RateLimiter
from costproxy.ratelimits.store import LocalBuckets, SqliteLimitDefinitions, ensure_schema
from costproxy.settings import Settings
from costproxy.store.sqlite import SqliteStore, sqlite_path

if TYPE_CHECKING:
    from costproxy.ledger.postgres import PostgresLedger
    from costproxy.ledger.shipper import Shipper

Closer = Callable[[], Awaitable[None]]


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def redacted(url: str) -> str:
    """A store URL fit for logs: never the password."""
    return url.split("@")[-1]


def local_path(settings: Settings) -> str:
    """SQLite file of this replica: the store itself, or in Redis mode ``store.local_path`` with
    ``{host}`` and ``{port}`` expanded, relative to the config file."""
    store = settings.store
    if not is_redis_url(store.url):
        return sqlite_path(store.url)
    local = store.local_path.format(host=socket.gethostname(), port=settings.server.port)
    return os.path.normpath(settings.config_path.parent / local)


class StoreInUse(RuntimeError):
    """Another serving process holds this replica's SQLite file."""


_HELD: list[int] = []  # descriptors of the store locks this process holds, until it exits


def hold_store_lock(path: str) -> None:
    """Take, for the life of this process, an exclusive lock on a replica's SQLite file (an advisory
    ``flock`` on the database file itself — so a symlink or a hard link to it is the same file — which
    the kernel drops when the process ends, however it ends; SQLite's own locks are POSIX locks,
    which ``flock`` does not touch).  The holder's pid goes into ``<file>.lock`` for the message.

    A second ``serve`` on the same file would keep budget counters and reservations of its own —
    each process admits requests against spend the other cannot see, so hard budgets would not
    hold — and in Redis mode two mirrors would write one file.  Nothing to lock for an in-memory
    store; raises ``StoreInUse`` naming the holder when another process has the file."""
    import fcntl

    if path == ":memory:":
        return
    real = os.path.realpath(path)
    os.makedirs(os.path.dirname(real), exist_ok=True)
    fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o644)  # an empty file is an empty SQLite database
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # never close ``fd`` here in a process with SQLite connections open on this file: closing any
        # descriptor of a file drops the process's POSIX locks on it (this process has none: it refuses)
        os.close(fd)
        try:
            with open(f"{real}.lock", encoding="ascii", errors="replace") as handle:
                holder = handle.read(64).strip() or "unknown"
        except OSError:
            holder = "unknown"
        raise StoreInUse(f"another costproxy process (pid {holder}) is serving from {path}; one process per "
                         "store file: for several processes use a shared store (store.url: redis://..., each "
                         "replica with its own store.local_path) — `serve --workers N` does that on one "
                         "machine") from None
    with open(f"{real}.lock", "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    _HELD.append(fd)


@dataclass
class Backend:
    kind: str  # "sqlite" | "redis"
    local: SqliteStore
    accounts: Accounts
    budgets: BudgetAccounts | None
    client_keys: KeyStore
    alerts: AlertStore
    label: str  # where the data lives, fit for logs
    limits: RateLimiter | None = None
    cache: ResponseCache | None = None
    _closers: list[Closer] = field(default_factory=list, repr=False)
    postgres: PostgresLedger | None = None  # store.ledger_url
    shipper: Shipper | None = None  # writes the PostgreSQL ledger

    @property
    def ledger(self) -> LedgerReader:
        return self.local if self.postgres is None else self.postgres

    async def ledger_health(self) -> dict[str, object]:
        """Where reports read the ledger, and whether the PostgreSQL ledger is being written."""
        if self.postgres is None or self.shipper is None:
            return {"store": "sqlite", "healthy": self.local.healthy, "backlog": self.local.backlog}
        health: dict[str, object] = {"store": "postgresql", "server": self.postgres.label,
                                     "healthy": self.shipper.healthy, "error": self.shipper.error,
                                     "shipped": self.shipper.shipped}
        if self.shipper.warning is not None:
            health["warning"] = self.shipper.warning
        return health

    async def close(self) -> None:
        """Close what was opened, last opened first."""
        while self._closers:
            await self._closers.pop()()


async def open_backend(settings: Settings, *, clock: Callable[[], float] = time.time) -> Backend:
    local = SqliteStore(local_path(settings))
    await local.open()
    try:
        await ensure_budget_schema(local)
        if is_redis_url(settings.store.url):
            backend = await _open_redis(settings, local, clock)
        else:
            backend = await _open_sqlite(settings, local, clock)
    except BaseException:
        await local.close()
        raise
    if settings.store.ledger_url is not None:
        try:
            await _attach_postgres(backend, settings.store.ledger_url, settings.store.ledger_timeout_s)
        except BaseException:
            await backend.close()
            raise
    return backend


async def _attach_postgres(backend: Backend, url: str, timeout_s: float) -> None:
    """The PostgreSQL ledger and its shipper; closed (after a last drain) before everything else."""
    import_redis()
    from costproxy.budgets.redis import RedisBudgetAccounts
    from costproxy.ledger.postgres import PostgresLedger
    from costproxy.ledger.shipper import POSTGRES_REPLICA, LocalShipper, StreamShipper

    postgres = PostgresLedger(url, timeout_s=timeout_s)
    await postgres.open()
    backend._closers.append(postgres.close)
    accounts = backend.accounts
    shipper: Shipper
    if isinstance(accounts, RedisBudgetAccounts):
        shipper = StreamShipper(accounts.redis, accounts.keys, accounts.mirror.partitions, postgres,
                                owner=accounts.keeper.replica)
        accounts.keeper.sources[POSTGRES_REPLICA] = shipper.positions
    else:
        shipper = LocalShipper(backend.local, postgres)
    task = asyncio.create_task(shipper.run(), name="costproxy-ledger-postgres")

    async def stop() -> None:
        await cancel_and_wait([task])
        await shipper.drain()

    backend._closers.append(stop)
    backend.postgres, backend.shipper = postgres, shipper


async def _open_sqlite(settings: Settings, local: SqliteStore, clock: Callable[[], float]) -> Backend:
    config = settings.budgets
    accounts: Accounts
    budgets: BudgetAccounts | None = None
    closers: list[Closer] = [local.close]
    if config.settings.enabled:
        definitions = BudgetStore(SqliteDefinitions(local), config.static, clock)
        await definitions.load()
        book = SqliteBudgetAccounts(local, definitions, clock=clock,
                                    reservation_ttl_s=config.settings.reservation_ttl_s,
                                    checkpoint_interval_s=config.settings.checkpoint_interval_s)
        await book.open()
        closers.append(book.close)
        accounts = budgets = book
    else:
        accounts = LedgerAccounts(local)
    alerts = SqliteAlertStore(local)
    await alerts.open()
    closers.append(alerts.close)
    await ensure_schema(local)
    buckets = LocalBuckets(local, clock=clock,
                           checkpoint_interval_s=settings.rate_limits.settings.checkpoint_interval_s)
    await buckets.open()
    limits = RateLimiter(settings.rate_limits, SqliteLimitDefinitions(local), buckets, clock=clock)
    await limits.open(refresh=False)
    closers.append(limits.close)
    cache = SqliteResponseCache(local, max_bytes=settings.cache.max_bytes,
                                max_entry_bytes=settings.cache.max_entry_bytes, clock=clock)
    await cache.open()
    return Backend("sqlite", local, accounts, budgets, SqliteKeyStore(local), alerts, local.path, limits, cache,
                   closers)


async def _open_redis(settings: Settings, local: SqliteStore, clock: Callable[[], float]) -> Backend:
    import_redis()  # first, before the modules below import it
    from costproxy.alerts.store_redis import RedisAlertStore
    from costproxy.budgets.redis import open_redis_accounts, redis_client
    from costproxy.cache.redis import RedisResponseCache
    from costproxy.identity.key_store_redis import RedisKeyStore
    from costproxy.ratelimits.redis import RedisBuckets, RedisLimitDefinitions

    url, prefix = settings.store.url, settings.budgets.settings.key_prefix
    label = redacted(url)
    redis = redis_client(url, timeout_s=settings.store.timeout_s)
    closers: list[Closer] = [local.close, redis.aclose]
    try:
        accounts = await open_redis_accounts(url, local, settings.budgets, clock=clock, redis=redis)
    except BaseException:
        await redis.aclose()
        raise
    closers.append(accounts.close)
    keys = RedisKeyStore(redis, prefix=prefix, label=label)
    alerts = RedisAlertStore(redis, prefix, label)
    limits = RateLimiter(settings.rate_limits, RedisLimitDefinitions(redis, prefix, label=label),
                         RedisBuckets(redis, prefix, label=label), clock=clock)
    await limits.open(refresh=True)
    closers.append(limits.close)
    cache = RedisResponseCache(redis, prefix, max_bytes=settings.cache.max_bytes,
                               max_entry_bytes=settings.cache.max_entry_bytes, label=label, clock=clock)
    return Backend("redis", local, accounts, accounts, keys, alerts, label, limits, cache, closers)


async def open_client_keys(settings: Settings) -> tuple[KeyStore, Closer]:
    """Only the client key store (for the CLI) and the function that closes what it opened."""
    if is_redis_url(settings.store.url):
        import_redis()
        from costproxy.budgets.redis import redis_client
        from costproxy.identity.key_store_redis import RedisKeyStore

        redis = redis_client(settings.store.url, timeout_s=settings.store.timeout_s)
        keys = RedisKeyStore(redis, prefix=settings.budgets.settings.key_prefix, label=redacted(settings.store.url))
        return keys, redis.aclose
    local = SqliteStore(local_path(settings))
    await local.open()
    return SqliteKeyStore(local), local.close
