"""Typed events the pipeline publishes, and the bus that hands them to subscribers.

``RequestCompleted`` goes out once per request, refusals included (logs and metrics subscribe);
``RequestBlocked`` when a budget refused a request; ``ModelSwitched`` when a concrete model was
asked for and another one answered (a rule, a budget downgrade or a fallback); ``UpstreamFailed``
for each failed attempt along the fallback chain.  Subscribers run
on the event loop and must not block: the alert manager queues, the log line is written by a
writer thread.  A failing subscriber is logged and never reaches the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from costproxy.errors import BudgetExceeded, ProviderError
from costproxy.ledger.entry import LedgerEntry
from costproxy.records import frozen
from costproxy.request import RequestContext

log = structlog.get_logger("costproxy")


@frozen
class RequestCompleted:
    ctx: RequestContext
    entry: LedgerEntry
    fallback: bool = False  # served by a model after the first of the chain


@frozen
class RequestBlocked:
    ctx: RequestContext
    error: BudgetExceeded


@frozen
class ModelSwitched:
    ctx: RequestContext
    requested: str
    served: str
    reasons: tuple[str, ...]


@frozen
class UpstreamFailed:
    """One attempt along the fallback chain failed (the next model may still answer)."""

    ctx: RequestContext
    model: str
    provider: str
    error: ProviderError


Event = RequestCompleted | RequestBlocked | ModelSwitched | UpstreamFailed
Listener = Callable[[Event], None]


class EventBus:
    """Hands each event to every subscriber, in order.  ``deferred`` (the server's bus): on a running
    event loop, delivery waits for the loop's next turn (``call_soon``), so the log line and the
    metrics a request's events feed run after its answer went out, not between its last byte from
    the provider and its first byte to the client; events still arrive in the order published."""

    def __init__(self, *, deferred: bool = False) -> None:
        self._listeners: list[Listener] = []
        self._deferred = deferred

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; the returned function removes it again."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        if self._deferred:
            try:
                asyncio.get_running_loop().call_soon(self.deliver, event)
                return
            except RuntimeError:  # no running loop (a CLI tool, a test): deliver now
                pass
        self.deliver(event)

    def deliver(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # the boundary between the request and its observers
                log.exception("event_listener_failed", event=type(event).__name__)
