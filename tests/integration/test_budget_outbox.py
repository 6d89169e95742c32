"""Redis mode: leases renewed across replicas, overrun events, refusals and idempotent usage in the
shared ledger, and a settlement outbox that survives a SIGKILL during a Redis outage."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from costproxy.background import cancel_and_wait
from costproxy.budgets.book import BudgetEvent, BudgetReservation, usage_entry
from costproxy.budgets.codec import usage_from_json
from costproxy.errors import StoreUnavailable
from costproxy.ledger.entry import LedgerEntry
from tests.conftest_redis import RedisServer, RedisSpace, new_space, own_redis, redis_endpoint, redis_space
from tests.integration.test_budget_redis import (
    ALICE,
    CHAIN,
    ROOT,
    USD,
    WORKER,
    Opener,
    counters,
    entry,
    replica,
    section,
    stream_entries,
)
from tests.polling import eventually

__all__ = ["own_redis", "redis_endpoint", "redis_space", "replica"]
pytestmark = pytest.mark.redis


async def test_a_renewed_lease_survives_other_replicas_reclaim(replica: Opener,
                                                              redis_space: RedisSpace) -> None:
    # A TTL of 4 s tolerates a loaded machine stalling this test for a few seconds between renewals
    # (at 2 s, a busy CI machine once let ``kept`` lapse); the loop renews for longer than the TTL.
    config = section(*CHAIN, ttl=4.0, refresh=0.05)
    mine, other = await replica(config), await replica(config)
    kept = await mine.reserve("kept", ALICE, 300_000_000)
    dropped = await mine.reserve("dropped", ALICE, 300_000_000)

    def reserved() -> int:
        return next(v for k, v in counters(redis_space).items() if ":b:alice:" in k).get("reserved", 0)

    until = time.monotonic() + 4.4
    while time.monotonic() < until:  # the scenario: renewing for longer than the TTL; renewed leases stay
        assert await mine.renew(kept) and await mine.renew(dropped)
        await other.reclaim_expired()
        await asyncio.sleep(0.2)
    assert reserved() == 600_000_000

    async def reclaimed() -> bool:  # only ``kept`` is renewed now: the other replica reclaims ``dropped``
        assert await mine.renew(kept)
        await other.reclaim_expired()
        return reserved() == 300_000_000

    await eventually(reclaimed, interval=0.2, what="the lapsed lease reclaimed")
    assert not await mine.renew(dropped)
    await mine.settle(kept, entry("kept", 200_000_000))
    assert not await mine.renew(kept)
    await mine.settle(dropped, entry("dropped", 1))  # a late settle still charges
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert (user["spent"], user["reserved"]) == (200_000_001, 0)


async def test_renewing_while_redis_is_away_says_so(replica: Opener, own_redis: RedisServer) -> None:
    accounts = await replica(section(*CHAIN), url=f"{own_redis.endpoint}/13")
    reservation = await accounts.reserve("r", ALICE, 10)
    own_redis.stop()
    with pytest.raises(StoreUnavailable, match=r"cannot renew the lease of request r: the budget store .* unreachable"):
        await accounts.renew(reservation)


async def test_overrun_refusal_and_idempotent_usage_in_the_shared_ledger(replica: Opener,
                                                                         redis_space: RedisSpace) -> None:
    accounts = await replica(section(*CHAIN))
    events: list[BudgetEvent] = []
    accounts.subscribe(events.append)
    await accounts.settle(await accounts.reserve("r1", ALICE, 100), entry("r1", 160))
    overruns = [e for e in events if e.kind == "overrun"]
    assert sorted(e.budget_id for e in overruns) == ["alice", "org", "team"]
    assert {(e.overrun_nanos, e.spent_nanos) for e in overruns} == {(60, 160)}
    assert (await accounts.view(ALICE)).remaining_nanos == USD - 160
    await accounts.record_refusal(LedgerEntry(request_id="no", ts_ms=int(time.time() * 1000), endpoint="chat",
                                              status="error", http_status=429, org="acme", cost_nanos=5,
                                              error_code="budget_exceeded"))
    record = usage_from_json({"amount": "0.1", "source": "relaycore"}, now_ms=int(time.time() * 1000))
    spec = accounts.budgets.require("team")
    results = await asyncio.gather(*(accounts.record_usage("team", record.amount_nanos,
                                                           usage_entry(record, spec, f"u{n}"), idempotency_key="same")
                                     for n in range(10)))
    assert sorted(r.duplicate for r in results) == [False] + [True] * 9
    ledger = stream_entries(redis_space)
    assert [(e.request_id, e.status, e.cost_nanos) for e in ledger if e.status == "refused"] == [("no", "refused", 0)]
    assert sum(e.cost_nanos for e in ledger) == 160 + 100_000_000
    team = next(v for k, v in counters(redis_space).items() if ":b:team:" in k)
    assert team["spent"] == 160 + 100_000_000


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private Redis that writes every command to its AOF before answering."""
    server = RedisServer(tmp_path / "aof-redis",
                         ("--appendonly", "yes", "--appendfsync", "always")).start()
    try:
        yield server
    finally:
        server.stop()


