"""What the pipeline runs on: the services it is given, request ids and tracing steps.

Every service is typed by a protocol of its own package: ``Upstream`` (``providers.transport``),
``Accounts`` (``budgets.accounts``) and ``Router`` (``routing.route``), so a test can swap any of
them for an in-memory stand-in.  ``limits`` (rate limits) and ``cache`` (the response cache) are
optional: without them no request is limited or cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import NoOpTracer, Tracer

from costproxy.analyzer.tokens import TokenCounter
from costproxy.budgets.accounts import Accounts
from costproxy.cache.store import ResponseCache
from costproxy.ids import Ids
from costproxy.pipeline.events import EventBus
from costproxy.providers.transport import Upstream
from costproxy.ratelimits.limiter import RateLimiter
from costproxy.registry import Registry
from costproxy.routing.route import Router
from costproxy.settings import Settings


@dataclass
class Services:
    settings: Settings
    registry: Registry
    counter: TokenCounter
    upstream: Upstream
    accounts: Accounts
    router: Router
    events: EventBus = field(default_factory=EventBus)
    clock: Callable[[], float] = time.time
    tracer: Tracer = field(default_factory=NoOpTracer)
    limits: RateLimiter | None = None
    cache: ResponseCache | None = None
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)  # proxied requests running (http/proxy.py)
    cut: set[asyncio.Task[Any]] = field(default_factory=set)  # of them, those the drain deadline ended

    def end_in_flight(self) -> int:
        """The drain deadline: cancel every proxied request still running, marked as ended by the
        server (``cut``) so that each records ``server_shutting_down`` and tells its client so — a
        stream in a last error event, a unary call in a 503 — while its connection is still open."""
        running = [task for task in self.in_flight if not task.done()]
        for task in running:
            self.cut.add(task)
            task.cancel()
        return len(running)


new_request_id = Ids("req_", 8)  # unique across replicas, restarts and forked workers


class _NoSpan:
    """Stands in for a span when tracing is off: entering, attributes and exit cost nothing."""

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: object) -> None:
        return None


NO_SPAN = _NoSpan()


def step(services: Services, name: str, attributes: dict[str, Any] | None = None) -> Any:
    """A span for one pipeline step, or a free stand-in when the tracer is the no-op tracer."""
    tracer = services.tracer
    if isinstance(tracer, NoOpTracer):
        return NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes)
