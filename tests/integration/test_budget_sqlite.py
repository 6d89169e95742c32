"""SQLite budget accounts: exact enforcement under concurrency, restart, TTL reclaim, roll-over, overrides."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from costproxy.budgets.book import BudgetEvent, BudgetReservation
from costproxy.budgets.definitions import BudgetStore, SqliteDefinitions, ensure_budget_schema
from costproxy.budgets.model import BudgetOverride, BudgetSpec, Threshold, ThresholdAction
from costproxy.budgets.sqlite import SqliteBudgetAccounts
from costproxy.errors import BudgetExceeded, Forbidden, InvalidRequest, NotFound
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry
from costproxy.store.sqlite import SqliteStore
from tests.polling import eventually

USD = 1_000_000_000
ALICE = Principal(key_id="key1", user="alice", team="core", org="acme")
T0 = 1_795_600_000.0  # 2026-11-25T07:06:40Z


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chain_specs(org: int = 10 * USD, team: int = 5 * USD, user: int = 1 * USD) -> list[BudgetSpec]:
    return [BudgetSpec(id="org", scope_type="org", scope_id="acme", limit_nanos=org, period="monthly"),
            BudgetSpec(id="team", scope_type="team", scope_id="core", limit_nanos=team, period="weekly"),
            BudgetSpec(id="user", scope_type="user", scope_id="alice", limit_nanos=user, period="daily")]


def entry(request_id: str, cost: int, status: str = "ok") -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=0, endpoint="chat/completions", status=status,
                       http_status=200, user="alice", team="core", org="acme", key_id="key1", cost_nanos=cost)


Opener = Callable[..., Awaitable[tuple[SqliteBudgetAccounts, SqliteStore]]]


@pytest.fixture
async def open_accounts(tmp_path: Path) -> AsyncIterator[Opener]:
    opened: list[tuple[SqliteBudgetAccounts, SqliteStore]] = []

    async def make(specs: Sequence[BudgetSpec] = (), *, clock: FakeClock | None = None, ttl: float = 900.0,
                   name: str = "ledger.sqlite3") -> tuple[SqliteBudgetAccounts, SqliteStore]:
        store = SqliteStore(str(tmp_path / name), flush_interval=0.01)
        await store.open()
        await ensure_budget_schema(store)
        budgets = BudgetStore(SqliteDefinitions(store), [replace(s, source="config") for s in specs],
                              clock=clock or FakeClock())
        await budgets.load()
        accounts = SqliteBudgetAccounts(store, budgets, clock=clock or FakeClock(), reservation_ttl_s=ttl,
                                        checkpoint_interval_s=0.05)
        await accounts.open()
        opened.append((accounts, store))
        return accounts, store

    yield make
    for accounts, store in opened:
        if store._conn is not None:
            await accounts.close()
            await store.close()


async def close(accounts: SqliteBudgetAccounts, store: SqliteStore) -> None:
    await accounts.close()
    await store.close()


async def ledger_by_budget(store: SqliteStore) -> dict[str, int]:
    rows = await store.query("SELECT j.key, SUM(l.cost_nanos) FROM ledger l, json_each(l.metadata, '$.budgets') j"
                             " GROUP BY j.key")
    return {r[0]: r[1] for r in rows}


async def turns(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def one_request(accounts: SqliteBudgetAccounts, rng: random.Random, number: int,
                      reported: list[int]) -> str:
    worst = rng.randint(1_000, 60_000_000)
    # Arrivals spread over, and calls lasting, a number of event-loop turns rather than of
    # milliseconds: with wall-clock sleeps a loaded machine compressed the arrivals against the
    # calls and changed the mix of outcomes (542 refused, 45 settled), not the accounting.
    await turns(rng.randint(0, 200))
    try:
        reservation = await accounts.reserve(f"req-{number % 37}", ALICE, worst)  # ids repeat on purpose
    except BudgetExceeded:
        return "refused"
    await turns(rng.randint(0, 20))
    roll = rng.random()
    if roll < 0.2:
        await accounts.release(reservation, None)  # upstream failed before any usage
        return "released"
    cost = worst if roll > 0.9 else rng.randint(0, worst)
    reported.append(cost)
    await accounts.settle(reservation, entry(reservation.request_id, cost))
    return "settled"


async def test_concurrent_requests_never_overspend_and_ledger_matches(open_accounts: Opener) -> None:
    specs = chain_specs(org=3 * USD, team=2 * USD, user=1 * USD)
    accounts, store = await open_accounts(specs)
    rng = random.Random(7)
    reported: list[int] = []
    outcomes = await asyncio.gather(*(one_request(accounts, rng, n, reported) for n in range(600)))
    assert outcomes.count("refused") > 50 and outcomes.count("settled") > 50
    for spec in specs:
        status = await accounts.status(spec.id)
        assert status.spent_nanos <= spec.limit_nanos, spec.id
        assert status.reserved_nanos == 0
    assert accounts.held_nanos() == 0
    assert (await accounts.status("user")).spent_nanos == sum(reported)
    await store.flush()
    [[total]] = await store.query("SELECT SUM(cost_nanos) FROM ledger")
    assert total == sum(reported)
    assert await ledger_by_budget(store) == {"org": sum(reported), "team": sum(reported), "user": sum(reported)}


async def test_chain_is_all_or_nothing(open_accounts: Opener) -> None:
    accounts, _ = await open_accounts(chain_specs(org=10, team=100, user=100))
    first = await accounts.reserve("r1", ALICE, 8)
    with pytest.raises(BudgetExceeded) as info:
        await accounts.reserve("r2", ALICE, 5)
    assert info.value.details["budget_id"] == "org" and info.value.headers["x-should-retry"] == "false"
    assert "'org'" in info.value.message
    assert [(await accounts.status(b)).reserved_nanos for b in ("org", "team", "user")] == [8, 8, 8]
    await accounts.release(first, None)
    assert accounts.held_nanos() == 0


async def test_restart_rebuilds_counters_from_the_ledger(open_accounts: Opener) -> None:
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(), clock=clock)
    events: list[BudgetEvent] = []
    accounts.subscribe(events.append)
    reservation = await accounts.reserve("r1", ALICE, USD)
    await accounts.settle(reservation, entry("r1", 600_000_000))
    assert [e.threshold for e in events if e.kind == "threshold_crossed"] == [50]
    await close(accounts, store)
    again, store2 = await open_accounts(chain_specs(), clock=clock)
    again_events: list[BudgetEvent] = []
    again.subscribe(again_events.append)
    assert (await again.status("user")).spent_nanos == 600_000_000
    assert (await again.status("org")).spent_nanos == 600_000_000
    reservation = await again.reserve("r2", ALICE, 100_000_000)
    await again.settle(reservation, entry("r2", 100_000_000))
    assert [e.threshold for e in again_events if e.kind == "threshold_crossed"] == []  # 50 % fired before
    with pytest.raises(BudgetExceeded):
        await again.reserve("r3", ALICE, 300_000_001)
    await close(again, store2)
    [[checkpointed]] = await _read(store2.path, "SELECT spent_nanos FROM budget_spend WHERE budget_id = 'user'")
    assert checkpointed == 700_000_000


async def _read(path: str, sql: str) -> list[Any]:
    store = SqliteStore(path)
    await store.open()
    try:
        return [tuple(r) for r in await store.query(sql)]
    finally:
        await store.close()


async def test_expired_reservations_are_reclaimed_and_late_settles_still_charge(open_accounts: Opener) -> None:
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(user=USD), clock=clock, ttl=10)
    stuck = await accounts.reserve("stuck", ALICE, USD)
    with pytest.raises(BudgetExceeded):
        await accounts.reserve("next", ALICE, 1)
    clock.advance(11)
    assert accounts.reclaim_expired() == 1
    assert accounts.held_nanos() == 0
    ok = await accounts.reserve("next", ALICE, 400_000_000)
    await accounts.settle(stuck, entry("stuck", 300_000_000))  # the stuck call finally finished
    await accounts.settle(ok, entry("next", 400_000_000))
    assert (await accounts.status("user")).spent_nanos == 700_000_000
    assert accounts.held_nanos() == 0
    await store.flush()
    assert (await ledger_by_budget(store))["user"] == 700_000_000


async def test_period_roll_over_with_a_fake_clock(open_accounts: Opener) -> None:
    # 2026-11-25 23:59:30 in New York is 2026-11-26T04:59:30Z.
    clock = FakeClock(1_795_669_170.0)
    daily = BudgetSpec(id="ny-daily", scope_type="user", scope_id="alice", limit_nanos=USD, period="daily",
                       timezone="America/New_York")
    accounts, store = await open_accounts([daily], clock=clock)
    events: list[BudgetEvent] = []
    accounts.subscribe(events.append)
    late = await accounts.reserve("late", ALICE, USD)
    assert isinstance(late, BudgetReservation) and late.period_keys == ("2026-11-25",)
    with pytest.raises(BudgetExceeded):
        await accounts.reserve("blocked", ALICE, 1)
    clock.advance(60)  # midnight passed in New York
    fresh = await accounts.reserve("fresh", ALICE, USD)
    assert isinstance(fresh, BudgetReservation) and fresh.period_keys == ("2026-11-26",)
    await accounts.settle(late, entry("late", USD))  # charged to the day it was reserved in
    await accounts.settle(fresh, entry("fresh", 250_000_000))
    status = await accounts.status("ny-daily")
    assert (status.window.key, status.spent_nanos, status.reserved_nanos) == ("2026-11-26", 250_000_000, 0)
    assert [(e.period_key, e.threshold) for e in events if e.kind == "threshold_crossed"] == [
        ("2026-11-25", 50), ("2026-11-25", 80), ("2026-11-25", 100)]
    assert [e.kind for e in events].count("exhausted") == 1
    await store.flush()
    rows = await store.query("SELECT request_id, json_extract(metadata, '$.budgets.\"ny-daily\"') FROM ledger")
    assert sorted(tuple(r) for r in rows) == [("fresh", "2026-11-26"), ("late", "2026-11-25")]


async def test_require_approval_gate_and_temporary_increase(open_accounts: Opener) -> None:
    clock = FakeClock()
    gated = BudgetSpec(id="team", scope_type="team", scope_id="core", limit_nanos=10 * USD,
                       thresholds=(Threshold(50), Threshold(80, (ThresholdAction("require-approval"),))))
    accounts, _ = await open_accounts([gated], clock=clock)
    reservation = await accounts.reserve("r1", ALICE, 8 * USD)
    await accounts.settle(reservation, entry("r1", 8 * USD))
    with pytest.raises(BudgetExceeded, match="requires approval"):
        await accounts.reserve("r2", ALICE, 1)
    assert (await accounts.check("team", 1)).can_proceed is False
    now_ms = int(clock() * 1000)
    await accounts.budgets.grant(BudgetOverride("ovr1", "team", "approval", now_ms, now_ms + 60_000,
                                                reason="quarter close"), actor="finance")
    await accounts.settle(await accounts.reserve("r2", ALICE, USD), entry("r2", USD))
    with pytest.raises(BudgetExceeded, match="cannot fit"):
        await accounts.reserve("r3", ALICE, 2 * USD)  # approval lifts the gate, not the limit
    await accounts.budgets.grant(BudgetOverride("ovr2", "team", "increase", now_ms, now_ms + 60_000,
                                                amount_nanos=5 * USD, reason="launch"), actor="finance")
    assert (await accounts.status("team")).limit_nanos == 15 * USD
    await accounts.release(await accounts.reserve("r3", ALICE, 2 * USD), None)
    clock.advance(61)
    assert (await accounts.status("team")).limit_nanos == 10 * USD
    with pytest.raises(BudgetExceeded):
        await accounts.reserve("r4", ALICE, 1)
    log = await accounts.budgets.audit_log("team")
    assert [r.action for r in log] == ["override.granted", "override.granted"]
    assert {r.actor for r in log} == {"finance"}


async def test_soft_budget_notifies_and_never_blocks(open_accounts: Opener) -> None:
    soft = BudgetSpec(id="soft", scope_type="user", scope_id="alice", limit_nanos=100, on_exhausted="notify")
    accounts, _ = await open_accounts([soft])
    events: list[BudgetEvent] = []
    accounts.subscribe(events.append)
    for n in range(3):
        await accounts.settle(await accounts.reserve(f"r{n}", ALICE, 80), entry(f"r{n}", 80))
    status = await accounts.status("soft")
    assert status.spent_nanos == 240 and status.status == "exhausted"
    assert [e.threshold for e in events if e.kind == "threshold_crossed"] == [50, 80, 100]
    view = await accounts.view(ALICE)
    assert view.remaining_nanos is None and view.fields["budget.user.status"] == "exhausted"


async def test_view_feeds_steering_and_selection(open_accounts: Opener) -> None:
    specs = [BudgetSpec(id="team", scope_type="team", scope_id="core", limit_nanos=10 * USD, on_exhausted="downgrade",
                        thresholds=(Threshold(50, (ThresholdAction("restrict-models",
                                                                   tiers=frozenset({"economy"})),)),
                                    Threshold(80))),
             BudgetSpec(id="user", scope_type="user", scope_id="alice", limit_nanos=100 * USD)]
    accounts, _ = await open_accounts(specs)
    await accounts.settle(await accounts.reserve("r1", ALICE, 9 * USD), entry("r1", 9 * USD))
    view = await accounts.view(ALICE)
    assert view.remaining_nanos == USD and view.used_fraction == pytest.approx(0.9)
    assert view.fields["budget.team.status"] == "critical" and view.fields["budget.any.used_pct"] == 90.0
    assert view.fields["budget.user.used_pct"] == 9.0
    assert view.restrictions.allowed_tiers == frozenset({"economy"})
    assert view.restrictions.downgrade is True and view.restrictions.max_cost_nanos == USD
    # on_exhausted: downgrade without targets may switch a named model, within its provider only
    assert view.restrictions.may_switch and view.restrictions.same_provider
    assert (await accounts.view(Principal(key_id="other"))).fields == {}


async def test_usage_recorded_by_other_systems(open_accounts: Opener) -> None:
    accounts, store = await open_accounts(chain_specs())
    from costproxy.budgets.book import usage_entry
    from costproxy.budgets.codec import usage_from_json

    record = usage_from_json({"amount": "0.25", "source": "relaycore", "metadata": {"requestId": "ext-1"}},
                             now_ms=int(T0 * 1000))
    recorded = await accounts.record_usage("team", record.amount_nanos,
                                           usage_entry(record, accounts.budgets.require("team"), "usage-1"))
    status = recorded.status
    assert status.spent_nanos == 250_000_000
    assert (await accounts.status("org")).spent_nanos == 0  # only the named budget
    await store.flush()
    [row] = await store.query("SELECT request_id, source, cost_nanos, metadata FROM ledger")
    assert (row[0], row[1], row[2]) == ("ext-1", "relaycore", 250_000_000)
    assert await ledger_by_budget(store) == {"team": 250_000_000}


async def test_store_crud_is_validated_and_audited(open_accounts: Opener) -> None:
    accounts, _ = await open_accounts(chain_specs())
    budgets = accounts.budgets
    created = await budgets.create(BudgetSpec(id="proj", scope_type="project", scope_id="p1", limit_nanos=USD,
                                              parent_id="team"), actor="admin")
    assert created.created_by == "admin" and created.created_at_ms and created.source == "api"
    with pytest.raises(InvalidRequest, match="already exists"):
        await budgets.create(created, actor="admin")
    with pytest.raises(InvalidRequest, match="parentBudgetId"):
        await budgets.create(replace(created, id="orphan", parent_id="nope"), actor="admin")
    with pytest.raises(Forbidden, match="read-only"):
        await budgets.update(replace(budgets.require("team"), limit_nanos=1), actor="admin")
    child = await budgets.create(BudgetSpec(id="proj-child", scope_type="project", scope_id="p2",
                                            limit_nanos=USD, parent_id="proj"), actor="admin")
    with pytest.raises(InvalidRequest, match="cycle"):
        await budgets.update(replace(created, parent_id=child.id), actor="admin")
    updated = await budgets.update(replace(created, limit_nanos=2 * USD), actor="lead")
    assert updated.created_by == "admin" and updated.limit_nanos == 2 * USD
    principal = replace(ALICE, project="p1")
    assert [c.spec.id for c in accounts.chain(principal, int(T0 * 1000))][-2:] == ["proj", "user"]
    with pytest.raises(InvalidRequest, match="parent of proj-child"):
        await budgets.delete("proj", actor="lead")
    await budgets.delete("proj-child", actor="lead")
    await budgets.delete("proj", actor="lead")
    with pytest.raises(NotFound):
        budgets.require("proj")
    actions = [r.action for r in await budgets.audit_log("proj")]
    assert actions == ["budget.deleted", "budget.updated", "budget.created"]
    assert len(await budgets.audit_log()) == 5


async def test_dynamic_budgets_survive_restart(open_accounts: Opener) -> None:
    accounts, store = await open_accounts(chain_specs())
    await accounts.budgets.create(BudgetSpec(id="k", scope_type="key", scope_id="key1", limit_nanos=5,
                                             start_date=date(2026, 1, 1), timezone="Asia/Tokyo"), actor="a")
    await close(accounts, store)
    again, _ = await open_accounts(chain_specs())
    assert again.budgets.require("k").timezone == "Asia/Tokyo"
    with pytest.raises(BudgetExceeded, match="'k'"):
        await again.reserve("r", ALICE, 6)


async def test_the_backend_opens_budget_accounts_from_settings(write_config: Any, tmp_path: Path) -> None:
    from costproxy.store.backend import open_backend
    from tests.conftest import load_test_settings

    path = write_config("http://127.0.0.1:9/v1", extra={"budgets": {"definitions": [
        {"id": "acme", "scope_type": "org", "scope_id": "acme", "limit_usd": "1"}]}})
    backend = await open_backend(load_test_settings(path))
    try:
        assert backend.kind == "sqlite" and backend.budgets is backend.accounts
        assert isinstance(backend.accounts, SqliteBudgetAccounts)
        assert backend.accounts.budgets.require("acme").read_only
        with pytest.raises(BudgetExceeded):
            await backend.accounts.reserve("r", ALICE, USD + 1)
    finally:
        await backend.close()
    disabled = write_config("http://127.0.0.1:9/v1", extra={"budgets": {"enabled": False}})
    backend = await open_backend(load_test_settings(disabled))
    try:
        assert backend.budgets is None and not isinstance(backend.accounts, SqliteBudgetAccounts)
    finally:
        await backend.close()


async def test_proxy_requests_on_sqlite_never_overspend(make_proxy: Any) -> None:
    """The same invariants through the HTTP path of one proxy on the embedded default."""
    from costproxy.http.state import SERVICES

    limit = 1_000_000  # $0.001 for team core
    proxy = await make_proxy(extra={"budgets": {"definitions": [
        {"id": "core", "scope_type": "team", "scope_id": "core", "limit_usd": "0.001", "period": "daily"},
        {"id": "acme", "scope_type": "org", "scope_id": "acme", "limit_usd": "1"}]}})
    rng = random.Random(11)
    prices = {"small": (150, 600), "backup": (100, 400)}

    async def one(n: int) -> int:
        kind = rng.choice(["unary", "unary", "stream", "leave", "fail"])
        directive = "[[sim:fault=500]]" if kind == "fail" else f"[[sim:tokens={rng.randint(5, 60)}]]"
        body: dict[str, Any] = {"model": "small", "max_tokens": 100,
                                "messages": [{"role": "user", "content": f"hello {n} {directive}"}]}
        if kind in ("stream", "leave"):
            body["stream"] = True
        resp = await proxy.client.post("/v1/chat/completions", json=body,
                                       headers={**proxy.auth(), "X-Request-ID": f"h-{n}"})
        if resp.status == 429:
            error = (await resp.json())["error"]
            assert error["code"] == "budget_exceeded" and "core" in error["message"]  # names the budget
            assert resp.headers["x-should-retry"] == "false"
        elif kind == "leave" and resp.status == 200:
            await resp.content.readline()
            resp.close()
            return 499
        else:
            await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(one(n) for n in range(200)))
    accounts = proxy.app[SERVICES].accounts
    assert isinstance(accounts, SqliteBudgetAccounts)
    await eventually(lambda: accounts.held_nanos() == 0, what="streams whose clients left settled")
    status = await accounts.status("core")
    assert statuses.count(429) > 0 and statuses.count(200) > 5 and 422 not in statuses
    assert status.spent_nanos <= limit and accounts.held_nanos() == 0
    ledger = await proxy.ledger()
    assert sum(e.cost_nanos for e in ledger) == status.spent_nanos
    calls = {c.headers.get("x-request-id"): c for c in proxy.sim.calls}
    for entry_ in (e for e in ledger if e.usage_reported and e.cost_nanos):
        call_ = calls[entry_.request_id]
        price_in, price_out = prices[call_.model or "small"]
        assert entry_.cost_nanos == call_.prompt_tokens * price_in + call_.completion_tokens * price_out
