"""The shared ledger streams are trimmed once every replica's mirror holds them (real Redis, db 13).

Several replicas (budget accounts, each with its own SQLite mirror) write and mirror the same
streams; the tests stop one replica's mirror, let another vanish past ``mirror_expiry_s`` with a
fake clock, add an organisation a replica has not discovered, and run trimmers concurrently with
writers — and check that no live replica's mirror ever misses an entry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from costproxy.budgets.accounts import Reservation
from costproxy.budgets.config import parse_budget_config
from costproxy.budgets.definitions import ensure_budget_schema
from costproxy.budgets.redis import RedisBudgetAccounts, open_redis_accounts
from costproxy.ledger.entry import LedgerEntry
from costproxy.ledger.trim import id_order
from costproxy.store.sqlite import SqliteStore
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401

pytestmark = pytest.mark.redis


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


Opener = Callable[..., Awaitable[RedisBudgetAccounts]]


@pytest.fixture
async def replicas(redis_space: RedisSpace, tmp_path: Path) -> AsyncIterator[Opener]:  # noqa: F811
    opened: list[tuple[RedisBudgetAccounts, SqliteStore]] = []

    async def make(name: str, clock: Callable[[], float] = time.time, **settings: Any) -> RedisBudgetAccounts:
        store = SqliteStore(str(tmp_path / f"{name}.sqlite3"), flush_interval=0.01)
        await store.open()
        await ensure_budget_schema(store)
        config = {"key_prefix": redis_space.prefix, "refresh_interval_s": 0.05, "ledger_trim_interval_s": 3600,
                  **settings}
        accounts = await open_redis_accounts(redis_space.url, store, parse_budget_config(config, "test"),
                                             clock=clock)
        accounts.keeper.grace_ms = 0  # entries written a moment ago may go (the grace has a test of its own)
        opened.append((accounts, store))
        return accounts

    yield make
    for accounts, store in opened:
        if store._conn is not None:
            await close(accounts)


async def close(accounts: RedisBudgetAccounts) -> None:
    await accounts.close()
    await accounts.store.close()


def entry(request_id: str, org: str = "acme") -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status="ok", http_status=200, user="alice", org=org, cost_nanos=7)


async def write(accounts: RedisBudgetAccounts, ids: list[str], org: str = "acme") -> None:
    for request_id in ids:
        await accounts.settle(Reservation(request_id, 0), entry(request_id, org))


def stream_ids(space: RedisSpace, org: str = "acme") -> list[str]:
    client = sync_redis.Redis.from_url(space.url)
    try:
        return [mid.decode() for mid, _ in client.xrange(f"{space.prefix}:{{{org}}}:ledger")]
    finally:
        client.close()


async def mirrored(accounts: RedisBudgetAccounts) -> list[str]:
    await accounts.mirror.catch_up()
    rows = await accounts.store.query("SELECT request_id FROM ledger ORDER BY seq")
    return [r["request_id"] for r in rows]


async def stop_mirror(accounts: RedisBudgetAccounts) -> None:
    """The replica stays registered and alive, but its mirror stops reading (a slow or stuck disk)."""
    task = accounts._tasks[1]
    assert task.get_name() == "costproxy-ledger-mirror"
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def round_of(accounts: RedisBudgetAccounts) -> dict[str, Any]:
    await accounts.refresh()
    await accounts.keeper.publish()
    return {t.partition: t for t in await accounts.keeper.trim(force=True) or []}


async def test_trimmed_only_below_what_every_mirror_holds(replicas: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    a, b, c = await replicas("a"), await replicas("b"), await replicas("c")
    await write(a, [f"r{i}" for i in range(10)])
    for replica in (a, b, c):
        assert await mirrored(replica) == [f"r{i}" for i in range(10)]
    await stop_mirror(c)  # c holds r0..r9; it has not read what follows
    await write(b, [f"s{i}" for i in range(5)])
    await mirrored(a)
    await mirrored(b)
    for replica in (a, b, c):  # c is alive: it publishes the position its mirror reached
        await replica.refresh()
        await replica.keeper.publish()
    trimmed = (await round_of(a))["acme"]
    assert trimmed.verdict == "trimmed" and trimmed.removed == 10 and trimmed.replica == c.keeper.replica
    left = stream_ids(redis_space)
    assert len(left) == 5  # exactly what c has not mirrored
    assert id_order(left[0]) > id_order(c.mirror.positions()["acme"])
    assert await mirrored(c) == [f"r{i}" for i in range(10)] + [f"s{i}" for i in range(5)]  # c catches up
    await c.keeper.publish()
    trimmed = (await round_of(b))["acme"]
    assert trimmed.removed == 5 and stream_ids(redis_space) == []
    await write(a, ["t0"])
    assert [await mirrored(r) for r in (a, b, c)] == [await mirrored(a)] * 3  # every mirror holds all 16


async def test_a_replica_gone_for_good_stops_holding_the_trim_after_the_expiry(
        replicas: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    clock = Clock()
    a = await replicas("a", clock, mirror_expiry_s=600)
    gone = await replicas("gone", clock, mirror_expiry_s=600)
    gone_id = gone.keeper.replica
    await write(a, ["r0", "r1"])
    await mirrored(gone)
    await gone.refresh()
    await gone.keeper.publish()
    await close(gone)  # its position (r1) stays registered
    await write(a, ["r2", "r3"])
    await mirrored(a)
    assert (await round_of(a))["acme"].removed == 2 and len(stream_ids(redis_space)) == 2  # r2, r3 wait for it
    clock.offset = 540  # the clock runs on real time too: a minute of margin for a slow machine
    assert (await round_of(a))["acme"].removed == 0  # not yet gone for good
    clock.offset = 601
    trimmed = (await round_of(a))["acme"]
    assert trimmed.removed == 2 and stream_ids(redis_space) == []
    client = sync_redis.Redis.from_url(redis_space.url)
    try:
        assert client.hget(f"{redis_space.prefix}:{{acme}}:ledger:mirrors", gone_id) is None
        assert client.hget(f"{redis_space.prefix}:replicas", gone_id) is None
    finally:
        client.close()
    back = await replicas("gone", clock, mirror_expiry_s=600)  # the same SQLite file: the same replica
    assert back.keeper.replica == gone_id
    assert (gone_id, "acme") in back.keeper.gaps  # it says which entries its mirror may lack
    assert await mirrored(back) == ["r0", "r1"]


async def test_a_live_replica_that_has_not_seen_a_new_org_holds_its_stream(
        replicas: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    a, b = await replicas("a"), await replicas("b")
    await a._register(["newco"])
    await write(a, ["n0", "n1"], org="newco")
    await mirrored(a)
    await a.keeper.publish()
    b.keeper.sources.clear()  # b is alive (heartbeat) but has published nothing for newco yet
    client = sync_redis.Redis.from_url(redis_space.url)
    try:
        client.hdel(f"{redis_space.prefix}:{{newco}}:ledger:mirrors", b.keeper.replica)
    finally:
        client.close()
    verdict = {t.partition: t for t in await a.keeper.trim(force=True) or []}["newco"]
    assert verdict.verdict == "wait" and verdict.replica == b.keeper.replica
    assert len(stream_ids(redis_space, "newco")) == 2
    assert await mirrored(b) == ["n0", "n1"]


async def test_young_entries_wait_for_the_grace(replicas: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    a = await replicas("a")
    a.keeper.grace_ms = 3_600_000
    await write(a, ["r0", "r1"])
    await mirrored(a)
    trimmed = (await round_of(a))["acme"]
    assert trimmed.removed == 0 and len(stream_ids(redis_space)) == 2


async def test_nobody_registered_keeps_everything(replicas: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    a = await replicas("a", refresh_interval_s=3600)  # no heartbeat re-registers it after the delete below
    await write(a, ["r0"])
    client = sync_redis.Redis.from_url(redis_space.url)
    try:
        client.delete(f"{redis_space.prefix}:{{acme}}:ledger:mirrors", f"{redis_space.prefix}:replicas")
    finally:
        client.close()
    verdict = {t.partition: t for t in await a.keeper.trim(force=True) or []}["acme"]
    assert verdict.verdict == "none" and len(stream_ids(redis_space)) == 1


async def test_concurrent_trimmers_and_writers_lose_nothing(replicas: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    group = [await replicas(name) for name in ("a", "b", "c")]
    expected = [f"w{n}-{i}" for n in range(3) for i in range(40)]

    async def writer(n: int) -> None:
        for i in range(40):
            await write(group[n], [f"w{n}-{i}"])
            if i % 5 == 0:
                await asyncio.sleep(0)

    async def trimmer(replica: RedisBudgetAccounts) -> None:
        for _ in range(15):
            await replica.keeper.publish()
            await replica.keeper.trim(force=True)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(writer(n) for n in range(3)), *(trimmer(r) for r in group))
    for replica in group:
        assert sorted(await mirrored(replica)) == sorted(expected)
    for replica in group:
        await replica.refresh()
        await replica.keeper.publish()
    await group[0].keeper.trim(force=True)
    assert stream_ids(redis_space) == []


async def test_one_trimmer_per_round(replicas: Opener) -> None:
    a, b = await replicas("a", ledger_trim_interval_s=30), await replicas("b", ledger_trim_interval_s=30)
    await write(a, ["r0"])
    await a.refresh()
    await a.keeper.redis.delete(a.keys.trim_lease)
    first = await a.keeper.trim()
    second = await b.keeper.trim()
    assert first is not None and [t.partition for t in first] == ["acme"]
    assert second is None  # b waits for the next round: the lease is a's
