"""The money gate the pipeline talks to: reserve before a call, settle or release after it.

``Accounts`` is the contract; ``LedgerAccounts`` is the implementation for a deployment with no
budgets configured: nothing to reserve, and settling appends the ledger entry.  Budget-enforcing
implementations (SQLite and Redis) live beside it and keep the same contract, so the pipeline
never knows which store it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry
from costproxy.routing.policy import EMPTY, Constraints
from costproxy.store.sqlite import SqliteStore


@dataclass(frozen=True, slots=True)
class BudgetView:
    """What selection and steering may know about the caller's budgets before a call."""

    used_fraction: float = 0.0  # highest used share over the chain's budgets (0..1+)
    burn_ratio: float = 0.0  # how fast the period is being spent vs. an even pace (1.0 = on pace)
    remaining_nanos: int | None = None  # smallest remaining amount over hard budgets
    fields: dict[str, object] = field(default_factory=dict)  # steering context: budget.<scope>.<metric>
    restrictions: Constraints = EMPTY  # routing demands of threshold actions and budget downgrades
    tightest_budget: str | None = None  # "name (id)" of the hard budget with the least left


@dataclass(frozen=True, slots=True)
class Reservation:
    request_id: str
    amount_nanos: int
    budget_ids: tuple[str, ...] = ()


class Accounts(Protocol):
    async def view(self, principal: Principal) -> BudgetView: ...

    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        """Reserve the worst case on every budget of the chain, atomically, or raise BudgetExceeded."""
        ...

    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        """Replace the reservation by ``entry.cost_nanos`` and append ``entry`` to the ledger."""
        ...

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        """Drop the reservation (the call failed); append ``entry`` if given."""
        ...


class LedgerAccounts:
    """No budgets: nothing is reserved; every settled request is appended to the ledger."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def view(self, principal: Principal) -> BudgetView:
        return BudgetView()

    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        return Reservation(request_id=request_id, amount_nanos=worst_case_nanos)

    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        self.store.append(entry)

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        if entry is not None:
            self.store.append(entry)
