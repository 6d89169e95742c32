"""The money gate the pipeline talks to: reserve before a call, settle or release after it.

``Accounts`` is the contract; ``LedgerAccounts`` is the implementation for a deployment with no
budgets configured: nothing to reserve, and settling appends the ledger entry.  Budget-enforcing
implementations (SQLite and Redis) live beside it and keep the same contract, so the pipeline
never knows which store it runs on.

The life of one request, as the pipeline drives it::

    reservation = await accounts.reserve(request_id, principal, worst_case.nanos)   # or BudgetExceeded
    while the call runs, every lease_interval_s(ttl):   # the lease, not a timer, holds the money
        if not await accounts.renew(reservation): end the request (the lease was reclaimed)
    await accounts.settle(reservation, entry)          # or release(reservation, entry) on failure
    refusals: await accounts.record_refusal(entry)     # a ledger entry, no budget touched

A reservation is a lease of ``reservation_ttl_s``: ``renew`` extends it, and only a lease nobody
renews (its replica died) is reclaimed.  ``renew`` returns False once the lease was reclaimed —
the money is no longer held, so the request must end — and raises ``StoreUnavailable`` when the
budget store cannot be reached (the lease still runs until its own expiry).
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Protocol

from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry, as_refusal
from costproxy.records import frozen
from costproxy.routing.policy import EMPTY, Constraints
from costproxy.store.sqlite import SqliteStore

MIN_LEASE_S = 0.05
MAX_LEASE_S = 86_400.0


@frozen
class BudgetView:
    """What selection and steering may know about the caller's budgets before a call."""

    used_fraction: float = 0.0  # highest used share over the chain's budgets (0..1+)
    burn_ratio: float = 0.0  # how fast the period is being spent vs. an even pace (1.0 = on pace)
    remaining_nanos: int | None = None  # smallest remaining amount over hard budgets
    fields: dict[str, object] = field(default_factory=dict)  # steering context: budget.<scope>.<metric>
    restrictions: Constraints = EMPTY  # routing demands of threshold actions and budget downgrades
    tightest_budget: str | None = None  # "name (id)" of the hard budget with the least left


@frozen
class Reservation:
    request_id: str
    amount_nanos: int
    budget_ids: tuple[str, ...] = ()


class Accounts(Protocol):
    async def view(self, principal: Principal) -> BudgetView: ...

    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        """Reserve the worst case on every budget of the chain, atomically, or raise BudgetExceeded."""
        ...

    async def renew(self, reservation: Reservation, ttl_s: float | None = None) -> bool:
        """Extend the lease to ``ttl_s`` from now (default: ``reservation_ttl_s``); False if it
        was already reclaimed (end the request), ``StoreUnavailable`` if the store is away."""
        ...

    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        """Replace the reservation by ``entry.cost_nanos`` and append ``entry`` to the ledger."""
        ...

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        """Drop the reservation (the call failed); append ``entry`` if given."""
        ...

    async def record_refusal(self, entry: LedgerEntry) -> None:
        """Append ``entry`` as a refused request (status ``refused``, cost 0, its error code) to
        the ledger without touching any budget."""
        ...

    def definitions_version(self) -> int:
        """Changes whenever the budget definitions this process plans with do (a reserve that
        found them stale reloads them: the plan made before is then stale too)."""
        ...

    async def current(self) -> bool:
        """Bring the budget definitions up to the store's; True if they changed.  Never raises for
        an unreachable store (the definitions in memory stay)."""
        ...


def lease_interval_s(ttl_s: float) -> float:
    """How often a running request should renew its lease: three tries before it lapses."""
    return max(MIN_LEASE_S, ttl_s / 3)


def lease_ms(ttl_s: float | None, default_ms: int) -> int:
    """A lease length in ms: ``ttl_s`` (bounded to [50 ms, 1 day]) or the accounts' default."""
    if ttl_s is None:
        return default_ms
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"a lease must be a positive number of seconds, got {ttl_s!r}")
    return int(min(MAX_LEASE_S, max(MIN_LEASE_S, ttl_s)) * 1000)


class LedgerAccounts:
    """No budgets: nothing is reserved; every settled request is appended to the ledger."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def view(self, principal: Principal) -> BudgetView:
        return BudgetView()

    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        return Reservation(request_id=request_id, amount_nanos=worst_case_nanos)

    async def renew(self, reservation: Reservation, ttl_s: float | None = None) -> bool:
        lease_ms(ttl_s, 0)  # the same argument check as the budget accounts
        return True  # nothing is held, nothing can lapse

    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        self.store.append(entry)

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        if entry is not None:
            self.store.append(entry)

    async def record_refusal(self, entry: LedgerEntry) -> None:
        self.store.append(as_refusal(entry))

    def definitions_version(self) -> int:
        return 0  # no budgets

    async def current(self) -> bool:
        return False
