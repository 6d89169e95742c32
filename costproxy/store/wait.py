"""How long one request may still wait for the store: ``store.timeout_s`` for all its calls together.

A proxied request calls Redis several times in a row: the rate-limit admission, the budget
reservation, and on a refusal the rate-limit headers and the refusal's ledger entry (or, after the
upstream call, the settlement and the rate-limit correction).  With a timeout per call, a stalled
Redis (``DEBUG SLEEP``, a paused process, a failover) made each of them wait it out in turn, so the
503 came after two, four or more timeouts.  Here the timeout is the request's: the HTTP layer opens a
``StoreWait`` for each request (``begin``/``end``), the Redis adapters (``budgets.batch``) wait at
most what it has left and take off what they waited.  Once it is spent, a store call fails at once,
unsent — a reservation answers 503 ``store_unavailable``, a settlement or a refusal's entry goes to
the outbox, the rate limits follow ``on_store_error`` — so the request ends within one timeout.
Calls outside a request (maintenance loops, the CLI) wait their own timeout each.

No Redis here: the HTTP layer imports this module in SQLite mode too.
"""

from __future__ import annotations

from contextvars import ContextVar, Token


class StoreWait:
    """What is left of one request's time for the store, in seconds (may go below 0)."""

    __slots__ = ("left",)

    def __init__(self, seconds: float) -> None:
        self.left = seconds


_CURRENT: ContextVar[StoreWait | None] = ContextVar("costproxy_store_wait", default=None)


def begin(seconds: float) -> Token[StoreWait | None]:
    """Open the allowance of the request running in this context; ``end`` it with the token."""
    return _CURRENT.set(StoreWait(seconds))


def end(token: Token[StoreWait | None]) -> None:
    _CURRENT.reset(token)


def current() -> StoreWait | None:
    """The running request's allowance, or None outside a request."""
    return _CURRENT.get()
