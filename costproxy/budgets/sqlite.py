"""Budget enforcement for the embedded default: one process owns the SQLite file.

Because one process owns the file, the authoritative spent/reserved counters of each
(budget, period) live in this process's memory and every check-and-reserve is a handful of
integer operations on the event loop — no lock, no round trip, a few microseconds.

Durability: spend is not written separately.  Each settled ledger entry carries the budget
periods it was charged to (``metadata.budgets = {budget_id: period_key}``), so the ledger alone
is the record of every charge.  A checkpoint (every ``checkpoint_interval_s`` and at close) folds
ledger rows after the last checkpointed ``seq`` into ``budget_spend`` in one transaction; start-up
runs the same fold and loads the current periods.  Counters therefore equal the durable ledger
after a restart; a hard crash loses what the ledger loses (its last ``flush_interval``).

Reservations are held in memory, and journaled on disk without touching the request path
(``budgets/journal.py``): the journal rides in the ledger writer's batches, and a reservation's
row is deleted in the transaction that writes its request's ledger entry.  At start-up, before
the fold, the rows a dead process left are charged their worst case as ``lapsed`` entries, once.
A reservation opened less than one ``flush_interval`` before a crash may be lost with it (the
ledger's own window).  Each reservation is a lease of ``reservation_ttl_s`` that the running
request renews (``renew``, in memory only: at a restart every row left is charged, renewed or
not); a lease nobody renews (a hung request) is reclaimed by the maintenance task, ``renew`` then
answers False, and a late settle still charges the actual cost to the periods it was reserved in
(and removes the row: until then a crash charges the reclaimed reservation as lapsed).

Usage records with an idempotency key are claimed in ``usage_claims`` (with the record's
fingerprint) in the same SQLite transaction that writes their ledger entry, so two identical
records charge once, and a different record under a claimed key is refused: its refusal entry is
written in that transaction instead.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import structlog

from costproxy.background import cancel_and_wait
from costproxy.budgets.accounts import Reservation, lease_ms
from costproxy.budgets.book import (
    IDEMPOTENCY_TTL_MS,
    BudgetBook,
    BudgetReservation,
    CompiledBudget,
    Recorded,
    key_reused,
    overran,
    refusal,
    reused_entry,
    usage_fingerprint,
)
from costproxy.budgets.definitions import BudgetStore
from costproxy.budgets.journal import ReservationJournal, lapse_sync
from costproxy.budgets.status import Counters
from costproxy.errors import InvalidRequest, StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry, as_refusal
from costproxy.records import frozen
from costproxy.store.sqlite import INSERT_LEDGER, ROW_ERRORS, SqliteStore, ledger_row, rollback

log = structlog.get_logger("costproxy.budgets.model")

_FOLD = """
    INSERT INTO budget_spend (budget_id, period_key, spent_nanos)
    SELECT j.key, j.value, SUM(l.cost_nanos) FROM ledger AS l, json_each(l.metadata, '$.budgets') AS j
    WHERE l.seq > ? AND l.seq <= ? GROUP BY j.key, j.value
    ON CONFLICT (budget_id, period_key) DO UPDATE SET spent_nanos = spent_nanos + excluded.spent_nanos
