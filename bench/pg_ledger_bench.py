"""The PostgreSQL ledger: how fast the shipper copies entries, and how fast reports read them.

    python3 bench/pg_ledger_bench.py [--entries 100000] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

Creates a database of its own (dropped at the end), appends ``--entries`` ledger entries to a
SQLite ledger, ships them with ``LocalShipper`` (batches of 500) and prints entries per second,
then times the console overview and a 30-day spend by team on PostgreSQL and, for comparison,
on the same entries in SQLite.  Loopback only; figures vary with what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costproxy.budgets.definitions import ensure_budget_schema
from costproxy.ledger import analytics
from costproxy.ledger.entry import LedgerEntry
from costproxy.ledger.postgres import PostgresLedger
from costproxy.ledger.reader import LedgerReader
from costproxy.ledger.shipper import LocalShipper
from costproxy.store.sqlite import SqliteStore

DAY_MS = 86_400_000


def entries(count: int, now_ms: int) -> list[LedgerEntry]:
    rng = random.Random(7)
    models = ["gpt-4o-mini", "gpt-4o", "claude-haiku-4-5", "gemini-2.5-flash"]
    found = []
    for i in range(count):
        user = rng.randrange(400)
        found.append(LedgerEntry(
            request_id=f"req_{i:08d}", ts_ms=now_ms - rng.randrange(30 * DAY_MS), endpoint="chat/completions",
            status="ok" if rng.random() > 0.03 else "refused", http_status=200, key_id=f"key_{user}",
            user=f"user{user}", team=f"team{user % 12}", org="acme", requested_model=rng.choice(["auto", *models]),
            served_model=rng.choice(models), provider="openai", prompt_tokens=rng.randrange(50, 3000),
            completion_tokens=rng.randrange(10, 800), cost_nanos=rng.randrange(10_000, 9_000_000),
            baseline_nanos=rng.randrange(9_000_000, 20_000_000), latency_ms=rng.randrange(100, 4000),
            metadata={"rules": ["cheap-classify"]} if rng.random() < 0.2 else {}))
    return found


async def timed(label: str, reader: LedgerReader, now_ms: int, runs: int = 7) -> None:
    month = analytics.LedgerFilter(start_ms=now_ms - 30 * DAY_MS)
    overview, spend = [], []
    for _ in range(runs):
        started = time.perf_counter()
        await analytics.overview_sums(reader, month, now_ms - DAY_MS, now_ms - 7 * DAY_MS)
        await analytics.auto_share(reader, month)
        overview.append(time.perf_counter() - started)
        started = time.perf_counter()
        await analytics.spend_buckets(reader, "team", month)
        spend.append(time.perf_counter() - started)
    print(f"{label:10} overview p50 {statistics.median(overview) * 1000:7.1f} ms   "
          f"30-day spend by team per 15 min p50 {statistics.median(spend) * 1000:7.1f} ms")


async def main(count: int, admin_url: str) -> None:
    name = "costproxy_bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    now_ms = int(time.time() * 1000)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = SqliteStore(str(Path(tmp) / "bench.sqlite3"), batch_size=2000)
            await local.open()
            await ensure_budget_schema(local)
            for entry in entries(count, now_ms):
                local.append(entry)
            await local.flush()
            ledger = PostgresLedger(url)
            await ledger.open()
            shipper = LocalShipper(local, ledger)
            started = time.perf_counter()
            await shipper.drain(timeout_s=3600)
            elapsed = time.perf_counter() - started
            print(f"shipped {shipper.shipped} entries to PostgreSQL in {elapsed:.2f} s: "
                  f"{shipper.shipped / elapsed:,.0f} entries/s (batches of {shipper.batch})")
            await timed("postgres", ledger, now_ms)
            await timed("sqlite", local, now_ms)
            await ledger.close()
            await local.close()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    options = parser.parse_args()
    asyncio.run(main(options.entries, options.admin_url))
