"""Typed events the pipeline publishes, and the bus that hands them to subscribers.

``RequestCompleted`` goes out once per request, refusals included (logs and metrics subscribe);
``RequestBlocked`` when a budget refused a request; ``ModelSwitched`` when a concrete model was
asked for and another one answered (a rule, a budget downgrade or a fallback); ``UpstreamFailed``
for each failed attempt along the fallback chain.  Subscribers run
on the event loop and must not block: the alert manager queues, the log line is written by a
writer thread.  A failing subscriber is logged and never reaches the request.
"""

from __future__ import annotations

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
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Add ``listener``; the returned function removes it again."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # the boundary between the request and its observers
                log.exception("event_listener_failed", event=type(event).__name__)
