"""The SQLite store's reservation journal (``budgets/journal.py``): rows ride in the ledger batches, go
with the entry that settles them, and what a dead process left is charged as ``lapsed`` exactly once.

A crash is a copy of the file made with SQLite's backup API while the process runs: it holds what was
committed and nothing that was only queued, which is exactly what a SIGKILL leaves on disk."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from costproxy.background import cancel_and_wait
from costproxy.budgets.book import BudgetReservation
from costproxy.budgets.journal import ReservationJournal, lapse_sync
from costproxy.errors import StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.store.sqlite import SqliteStore
from tests.integration.test_budget_sqlite import ALICE, USD, FakeClock, Opener, chain_specs, close, entry, open_accounts

__all__ = ["open_accounts"]  # the fixture of test_budget_sqlite


async def explicit_flushes_only(store: SqliteStore) -> None:
    """Stop the writer's timer: from now on only ``flush()`` writes, so a test decides what is on disk."""
    if store._flusher is not None:
        await cancel_and_wait([store._flusher])
        store._flusher = None


async def crash_copy(store: SqliteStore, name: str) -> str:
    """The file as a SIGKILL at this instant would leave it (committed transactions only)."""
    target = str(Path(store.path).with_name(name))

    def copy() -> None:
        source, dest = sqlite3.connect(store.path), sqlite3.connect(target)
        try:
            source.backup(dest)
        finally:
            source.close()
            dest.close()

    await asyncio.to_thread(copy)
    return target


async def journal_rows(store: SqliteStore) -> dict[str, dict[str, Any]]:
    rows = await store.query("SELECT body FROM budget_reservations")
    return {json.loads(r[0])["request_id"]: json.loads(r[0]) for r in rows}


async def lapsed(store: SqliteStore) -> list[tuple[str, int, dict[str, Any]]]:
    rows = await store.query("SELECT request_id, cost_nanos, usage_reported, error_code, metadata, ts_ms FROM ledger"
                             " WHERE status = 'lapsed' ORDER BY request_id")
    assert all(r[2] == 0 and r[3] == "replica_lost" for r in rows)
    return [(r[0], r[1], json.loads(r[4])) for r in rows]


