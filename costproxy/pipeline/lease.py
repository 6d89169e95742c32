"""The reservation of a running request is a lease, renewed while the request runs.

``Lease`` wraps the part of a request that holds money (the upstream call, the relay of a
stream).  Every ``lease_interval_s(ttl)`` it renews the reservation (``Accounts.renew``); the TTL
then only reclaims the reservations of replicas that died.  When the lease cannot be kept —
``renew`` answers that it was already reclaimed, or the budget store has been unreachable for so
long that the lease is about to lapse — the request is ended before it lapses: the task running
it is cancelled and ``ReservationLost`` (HTTP 503) is raised in its place, so a unary call answers
an error and a stream ends with an error event.  Settlement still follows (in ``finally``).

A reservation that holds nothing (no budget applies) needs no lease and starts no task.  One that
holds money arms a timer (``loop.call_later``) for its first renewal and starts the renewing task
only when that timer fires: most requests end long before ``lease_interval_s(ttl)``, and a timer
costs a fraction of a task created and cancelled per request.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

import structlog

from costproxy.background import cancel_and_wait
from costproxy.budgets.accounts import Accounts, Reservation, lease_interval_s
from costproxy.errors import ReservationLost, StoreUnavailable

log = structlog.get_logger("costproxy")


class Lease:
    def __init__(self, accounts: Accounts, reservation: Reservation, ttl_s: float) -> None:
        self.accounts = accounts
        self.reservation = reservation
        self.ttl_s = ttl_s
        self.lost: str | None = None  # why the lease could not be kept
        self._owner: asyncio.Task[object] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._inside = False

    async def __aenter__(self) -> Lease:
        if self.reservation.budget_ids:
            self._owner = asyncio.current_task()
            self._inside = True
            self._timer = asyncio.get_running_loop().call_later(lease_interval_s(self.ttl_s), self._start)
        return self

    def _start(self) -> None:
        """The first renewal is due: from here on a task keeps the lease."""
        self._timer = None
        if self._inside:
            self._keeper = asyncio.create_task(self._keep(), name="costproxy-lease")

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._inside = False  # before any await: the keeper can no longer cancel the owner
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._keeper is not None:
            await cancel_and_wait([self._keeper])
        if self.lost is not None and exc_type is asyncio.CancelledError and self._owner is not None \
                and self._owner.uncancel() == 0:
            raise ReservationLost(f"the request was ended: its budget reservation {self.lost}") from None

    async def _keep(self) -> None:
        """Renew now (the timer waited the first interval), then every interval."""
        interval = lease_interval_s(self.ttl_s)
        renewed = time.monotonic() - interval  # when the lease was taken, as far as the timer knows
        first = True
        while True:
            if not first:
                await asyncio.sleep(interval)
            first = False
            try:
                held = await self.accounts.renew(self.reservation)
            except StoreUnavailable:
                if time.monotonic() - renewed + interval < self.ttl_s:
                    continue  # the lease still runs; try again before it lapses
                self._end("could not be renewed before it lapsed (the budget store is unreachable)")
                return
            if not held:
                self._end("lapsed and was reclaimed")
                return
            renewed = time.monotonic()

    def _end(self, why: str) -> None:
        log.warning("reservation_lease_lost", request_id=self.reservation.request_id, reason=why)
        if self._inside and self._owner is not None:
            self.lost = why
            self._owner.cancel()
