"""Wait for a condition instead of sleeping: poll it until it holds, fail when a bound passes.

A test that sleeps a fixed time and then checks guesses how long the machine needs; on a loaded
machine the guess is wrong and the test fails for no real reason, on an idle one it wastes the
time. ``eventually`` polls instead: it returns as soon as the condition holds and fails only when
the bound passes, so the bound can be generous (the default is 15 s) without slowing a green run.

    entries = await eventually(lambda: store.entries(), what="the ledger entry")
    await eventually(simulator_saw_two_calls)          # an async condition is awaited
    row = eventually_sync(lambda: db.row(request_id))  # the twin for synchronous tests

The condition is a callable taking no arguments; its result (awaited when it is awaitable) counts
as reached when truthy, and that value is returned. An exception from the condition propagates:
a condition that cannot be evaluated is a bug, not "not yet".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 15.0
INTERVAL_S = 0.02


class NotReached(AssertionError):
    """The condition did not hold within the bound."""


async def eventually(cond: Callable[[], T | Awaitable[T]], within: float = TIMEOUT_S, *,
                     interval: float = INTERVAL_S, what: str = "the condition") -> T:
    """Poll ``cond`` until its result is truthy and return that result; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        result = cond()
        value: T = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotReached(f"{what} not reached within {within} s (last value: {value!r})")
        await asyncio.sleep(interval)


def eventually_sync(cond: Callable[[], T], within: float = TIMEOUT_S, *, interval: float = INTERVAL_S,
                    what: str = "the condition") -> T:
    """The synchronous twin of ``eventually`` (for tests that drive subprocesses or threads)."""
    deadline = time.monotonic() + within
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise NotReached(f"{what} not reached within {within} s (last value: {value!r})")
        time.sleep(interval)
