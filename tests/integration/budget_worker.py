"""One replica of the Redis budget tests, run as its own process (``python budget_worker.py …``).

``hammer``: wait for the ``test:go`` key, run N concurrent requests (reserve, a pause, then settle
a random cost up to the worst case or release), mark ``test:done:<tag>``, wait for every replica to
finish, let the ledger mirror catch up, close, and print a JSON summary on the last line.
``hold``: take COUNT reservations, print ``held``, and sleep (the test SIGKILLs it).
``outage``: take COUNT reservations, print ``reserved``, wait for a line on stdin (the test stops
Redis meanwhile), then settle them one by one, printing ``settled <request id> <cost>`` after each
``settle`` returned, and sleep (the test SIGKILLs it mid-way).
``replay``: open the replica (which replays its outbox), let the mirror catch up, print a JSON
summary (``waiting`` in the outbox before, ``pending`` after opening, ``mirrored``) and close.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import redis.asyncio as aioredis

from costproxy.budgets.config import parse_budget_config
from costproxy.budgets.definitions import ensure_budget_schema
from costproxy.budgets.redis import RedisBudgetAccounts, open_redis_accounts, redis_client
from costproxy.errors import BudgetExceeded
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import SqliteStore

PRINCIPALS = (Principal(key_id="k-alice", user="alice", team="core", org="acme"),
              Principal(key_id="k-bob", user="bob", team="core", org="acme"))


# The proxy's own client gives up on Redis after 1 s, to fail closed fast when Redis is down. These
# hammering workers test the money (no overspend, one ledger), not that latency: on a machine busy with other
# work, three workers' connections can take longer than 1 s to be accepted, and the run would end in
# StoreUnavailable rather than in an answer about the money. So they talk through a patient client.
PATIENT_TIMEOUT_S = 30.0


async def open_replica(url: str, db: str, config: str, *,
                       patient: bool = False) -> tuple[RedisBudgetAccounts, SqliteStore]:
    """``patient``: through a client of our own with long timeouts (close ``accounts.redis`` after)."""
    store = SqliteStore(db, flush_interval=0.01)
    await store.open()
    await ensure_budget_schema(store)
    redis = redis_client(url, timeout_s=PATIENT_TIMEOUT_S) if patient else None
    accounts = await open_redis_accounts(url, store, parse_budget_config(json.loads(config), "worker"), redis=redis)
    return accounts, store


async def one(accounts: RedisBudgetAccounts, rng: random.Random, name: str, reported: list[int]) -> str:
    principal = rng.choice(PRINCIPALS)
    worst = rng.randint(1_000, 40_000_000)
    await asyncio.sleep(rng.random() / 5)
    try:
        reservation = await accounts.reserve(name, principal, worst)
    except BudgetExceeded:
        return "refused"
    await asyncio.sleep(rng.random() / 50)
    if rng.random() < 0.2:
        await accounts.release(reservation, None)
        return "released"
    cost = worst if rng.random() > 0.8 else rng.randint(0, worst)
    reported.append(cost)
    entry = LedgerEntry(request_id=name, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                        status="ok", http_status=200, key_id=principal.key_id, user=principal.user,
                        team=principal.team, org=principal.org, cost_nanos=cost)
    await accounts.settle(reservation, entry)
    return "settled"


async def wait_key(client: aioredis.Redis, pattern: str, count: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(await client.keys(pattern)) >= count:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no {count} keys {pattern} after {seconds}s")


async def hammer(args: argparse.Namespace) -> None:
    accounts, store = await open_replica(args.url, args.db, args.config, patient=True)
    client = aioredis.Redis.from_url(args.url)
    print("ready", flush=True)
    prefix = json.loads(args.config).get("key_prefix", "cp")
    await wait_key(client, f"{prefix}:test:go", 1)
    rng = random.Random(args.seed)
    reported: list[int] = []
    outcomes = await asyncio.gather(*(one(accounts, rng, f"{args.tag}-{n}", reported) for n in range(args.n)))
    await client.set(f"{prefix}:test:done:{args.tag}", 1)
    await wait_key(client, f"{prefix}:test:done:*", args.replicas)
    await asyncio.sleep(0.2)
    await accounts.mirror.catch_up()
    await accounts.close()
    await accounts.redis.aclose(close_connection_pool=True)  # the patient client is ours to close
    rows = await store.query("SELECT COUNT(*), COALESCE(SUM(cost_nanos), 0) FROM ledger")
    await store.close()
    await client.aclose()
    print(json.dumps({"reported": reported, "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
                      "local_rows": rows[0][0], "local_sum": rows[0][1], "outbox": accounts.pending()}),
          flush=True)


async def hold(args: argparse.Namespace) -> None:
    accounts, _ = await open_replica(args.url, args.db, args.config)
    for n in range(args.count):
        await accounts.reserve(f"held-{n}", PRINCIPALS[0], args.amount)
    print("held", flush=True)
    await asyncio.sleep(3600)


async def outage(args: argparse.Namespace) -> None:
    accounts, _ = await open_replica(args.url, args.db, args.config)
    held = [await accounts.reserve(f"o-{n}", PRINCIPALS[0], args.amount) for n in range(args.count)]
    print("reserved", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    for n, reservation in enumerate(held):
        cost = args.amount - n
        entry = LedgerEntry(request_id=f"o-{n}", ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                            status="ok", http_status=200, key_id="k-alice", user="alice", team="core", org="acme",
                            cost_nanos=cost)
        await accounts.settle(reservation, entry)
        print(f"settled o-{n} {cost}", flush=True)
    print("done", flush=True)
    await asyncio.sleep(3600)


async def replay(args: argparse.Namespace) -> None:
    with contextlib.closing(sqlite3.connect(args.db)) as conn:
        waiting = conn.execute("SELECT COUNT(*) FROM budget_outbox").fetchone()[0]
    accounts, store = await open_replica(args.url, args.db, args.config)
    pending = accounts.pending()
    await accounts.mirror.catch_up()
    rows = await store.query("SELECT COUNT(*) FROM ledger")
    await accounts.close()
    await store.close()
    print(json.dumps({"waiting": waiting, "pending": pending, "mirrored": rows[0][0]}), flush=True)


ROLES = {"hammer": hammer, "hold": hold, "outage": outage, "replay": replay}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=tuple(ROLES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--tag", default="w")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--amount", type=int, default=1_000)
    args = parser.parse_args()
    asyncio.run(ROLES[args.role](args))


if __name__ == "__main__":
    main()
