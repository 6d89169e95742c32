"""The PostgreSQL ledger (``store.ledger_url: postgresql://…``): every replica writes it, reports read it.

Writes never happen on the request path.  A shipper (``ledger/shipper.py``) copies entries from
where they are already durable — this replica's SQLite ledger (SQLite store) or the shared Redis
streams (Redis store) — in batches, and ``write`` commits one batch together with the position
it reached (``costproxy_ledger_origins``) in one transaction.  Each row carries its ``origin``
(where it came from) and ``origin_id`` (its id there), unique together, so a batch written twice
(a retry after a lost reply, two shippers at once) is stored once.  A row PostgreSQL refuses for
its content (an integer beyond 64 bits, a NUL character, a lone surrogate) goes whole, with the
error, to ``costproxy_ledger_quarantine`` while the rest of its batch is written; any other error
leaves the batch where it is durable, to be retried.

Reads: ``query`` takes the portable report SQL of ``ledger/reader.py`` (``?`` placeholders) and
returns dict rows with integer sums.  Connections come from a small pool (``psycopg_pool``);
errors become ``StoreUnavailable`` (HTTP 503), naming the server without its password.  Reports
refuse (``stale``, set by the shipper) while entries wait that could not be written: never
figures that silently leave them out.

Every call is bounded by ``timeout_s`` (``store.ledger_timeout_s``) on the client side: a server
that is reachable but does not answer (frozen, partitioned) has the connection's socket shut down
when the bound passes, so the call fails as unavailable and the pool drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from costproxy.errors import StoreUnavailable
from costproxy.ledger.entry import COLUMNS, LedgerEntry
from costproxy.ledger.pg_schema import LATEST, MigrationLockHeld, current_version, migrate
from costproxy.ledger.reader import POSTGRES, Dialect, for_request, recent

log = structlog.get_logger("costproxy.ledger")

_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)
_TYPES = {"ts_ms": "BIGINT", "http_status": "INTEGER", "usage_reported": "BOOLEAN", "stream": "BOOLEAN",
          "metadata": "JSONB", **{c: "BIGINT" for c in COLUMNS if c.endswith(("_tokens", "_nanos", "_ms"))}}
# A batch arrives by COPY into a per-session staging table (emptied at commit), then moves with one
# INSERT … SELECT: an order of magnitude less client CPU than a row-by-row INSERT.
STAGE = ("CREATE TEMP TABLE IF NOT EXISTS costproxy_ledger_in (n INTEGER NOT NULL, origin TEXT, origin_id TEXT, "
         + ", ".join(f'"{c}" {_TYPES.get(c, "TEXT")}' for c in COLUMNS) + ") ON COMMIT DELETE ROWS")
COPY_IN = f"COPY costproxy_ledger_in (n, origin, origin_id, {_QUOTED}) FROM STDIN"
MOVE = (f"INSERT INTO costproxy_ledger (origin, origin_id, {_QUOTED}) SELECT origin, origin_id, {_QUOTED}"
        " FROM costproxy_ledger_in ORDER BY n ON CONFLICT (origin, origin_id) DO NOTHING")
INSERT = (f"INSERT INTO costproxy_ledger (origin, origin_id, {_QUOTED}) VALUES (%s, %s"
          + ", %s" * len(COLUMNS) + ") ON CONFLICT (origin, origin_id) DO NOTHING")
QUARANTINE = ("INSERT INTO costproxy_ledger_quarantine (origin, origin_id, request_id, error, body)"
              " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (origin, origin_id) DO NOTHING")
ADVANCE = ("INSERT INTO costproxy_ledger_origins (origin, pos_major, pos_minor) VALUES (%s, %s, %s)"
           " ON CONFLICT (origin) DO UPDATE SET pos_major = excluded.pos_major, pos_minor = excluded.pos_minor,"
           " updated_at = now() WHERE (costproxy_ledger_origins.pos_major, costproxy_ledger_origins.pos_minor)"
           " < (excluded.pos_major, excluded.pos_minor)")
# A row refused for its content, not for the state of the server.
ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, UnicodeEncodeError, OverflowError, TypeError, ValueError)
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, OSError)

Position = tuple[int, int]
Row = tuple[str, LedgerEntry | str]  # (origin_id, the entry — or the raw text that is not one)


def redacted(url: str) -> str:
    """The URL fit for logs and errors: never the password."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def portable(sql: str) -> str:
    """Report SQL with ``?`` placeholders as psycopg expects it (``%s``; a literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _values(origin: str, origin_id: str, entry: LedgerEntry) -> list[Any]:
    values: list[Any] = [origin, origin_id]
    for name in COLUMNS:
        value = getattr(entry, name)
        values.append(Jsonb(value or {}) if name == "metadata" else value)
    return values


def _body(item: LedgerEntry | str) -> tuple[str | None, str]:
    if isinstance(item, str):
        return None, json.dumps({"raw": item}, ensure_ascii=True)
    data = {name: getattr(item, name) for name in COLUMNS}
    request_id = item.request_id if isinstance(item.request_id, str) and item.request_id.isascii() else None
    if request_id is not None and "\x00" in request_id:
        request_id = None
    return request_id, json.dumps(data, default=repr, ensure_ascii=True, sort_keys=True)


def _hang_up(conn: psycopg.AsyncConnection[Any], fired: list[bool]) -> None:
    """Shut down the connection's socket: what waits on it fails at once (the server did not answer)."""
    fired.append(True)
    try:
        sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
    except (OSError, psycopg.Error):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def _ints(row: dict[str, Any]) -> dict[str, Any]:
    """Sums of bigints arrive as ``numeric``: they are whole numbers, make them ``int`` again."""
    return {k: int(v) if isinstance(v, Decimal) else v for k, v in row.items()}