async def _run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, str(WORKER), *args, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, cwd=ROOT)


async def test_a_sigkill_during_a_redis_outage_loses_no_settlement(aof_redis: RedisServer, tmp_path: Path) -> None:
    space = new_space(aof_redis.endpoint)
    config = json.dumps({**section(*CHAIN, ttl=600, refresh=0.1), "key_prefix": space.prefix})
    common = ("--url", space.url, "--db", str(tmp_path / "replica.sqlite3"), "--config", config)
    count, amount = 40, 1_000_000
    proc = await _run("outage", *common, "--count", str(count), "--amount", str(amount))
    printed: dict[str, int] = {}
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)).strip() == b"reserved"
        aof_redis.kill()  # the outage: every settle from here on goes to the outbox
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        while len(printed) < count // 2:  # SIGKILL mid-way through the settles
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
            assert line, "the replica ended before settling"
            if line[0] == "settled":  # (log lines go to stdout too)
                printed[line[1]] = int(line[2])
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    aof_redis.start()  # Redis returns with what its AOF holds: the reservations, nothing settled
    assert stream_entries(space) == []
    summaries = []
    for _ in range(2):  # a restart replays the outbox; a second one finds nothing left to do
        replayer = await _run("replay", *common)
        out, _ = await asyncio.wait_for(replayer.communicate(), 60)
        summaries.append(json.loads(out.decode().strip().splitlines()[-1]))
        assert replayer.returncode == 0
    assert summaries[0]["waiting"] >= len(printed) and summaries[0]["pending"] == 0
    assert summaries[1]["waiting"] == 0
    ledger = stream_entries(space)
    ids = Counter(e.request_id for e in ledger)
    assert max(ids.values()) == 1, "a replayed settlement was applied twice"
    assert set(printed) <= set(ids), "a settlement that had returned was lost"
    assert len(ids) - len(printed) <= 1  # at most the settle that was in flight when killed
    assert summaries[1]["mirrored"] == len(ledger)  # and the replica's mirror holds every entry once
    spent = sum(e.cost_nanos for e in ledger)
    user = next(v for k, v in counters(space).items() if ":b:alice:" in k)
    assert user["spent"] == spent == sum(amount - int(i.split("-")[1]) for i in ids)
    assert user["reserved"] == amount * (count - len(ids))  # the unsettled leases are still held
    space.delete_all()


async def test_replaying_a_settlement_redis_already_applied_changes_nothing(replica: Opener,
                                                                            redis_space: RedisSpace) -> None:
    """A reply lost after Redis applied the script: the settlement also lands in the outbox, and
    its replay must not charge or append twice."""
    accounts = await replica(section(*CHAIN))
    reservation = await accounts.reserve("r1", ALICE, 500)
    op = accounts._settle_op(reservation, entry("r1", 400), 400)
    assert op is not None
    assert await accounts._send(op) == "ok"
    await accounts._defer(op)  # as if the reply had been lost
    assert accounts.pending() == 1
    assert await accounts.flush_outbox() == 1
    assert accounts.pending() == 0
    assert [e.request_id for e in stream_entries(redis_space)] == ["r1"]
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert (user["spent"], user["reserved"]) == (400, 0)