"""


class _Counter:
    """Spent and reserved nano-USD of one budget period, and the thresholds already fired."""

    __slots__ = ("fired", "reserved", "spent")

    def __init__(self, spent: int = 0) -> None:
        self.spent = spent
        self.reserved = 0
        self.fired: dict[int, int] = {}


@dataclass(slots=True)
class _Held:
    expires_ms: int
    amount: int
    charged: tuple[tuple[CompiledBudget, str, _Counter], ...]
    reclaimed: bool = False
    request_id: str = field(default="")


@frozen
class _Claim:
    """A usage record's claim of its idempotency key: the entry to write if the key is free, the
    refusal to write if another record holds it."""

    budget_id: str
    key: str
    fingerprint: str
    entry: LedgerEntry
    refused: LedgerEntry


class SqliteBudgetAccounts(BudgetBook):
    def __init__(self, store: SqliteStore, budgets: BudgetStore, *, clock: Callable[[], float] = time.time,
                 reservation_ttl_s: float = 900.0, checkpoint_interval_s: float = 10.0) -> None:
        super().__init__(budgets, clock, reservation_ttl_s)
        self.store = store
        self.checkpoint_interval_s = checkpoint_interval_s
        self._table: dict[tuple[str, str], _Counter] = {}
        self._held: dict[str, _Held] = {}
        self._late: dict[str, _Held] = {}  # reclaimed, kept so a late settle charges the right period
        self._tokens = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self.journal = ReservationJournal()
        store.riders.append(self.journal)

    # --- life cycle ----------------------------------------------------------------------
    async def open(self) -> None:
        await self.lapse()
        await self.rebuild()
        self._task = asyncio.create_task(self._maintain(), name="costproxy-budget-maintenance")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        await self.checkpoint()

    async def lapse(self) -> int:
        """Charge the reservations a dead process left journaled (its calls may have been billed):
        each its worst case as a ``lapsed`` entry, in the periods it was reserved in.  Only at
        start-up, before ``rebuild`` folds them: no live process holds those rows (one serving
        process per file).  Returns how many."""
        await self.store.flush()
        now = self.now_ms()
        charged = await self.store.run(lambda: lapse_sync(self.store.conn(), now))
        if charged:
            log.warning("budget_reservations_lapsed", count=len(charged),
                        amount_nanos=sum(e.cost_nanos for e in charged),
                        request_ids=[e.request_id for e in charged[:100]])
        return len(charged)

    async def rebuild(self) -> None:
        """Counters of the current periods from the durable ledger (via the checkpoint table)."""
        await self.checkpoint()
        rows = await self.store.run(
            lambda: self.store.conn().execute("SELECT budget_id, period_key, spent_nanos FROM budget_spend")
            .fetchall())
        now = self.now_ms()
        self._sync()
        current = {(c.spec.id, self.window(c.spec, now).key): c for c in self._compiled.values()}
        self._table = {}
        for budget_id, period_key, spent in rows:
            compiled = current.get((budget_id, period_key))
            if compiled is None:
                continue
            counter = self._counter(budget_id, period_key)
            counter.spent = int(spent)
            limit = compiled.limit(now)
            # Thresholds already reached fired before the restart: do not fire them again.
            counter.fired = {t.percent: 0 for t in compiled.spec.thresholds if t.reached(counter.spent, limit)}

    async def checkpoint(self) -> None:
        """Fold ledger rows written since the last checkpoint into ``budget_spend``."""
        await self.store.flush()
        await self.store.run(self._checkpoint_sync)

    def _checkpoint_sync(self) -> None:
        conn = self.store.conn()
        conn.execute("BEGIN")
        try:
            row = conn.execute("SELECT value FROM budget_marks WHERE name = 'ledger_seq'").fetchone()
            mark = int(row[0]) if row else 0
            top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()[0]
            if top > mark:
                conn.execute(_FOLD, (mark, top))
                conn.execute("INSERT OR REPLACE INTO budget_marks (name, value) VALUES ('ledger_seq', ?)",
                             (str(top),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def _maintain(self) -> None:
        tick = max(0.05, min(1.0, self.ttl_ms / 4000))
        last_checkpoint = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            self.reclaim_expired()
            if time.monotonic() - last_checkpoint >= self.checkpoint_interval_s:
                last_checkpoint = time.monotonic()
                try:
                    await self.checkpoint()
                    await self.store.execute("DELETE FROM usage_claims WHERE ts_ms < ?",
                                             (self.now_ms() - IDEMPOTENCY_TTL_MS,))
                except StoreUnavailable as exc:
                    log.warning("budget_checkpoint_failed", error=str(exc))
                self._prune()

    # --- counters ------------------------------------------------------------------------
    def _counter(self, budget_id: str, period_key: str) -> _Counter:
        key = (budget_id, period_key)
        counter = self._table.get(key)
        if counter is None:
            counter = self._table[key] = _Counter()
        return counter

    def _counters(self, budget_id: str, period_key: str, now_ms: int) -> Counters:
        counter = self._table.get((budget_id, period_key))
        if counter is None:
            return Counters(as_of_ms=now_ms)
        return Counters(counter.spent, counter.reserved, dict(counter.fired), now_ms)

    def _amounts(self, budget_id: str, period_key: str, now_ms: int) -> tuple[int, int]:
        counter = self._table.get((budget_id, period_key))
        return (0, 0) if counter is None else (counter.spent, counter.reserved)

    def _prune(self) -> None:
        """Forget counters of past periods that hold nothing (the ledger keeps their history)."""
        now = self.now_ms()
        self._sync()
        live = {(c.spec.id, self.window(c.spec, now).key) for c in self._compiled.values()}
        for key in [k for k, c in self._table.items() if k not in live and c.reserved == 0]:
            del self._table[key]
        horizon = now - self.ttl_ms
        for token in [t for t, h in self._late.items() if h.expires_ms < horizon]:
            del self._late[token]

    # --- the Accounts contract -----------------------------------------------------------
    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        now = self.now_ms()
        chain = self.chain(principal, now)
        if not chain:  # nothing to hold, but journaled: a crash during the call still ledgers it (lapsed)
            reservation = BudgetReservation(request_id=request_id, amount_nanos=worst_case_nanos,
                                            token=str(next(self._tokens)))
            self.journal.opened(reservation, principal, now)
            return reservation
        return self._reserve(request_id, principal, chain, worst_case_nanos, now)

    def _reserve(self, request_id: str, principal: Principal, chain: tuple[CompiledBudget, ...], amount: int,
                 now: int) -> Reservation:
        # The race this closes: checking the remaining budget and then reserving after an
        # ``await`` lets every request in flight see the same free money and all of them pass.
        # Here the checks and the increments run with no ``await`` in between, on the one event
        # loop that owns these counters, so the first request to get here takes the money and the
        # next one sees it reserved.  Either every budget of the chain is charged or none is.
        charged: list[tuple[CompiledBudget, str, _Counter]] = []
        for compiled in chain:
            spec = compiled.spec
            key = self.window(spec, now).key
            counter = self._counter(spec.id, key)
            limit = compiled.limit(now)
            gated = compiled.gated(counter.spent, limit, now)
            if gated or (spec.hard and counter.spent + counter.reserved + amount > limit):
                available = limit - counter.spent - counter.reserved
                self.emit_blocked(spec, key, spent=counter.spent, limit=limit, now_ms=now, request_id=request_id,
                                  reason="approval required" if gated else "over budget")
                raise refusal(spec, gated=gated, amount=amount, available=available)
            charged.append((compiled, key, counter))
        for _, _, counter in charged:
            counter.reserved += amount
        token = str(next(self._tokens))
        self._held[token] = _Held(now + self.ttl_ms, amount, tuple(charged), request_id=request_id)
        reservation = BudgetReservation(request_id=request_id, amount_nanos=amount,
                                        budget_ids=tuple(c.spec.id for c, _, _ in charged), token=token,
                                        period_keys=tuple(k for _, k, _ in charged))
        self.journal.opened(reservation, principal, now)  # on disk with the next batch
        return reservation

    async def renew(self, reservation: Reservation, ttl_s: float | None = None) -> bool:
        length = lease_ms(ttl_s, self.ttl_ms)
        if not isinstance(reservation, BudgetReservation) or not reservation.budget_ids:
            return True  # nothing held
        held = self._held.pop(reservation.token, None)
        if held is None:
            return False  # reclaimed (or already settled): the money is no longer held
        held.expires_ms = self.now_ms() + length
        self._held[reservation.token] = held  # to the end: the dict stays in renewal order
        return True

    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        self._finish(reservation, entry, entry.cost_nanos)

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        self._finish(reservation, entry, 0 if entry is None else entry.cost_nanos)

    async def record_refusal(self, entry: LedgerEntry) -> None:
        self.store.append(as_refusal(entry))

    def _finish(self, reservation: Reservation, entry: LedgerEntry | None, cost: int) -> None:
        """Drop the reservation and charge ``cost`` on the periods it was taken in (no await)."""
        now = self.now_ms()
        held = self._take(reservation)
        if held is not None and cost:
            over = overran(reservation, cost)
            for compiled, key, counter in held.charged:
                before = counter.spent
                counter.spent += cost
                self._fire(compiled, key, counter, before=before, now=now, request_id=reservation.request_id)
                if over:
                    self.emit_overrun(compiled, key, spent=counter.spent, now_ms=now, request_id=reservation.request_id,
                                      reserved=reservation.amount_nanos, charged=cost)
        if entry is not None:
            self.store.append(self.tagged(entry, reservation))

    def _take(self, reservation: Reservation) -> _Held | None:
        if not isinstance(reservation, BudgetReservation):
            return None
        if reservation.token:
            self.journal.closed(reservation.token)  # in the batch that carries the entry (``_finish``)
        if not reservation.budget_ids:
            return None  # journaled only
        held = self._held.pop(reservation.token, None)
        if held is not None:
            for _, _, counter in held.charged:
                counter.reserved -= held.amount
            return held
        late = self._late.pop(reservation.token, None)
        if late is not None:
            return late
        # Reclaimed and forgotten: charge the periods named on the reservation.
        self._sync()
        charged = tuple((self._compiled[b], k, self._counter(b, k))
                        for b, k in zip(reservation.budget_ids, reservation.period_keys, strict=True)
                        if b in self._compiled)
        return _Held(0, 0, charged, reclaimed=True)

    def _fire(self, compiled: CompiledBudget, key: str, counter: _Counter, *, before: int, now: int,
              request_id: str | None) -> None:
        thresholds = compiled.spec.thresholds
        if not thresholds:
            return
        limit = compiled.limit(now)
        if counter.spent * 100 < limit * thresholds[0].percent:
            return  # fast path: below the first threshold
        fired = tuple(t for t in thresholds if t.percent not in counter.fired and t.reached(counter.spent, limit))
        for threshold in fired:
            counter.fired[threshold.percent] = now
        self.emit_crossings(compiled, key, before=before, after=counter.spent, fired=fired, now_ms=now,
                            request_id=request_id)

    def reclaim_expired(self) -> int:
        """Release reservations whose lease lapsed; returns how many (their requests are stuck).
        Leases of other lengths than the default can sit anywhere in ``_held``: scan them all."""
        now = self.now_ms()
        expired = [token for token, held in self._held.items() if held.expires_ms <= now]
        for token in expired:
            held = self._held.pop(token)
            for _, _, counter in held.charged:
                counter.reserved -= held.amount
            held.reclaimed = True
            self._late[token] = held
            log.warning("budget_reservation_reclaimed", request_id=held.request_id, amount_nanos=held.amount)
        return len(expired)

    # --- usage from other systems --------------------------------------------------------
    async def record_usage(self, budget_id: str, nanos: int, entry: LedgerEntry, *,
                           idempotency_key: str | None = None, fingerprint: str | None = None) -> Recorded:
        """Charge usage that happened elsewhere (no limit check: the money is already spent).

        With ``idempotency_key`` the claim and the ledger entry are committed in one transaction
        before the counter moves: a second record with the same key charges nothing (a duplicate,
        or ``IdempotencyKeyReused`` if its fingerprint differs: see ``BudgetAccounts``)."""
        now = self.now_ms()
        compiled = self.compiled(budget_id)
        key = self.window(compiled.spec, now).key
        if entry.cost_nanos != nanos:  # the ledger must say what the counter was charged
            entry = replace(entry, cost_nanos=nanos)
        tagged = self.tagged(entry, BudgetReservation(entry.request_id, nanos, (compiled.spec.id,), "", (key,)))
        if idempotency_key is None:
            self.store.append(tagged)
        else:
            claim = _Claim(compiled.spec.id, idempotency_key, fingerprint or usage_fingerprint(compiled.spec.id, nanos),
                           tagged, reused_entry(entry, nanos, idempotency_key))
            verdict = await self.store.run(self._claim_sync, claim, now)
            if verdict == "reused":
                raise key_reused(compiled.spec.id, idempotency_key, entry, nanos)
            if verdict == "dup":
                return Recorded(self.status_now(budget_id), duplicate=True)
        counter = self._counter(compiled.spec.id, key)
        before = counter.spent
        counter.spent += nanos
        self._fire(compiled, key, counter, before=before, now=now, request_id=entry.request_id)
        return Recorded(self.status_now(budget_id))

    def _claim_sync(self, claim: _Claim, now: int) -> str:
        """Claim the key and write the entry in one transaction: ``ok``; ``dup`` if the key was
        claimed by the same record (or before fingerprints were kept); ``reused`` if by another
        record — the refusal entry is written instead."""
        conn = self.store.conn()
        try:
            row, refused = ledger_row(claim.entry), ledger_row(claim.refused)
        except ROW_ERRORS as exc:
            raise InvalidRequest(f"this usage record cannot be stored: {exc}") from None
        conn.execute("BEGIN IMMEDIATE")
        try:
            verdict = "ok"
            if conn.execute("INSERT OR IGNORE INTO usage_claims (budget_id, claim, request_id, ts_ms, fingerprint) "
                            "VALUES (?, ?, ?, ?, ?)", (claim.budget_id, claim.key, claim.entry.request_id, now,
                                                       claim.fingerprint)).rowcount:
                conn.execute(INSERT_LEDGER, row)
            else:
                first = conn.execute("SELECT fingerprint FROM usage_claims WHERE budget_id = ? AND claim = ?",
                                     (claim.budget_id, claim.key)).fetchone()[0]
                verdict = "dup" if first is None or first == claim.fingerprint else "reused"
                if verdict == "reused":
                    conn.execute(INSERT_LEDGER, refused)
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
        return verdict

    def held_nanos(self) -> int:
        """Sum reserved over every counter (0 once traffic stops: the leak check of the tests)."""
        return sum(c.reserved for c in self._table.values())
