"""Leases, overruns, refusals and idempotent usage on the accounts the pipeline uses (SQLite and no
budgets); the Redis versions are in test_budget_outbox.py."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from costproxy.budgets.accounts import LedgerAccounts, Reservation, lease_interval_s
from costproxy.budgets.book import BudgetEvent, usage_entry
from costproxy.budgets.codec import usage_from_json
from costproxy.ledger.entry import LedgerEntry
from costproxy.observability import budget_event_metrics
from costproxy.store.sqlite import SqliteStore
from tests.integration.test_budget_sqlite import ALICE, USD, FakeClock, Opener, chain_specs, entry, open_accounts
from tests.polling import eventually

__all__ = ["open_accounts"]


async def test_a_renewed_lease_outlives_its_ttl_and_an_abandoned_one_is_reclaimed(open_accounts: Opener) -> None:
    accounts, _ = await open_accounts(chain_specs(user=USD), clock=time.time, ttl=2.0)
    kept = await accounts.reserve("kept", ALICE, 400_000_000)
    dropped = await accounts.reserve("dropped", ALICE, 400_000_000)
    renewing_until = time.monotonic() + 2.6  # the scenario: renewing for longer than the 2 s TTL; the leases hold
    while time.monotonic() < renewing_until:
        assert await accounts.renew(kept) and await accounts.renew(dropped)
        await asyncio.sleep(lease_interval_s(2.0) / 2)
    assert (await accounts.status("user")).reserved_nanos == 800_000_000

    async def reclaimed() -> bool:  # now only ``kept`` is renewed: ``dropped`` lapses
        assert await accounts.renew(kept)
        return (await accounts.status("user")).reserved_nanos == 400_000_000

    await eventually(reclaimed, interval=lease_interval_s(2.0) / 2, what="the abandoned lease reclaimed")
    assert not await accounts.renew(dropped), "a lease nobody renews is reclaimed"
    assert await accounts.renew(kept)
    assert (await accounts.status("user")).reserved_nanos == 400_000_000  # only the live lease holds money
    await accounts.settle(kept, entry("kept", 300_000_000))
    assert not await accounts.renew(kept)  # settled: nothing left to renew
    await accounts.settle(dropped, entry("dropped", 100_000_000))  # a late settle still charges
    status = await accounts.status("user")
    assert (status.spent_nanos, status.reserved_nanos) == (400_000_000, 0)


@pytest.mark.parametrize("ttl", [0.0, -1.0, math.inf, math.nan])
async def test_a_lease_must_be_a_positive_number(open_accounts: Opener, ttl: float) -> None:
    accounts, _ = await open_accounts(chain_specs())
    reservation = await accounts.reserve("r", ALICE, 10)
    with pytest.raises(ValueError, match="positive"):
        await accounts.renew(reservation, ttl)


async def test_an_overrun_is_charged_evented_and_counted(open_accounts: Opener) -> None:
    accounts, store = await open_accounts(chain_specs(user=USD))
    events: list[BudgetEvent] = []
    registry = CollectorRegistry()
    accounts.subscribe(events.append)
    accounts.subscribe(budget_event_metrics(registry))
    reservation = await accounts.reserve("r1", ALICE, 100)
    await accounts.settle(reservation, entry("r1", 130))  # the provider billed more than reserved
    overruns = [e for e in events if e.kind == "overrun"]
    assert sorted(e.budget_id for e in overruns) == ["org", "team", "user"]
    assert {(e.overrun_nanos, e.spent_nanos, e.request_id) for e in overruns} == {(30, 130, "r1")}
    assert registry.get_sample_value("costproxy_budget_overruns_total", {"scope": "user"}) == 1
    assert registry.get_sample_value("costproxy_budget_overrun_nanos_total", {"scope": "team"}) == 30
    assert (await accounts.status("user")).spent_nanos == 130  # the ledger and counters record the truth
    await store.flush()
    [[charged]] = await store.query("SELECT cost_nanos FROM ledger WHERE request_id = 'r1'")
    assert charged == 130
    view = await accounts.view(ALICE)
    assert view.remaining_nanos == USD - 130  # the next request sees the new balance
    await accounts.settle(await accounts.reserve("r2", ALICE, 100), entry("r2", 100))
    assert len([e for e in events if e.kind == "overrun"]) == 3  # no event when within the reservation


def refused(request_id: str) -> LedgerEntry:
    return LedgerEntry(request_id=request_id, ts_ms=int(time.time() * 1000), endpoint="chat/completions",
                       status="error", http_status=429, user="alice", team="core", org="acme", key_id="key1",
                       error_code="budget_exceeded", cost_nanos=999, prompt_tokens=12)


async def test_refusals_are_ledger_entries_that_touch_no_budget(open_accounts: Opener, tmp_path: Path) -> None:
    accounts, store = await open_accounts(chain_specs(user=USD))
    await accounts.record_refusal(refused("no-1"))
    await store.flush()
    [row] = await store.query("SELECT status, cost_nanos, prompt_tokens, error_code, http_status FROM ledger")
    assert tuple(row) == ("refused", 0, 0, "budget_exceeded", 429)
    assert (await accounts.status("user")).spent_nanos == 0
    plain = SqliteStore(str(tmp_path / "plain.sqlite3"), flush_interval=0.01)
    await plain.open()
    try:
        ledger = LedgerAccounts(plain)
        assert await ledger.renew(Reservation("x", 5), 1.0)
        await ledger.record_refusal(refused("no-2"))
        await plain.flush()
        assert [tuple(r) for r in await plain.query("SELECT status, cost_nanos FROM ledger")] == [("refused", 0)]
    finally:
        await plain.close()


async def test_identical_usage_records_charge_once(open_accounts: Opener) -> None:
    accounts, store = await open_accounts(chain_specs(team=5 * USD), clock=FakeClock())
    record = usage_from_json({"amount": "0.25", "source": "relaycore"}, now_ms=0)
    spec = accounts.budgets.require("team")
    results = await asyncio.gather(*(accounts.record_usage("team", record.amount_nanos,
                                                           usage_entry(record, spec, f"u{n}"), idempotency_key="k-1")
                                     for n in range(20)))
    assert sorted(r.duplicate for r in results) == [False] + [True] * 19
    other = await accounts.record_usage("team", record.amount_nanos, usage_entry(record, spec, "u-other"),
                                        idempotency_key="k-2")
    assert not other.duplicate
    assert (await accounts.status("team")).spent_nanos == 500_000_000
    await store.flush()
    [[rows, total]] = await store.query("SELECT COUNT(*), SUM(cost_nanos) FROM ledger")
    assert (rows, total) == (2, 500_000_000)
    await accounts.close()
    await store.close()
    again, store = await open_accounts(chain_specs(team=5 * USD), clock=FakeClock())  # claims survive a restart
    repeat = await again.record_usage("team", record.amount_nanos, usage_entry(record, spec, "u-late"),
                                      idempotency_key="k-1")
    assert repeat.duplicate and repeat.status.spent_nanos == 500_000_000