class PostgresLedger:
    dialect: Dialect = POSTGRES

    def __init__(self, url: str, *, max_connections: int = 4, timeout_s: float = 15.0) -> None:
        self.url = url
        self.label = redacted(url)
        self.timeout_s = timeout_s
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            url, min_size=0, max_size=max_connections, open=False, timeout=timeout_s,
            kwargs={"connect_timeout": max(1, int(timeout_s)), "autocommit": True})
        self.schema_ready = False
        self.quarantined = 0
        self.stale: str | None = None  # why reports would be stale (set by the shipper), or None

    @contextlib.asynccontextmanager
    async def _connection(self, bounded: bool = True) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; ``bounded``: hung up on if the work with it takes over ``timeout_s``."""
        async with self.pool.connection() as conn:
            if not bounded:
                yield conn
                return
            fired: list[bool] = []
            timer = asyncio.get_running_loop().call_later(self.timeout_s, _hang_up, conn, fired)
            try:
                yield conn
            except (psycopg.Error, OSError):
                if fired:
                    raise StoreUnavailable(f"PostgreSQL ledger ({self.label}) is unavailable: no answer within "
                                           f"{self.timeout_s:g} s (store.ledger_timeout_s)") from None
                raise
            finally:
                timer.cancel()

    async def open(self) -> None:
        """Open the pool (connections are made on demand) and bring the schema up to date if the
        server answers; if not, ``ensure_schema`` is retried by the shipper."""
        await self.pool.open(wait=False)
        try:
            await self.ensure_schema()
        except StoreUnavailable as exc:
            log.error("ledger_postgres_unavailable_at_start", error=exc.message)

    async def close(self) -> None:
        await self.pool.close()

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"PostgreSQL ledger ({self.label}) is unavailable: {str(exc).strip()[:300]}")

    async def ensure_schema(self) -> None:
        """Bring the schema to ``LATEST`` once per process: nothing to wait for when it is already
        there; else apply the pending migrations under their advisory lock, waiting for it at most
        ``timeout_s`` (``StoreUnavailable`` naming the holder; the shipper tries again later)."""
        if self.schema_ready:
            return
        try:
            async with self._connection() as conn:
                current = await current_version(conn)
            if current == LATEST:
                self.schema_ready = True
                return
            async with self._connection(bounded=False) as conn:
                applied = await migrate(conn, lock_wait_s=self.timeout_s, on_wait=self._waiting)
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        except MigrationLockHeld as exc:
            raise StoreUnavailable(f"PostgreSQL ledger ({self.label}): {exc}") from None
        if applied:
            log.info("ledger_postgres_migrated", versions=[m.version for m in applied], server=self.label)
        self.schema_ready = True

    def _waiting(self, holder: str) -> None:
        log.warning("ledger_postgres_waiting_for_migration_lock", server=self.label, holder=holder,
                    wait_s=self.timeout_s)

    async def version(self) -> int:
        try:
            async with self._connection() as conn:
                return await current_version(conn)
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None

    # --- reads ---------------------------------------------------------------------------------
    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """A report's rows: refused (``StoreUnavailable``) while entries wait that could not be written."""
        if self.stale is not None:
            raise StoreUnavailable(f"PostgreSQL ledger ({self.label}) is behind: entries are waiting that could "
                                   f"not be written to it, so reports would leave them out ({self.stale[:300]})")
        return await self.fetch(sql, params)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows as they are (for the shipper: no staleness check)."""
        try:
            async with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
                await cursor.execute(portable(sql), list(params))
                return [_ints(row) for row in await cursor.fetchall()]
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        except psycopg.errors.UndefinedTable:
            raise StoreUnavailable(f"PostgreSQL ledger ({self.label}) has no ledger tables yet: run "
                                   "`costproxy ledger migrate` (or start costproxy, which migrates)") from None

    async def recent_entries(self, limit: int = 50) -> list[LedgerEntry]:
        return await recent(self, limit)

    async def entries_for(self, request_id: str) -> list[LedgerEntry]:
        return await for_request(self, request_id)

    async def positions(self, prefix: str) -> dict[str, Position]:
        """Where each origin starting with ``prefix`` has been written up to."""
        rows = await self.fetch("SELECT l.origin, l.pos_major, l.pos_minor FROM costproxy_ledger_origins l"
                                " WHERE substr(l.origin, 1, ?) = ?", [len(prefix), prefix])
        return {r["origin"]: (int(r["pos_major"]), int(r["pos_minor"])) for r in rows}

    async def mark_deployment(self, prefix: str, deployment: str, fresh_s: float) -> list[str]:
        """Note that ``deployment`` (an id kept in its Redis) ships the streams under ``prefix``, and
        return the other deployments that did so within ``fresh_s``: they share its origins (the
        stream keys), so entries with the same stream id would be dropped as already written."""
        marks = f"{prefix}:deployment:"
        try:
            async with self._connection() as conn, conn.cursor() as cursor:
                await cursor.execute("INSERT INTO costproxy_ledger_origins (origin, pos_major, pos_minor)"
                                     " VALUES (%s, 0, 0) ON CONFLICT (origin) DO UPDATE SET updated_at = now()",
                                     [marks + deployment])
                await cursor.execute("SELECT origin FROM costproxy_ledger_origins WHERE substr(origin, 1, %s) = %s"
                                     " AND origin <> %s AND updated_at > now() - make_interval(secs => %s)",
                                     [len(marks), marks, marks + deployment, fresh_s])
                return [str(r[0])[len(marks):] for r in await cursor.fetchall()]
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None

    # --- writes --------------------------------------------------------------------------------
    async def write(self, origin: str, rows: Sequence[Row], position: Position) -> int:
        """Commit ``rows`` and the origin's new ``position`` in one transaction; returns how many
        rows were new.  ``StoreUnavailable`` when the server cannot be written (retry later)."""
        await self.ensure_schema()
        try:
            async with self._connection() as conn:
                try:
                    return await self._write(conn, origin, rows, position, isolate=False)
                except ROW_ERRORS:
                    return await self._write(conn, origin, rows, position, isolate=True)
        except UNAVAILABLE as exc:
            raise self._unavailable(exc) from None
        except psycopg.errors.UndefinedTable as exc:  # a table dropped under us: keep the rows, say why
            raise await self._schema_changed(exc) from None
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None

    async def _schema_changed(self, exc: BaseException) -> StoreUnavailable:
        """A table this replica migrated to is gone: most likely `ledger rollback` while it ran."""
        try:
            now = await self.version()
        except StoreUnavailable:
            return self._unavailable(exc)
        if now >= LATEST:
            return self._unavailable(exc)
        return StoreUnavailable(f"PostgreSQL ledger ({self.label}) is at schema version {now}, but this replica "
                                f"migrated it to {LATEST} when it started (rolled back while it ran?): entries wait "
                                "unshipped; stop the replica and start it again with the costproxy version that "
                                f"matches the schema, or run `costproxy ledger migrate` ({str(exc).strip()[:200]})")

    async def _write(self, conn: psycopg.AsyncConnection[Any], origin: str, rows: Sequence[Row],
                     position: Position, *, isolate: bool) -> int:
        written = 0
        async with conn.transaction(), conn.cursor() as cursor:
            if not isolate:
                await cursor.execute(STAGE)
                async with cursor.copy(COPY_IN) as copy:
                    for n, (oid, item) in enumerate(rows):
                        if isinstance(item, LedgerEntry):
                            await copy.write_row([n, *_values(origin, oid, item)])
                await cursor.execute(MOVE)
                written = cursor.rowcount
                for oid, item in rows:
                    if isinstance(item, str):
                        await self._quarantine(cursor, origin, oid, item, ValueError("not a ledger entry"))
            else:
                for oid, item in rows:
                    written += await self._insert_one(conn, cursor, origin, oid, item)
            await cursor.execute(ADVANCE, [origin, *position])
        return max(written, 0)

    async def _insert_one(self, conn: psycopg.AsyncConnection[Any], cursor: psycopg.AsyncCursor[Any], origin: str,
                          oid: str, item: LedgerEntry | str) -> int:
        if isinstance(item, LedgerEntry):
            try:
                async with conn.transaction():  # a savepoint: a refused row leaves the batch intact
                    await cursor.execute(INSERT, _values(origin, oid, item))
                    return max(cursor.rowcount, 0)
            except ROW_ERRORS as exc:
                await self._quarantine(cursor, origin, oid, item, exc)
                return 0
        await self._quarantine(cursor, origin, oid, item, ValueError("not a ledger entry"))
        return 0

    async def _quarantine(self, cursor: psycopg.AsyncCursor[Any], origin: str, oid: str, item: LedgerEntry | str,
                          error: BaseException) -> None:
        request_id, body = _body(item)
        await cursor.execute(QUARANTINE, [origin, oid, request_id,
                                          f"{type(error).__name__}: {error}"[:500], body])
        self.quarantined += 1
        log.error("ledger_postgres_row_quarantined", origin=origin, origin_id=oid, error=str(error)[:200])
