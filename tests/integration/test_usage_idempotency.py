"""An idempotency key stands for one usage record, in both budget stores: the same record again is a
duplicate (nothing charged), a different record under a used key is refused (``idempotency_key_reused``,
nothing charged, its refusal in the ledger), also when records race; claims made before fingerprints
were kept stay plain duplicates.  The HTTP side is in test_usage_idempotency_api.py."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from structlog.testing import capture_logs

from costproxy.budgets.book import BudgetAccounts, Recorded, usage_entry, usage_fingerprint
from costproxy.budgets.codec import usage_from_json
from costproxy.budgets.config import parse_budget_config
from costproxy.budgets.definitions import BUDGET_MIGRATIONS, BudgetStore, SqliteDefinitions, ensure_budget_schema
from costproxy.budgets.lua import RedisKeys
from costproxy.budgets.redis import open_redis_accounts
from costproxy.budgets.sqlite import SqliteBudgetAccounts
from costproxy.errors import ProxyError
from costproxy.ledger.entry import LedgerEntry, entry_from_row
from costproxy.store.sqlite import SqliteStore, apply_migrations
from tests.conftest_redis import RedisServer, RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.integration.test_budget_outbox import aof_redis  # noqa: F401
from tests.integration.test_budget_redis import (
    CHAIN,
    counters,
    replica,  # noqa: F401
    section,
    stream_entries,
)
from tests.integration.test_budget_redis import Opener as RedisOpener
from tests.integration.test_budget_sqlite import USD, FakeClock, Opener, chain_specs, open_accounts
from tests.polling import eventually

__all__ = ["open_accounts"]

REUSED = "idempotency_key_reused"


@dataclass
class Books:
    """The budget accounts under test (Redis: two replicas sharing one Redis) and their ledger."""

    replicas: list[BudgetAccounts]
    read_ledger: Callable[[], Awaitable[list[LedgerEntry]]]

    @property
    def accounts(self) -> BudgetAccounts:
        return self.replicas[0]

    async def record(self, body: dict[str, Any], key: str, *, budget_id: str = "team", on: int = 0) -> Recorded:
        """``body`` recorded as POST /budgets/{id}/usage records it (the fingerprint of its parsed form)."""
        accounts = self.replicas[on]
        record = usage_from_json(body, now_ms=int(accounts.clock() * 1000))
        spec = accounts.budgets.require(budget_id)
        return await accounts.record_usage(budget_id, record.amount_nanos, usage_entry(record, spec, "srv-1"),
                                           idempotency_key=key,
                                           fingerprint=usage_fingerprint(budget_id, record.amount_nanos, record))

    async def spent(self, budget_id: str = "team") -> int:
        return (await self.accounts.status(budget_id)).spent_nanos

    async def ledger(self) -> tuple[list[LedgerEntry], list[LedgerEntry]]:
        """(charged entries, refused entries)."""
        entries = await self.read_ledger()
        return [e for e in entries if e.status != "refused"], [e for e in entries if e.status == "refused"]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def books(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Books]:
    """SQLite accounts, or two Redis replicas (database 13, a key prefix of the test's own)."""
    stores: list[SqliteStore] = []

    async def store(name: str) -> SqliteStore:
        opened = SqliteStore(str(tmp_path / name), flush_interval=0.01)
        await opened.open()
        await ensure_budget_schema(opened)
        stores.append(opened)
        return opened

    replicas: list[BudgetAccounts] = []
    if request.param == "sqlite":
        ledger = await store("ledger.sqlite3")
        budgets = BudgetStore(SqliteDefinitions(ledger), [replace(s, source="config") for s in chain_specs()],
                              clock=FakeClock())
        await budgets.load()
        accounts = SqliteBudgetAccounts(ledger, budgets, clock=FakeClock())
        await accounts.open()
        replicas.append(accounts)

        async def read_ledger() -> list[LedgerEntry]:
            await ledger.flush()
            return [entry_from_row(row) for row in await ledger.query("SELECT * FROM ledger ORDER BY seq")]
    else:
        space: RedisSpace = request.getfixturevalue("redis_space")
        config = parse_budget_config({**section(*CHAIN), "key_prefix": space.prefix}, "test")
        for n in range(2):
            replicas.append(await open_redis_accounts(space.url, await store(f"replica{n}.sqlite3"), config))

        async def read_ledger() -> list[LedgerEntry]:
            return stream_entries(space)

    yield Books(replicas, read_ledger)
    for accounts in replicas:
        await accounts.close()
    for opened in stores:
        await opened.close()


def usage(amount: str, **fields: Any) -> dict[str, Any]:
    return {"amount": amount, "source": "relaycore", "metadata": {"requestId": "ext-1", "userId": "bob"}, **fields}


def refused_code(caught: pytest.ExceptionInfo[ProxyError]) -> tuple[int, str, dict[str, str]]:
    return caught.value.status, caught.value.code, caught.value.headers


async def test_the_same_record_is_a_duplicate_and_a_different_one_is_refused(books: Books) -> None:
    first = await books.record(usage("0.25"), "k-1")
    assert not first.duplicate and first.status.spent_nanos == USD // 4
    again = await books.record(usage("0.250", metadata={"request_id": "ext-1", "userId": "bob"}), "k-1")
    assert again.duplicate and again.status.spent_nanos == USD // 4  # the same record, spelled otherwise
    for other in (usage("0.5"), usage("0.25", description="another batch"), usage("0.25", source="manual"),
                  usage("0.25", metadata={"requestId": "ext-1", "userId": "carol"}),
                  usage("0.25", timestamp="2026-11-25T07:00:00Z")):
        with pytest.raises(ProxyError) as caught:
            await books.record(other, "k-1")
        assert refused_code(caught) == (409, REUSED, {"x-should-retry": "false"}), other
        assert caught.value.details["budget_id"] == "team"
    assert await books.spent() == USD // 4  # nothing charged by the five refused records
    assert not (await books.record(usage("0.5"), "k-1", budget_id="org")).duplicate  # keys are per budget
    charged, refused = await books.ledger()
    assert [(e.cost_nanos, e.metadata["budgets"].keys()) for e in charged] == [(USD // 4, {"team"}),
                                                                              (USD // 2, {"org"})]
    assert len(refused) == 5
    assert {(e.cost_nanos, e.http_status, e.error_code, e.endpoint, e.source) for e in refused} == {
        (0, 409, REUSED, "usage", "relaycore"), (0, 409, REUSED, "usage", "manual")}
    assert [e.metadata["refused_amount_nanos"] for e in refused] == [USD // 2] + [USD // 4] * 4
    assert all(e.metadata["idempotency_key"] == "k-1" and "budgets" not in e.metadata for e in refused)
    assert refused[1].metadata["description"] == "another batch"  # the refused record is kept whole


async def test_racing_records_under_one_key_charge_once(books: Books) -> None:
    amounts = ["0.1", "0.2"] * 10  # two different records, ten copies of each, all at once
    results = await asyncio.gather(*(books.record(usage(amount), "k-race", on=i % len(books.replicas))
                                     for i, amount in enumerate(amounts)), return_exceptions=True)
    winners = [amount for amount, r in zip(amounts, results, strict=True)
               if isinstance(r, Recorded) and not r.duplicate]
    assert len(winners) == 1
    winner = winners[0]
    for amount, result in zip(amounts, results, strict=True):  # the rest: duplicates of the winner, or refused
        if isinstance(result, ProxyError):
            assert result.code == REUSED and amount != winner
        else:
            assert isinstance(result, Recorded) and amount == winner, result
    expected = USD // 10 if winner == "0.1" else USD // 5
    charged, refused = await books.ledger()
    assert [e.cost_nanos for e in charged] == [expected]
    assert len(refused) == 10 and {e.metadata["refused_amount_nanos"] for e in refused} == {3 * USD // 10 - expected}
    for accounts in books.replicas:  # every replica comes to the same figure (Redis: within a refresh)
        async def agrees(a: BudgetAccounts = accounts) -> bool:
            return (await a.status("team")).spent_nanos == expected

        await eventually(agrees, what="the charged amount on every replica")


async def test_the_request_id_standing_in_for_the_key(books: Books) -> None:
    """Two different records that happen to share a requestId: the second is refused, not dropped."""
    first = usage("0.25", metadata={"requestId": "rc-7"})
    await books.record(first, "rc-7")
    with pytest.raises(ProxyError) as caught:
        await books.record(usage("0.75", metadata={"requestId": "rc-7"}), "rc-7")
    assert caught.value.code == REUSED
    assert (await books.record(first, "rc-7")).duplicate
    charged, refused = await books.ledger()
    assert [(e.request_id, e.cost_nanos) for e in charged] == [("rc-7", USD // 4)]
    assert [(e.request_id, e.metadata["refused_amount_nanos"]) for e in refused] == [("rc-7", 3 * USD // 4)]


async def test_a_sqlite_claim_from_before_fingerprints_stays_a_duplicate(open_accounts: Opener,
                                                                         tmp_path: Path) -> None:
    old = SqliteStore(str(tmp_path / "old.sqlite3"), flush_interval=0.01)
    await old.open()
    assert await old.run(lambda: apply_migrations(old.conn(), "budget_schema_version", BUDGET_MIGRATIONS[:2])) == 2
    await old.execute("INSERT INTO usage_claims (budget_id, claim, request_id, ts_ms) VALUES (?, ?, ?, ?)",
                      ("team", "k-old", "ext-old", int(FakeClock()() * 1000)))
    await old.close()
    accounts, store = await open_accounts(chain_specs(), clock=FakeClock(), name="old.sqlite3")  # migrates
    assert [tuple(r) for r in await store.query("SELECT MAX(version) FROM budget_schema_version")] == [(4,)]
    assert [tuple(r) for r in await store.query("SELECT claim, fingerprint FROM usage_claims")] == [("k-old", None)]
    record = usage_from_json(usage("0.9"), now_ms=0)
    again = await accounts.record_usage("team", record.amount_nanos,
                                        usage_entry(record, accounts.budgets.require("team"), "srv"),
                                        idempotency_key="k-old")
    assert again.duplicate and again.status.spent_nanos == 0
    await store.flush()
    assert [tuple(r) for r in await store.query("SELECT COUNT(*) FROM ledger")] == [(0,)]


@pytest.mark.redis
async def test_a_redis_claim_from_before_fingerprints_stays_a_duplicate(replica: RedisOpener,  # noqa: F811
                                                                        redis_space: RedisSpace) -> None:  # noqa: F811
    accounts = await replica(section(*CHAIN))
    token = "u" + hashlib.sha256(b"team\0k-old").hexdigest()[:40]
    client = sync_redis.Redis.from_url(redis_space.url)
    try:  # the marker an earlier version set: '1', kept 7 days
        client.set(RedisKeys(redis_space.prefix).done("acme", token), "1", px=7 * 86_400_000)
    finally:
        client.close()
    record = usage_from_json(usage("0.9"), now_ms=int(time.time() * 1000))
    again = await accounts.record_usage("team", record.amount_nanos,
                                        usage_entry(record, accounts.budgets.require("team"), "srv"),
                                        idempotency_key="k-old")
    assert again.duplicate and again.status.spent_nanos == 0
    assert stream_entries(redis_space) == []


async def test_the_python_api_without_a_fingerprint_checks_budget_and_amount(books: Books) -> None:
    accounts = books.accounts
    spec = accounts.budgets.require("team")
    record = usage_from_json(usage("0.25"), now_ms=int(accounts.clock() * 1000))
    assert not (await accounts.record_usage("team", USD // 4, usage_entry(record, spec, "a"),
                                            idempotency_key="k-py")).duplicate
    assert (await accounts.record_usage("team", USD // 4, usage_entry(record, spec, "b"),
                                        idempotency_key="k-py")).duplicate
    with pytest.raises(ProxyError) as caught:
        await accounts.record_usage("team", USD // 2, usage_entry(record, spec, "c"), idempotency_key="k-py")
    assert caught.value.code == REUSED
    assert await books.spent() == USD // 4


@pytest.mark.redis
async def test_a_record_sent_while_redis_was_away_is_checked_on_replay(replica: RedisOpener,  # noqa: F811
                                                                      aof_redis: RedisServer,  # noqa: F811
                                                                      redis_space: RedisSpace) -> None:  # noqa: F811
    """With Redis away a record is answered from the outbox (nothing to compare with); when the
    outbox reaches Redis a different record under a used key is refused there: not charged, its
    refusal in the shared ledger, an error logged; the same record again is a plain duplicate."""
    url = f"{aof_redis.endpoint}/13"
    accounts = await replica(section(*CHAIN), url=url)

    async def shared_ledger() -> list[LedgerEntry]:
        return stream_entries(redis_space, url)

    books = Books([accounts], shared_ledger)
    await books.record(usage("0.25"), "k-away")
    aof_redis.stop()  # what Redis holds survives in its AOF
    for amount in ("0.75", "0.25"):
        deferred = await books.record(usage(amount), "k-away")
        assert not deferred.duplicate  # answered as recorded: the check waits for Redis
    assert accounts.pending() == 2
    aof_redis.start()
    with capture_logs() as logs:
        assert await accounts.flush_outbox() == 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["usage_idempotency_key_reused_on_replay"]
    charged, refused = await books.ledger()
    assert [e.cost_nanos for e in charged] == [USD // 4]
    assert [(e.error_code, e.metadata["refused_amount_nanos"]) for e in refused] == [(REUSED, 3 * USD // 4)]
    team = next(v for k, v in counters(redis_space, url).items() if ":b:team:" in k)
    assert team["spent"] == USD // 4
