"""Importing dependencies without the optional packages they pull in when installed, which the
server never uses.

Two dependencies import optional extras eagerly, whenever those happen to be installed:

- ``structlog`` imports ``structlog.dev`` from its ``__init__``, and ``structlog.dev`` imports
  ``rich`` (and through it ``pygments``) for its console renderer's tracebacks; ``structlog``'s
  thread-local module imports ``greenlet``.  costproxy logs JSON by default and renders its console
  logs with ``structlog.dev.ConsoleRenderer``, which then formats exceptions with the standard
  ``traceback`` module instead of ``rich`` — as it does in a production install, where neither is
  installed (they come with the test extras).  Measured: ``import structlog`` after ``aiohttp``,
  5.1 MB and 94 modules with them, 0.9 MB and 25 modules without.
- ``redis`` (8.x) imports ``opentelemetry.sdk.metrics`` for its own OpenTelemetry metrics, which
  it only records once the application initialises ``redis.observability`` (costproxy never does;
  its metrics are Prometheus').  The SDK is installed with costproxy, for tracing.  Measured:
  ``import redis.asyncio`` 8.8 MB without the block, 7.3 MB with it.

``without(...)`` hides modules from the import system for the duration of one import (a ``None``
entry in ``sys.modules`` makes ``import`` raise ``ImportError``, which those packages catch and take as
"not installed"), then lets them be imported normally again.  A module already imported is never
hidden: if something imported ``rich`` first, ``structlog`` finds and uses it as before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

# Imported by structlog when installed, never used by costproxy (see the module docstring).
STRUCTLOG_EXTRAS = ("rich", "greenlet")
# Imported by redis-py for its own OpenTelemetry metrics, which costproxy never turns on.
REDIS_EXTRAS = ("opentelemetry.sdk.metrics",)


@contextmanager
def without(*names: str) -> Iterator[None]:
    """While inside, importing any of ``names`` that is not imported yet raises ``ImportError``."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def import_structlog() -> None:
    """Import ``structlog`` without ``rich`` and ``greenlet`` (done once, by ``costproxy/__init__``)."""
    with without(*STRUCTLOG_EXTRAS):
        import structlog  # noqa: F401


def import_redis() -> None:
    """Import ``redis.asyncio`` without its OpenTelemetry metrics SDK; call before importing a module
    of costproxy that uses Redis, the first import of ``redis`` wins."""
    with without(*REDIS_EXTRAS):
        import redis.asyncio  # noqa: F401
