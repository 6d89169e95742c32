"""The SQLite ledger writer never drops a batch: bad rows are isolated, a full or locked file keeps
the rows queued (and the store unhealthy) until they can be written, exactly once."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import SqliteStore
from tests.polling import eventually


def entry(request_id: str, **changes: object) -> LedgerEntry:
    base = LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status="ok", http_status=200, user="alice", cost_nanos=1_000)
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(str(tmp_path / "ledger.sqlite3"), flush_interval=0.01)
    await opened.open()
    yield opened
    await opened.close()


async def rows(store: SqliteStore, table: str) -> list[sqlite3.Row]:
    return await store.run(lambda: store.conn().execute(f"SELECT * FROM {table} ORDER BY seq").fetchall())


async def test_a_bad_row_is_isolated_and_the_rest_of_its_batch_written(store: SqliteStore) -> None:
    seen: list[str] = []
    store.on_flushed.append(lambda batch: seen.extend(e.request_id for e in batch))
    bad = [entry("too-big", cost_nanos=2**70), entry("not-json", metadata={"tags": {1, 2}}),
           entry("surrogate", user="\ud800"), entry("negative-huge", prompt_tokens=-(2**64))]
    for n in range(10):
        store.append(entry(f"good-{n}"))
        if n < len(bad):
            store.append(bad[n])
    await eventually(lambda: store.backlog == 0 and len(seen) == 10)
    assert [r["request_id"] for r in await rows(store, "ledger")] == [f"good-{n}" for n in range(10)]
    quarantined = await rows(store, "ledger_quarantine")
    assert sorted(json.loads(r["body"])["request_id"] for r in quarantined) == sorted(e.request_id for e in bad)
    assert all(r["error"] for r in quarantined) and store.quarantined == 4
    assert store.healthy
    store.append(entry("after"))  # the writer is still alive
    await eventually(lambda: "after" in seen)


async def test_a_full_disk_keeps_the_rows_and_turns_unhealthy(store: SqliteStore) -> None:
    await store.run(lambda: store.conn().execute("PRAGMA journal_mode=DELETE"))  # pages count at once
    pages = (await store.run(lambda: store.conn().execute("PRAGMA page_count").fetchone()))[0]
    await store.run(lambda: store.conn().execute(f"PRAGMA max_page_count={pages}"))
    for n in range(300):
        store.append(entry(f"r-{n}", metadata={"pad": "x" * 200}))
    await eventually(lambda: not store.healthy)
    assert store.backlog == 300 and "full" in (store.last_error or "")
    await store.run(lambda: store.conn().execute("PRAGMA max_page_count=1073741823"))
    await eventually(lambda: store.healthy and store.backlog == 0)
    written = [r["request_id"] for r in await rows(store, "ledger")]
    assert written == [f"r-{n}" for n in range(300)]  # all of them, once, in order


async def test_a_locked_file_keeps_the_rows_until_the_lock_goes(store: SqliteStore) -> None:
    await store.run(lambda: store.conn().execute("PRAGMA busy_timeout=20"))
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        store.append(entry("waiting"))
        await eventually(lambda: not store.healthy)
        assert store.backlog == 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await eventually(lambda: store.healthy and store.backlog == 0)
    assert [r["request_id"] for r in await rows(store, "ledger")] == ["waiting"]


async def test_the_connection_keeps_a_small_page_cache(store: SqliteStore) -> None:
    """The page cache is bounded below SQLite's 2 MB default (memory per process, costproxy.store.sqlite)."""
    from costproxy.store.sqlite import PAGE_CACHE_KIB

    cache = await store.run(lambda: store.conn().execute("PRAGMA cache_size").fetchone()[0])
    assert cache == -PAGE_CACHE_KIB and PAGE_CACHE_KIB < 2000
