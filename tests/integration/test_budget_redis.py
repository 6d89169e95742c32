"""Redis budget accounts against a real Redis (database 13): atomic chains, three replica processes,
SIGKILL reclaim, roll-over, idempotent settles, outages, definitions shared between replicas."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis as sync_redis

from costproxy.budgets.book import BudgetEvent, BudgetReservation
from costproxy.budgets.config import parse_budget_config
from costproxy.budgets.definitions import ensure_budget_schema
from costproxy.budgets.model import BudgetSpec
from costproxy.budgets.redis import RedisBudgetAccounts, open_redis_accounts
from costproxy.errors import BudgetExceeded, StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import SqliteStore
from tests.conftest_redis import RedisServer, RedisSpace, own_redis, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis

USD = 1_000_000_000
ALICE = Principal(key_id="k-alice", user="alice", team="core", org="acme")
WORKER = Path(__file__).with_name("budget_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def section(*definitions: dict[str, Any], ttl: float = 900, refresh: float = 0.1) -> dict[str, Any]:
    return {"reservation_ttl_s": ttl, "refresh_interval_s": refresh, "definitions": list(definitions)}


def budget(budget_id: str, scope_type: str, scope_id: str, usd: str, **extra: Any) -> dict[str, Any]:
    item = {"id": budget_id, "scope_type": scope_type, "scope_id": scope_id, "limit_usd": usd, **extra}
    if scope_type != "org":
        item.setdefault("org", "acme")
    return item


CHAIN = (budget("org", "org", "acme", "3", period="monthly"), budget("team", "team", "core", "2", period="weekly"),
         budget("alice", "user", "alice", "1", period="daily", timezone="Europe/Berlin"))


def entry(request_id: str, cost: int, principal: Principal = ALICE) -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status="ok", http_status=200, key_id=principal.key_id, user=principal.user,
                       team=principal.team, org=principal.org, cost_nanos=cost)


class FakeClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


Opener = Callable[..., Awaitable[RedisBudgetAccounts]]


@pytest.fixture
async def replica(redis_space: RedisSpace, tmp_path: Path) -> AsyncIterator[Opener]:  # noqa: F811
    opened: list[tuple[RedisBudgetAccounts, SqliteStore]] = []

    async def make(config: dict[str, Any], *, url: str | None = None, clock: Any = time.time,
                   name: str | None = None) -> RedisBudgetAccounts:
        store = SqliteStore(str(tmp_path / (name or f"replica{len(opened)}.sqlite3")), flush_interval=0.01)
        await store.open()
        await ensure_budget_schema(store)
        config = {**config, "key_prefix": redis_space.prefix}
        accounts = await open_redis_accounts(url or redis_space.url, store, parse_budget_config(config, "test"),
                                             clock=clock)
        opened.append((accounts, store))
        return accounts

    yield make
    for accounts, store in opened:
        if store._conn is not None:  # not closed by the test itself
            await accounts.close()
            await store.close()


def counters(space: RedisSpace, url: str | None = None) -> dict[str, dict[str, int]]:
    """Every budget counter of the test, by key without the prefix (``{acme}:b:team:2026-W48``)."""
    client = sync_redis.Redis.from_url(url or space.url)
    try:
        found = {}
        for key in client.scan_iter(match=f"{space.prefix}:*:b:*"):
            fields = client.hgetall(key)
            found[key.decode()[len(space.prefix) + 1:]] = {k.decode(): int(v) for k, v in fields.items()}
        return found
    finally:
        client.close()


def stream_entries(space: RedisSpace, url: str | None = None, partition: str = "acme") -> list[LedgerEntry]:
    client = sync_redis.Redis.from_url(url or space.url)
    try:
        return [LedgerEntry(**orjson.loads(fields[b"e"]))
                for _, fields in client.xrange(f"{space.prefix}:{{{partition}}}:ledger")]
    finally:
        client.close()


async def test_reserve_settle_release_and_chain_atomicity(replica: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    accounts = await replica(section(budget("org", "org", "acme", "0.00000001"),
                                     budget("team", "team", "core", "0.0000001")))
    first = await accounts.reserve("r1", ALICE, 8)
    assert isinstance(first, BudgetReservation) and first.home == "acme"
    with pytest.raises(BudgetExceeded) as info:
        await accounts.reserve("r2", ALICE, 5)
    assert info.value.details["budget_id"] == "org" and info.value.headers["x-should-retry"] == "false"
    found = counters(redis_space)
    assert {k: v["reserved"] for k, v in found.items()} == {
        f"{{acme}}:b:org:{first.period_keys[0]}": 8, f"{{acme}}:b:team:{first.period_keys[1]}": 8}
    await accounts.settle(first, entry("r1", 6))
    await accounts.settle(first, entry("r1", 6))  # a retried settle never counts twice
    await accounts.release(await accounts.reserve("r3", ALICE, 4), None)
    found = counters(redis_space)
    assert sorted((v["spent"], v["reserved"]) for v in found.values()) == [(6, 0), (6, 0)]
    [ledger] = stream_entries(redis_space)
    assert ledger.cost_nanos == 6 and ledger.metadata["budgets"] == dict(zip(first.budget_ids, first.period_keys,
                                                                            strict=True))
    status = await accounts.status("org")
    assert (status.spent_nanos, status.reserved_nanos, status.status) == (6, 0, "warning")


@pytest.mark.timeout(600)  # a hang guard: three worker processes' CPU on a loaded machine exceeded 120 s
async def test_three_replica_processes_never_overspend(redis_space: RedisSpace, tmp_path: Path) -> None:  # noqa: F811
    config = json.dumps({**section(*CHAIN, budget("bob", "user", "bob", "0.8", on_exhausted="notify")),
                         "key_prefix": redis_space.prefix})
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "hammer", "--url", redis_space.url, "--db", str(tmp_path / f"w{i}.sqlite3"),
        "--config", config, "--seed", str(i), "--n", "250", "--tag", f"w{i}", "--replicas", "3",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT) for i in range(3)]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"ready"
        redis_space.client().set(f"{redis_space.prefix}:test:go", 1)
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 500)  # hang bound
        results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert all(p.returncode == 0 for p in procs)
    reported = [cost for r in results for cost in r["reported"]]
    assert sum(r["outcomes"].get("refused", 0) for r in results) > 20  # the limits were really hit
    found = counters(redis_space)
    limits = {"org": 3 * USD, "team": 2 * USD, "alice": USD}
    for key, fields in found.items():
        budget_id = key.split(":b:")[1].split(":")[0]
        assert fields.get("reserved", 0) == 0, key
        if budget_id in limits:
            assert fields["spent"] <= limits[budget_id], key
    ledger = stream_entries(redis_space)
    assert len(ledger) == len(reported) and sum(e.cost_nanos for e in ledger) == sum(reported)
    team_key = next(k for k in found if ":b:team:" in k)
    assert found[team_key]["spent"] == sum(reported)
    for result in results:  # every replica mirrored the whole ledger, once
        assert (result["local_rows"], result["local_sum"], result["outbox"]) == (len(reported), sum(reported), 0)


async def test_sigkilled_replica_reservations_come_back_within_ttl(
        replica: Opener, redis_space: RedisSpace, tmp_path: Path) -> None:  # noqa: F811
    ttl = 1.5
    config = section(*CHAIN, ttl=ttl, refresh=0.1)
    # opened before the kill: opening it after took longer than the 1.5 s TTL on a loaded machine,
    # and the leases had lapsed before the survivor could see them held
    survivor = await replica(config)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), "hold", "--url", redis_space.url, "--db", str(tmp_path / "victim.sqlite3"),
        "--config", json.dumps({**config, "key_prefix": redis_space.prefix}), "--count", "4",
        "--amount", str(USD // 4), stdout=asyncio.subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"held"
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert all(v["reserved"] == USD for v in counters(redis_space).values())
    with pytest.raises(BudgetExceeded):
        await survivor.reserve("blocked", ALICE, 1)
    await eventually(lambda: not any(v["reserved"] for v in counters(redis_space).values()), ttl + 10,
                     what="the killed replica's reservations reclaimed")
    assert time.monotonic() - killed_at >= ttl - 0.2
    # The dead replica's calls may have been billed: each reservation is charged its worst case,
    # with a ``lapsed`` ledger entry (usage unknown), and the budget it filled stays full.
    lapsed = stream_entries(redis_space)
    assert sorted(e.request_id for e in lapsed) == [f"held-{n}" for n in range(4)]
    assert {(e.status, e.cost_nanos, e.usage_reported, e.error_code) for e in lapsed} == {
        ("lapsed", USD // 4, False, "replica_lost")}
    assert all(v["spent"] == USD and v["reserved"] == 0 for v in counters(redis_space).values())
    with pytest.raises(BudgetExceeded):
        await survivor.reserve("after", ALICE, 1)


async def test_period_roll_over_needs_no_cron(replica: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    clock = FakeClock(1_795_669_170.0)  # 2026-11-25 23:59:30 in New York
    accounts = await replica(section(budget("ny", "user", "alice", "1", period="daily",
                                            timezone="America/New_York")), clock=clock)
    late = await accounts.reserve("late", ALICE, USD)
    with pytest.raises(BudgetExceeded):
        await accounts.reserve("blocked", ALICE, 1)
    clock.now += 60
    fresh = await accounts.reserve("fresh", ALICE, USD)
    assert isinstance(late, BudgetReservation) and isinstance(fresh, BudgetReservation)
    assert (late.period_keys, fresh.period_keys) == (("2026-11-25",), ("2026-11-26",))
    await accounts.settle(late, entry("late", USD))
    await accounts.settle(fresh, entry("fresh", 3))
    found = counters(redis_space)
    assert found["{acme}:b:ny:2026-11-25"]["spent"] == USD
    assert found["{acme}:b:ny:2026-11-26"]["spent"] == 3
    client = redis_space.client()
    expires = client.pexpiretime(f"{redis_space.prefix}:{{acme}}:b:ny:2026-11-25")
    client.close()
    assert expires == 1_795_669_200_000 + 7 * 86_400_000  # period end + ledger retention


async def test_thresholds_fire_once_across_replicas(replica: Opener) -> None:
    config = section(budget("team", "team", "core", "0.000001"))
    replicas = [await replica(config) for _ in range(3)]
    events: list[BudgetEvent] = []
    for accounts in replicas:
        accounts.subscribe(events.append)

    async def spend(accounts: RedisBudgetAccounts, n: int) -> None:
        try:
            reservation = await accounts.reserve(f"r{n}", ALICE, 25)
        except BudgetExceeded:
            return
        await accounts.settle(reservation, entry(f"r{n}", 25))

    await asyncio.gather(*(spend(replicas[n % 3], n) for n in range(60)))
    crossed = sorted(e.threshold for e in events if e.kind == "threshold_crossed" and e.threshold is not None)
    assert crossed == [50, 80, 100]
    assert [e.kind for e in events].count("exhausted") == 1
    assert sum(1 for e in events if e.kind == "request_blocked") == 60 - 40


async def test_definitions_are_shared_between_replicas(replica: Opener) -> None:
    one = await replica(section(refresh=0.05))
    two = await replica(section(refresh=0.05))
    await one.budgets.create(BudgetSpec(id="dyn", scope_type="key", scope_id="k-alice", limit_nanos=10,
                                        org="acme"), actor="admin")
    await eventually(lambda: two.budgets.get("dyn") is not None, what="the definition on the other replica")
    with pytest.raises(BudgetExceeded, match="'dyn'"):
        await two.reserve("r", ALICE, 11)
    log = await two.budgets.audit_log("dyn")
    assert [(r.action, r.actor) for r in log] == [("budget.created", "admin")]


async def test_redis_outage_fails_closed_then_recovers(replica: Opener, own_redis: RedisServer,  # noqa: F811
                                                       redis_space: RedisSpace) -> None:  # noqa: F811
    url = f"{own_redis.endpoint}/{13}"
    accounts = await replica(section(*CHAIN, budget("soft", "key", "k-bob", "1", on_exhausted="notify"),
                                     refresh=0.1), url=url)
    held = await accounts.reserve("r1", ALICE, 1000)
    before = await accounts.status("team")
    own_redis.stop()
    with pytest.raises(StoreUnavailable) as info:
        await accounts.reserve("r2", ALICE, 1000)
    assert info.value.status == 503 and "cannot be checked" in info.value.message
    bob = Principal(key_id="k-bob", org="other")  # only a soft budget applies: proceeds
    soft = await accounts.reserve("r3", bob, 10)
    await accounts.settle(held, entry("r1", 700))  # never fails the request: waits in the outbox
    await accounts.settle(soft, entry("r3", 10, bob))
    async def stale() -> bool:
        return (await accounts.status("team")).stale_ms > 0

    await eventually(stale, what="the cached status marked stale")  # a refresh failed meanwhile
    during = await accounts.status("team")
    assert during.stale_ms > 0 and during.spent_nanos == before.spent_nanos  # answers, and says how stale
    assert accounts.pending() == 3  # r1's and r3's settlements, and the release of r2's token (had it run)
    own_redis.start()
    await eventually(lambda: accounts.pending() == 0, what="the outbox flushed")

    async def settled() -> bool:
        after = await accounts.status("team")
        return (after.spent_nanos, after.reserved_nanos, after.stale_ms) == (700, 0, 0)

    await eventually(settled, what="the status refreshed after the outage")
    assert sum(e.cost_nanos for e in stream_entries(redis_space, url)) == 700


async def test_outbox_survives_a_restart(replica: Opener, own_redis: RedisServer,  # noqa: F811
                                         redis_space: RedisSpace) -> None:  # noqa: F811
    url = f"{own_redis.endpoint}/{13}"
    first = await replica(section(*CHAIN), url=url, name="same.sqlite3")
    held = await first.reserve("r1", ALICE, 1000)
    own_redis.stop()
    await first.settle(held, entry("r1", 900))
    store = first.store
    await first.close()
    await store.close()
    own_redis.start()
    second = await replica(section(*CHAIN), url=url, name="same.sqlite3")
    await second.flush_outbox()
    assert second.pending() == 0
    assert sum(e.cost_nanos for e in stream_entries(redis_space, url)) == 900
    assert isinstance(held, BudgetReservation)
    alice = counters(redis_space, url)[f"{{acme}}:b:alice:{held.period_keys[2]}"]
    assert (alice["spent"], alice.get("reserved", 0)) == (900, 0)  # the restarted Redis lost the reservation


async def test_usage_recorded_by_another_system(replica: Opener, redis_space: RedisSpace) -> None:  # noqa: F811
    accounts = await replica(section(*CHAIN))
    from costproxy.budgets.book import usage_entry
    from costproxy.budgets.codec import usage_from_json

    record = usage_from_json({"amount": "0.6", "source": "auterity"}, now_ms=int(time.time() * 1000))
    result = await accounts.record_usage("alice", record.amount_nanos,
                                         usage_entry(record, accounts.budgets.require("alice"), "u1"))
    assert result.status.spent_nanos == 600_000_000 and not result.duplicate
    with pytest.raises(BudgetExceeded):
        await accounts.reserve("r", ALICE, 400_000_001)
    [recorded] = stream_entries(redis_space)
    assert recorded.source == "auterity" and recorded.cost_nanos == 600_000_000


async def test_view_from_the_local_cache(replica: Opener) -> None:
    one = await replica(section(*CHAIN, refresh=0.05))
    two = await replica(section(*CHAIN, refresh=0.05))
    await one.settle(await one.reserve("r", ALICE, 900_000_000), entry("r", 900_000_000))
    assert (await one.view(ALICE)).fields["budget.user.status"] == "critical"  # own change: immediate

    async def seen() -> bool:  # another replica: after its next refresh
        view = await two.view(ALICE)
        return view.fields["budget.user.used_pct"] == 90.0 and view.remaining_nanos == 100_000_000

    await eventually(seen, what="the spend seen by the other replica")