async def test_a_dead_replicas_lapsed_reservation_is_charged_even_if_it_lapsed_before_its_heartbeat(
        replica: Opener, redis_space: RedisSpace) -> None:
    """The owner's ``alive`` key can outlive a reservation it stopped renewing: the reclaim waits
    for the key before deciding (on Redis's clock, not the late one of the replica that first saw
    it), so a replica that then turns out dead is charged (its call may have been billed)."""
    config = section(*CHAIN, ttl=1.0, refresh=0.05)
    dead, survivor = await replica(config), await replica(config)
    behind = await replica(config, clock=lambda: time.time() - 0.3)  # a replica whose clock is late
    await cancel_and_wait([*survivor._tasks, *behind._tasks])  # their reclaims run when the test says
    early = await dead.reserve("early", ALICE, 300_000_000)
    assert isinstance(early, BudgetReservation)
    await asyncio.sleep(0.6)
    await dead.reserve("late", ALICE, 100_000_000)  # refreshes the owner's heartbeat
    await cancel_and_wait(dead._tasks)  # the replica dies: no more heartbeats, renewals or settles
    await survivor.refresh()  # (they learn the partition in use)
    await behind.refresh()
    client = redis_space.client()
    deadline = time.monotonic() + 10
    while not client.hexists(dead.keys.reservation_prefix(early.home) + early.token, "_seen"):
        assert time.monotonic() < deadline, "the lapsed reservation was never looked at"
        await behind.reclaim_expired()  # sees it lapsed while the owner's heartbeat still runs
        await asyncio.sleep(0.02)
    client.close()
    while len(stream_entries(redis_space)) < 2:
        assert time.monotonic() < deadline, "the dead replica's reservations were never charged"
        await survivor.reclaim_expired()
        await asyncio.sleep(0.05)
    ledger = {e.request_id: e for e in stream_entries(redis_space)}
    assert {(r, e.status, e.cost_nanos, e.usage_reported) for r, e in ledger.items()} == {
        ("early", "lapsed", 300_000_000, False), ("late", "lapsed", 100_000_000, False)}
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert (user["spent"], user["reserved"]) == (400_000_000, 0)
    await dead.settle(early, entry("early", 1))  # a replayed settlement after a restart: already charged
    assert len(stream_entries(redis_space)) == 2
    assert next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)["spent"] == 400_000_000


