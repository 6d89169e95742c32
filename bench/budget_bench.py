"""Proxy CPU per request spent on budgets: reserve + settle with a three-budget chain.

    python bench/budget_bench.py                      # SQLite (embedded default) and Redis
    python bench/budget_bench.py --store sqlite -n 50000
    python bench/budget_bench.py --store redis --redis redis://127.0.0.1:6379/13

For each store it runs ``n`` requests (``--concurrency`` at a time) through ``view`` (what the
pipeline asks before routing), ``reserve`` and ``settle`` with a ledger entry, and prints the
process CPU time per request (``time.process_time``: every thread of this process, so the SQLite
writer thread's batched ledger inserts and the Redis client's parsing are included; the Redis
server's own CPU is not).  The same loop against ``LedgerAccounts`` (no budgets: the ledger write
only) is the baseline; ``budget overhead`` is the difference.  Target (issue 3): at most 100 µs of
reserve + settle on the embedded default.  Each line also prints the median wall time of one
request's budget calls (``--concurrency 1``: what they add to a request's latency at one request at
a time).  Runs on uvloop when installed, as ``costproxy serve`` does.  Redis keys go under a random
prefix in the database of the URL and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from costproxy.budgets.accounts import Accounts, LedgerAccounts
from costproxy.budgets.config import parse_budget_config
from costproxy.budgets.definitions import BudgetStore, SqliteDefinitions, ensure_budget_schema
from costproxy.budgets.sqlite import SqliteBudgetAccounts
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import SqliteStore

PRINCIPAL = Principal(key_id="key-bench", user="alice", team="core", org="acme")
CHAIN = [{"id": "org", "scope_type": "org", "scope_id": "acme", "limit_usd": "1000000", "period": "monthly"},
         {"id": "team", "scope_type": "team", "scope_id": "core", "org": "acme", "limit_usd": "100000",
          "period": "weekly", "timezone": "Europe/Berlin"},
         {"id": "user", "scope_type": "user", "scope_id": "alice", "org": "acme", "limit_usd": "10000",
          "period": "daily", "timezone": "America/New_York"}]


def entry(request_id: str, cost: int) -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status="ok", http_status=200, key_id="key-bench", user="alice", team="core", org="acme",
                       requested_model="auto", served_model="gpt-4o-mini", provider="openai", prompt_tokens=96,
                       completion_tokens=48, cost_nanos=cost, baseline_nanos=cost * 10)


async def drive(accounts: Accounts, n: int, concurrency: int, with_view: bool) -> tuple[float, float]:
    """CPU seconds per request of (view +) reserve + settle over ``n`` requests, and the median wall
    time of one request's (view +) reserve + settle."""
    walls: list[float] = []

    async def worker(start: int, stop: int) -> None:
        for number in range(start, stop, concurrency):
            began = time.perf_counter()
            if with_view:
                await accounts.view(PRINCIPAL)
            reservation = await accounts.reserve(f"req-{number}", PRINCIPAL, 150_000)
            await accounts.settle(reservation, entry(f"req-{number}", 43_200))
            walls.append(time.perf_counter() - began)

    await asyncio.gather(*(worker(i, min(n, 1000)) for i in range(concurrency)))  # warm-up
    walls.clear()
    began = time.process_time()
    await asyncio.gather(*(worker(i, n) for i in range(concurrency)))
    return (time.process_time() - began) / n, statistics.median(walls)


async def open_store(directory: str, name: str) -> SqliteStore:
    store = SqliteStore(str(Path(directory) / name))
    await store.open()
    await ensure_budget_schema(store)
    return store


async def measure(open_accounts: Callable[[SqliteStore], Awaitable[Accounts]], directory: str, name: str,
                  n: int, concurrency: int, *, with_view: bool = False) -> tuple[float, float]:
    """(CPU seconds per request, median wall seconds of one request's budget calls)."""
    store = await open_store(directory, name)
    accounts = await open_accounts(store)
    try:
        per_request, wall = await drive(accounts, n, concurrency, with_view)
        began = time.process_time()
        await store.flush()  # ledger rows still queued belong to these requests
        return per_request + (time.process_time() - began) / n, wall
    finally:
        close = getattr(accounts, "close", None)
        if close is not None:
            await close()
        await store.close()


async def sqlite_accounts(store: SqliteStore) -> Accounts:
    config = parse_budget_config(CHAIN, "bench")
    budgets = BudgetStore(SqliteDefinitions(store), config.static)
    await budgets.load()
    accounts = SqliteBudgetAccounts(store, budgets)
    await accounts.open()
    return accounts


def redis_opener(url: str, prefix: str) -> Callable[[SqliteStore], Awaitable[Accounts]]:
    async def open_redis(store: SqliteStore) -> Accounts:
        from costproxy.budgets.redis import open_redis_accounts

        config = parse_budget_config({"key_prefix": prefix, "definitions": CHAIN}, "bench")
        return await open_redis_accounts(url, store, config)

    return open_redis


async def baseline(store: SqliteStore) -> Accounts:
    return LedgerAccounts(store)


def report(label: str, per_request: float, base: float, wall: float) -> None:
    print(f"{label:<40} {per_request * 1e6:8.1f} µs/request CPU   budget overhead "
          f"{(per_request - base) * 1e6:8.1f} µs/request   wall p50 {wall * 1e6:7.1f} µs")


async def run_store(label: str, opener: Callable[[SqliteStore], Awaitable[Accounts]], directory: str,
                    args: argparse.Namespace, base: float) -> None:
    per, wall = await measure(opener, directory, f"{label}.sqlite3", args.n, args.concurrency)
    report(f"{label}: reserve + settle", per, base, wall)
    per, wall = await measure(opener, directory, f"{label}-view.sqlite3", args.n, args.concurrency, with_view=True)
    report(f"{label}: view + reserve + settle", per, base, wall)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "redis", "both"), default="both")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50,
                        help="requests in flight (default 50); 1: one at a time, as the added latency is measured")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        base, _ = await measure(baseline, directory, "base.sqlite3", args.n, args.concurrency)
        print(f"chain: org (monthly) -> team (weekly) -> user (daily); n={args.n}, "
              f"concurrency={args.concurrency}")
        print(f"{'no budgets (ledger write only)':<40} {base * 1e6:8.1f} µs/request CPU")
        if args.store in ("sqlite", "both"):
            await run_store("sqlite", sqlite_accounts, directory, args, base)
        if args.store in ("redis", "both"):
            prefix = "bench" + uuid.uuid4().hex[:8]
            try:
                await run_store("redis", redis_opener(args.redis, prefix), directory, args, base)
            finally:
                await delete_prefix(args.redis, prefix)


async def delete_prefix(url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start:start + 500])
    await client.aclose()


if __name__ == "__main__":
    try:  # the event loop ``costproxy serve`` runs on
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
