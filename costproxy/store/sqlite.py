"""The embedded store: one SQLite file, written by one dedicated thread.

Why one thread: SQLite serialises writers anyway, and keeping every statement on one thread
means no connection is shared across threads and the event loop never blocks on disk.  Ledger
entries are appended in batches (one transaction per batch, flushed every ``flush_interval``
seconds or when ``batch_size`` entries wait): that keeps the per-request cost of a durable
ledger write to a few microseconds of CPU.  ``close()`` flushes what is pending, so a clean
shutdown loses nothing; a hard crash can lose at most the last ``flush_interval`` of entries.

Other tables can ride in those batches (``Rider``): what a rider has pending is written in the
same transaction as the ledger entries queued with it, so a ledger entry and, for instance, the
removal of the budget reservation it settles commit together or not at all.  Batches are written
one at a time, in order (a failed batch is put back before the next is taken).

The writer never drops what it accepted.  A row SQLite cannot store (an integer beyond 64 bits,
text with a lone surrogate, metadata that is not JSON) is isolated: the batch is retried row by
row and such a row goes to ``ledger_quarantine`` with the error and the entry as JSON, while every
other row is written.  When the file cannot be written at all (disk full, locked, I/O error) the
rows stay queued and are retried; ``healthy`` turns False (``/readyz`` reads it) until a write
succeeds again.

One serving process owns a SQLite file (the CLI may write keys into it concurrently: the server
notices through ``PRAGMA data_version``); several replicas share state through Redis instead.
The schema is versioned: ``MIGRATIONS`` run in order, once each.
"""

from __future__ import annotations

import asyncio
import json
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog

from costproxy.background import cancel_and_wait
from costproxy.errors import StoreUnavailable
from costproxy.identity.principal import KeyRecord
from costproxy.ledger.entry import COLUMNS, LedgerEntry
from costproxy.ledger.reader import SQLITE, Dialect, for_request, recent