async def test_a_reserve_cancelled_while_its_script_is_out_is_released(replica: Opener,
                                                                      redis_space: RedisSpace) -> None:
    """A request ended (the drain deadline) while its reserve script was out: the script ran, but
    nobody will settle it — its token is released through the outbox, never left to lapse."""
    accounts = await replica(section(*CHAIN))
    run = accounts._scripts.run
    ran = asyncio.Event()

    async def ran_then_hung(script, keys, args):  # type: ignore[no-untyped-def]
        reply = await run(script, keys, args)  # Redis ran it ...
        ran.set()
        await asyncio.Event().wait()  # ... and the reply never came before the request was ended
        return reply

    accounts._scripts.run = ran_then_hung  # type: ignore[method-assign]
    task = asyncio.create_task(accounts.reserve("r-cut", ALICE, 500))
    await asyncio.wait_for(ran.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    accounts._scripts.run = run  # type: ignore[method-assign]
    assert accounts.pending() == 1
    assert await accounts.flush_outbox() == 1
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert (user.get("spent", 0), user["reserved"]) == (0, 0)
    assert stream_entries(redis_space) == []  # nothing charged, nothing lapsed


async def test_a_reserve_whose_reply_is_lost_is_released_never_held_or_charged(replica: Opener,
                                                                               redis_space: RedisSpace) -> None:
    """A stalled Redis runs the reserve script after the client gave up on it: the request is answered
    503 and must neither hold budget room until its lease runs out nor be charged as lapsed."""
    from redis.exceptions import TimeoutError as RedisTimeoutError

    accounts = await replica(section(*CHAIN))
    run = accounts._scripts.run

    async def late(script, keys, args):  # type: ignore[no-untyped-def]
        await run(script, keys, args)  # Redis ran it ...
        raise RedisTimeoutError("Timeout reading from the budget store")  # ... the reply came too late

    accounts._scripts.run = late  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await accounts.reserve("r-late", ALICE, 500)
    accounts._scripts.run = run  # type: ignore[method-assign]
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert user["reserved"] == 500  # held, until the release queued in the outbox is sent
    assert accounts.pending() == 1
    assert await accounts.flush_outbox() == 1
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert (user.get("spent", 0), user["reserved"]) == (0, 0)
    assert stream_entries(redis_space) == []  # nothing charged, nothing lapsed


async def test_a_reservation_outlives_any_downtime_until_it_is_settled_or_reclaimed(
        replica: Opener, redis_space: RedisSpace) -> None:
    """The reservation hash holds the amounts to give back: it used to expire four leases after its
    last renewal, and a replica back after a longer downtime found it gone, dropped the token and
    never released the amount (held for good). It has no expiry now; a reclaim after the counter
    itself expired gives back nothing and recreates nothing."""
    config = section(*CHAIN, ttl=1.0, refresh=0.05)
    dead, survivor = await replica(config), await replica(config)
    await cancel_and_wait(survivor._tasks)
    kept = await dead.reserve("kept", ALICE, 300_000_000)
    gone = await dead.reserve("gone", ALICE, 100_000_000)
    assert isinstance(kept, BudgetReservation) and isinstance(gone, BudgetReservation)
    assert await dead.renew(kept)
    client = redis_space.client()
    for reservation in (kept, gone):
        assert client.pttl(dead.keys.reservation_prefix(reservation.home) + reservation.token) == -1  # no expiry
    await cancel_and_wait(dead._tasks)  # the replica dies holding both
    team = next(k for k in counters(redis_space) if ":b:team:" in k)
    client.delete(team)  # the team's period is past its retention: its counter expired meanwhile
    await survivor.refresh()
    deadline = time.monotonic() + 15
    while len(stream_entries(redis_space)) < 2:
        assert time.monotonic() < deadline, "the dead replica's reservations were never reclaimed"
        await survivor.reclaim_expired()
        await asyncio.sleep(0.05)
    user = next(v for k, v in counters(redis_space).items() if ":b:alice:" in k)
    assert (user["spent"], user["reserved"]) == (400_000_000, 0)
    assert not client.exists(team)  # not recreated with a negative reservation and no expiry
    late = await survivor.reserve("late", ALICE, 1_000)
    client.delete(team)
    await survivor.release(late, None)  # a release on a counter past its retention: nothing recreated
    assert not client.exists(team)
    client.close()


async def test_a_keyed_usage_record_retried_after_redis_came_back_is_its_duplicate(replica: Opener,
                                                                                   redis_space: RedisSpace) -> None:
    """Redis away: a keyed record is answered as recorded from the outbox. Its retry once Redis is
    back replays the outbox first, so the retry is the duplicate (it was answered as charged twice)."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    accounts = await replica(section(*CHAIN))
    await cancel_and_wait(accounts._tasks)  # no background replay: the retry must find the record waiting
    record = usage_from_json({"amount": "0.1", "source": "relaycore"}, now_ms=int(time.time() * 1000))
    spec = accounts.budgets.require("team")
    run = accounts._scripts.run

    async def away(script, keys, args):  # type: ignore[no-untyped-def]
        raise RedisConnectionError("Redis is away")

    accounts._scripts.run = away  # type: ignore[method-assign]
    first = await accounts.record_usage("team", record.amount_nanos, usage_entry(record, spec, "u1"),
                                        idempotency_key="batch-9")
    assert not first.duplicate and accounts.pending() == 1
    accounts._scripts.run = run  # type: ignore[method-assign]
    again = await accounts.record_usage("team", record.amount_nanos, usage_entry(record, spec, "u2"),
                                        idempotency_key="batch-9")
    assert again.duplicate and accounts.pending() == 0
    team = next(v for k, v in counters(redis_space).items() if ":b:team:" in k)
    assert team["spent"] == 100_000_000


async def test_a_call_of_a_caller_without_any_budget_is_lapsed_when_its_replica_dies(
        replica: Opener, redis_space: RedisSpace) -> None:
    """Nothing is held for a caller no budget applies to, but its call may be billed: a replica that
    dies during it must still leave a ledger entry (a reclaim appends the lapsed one); a call that
    settles leaves its entry once and nothing behind."""
    from costproxy.identity.principal import Principal

    config = section(*CHAIN, ttl=1.0, refresh=0.05)
    dead, survivor = await replica(config), await replica(config)
    await cancel_and_wait(survivor._tasks)
    stranger = Principal(key_id="key9", user="sam", org="other")
    done = await dead.reserve("done", stranger, 5_000)
    await dead.settle(done, entry("done", 4_000, stranger))
    running = await dead.reserve("running", stranger, 7_000)
    assert isinstance(running, BudgetReservation) and not running.budget_ids
    await cancel_and_wait(dead._tasks)  # the replica dies during the call
    await survivor.refresh()
    deadline = time.monotonic() + 15
    while len(stream_entries(redis_space, partition="other")) < 2:
        assert time.monotonic() < deadline, "the dead replica's call was never ledgered"
        await survivor.reclaim_expired()
        await asyncio.sleep(0.05)
    ledger = {e.request_id: (e.status, e.cost_nanos) for e in stream_entries(redis_space, partition="other")}
    assert ledger == {"done": ("ok", 4_000), "running": ("lapsed", 7_000)}
    client = redis_space.client()
    # the lapse's settled marker outlives any replay of the dead replica's outbox (it lived 2 leases
    # and an hour: a replica back later settled the call a second time)
    assert client.pttl(dead.keys.done("other", running.token)) > 6 * 86_400_000
    await dead.settle(running, entry("running", 1_234, stranger))  # that late replay
    assert len(stream_entries(redis_space, partition="other")) == 2
    assert not client.exists(dead.keys.reservation_prefix("other") + done.token)  # type: ignore[union-attr]
    client.close()


async def test_a_settlement_redis_refuses_on_replay_is_quarantined_not_dropped(replica: Opener,
                                                                               redis_space: RedisSpace) -> None:
    """A waiting settlement whose script Redis runs and refuses (its data: here a counter someone
    overwrote with a string) set its settled marker before failing, so the next replay answered
    'dup' and the settlement — its ledger entry with it — was gone without a trace. It is kept in
    the local ledger_quarantine instead, and the settlements behind it go through."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from costproxy.identity.principal import Principal

    accounts = await replica(section(*CHAIN))
    await cancel_and_wait(accounts._tasks)  # the test replays when it says
    stranger = Principal(key_id="key9", user="sam", org="other")  # no budget: its settle touches no counter
    poisoned = await accounts.reserve("poisoned", ALICE, 1_000)
    fine = await accounts.reserve("fine", stranger, 1_000)
    run = accounts._scripts.run

    async def away(script, keys, args):  # type: ignore[no-untyped-def]
        raise RedisConnectionError("Redis is away")

    accounts._scripts.run = away  # type: ignore[method-assign]
    await accounts.settle(poisoned, entry("poisoned", 700))
    await accounts.settle(fine, entry("fine", 300, stranger))
    accounts._scripts.run = run  # type: ignore[method-assign]
    assert accounts.pending() == 2
    client = redis_space.client()
    team = f"{redis_space.prefix}:" + next(k for k in counters(redis_space) if ":b:team:" in k)
    assert client.type(team) == b"hash"
    client.delete(team)
    client.set(team, "not a hash")  # WRONGTYPE for the poisoned settlement's script
    try:
        assert await accounts.flush_outbox() == 2 and accounts.pending() == 0
    finally:
        client.delete(team)
        client.close()
    rows = await accounts.store.query("SELECT request_id, error, body FROM ledger_quarantine")
    assert [r[0] for r in rows] == ["poisoned"] and "WRONGTYPE" in rows[0][1].upper()
    assert '"poisoned"' in rows[0][2]  # the whole settlement, ledger entry included
    assert [e.request_id for e in stream_entries(redis_space, partition="other")] == ["fine"]
