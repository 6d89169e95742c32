"""Versioned migrations of the PostgreSQL ledger, each with its rollback.

Every migration has an ``up`` and a ``down`` script and runs in one transaction together with the
row that records it in ``costproxy_ledger_schema``, so a version is either fully applied or not
at all (PostgreSQL's DDL is transactional).  ``migrate`` and ``rollback`` hold an advisory lock,
so replicas starting at once (each migrates on start) never run a script twice.

``costproxy ledger status | migrate [--to N] | rollback [--to N] [--yes]``: a ``down`` that drops
a table with ledger rows (``destroys_data``) runs only with ``--yes``.  A database whose version
is newer than this costproxy knows is refused (``SchemaTooNew``): roll it back with the newer
version's ``costproxy ledger rollback --to N`` first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from costproxy.records import frozen

if TYPE_CHECKING:
    from psycopg import AsyncConnection

VERSION_TABLE = "costproxy_ledger_schema"
LOCK_KEY = 0x636F737470726F78  # "costprox": the advisory lock of ledger migrations


class SchemaTooNew(RuntimeError):
    pass


class MigrationLockHeld(RuntimeError):
    """Another session held the migration lock for longer than the caller would wait."""


@frozen
class Migration:
    version: int
    name: str
    up: str
    down: str
    destroys_data: bool = False


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ledger entries and the positions of their writers", up="""
        CREATE TABLE costproxy_ledger (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            origin TEXT NOT NULL, origin_id TEXT NOT NULL,
            request_id TEXT NOT NULL, ts_ms BIGINT NOT NULL, endpoint TEXT NOT NULL,
            status TEXT NOT NULL, http_status INTEGER NOT NULL,
            key_id TEXT, "user" TEXT, team TEXT, org TEXT, project TEXT,
            requested_model TEXT, served_model TEXT, provider TEXT, decision_id TEXT,
            prompt_tokens BIGINT NOT NULL, completion_tokens BIGINT NOT NULL, cached_tokens BIGINT NOT NULL,
            cache_write_tokens BIGINT NOT NULL DEFAULT 0, cache_write_1h_tokens BIGINT NOT NULL DEFAULT 0,
            cost_nanos BIGINT NOT NULL, baseline_nanos BIGINT NOT NULL,
            usage_reported BOOLEAN NOT NULL, stream BOOLEAN NOT NULL, latency_ms BIGINT NOT NULL,
            error_code TEXT, task_type TEXT, correlation_id TEXT, tenant TEXT, source TEXT NOT NULL,
            metadata JSONB NOT NULL,
            written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            UNIQUE (origin, origin_id)
        );
        CREATE INDEX costproxy_ledger_ts ON costproxy_ledger (ts_ms);
        CREATE INDEX costproxy_ledger_request ON costproxy_ledger (request_id);
        CREATE TABLE costproxy_ledger_origins (
            origin TEXT PRIMARY KEY, pos_major BIGINT NOT NULL, pos_minor BIGINT NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        );
    """, down="""
        DROP TABLE costproxy_ledger_origins;
        DROP TABLE costproxy_ledger;
    """, destroys_data=True),
    Migration(2, "indexes for the console and the key list", up="""
        CREATE INDEX costproxy_ledger_key_ts ON costproxy_ledger (key_id, ts_ms);
        CREATE INDEX costproxy_ledger_decision ON costproxy_ledger (decision_id) WHERE decision_id IS NOT NULL;
        CREATE INDEX costproxy_ledger_budgets ON costproxy_ledger USING GIN ((metadata -> 'budgets'));
    """, down="""
        DROP INDEX costproxy_ledger_budgets;
        DROP INDEX costproxy_ledger_decision;
        DROP INDEX costproxy_ledger_key_ts;
    """),
    Migration(3, "rows PostgreSQL refused for their content, kept whole", up="""
        CREATE TABLE costproxy_ledger_quarantine (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            origin TEXT NOT NULL, origin_id TEXT NOT NULL, request_id TEXT,
            error TEXT NOT NULL, body TEXT NOT NULL, written_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            UNIQUE (origin, origin_id)
        );
    """, down="""
        DROP TABLE costproxy_ledger_quarantine;
    """, destroys_data=True),
)
LATEST = MIGRATIONS[-1].version


async def current_version(conn: AsyncConnection[Any]) -> int:
    found = await (await conn.execute("SELECT to_regclass(%s) IS NOT NULL", [VERSION_TABLE])).fetchone()
    if found is None or not found[0]:
        return 0
    row = await (await conn.execute(f"SELECT COALESCE(MAX(version), 0) FROM {VERSION_TABLE}")).fetchone()
    return int(row[0]) if row is not None else 0


async def _unlock(conn: AsyncConnection[Any]) -> None:
    await conn.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


async def lock_holder(conn: AsyncConnection[Any]) -> str:
    """Who holds the migration lock, as PostgreSQL tells it (pid, application, client, since)."""
    row = await (await conn.execute(
        "SELECT a.pid, a.application_name, a.client_addr::text, a.backend_start, a.state, left(a.query, 80)"
        " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted"
        " AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 1 LIMIT 1",
        [LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF])).fetchone()
    if row is None:
        return "unknown (not visible to this role)"
    pid, app, client, since, state, query = row
    return (f"pid {pid} ({app or 'no application name'}, from {client or 'a local socket'}, connected since "
            f"{since:%Y-%m-%d %H:%M:%S %Z}, {state}: {query!r})")


async def _lock(conn: AsyncConnection[Any], wait_s: float | None, on_wait: Callable[[str], None] | None) -> None:
    """Take the migration lock; while another session holds it, say who (``on_wait``, once) and wait
    at most ``wait_s`` (None: as long as it takes), then ``MigrationLockHeld``."""
    deadline = None if wait_s is None else time.monotonic() + wait_s
    holder: str | None = None
    while True:
        got = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])).fetchone()
        if got is not None and got[0]:
            return
        if holder is None:
            holder = await lock_holder(conn)
            if on_wait is not None:
                on_wait(holder)
        if deadline is not None and time.monotonic() >= deadline:
            raise MigrationLockHeld(f"the ledger migration lock has been held for over {wait_s:g} s by {holder}; "
                                    "the schema is migrated once it is released")
        await asyncio.sleep(0.25)


async def migrate(conn: AsyncConnection[Any], to: int | None = None, *, lock_wait_s: float | None = None,
                  on_wait: Callable[[str], None] | None = None) -> list[Migration]:
    """Apply the migrations above the current version up to ``to`` (default: the latest).  The lock
    is taken only when there is something to apply (``lock_wait_s``, ``on_wait``: see ``_lock``)."""
    target = LATEST if to is None else to
    if not 0 <= target <= LATEST:
        raise ValueError(f"--to must be between 0 and {LATEST} (got {target})")
    if await current_version(conn) == target:
        return []
    await _lock(conn, lock_wait_s, on_wait)
    try:
        current = await current_version(conn)
        if current > LATEST:
            raise SchemaTooNew(f"the ledger database is at version {current}, newer than this costproxy knows "
                               f"({LATEST}): run the newer version's `costproxy ledger rollback --to {LATEST}` first")
        applied = []
        for migration in MIGRATIONS:
            if current < migration.version <= target:
                async with conn.transaction():
                    await conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY,"
                                       " name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
                    await conn.execute(migration.up)
                    await conn.execute(f"INSERT INTO {VERSION_TABLE} (version, name) VALUES (%s, %s)",
                                       [migration.version, migration.name])
                applied.append(migration)
        return applied
    finally:
        await _unlock(conn)


async def rollback(conn: AsyncConnection[Any], to: int, *, allow_data_loss: bool = False,
                   on_wait: Callable[[str], None] | None = None) -> list[Migration]:
    """Run the ``down`` scripts from the current version down to ``to`` (newest first)."""
    if not 0 <= to <= LATEST:
        raise ValueError(f"--to must be between 0 and {LATEST} (got {to})")
    await _lock(conn, None, on_wait)
    try:
        current = await current_version(conn)
        if current > LATEST:
            raise SchemaTooNew(f"the ledger database is at version {current}: only a costproxy that knows it "
                               "can roll it back")
        steps = [m for m in reversed(MIGRATIONS) if to < m.version <= current]
        losing = [m for m in steps if m.destroys_data]
        if losing and not allow_data_loss:
            raise PermissionError("rolling back " + ", ".join(f"version {m.version} ({m.name})" for m in losing)
                                  + " drops ledger data; stop every replica first, then add --yes to do it anyway")
        for migration in steps:
            async with conn.transaction():
                await conn.execute(migration.down)
                await conn.execute(f"DELETE FROM {VERSION_TABLE} WHERE version = %s", [migration.version])
        return steps
    finally:
        await _unlock(conn)