async def test_a_reservation_is_on_disk_after_one_batch_and_leaves_with_its_entry(open_accounts: Opener) -> None:
    accounts, store = await open_accounts(chain_specs())
    await explicit_flushes_only(store)
    reservation = await accounts.reserve("r1", ALICE, USD // 10)
    assert await _committed(store, "SELECT body FROM budget_reservations") == []  # not on the request path
    await store.flush()
    [row] = (await journal_rows(store)).values()
    assert row == {"request_id": "r1", "amount_nanos": USD // 10, "key_id": "key1", "user": "alice", "team": "core",
                   "org": "acme", "project": None, "budgets": dict(zip(reservation.budget_ids,
                                                                       reservation.period_keys, strict=True))}
    await accounts.settle(reservation, entry("r1", USD // 20))
    assert accounts.journal.pending and len(await journal_rows(store)) == 0  # query flushed: row and entry went
    [[count]] = await store.query("SELECT COUNT(*) FROM ledger WHERE request_id = 'r1' AND status = 'ok'")
    assert count == 1


async def test_a_reservation_settled_within_one_batch_never_reaches_the_disk(open_accounts: Opener) -> None:
    accounts, store = await open_accounts(chain_specs())
    await explicit_flushes_only(store)
    reservation = await accounts.reserve("quick", ALICE, USD // 10)
    await accounts.settle(reservation, entry("quick", 1))
    released = await accounts.reserve("failed", ALICE, USD // 10)
    await accounts.release(released, None)
    assert not accounts.journal.pending  # nothing for the batch to write
    await store.flush()
    assert await journal_rows(store) == {}


async def test_a_failed_batch_keeps_the_entry_and_the_row_together(open_accounts: Opener) -> None:
    """The entry and the removal of its reservation commit together: a batch that fails writes neither,
    and the retry writes both, even with a close of an earlier reservation queued meanwhile."""
    accounts, store = await open_accounts(chain_specs())
    await explicit_flushes_only(store)
    first = await accounts.reserve("first", ALICE, USD // 10)
    await store.flush()
    second = await accounts.reserve("second", ALICE, USD // 10)
    await accounts.settle(first, entry("first", 7))

    class Broken:
        pending = True

        def take(self) -> None:
            return None

        def write(self, conn: sqlite3.Connection, taken: None) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        def restore(self, taken: None) -> None:
            pass

    store.riders.append(Broken())
    with pytest.raises(StoreUnavailable):
        await store.flush()
    store.riders.pop()
    assert sorted(await _committed(store, "SELECT body FROM budget_reservations")) == ["first"]
    assert await _committed(store, "SELECT request_id FROM ledger") == []
    await accounts.settle(second, entry("second", 9))  # its row never reached the disk: nothing to delete
    await store.flush()
    assert await journal_rows(store) == {}
    assert sorted(r[0] for r in await store.query("SELECT request_id FROM ledger")) == ["first", "second"]


async def _committed(store: SqliteStore, sql: str) -> list[str]:
    """Rows as committed, without flushing what is queued (``store.query`` would)."""
    rows = await store.run(lambda: store.conn().execute(sql).fetchall())
    return [json.loads(r[0])["request_id"] if r[0].startswith("{") else r[0] for r in rows]


async def test_restart_charges_what_a_dead_process_held_as_lapsed_exactly_once(open_accounts: Opener) -> None:
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(), clock=clock, ttl=60)
    await explicit_flushes_only(store)
    done = await accounts.reserve("done", ALICE, USD // 10)
    await accounts.settle(done, entry("done", USD // 20))
    long = await accounts.reserve("long", ALICE, USD // 4)
    await store.flush()
    for _ in range(5):  # a long stream renews its lease: renewals are not written, the row stands
        clock.advance(50)
        assert await accounts.renew(long)
    await accounts.reserve("short", ALICE, USD // 8)
    await store.flush()
    queued = await accounts.reserve("queued", ALICE, USD // 16)  # within the last flush_interval: lost
    crashed = await crash_copy(store, "crashed.sqlite3")
    await accounts.settle(queued, entry("queued", 1))

    after, store2 = await open_accounts(chain_specs(), clock=clock, name=Path(crashed).name)
    charged = await lapsed(store2)
    assert [(r, c) for r, c, _ in charged] == [("long", USD // 4), ("short", USD // 8)]
    for request_id, _, metadata in charged:
        assert metadata["budgets"] == dict(zip(long.budget_ids, long.period_keys, strict=True)), request_id
        assert metadata["lapsed"]["store"] == "sqlite" and "may have billed" in metadata["lapsed"]["reason"]
    total = USD // 20 + USD // 4 + USD // 8
    for budget_id in ("org", "team", "user"):
        status = await after.status(budget_id)
        assert (status.spent_nanos, status.reserved_nanos) == (total, 0), budget_id
    assert await journal_rows(store2) == {}
    await close(after, store2)
    again, store3 = await open_accounts(chain_specs(), clock=clock, name=Path(crashed).name)
    assert len(await lapsed(store3)) == 2
    assert (await again.status("user")).spent_nanos == total


@pytest.mark.parametrize("checkpoint_after_reserve", [False, True])
async def test_a_lapsed_charge_counts_once_whether_or_not_a_checkpoint_followed(
        open_accounts: Opener, checkpoint_after_reserve: bool) -> None:
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(), clock=clock)
    done = await accounts.reserve("done", ALICE, USD // 10)
    await accounts.settle(done, entry("done", USD // 10))
    await accounts.checkpoint()
    await accounts.reserve("held", ALICE, USD // 5)
    await store.flush()
    if checkpoint_after_reserve:
        await accounts.checkpoint()
    crashed = await crash_copy(store, "crashed.sqlite3")
    after, store2 = await open_accounts(chain_specs(), clock=clock, name=Path(crashed).name)
    assert (await after.status("team")).spent_nanos == USD // 10 + USD // 5
    [[checkpointed]] = await store2.query("SELECT spent_nanos FROM budget_spend WHERE budget_id = 'team'")
    assert checkpointed == USD // 10 + USD // 5
    await close(after, store2)
    again, _ = await open_accounts(chain_specs(), clock=clock, name=Path(crashed).name)
    assert (await again.status("team")).spent_nanos == USD // 10 + USD // 5


async def test_a_lapsed_charge_goes_to_the_periods_it_was_reserved_in(open_accounts: Opener) -> None:
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(), clock=clock)
    held = await accounts.reserve("yesterday", ALICE, USD // 5)
    await store.flush()
    crashed = await crash_copy(store, "crashed.sqlite3")
    clock.advance(2 * 86_400)  # restarted two days later: the daily budget is in another period
    after, store2 = await open_accounts(chain_specs(), clock=clock, name=Path(crashed).name)
    [(_, cost, metadata)] = await lapsed(store2)
    periods = dict(zip(held.budget_ids, held.period_keys, strict=True))
    assert cost == USD // 5 and metadata["budgets"] == periods
    assert (await after.status("user")).spent_nanos == 0  # today's daily period owes nothing
    assert (await after.status("org")).spent_nanos == USD // 5  # the month is the same
    [[old_day]] = await store2.query("SELECT spent_nanos FROM budget_spend WHERE budget_id = 'user' AND period_key = ?",
                                     (periods["user"],))
    assert old_day == USD // 5


async def test_a_reclaimed_reservation_stays_on_disk_until_its_late_settle(open_accounts: Opener) -> None:
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(), clock=clock, ttl=10)
    stuck = await accounts.reserve("stuck", ALICE, USD // 5)
    clock.advance(11)
    assert accounts.reclaim_expired() == 1
    await store.flush()
    assert list(await journal_rows(store)) == ["stuck"]  # a crash now charges it: its call may be billed
    before_settle = await crash_copy(store, "before.sqlite3")
    await accounts.settle(stuck, entry("stuck", USD // 50))  # late: its actual cost, and the row goes
    await store.flush()
    assert await journal_rows(store) == {}
    after_settle = await crash_copy(store, "after.sqlite3")
    _, store2 = await open_accounts(chain_specs(), clock=clock, name=Path(before_settle).name)
    assert [(r, c) for r, c, _ in await lapsed(store2)] == [("stuck", USD // 5)]
    late, store3 = await open_accounts(chain_specs(), clock=clock, name=Path(after_settle).name)
    assert await lapsed(store3) == []
    assert (await late.status("user")).spent_nanos == USD // 50


async def test_lapse_sync_quarantines_a_row_it_cannot_read(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "ledger.sqlite3"))
    await store.open()
    try:
        from costproxy.budgets.definitions import ensure_budget_schema

        await ensure_budget_schema(store)
        journal = ReservationJournal()
        good = BudgetReservation("ok-1", 5, ("b",), "1", ("2026-11",))
        journal.opened(good, Principal(user="u"), 1_000)
        # rows the writer must store anyway (the batch would fail for ever otherwise) and that cannot
        # become ledger rows: a lone surrogate in the request id, an amount beyond 64 bits
        journal.opened(BudgetReservation("bad-\ud800", 5, ("b",), "3", ("2026-11",)), Principal(), 1_001)
        journal.opened(BudgetReservation("huge", 2**70, ("b",), "4", ("2026-11",)), Principal(), 1_002)
        taken = journal.take()
        await store.run(lambda: _write(store, journal, taken))
        await store.execute("INSERT INTO budget_reservations (token, opened_ms, body) VALUES (2, 2, '{\"x\": 1}')")
        charged = await store.run(lambda: lapse_sync(store.conn(), 3_000))
        assert [(e.request_id, e.cost_nanos, e.ts_ms, e.metadata["budgets"]) for e in charged] == [
            ("ok-1", 5, 1_000, {"b": "2026-11"})]
        quarantined = [json.loads(r[0]) for r in await store.query("SELECT body FROM ledger_quarantine")]
        assert [q["token"] for q in quarantined] == [2, 3, 4] and quarantined[0]["body"] == '{"x": 1}'
        assert json.loads(quarantined[1]["body"])["request_id"] == "bad-\ud800"
        assert json.loads(quarantined[2]["body"])["amount_nanos"] == 2**70
        assert await store.query("SELECT * FROM budget_reservations") == []
        assert await store.run(lambda: lapse_sync(store.conn(), 4_000)) == []  # once
    finally:
        await store.close()


def _write(store: SqliteStore, journal: ReservationJournal, taken: Any) -> None:
    conn = store.conn()
    conn.execute("BEGIN")
    journal.write(conn, taken)
    conn.execute("COMMIT")


def test_a_close_after_a_failed_batch_still_cancels_its_open() -> None:
    journal = ReservationJournal()
    one = BudgetReservation("r", 1, ("b",), "1", ("p",))
    journal.opened(one, Principal(), 0)
    taken = journal.take()
    journal.closed("1")  # its batch is in flight: the close waits for the next one
    journal.restore(taken)  # the batch failed
    opened, closed = journal.take()
    assert list(opened) == ["1"] and closed == ["1"]  # written in that order: the row goes

    journal.opened(one, Principal(), 0)
    journal.restore(journal.take())
    journal.closed("1")  # the row never reached the disk: nothing to write at all
    assert not journal.pending



async def test_a_call_of_a_caller_without_any_budget_is_journaled_and_lapsed_too(open_accounts: Opener) -> None:
    """No budget applies to the caller, nothing is held — but the provider may bill the call all
    the same, so a crash during it must not drop it from the ledger (it did: only budgeted calls
    were journaled). Settled or released, it leaves no row."""
    clock = FakeClock()
    accounts, store = await open_accounts(chain_specs(), clock=clock)
    await explicit_flushes_only(store)
    stranger = Principal(key_id="key9", user="sam", team="elsewhere", org="other")
    assert (await accounts.view(stranger)).remaining_nanos is None  # no budget applies
    done = await accounts.reserve("done", stranger, 5_000)
    await accounts.settle(done, entry("done", 4_000))
    dropped = await accounts.reserve("dropped", stranger, 6_000)
    await accounts.release(dropped, None)
    await accounts.reserve("running", stranger, 7_000)
    await store.flush()
    assert set(await journal_rows(store)) == {"running"}
    crashed = await crash_copy(store, "crashed.sqlite3")
    after, store2 = await open_accounts(chain_specs(), clock=clock, name=Path(crashed).name)
    assert [(r, c, m["budgets"]) for r, c, m in await lapsed(store2)] == [("running", 7_000, {})]
    assert await journal_rows(store2) == {}
    await close(after, store2)
