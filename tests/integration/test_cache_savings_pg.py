"""Response-cache hits in the savings report when the ledger is PostgreSQL (same figures as SQLite)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from costproxy.ledger.entry import LedgerEntry
from costproxy.ledger.postgres import PostgresLedger
from costproxy.ledger.reader import spend_by
from costproxy.store.sqlite import SqliteStore
from tests.conftest_pg import pg_server, pg_url  # noqa: F401


def entry(request_id: str, status: str, cost: int, baseline: int, **metadata: Any) -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status=status, http_status=200, served_model="big", cost_nanos=cost,
                       baseline_nanos=baseline, metadata=metadata)


ENTRIES = [entry("miss", "ok", 700, 1000), entry("hit-1", "cache_hit", 0, 1000, cache={"saved_nanos": 700}),
           entry("hit-2", "cache_hit", 0, 1000, cache={"saved_nanos": 700}, rules=["cache"])]


async def test_hits_and_what_they_saved_read_the_same_from_both_ledgers(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    postgres = PostgresLedger(pg_url)
    await postgres.open()
    local = SqliteStore(str(tmp_path / "ledger.sqlite3"))
    await local.open()
    try:
        await postgres.write("test", [(str(i), e) for i, e in enumerate(ENTRIES)], (len(ENTRIES), 0))
        for e in ENTRIES:
            local.append(e)
        answers = []
        for reader in (postgres, local):
            [row] = await spend_by(reader, "model", 0)
            answers.append((row["n"], row["cost"], row["base"], row["hits"], row["cache_saved"]))
        assert answers[0] == answers[1] == (3, 700, 3000, 2, 1400)
    finally:
        await postgres.close()
        await local.close()