T = TypeVar("T")
log = structlog.get_logger("costproxy.store")

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE ledger (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL, endpoint TEXT NOT NULL,
            status TEXT NOT NULL, http_status INTEGER NOT NULL,
            key_id TEXT, user TEXT, team TEXT, org TEXT, project TEXT,
            requested_model TEXT, served_model TEXT, provider TEXT, decision_id TEXT,
            prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
            cached_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL,
            baseline_nanos INTEGER NOT NULL, usage_reported INTEGER NOT NULL,
            stream INTEGER NOT NULL, latency_ms INTEGER NOT NULL, error_code TEXT,
            task_type TEXT, correlation_id TEXT, tenant TEXT, source TEXT NOT NULL,
            metadata TEXT NOT NULL
        );
        CREATE INDEX ledger_ts ON ledger (ts_ms);
        CREATE INDEX ledger_request ON ledger (request_id);
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL,
            name TEXT NOT NULL, user TEXT, team TEXT, org TEXT, project TEXT,
            created_at REAL NOT NULL, revoked_at REAL, expires_at REAL
        );
    """),
    # The console: last use of a key (MAX(ts_ms) per key_id) and the ledger entry of a decision.
    (2, """
        CREATE INDEX ledger_key_ts ON ledger (key_id, ts_ms);
        CREATE INDEX ledger_decision ON ledger (decision_id) WHERE decision_id IS NOT NULL;
    """),
    # The console's overview reads sums per 15 minutes, caught up from the append-only ledger when
    # read (costproxy/ledger/analytics.py): nothing is added to the write path.
    (3, """
        CREATE TABLE ledger_rollup (
            bucket_ms INTEGER NOT NULL, served_model TEXT NOT NULL, virtual INTEGER NOT NULL,
            refused INTEGER NOT NULL, requests INTEGER NOT NULL, cost_nanos INTEGER NOT NULL,
            baseline_nanos INTEGER NOT NULL,
            PRIMARY KEY (bucket_ms, served_model, virtual, refused)
        ) WITHOUT ROWID;
        CREATE TABLE ledger_rollup_mark (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
        INSERT INTO ledger_rollup_mark (id, seq) VALUES (1, 0);
    """),
    # Prompt-cache writes (Anthropic): priced apart, so the ledger keeps them apart.
    (4, """
        ALTER TABLE ledger ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE ledger ADD COLUMN cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0
    """),
    # Rows the writer could not store (an integer beyond 64 bits, a lone surrogate, metadata that is
    # not JSON), kept whole with the error instead of being dropped with their batch.
    (5, """
        CREATE TABLE ledger_quarantine (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, request_id TEXT,
            error TEXT NOT NULL, body TEXT NOT NULL
        )
    """),
]

INSERT_LEDGER = f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"


_VALUES = operator.attrgetter(*COLUMNS)
_METADATA = COLUMNS.index("metadata")


def ledger_row(entry: LedgerEntry) -> tuple[Any, ...]:
    """Column values in ``COLUMNS`` order (sqlite3 stores bools as 0/1 by itself)."""
    values = list(_VALUES(entry))
    metadata = values[_METADATA]
    values[_METADATA] = json.dumps(metadata, separators=(",", ":"), sort_keys=True) if metadata else "{}"
    return tuple(values)


# A row SQLite refuses for its content (not for the state of the file): isolate it, write the rest.
ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.ProgrammingError,
              OverflowError, TypeError, ValueError)
INSERT_QUARANTINE = "INSERT INTO ledger_quarantine (ts_ms, request_id, error, body) VALUES (?, ?, ?, ?)"


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open (SQLite ends one by itself on SQLITE_FULL and I/O errors,
    and a second ROLLBACK would hide the real error)."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def quarantine_row(entry: LedgerEntry | dict[str, Any], error: BaseException) -> tuple[Any, ...]:
    """``ledger_quarantine`` values for an entry that could not be stored as a ledger row."""
    data = entry if isinstance(entry, dict) else {name: getattr(entry, name) for name in COLUMNS}
    body = json.dumps(data, default=repr, ensure_ascii=True, sort_keys=True)
    request_id = data.get("request_id")
    return (int(time.time() * 1000), request_id if isinstance(request_id, str) and request_id.isascii() else None,
            f"{type(error).__name__}: {error}"[:500], body)


class Rider(Protocol):
    """Writes of another table that ride in the ledger's batches (``SqliteStore.riders``).

    On the event loop: ``pending`` (anything to write?) and ``take`` (hand over what is pending,
    forgetting it); on the writer thread, inside the batch's transaction: ``write``; back on the
    loop if that transaction failed: ``restore`` (keep it, ahead of what came since, for the next
    batch).  ``write`` must not raise for the content of what it writes (a row SQLite refuses
    would fail every retry of the batch): only for the state of the file."""

    @property
    def pending(self) -> bool: ...

    def take(self) -> Any: ...

    def write(self, conn: sqlite3.Connection, taken: Any) -> None: ...

    def restore(self, taken: Any) -> None: ...


# SQLite's page cache for the store's connection, in KiB (SQLite's default: 2,000).  The ledger's
# inserts touch the right edge of its table and time indexes and one random page of the request and
# decision indexes each, which a cache of any size short of those indexes misses anyway; pages not
# cached are read back from the OS's file cache.  Inserting 100,000 ledger rows in batches of 50
# (in-process, twice each): 32.9 / 28.6 µs CPU a row at 2,000 KiB, 31.7 / 28.3 µs at 512 KiB, and
# ~1.7 MB less resident; proxy_bench's 30,000-request soak grew 2.6 MB less at 256 KiB.
PAGE_CACHE_KIB = 512


class SqliteStore:
    dialect: Dialect = SQLITE  # a LedgerReader (costproxy/ledger/reader.py) over this file's ledger

    def __init__(self, path: str, *, flush_interval: float = 0.05, batch_size: int = 256) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="costproxy-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._pending: list[LedgerEntry] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._thread_lock = threading.Lock()
        self._flushing = asyncio.Lock()  # one batch at a time, so batches commit in the order they were taken
        self.riders: list[Rider] = []
        self.on_flushed: list[Callable[[Sequence[LedgerEntry]], None]] = []
        self.quarantined = 0  # rows isolated in ledger_quarantine since start
        self.last_error: str | None = None  # why the last write failed; None once one succeeds
        self._failing_since: float | None = None

    @property
    def healthy(self) -> bool:
        """False while ledger rows cannot be written (they stay queued and are retried)."""
        return self._failing_since is None

    @property
    def backlog(self) -> int:
        """Ledger entries accepted and not yet committed."""
        return len(self._pending)

    # --- life cycle ----------------------------------------------------------------------
    async def open(self) -> None:
        await self.run(self._open_sync)
        self._flusher = asyncio.create_task(self._flush_loop(), name="costproxy-ledger-flush")

    def _open_sync(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        migrate(conn)
        self._conn = conn

    async def close(self) -> None:
        if self._flusher is not None:
            await cancel_and_wait([self._flusher])
            self._flusher = None
        try:
            await self.flush()
        except StoreUnavailable as exc:  # shutting down: say exactly what could not be kept
            log.error("ledger_rows_unwritten_at_shutdown", count=len(self._pending), error=str(exc),
                      request_ids=[e.request_id for e in self._pending[:100]])
        await self.run(self._close_sync)
        self._executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread (use ``conn()`` there); SQLite errors become
        ``StoreUnavailable``."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"ledger database error: {exc}") from exc


    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreUnavailable("ledger database is not open")
        return self._conn

    # --- ledger --------------------------------------------------------------------------
    def append(self, entry: LedgerEntry) -> None:
        """Queue an entry; it is committed within ``flush_interval`` (or at close)."""
        self._pending.append(entry)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    async def flush(self) -> None:
        if not self._pending and not any(r.pending for r in self.riders):
            return
        async with self._flushing:
            await self._flush_batch()

    async def _flush_batch(self) -> None:
        if not self._pending and not any(r.pending for r in self.riders):
            return  # written by the batch this one waited for
        batch, self._pending = self._pending, []
        ridden = [(rider, rider.take()) for rider in self.riders if rider.pending]
        try:
            written = await self.run(self._insert_sync, batch, ridden)
        except StoreUnavailable as exc:
            self._pending[:0] = batch  # keep them; the next flush retries
            for rider, taken in ridden:
                rider.restore(taken)
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.error("ledger_write_failing", error=str(exc), backlog=len(self._pending))
            self.last_error = str(exc)
            raise
        if self._failing_since is not None:
            log.info("ledger_write_recovered", after_s=round(time.monotonic() - self._failing_since, 3))
        self._failing_since, self.last_error = None, None
        if len(written) < len(batch):
            self.quarantined += len(batch) - len(written)
            log.error("ledger_rows_quarantined", count=len(batch) - len(written), table="ledger_quarantine")
        if batch:
            for callback in self.on_flushed:
                callback(written)

    def _insert_sync(self, batch: list[LedgerEntry], ridden: Sequence[tuple[Rider, Any]] = ()) -> list[LedgerEntry]:
        """Commit ``batch`` and what rides with it; rows SQLite refuses for their content go to
        ``ledger_quarantine``.  Returns the entries written to ``ledger``.  File errors
        (``OperationalError``) propagate."""
        conn = self.conn()
        with self._thread_lock:
            conn.execute("BEGIN")
            try:
                if batch:
                    conn.executemany(INSERT_LEDGER, [ledger_row(e) for e in batch])
                for rider, taken in ridden:
                    rider.write(conn, taken)
                conn.execute("COMMIT")
                return batch
            except ROW_ERRORS:
                rollback(conn)
            except BaseException:
                rollback(conn)
                raise
            return self._insert_one_by_one(conn, batch, ridden)

    @staticmethod
    def _insert_one_by_one(conn: sqlite3.Connection, batch: list[LedgerEntry],
                           ridden: Sequence[tuple[Rider, Any]] = ()) -> list[LedgerEntry]:
        written: list[LedgerEntry] = []
        conn.execute("BEGIN")
        try:
            for entry in batch:
                try:
                    conn.execute(INSERT_LEDGER, ledger_row(entry))
                    written.append(entry)
                except ROW_ERRORS as exc:
                    conn.execute(INSERT_QUARANTINE, quarantine_row(entry, exc))
            for rider, taken in ridden:
                rider.write(conn, taken)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return written

    async def _flush_loop(self) -> None:
        delay = self.flush_interval
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                delay = self.flush_interval
            except StoreUnavailable:
                delay = min(5.0, max(delay * 2, self.flush_interval))  # back off, keep the rows
            except Exception:  # the supervisor of the writer: it must outlive any bug in one batch
                log.exception("ledger_flush_crashed", backlog=len(self._pending))
                delay = min(5.0, max(delay * 2, self.flush_interval))

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        await self.flush()
        return await self.run(lambda: self.conn().execute(sql, tuple(params)).fetchall())

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        def run() -> int:
            return self.conn().execute(sql, tuple(params)).rowcount

        return await self.run(run)

    async def recent_entries(self, limit: int = 50) -> list[LedgerEntry]:
        return await recent(self, limit)

    async def entries_for(self, request_id: str) -> list[LedgerEntry]:
        return await for_request(self, request_id)

    # --- client keys ---------------------------------------------------------------------
    async def insert_key(self, record: KeyRecord) -> None:
        await self.execute(
            "INSERT INTO api_keys (id, key_hash, prefix, name, user, team, org, project, created_at,"
            " revoked_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.id, record.key_hash, record.prefix, record.name, record.user, record.team,
             record.org, record.project, record.created_at, record.revoked_at, record.expires_at),
        )

    async def load_keys(self) -> list[KeyRecord]:
        rows = await self.run(lambda: self.conn().execute("SELECT * FROM api_keys").fetchall())
        return [KeyRecord(**{k: row[k] for k in row.keys()}) for row in rows]

    async def data_version(self) -> int:
        """Changes whenever another connection (e.g. ``costproxy keys create``) commits."""
        return int(await self.run(lambda: self.conn().execute("PRAGMA data_version").fetchone()[0]))

    async def revoke_key(self, key_id: str, now: float | None = None) -> bool:
        changed = await self.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time() if now is None else now, key_id),
        )
        return changed > 0


def apply_migrations(conn: sqlite3.Connection, version_table: str,
                     migrations: Sequence[tuple[int, str]]) -> int:
    """Apply pending ``(version, script)`` migrations in order, each in its own transaction.

    ``version_table`` records what ran; each subsystem (ledger, budgets, alerts) keeps its own, so
    their migrations are versioned independently.  Returns the resulting version.
    """
    conn.execute(f"CREATE TABLE IF NOT EXISTS {version_table} (version INTEGER NOT NULL)")
    current = conn.execute(f"SELECT MAX(version) FROM {version_table}").fetchone()[0] or 0
    for version, script in migrations:
        if version <= current:
            continue
        conn.execute("BEGIN")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(f"INSERT INTO {version_table} (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = version
    return int(current)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending ledger/keys migrations; returns the resulting schema version."""
    return apply_migrations(conn, "schema_version", MIGRATIONS)


def sqlite_path(store_url: str) -> str:
    if store_url == "memory://":
        return ":memory:"
    if not store_url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {store_url}")
    return store_url[len("sqlite:///"):] or ":memory:"
