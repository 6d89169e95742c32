"""Background tasks: stopping them for sure.

redis-py can swallow a cancellation (it answers a connection error, or returns, instead of
raising ``CancelledError``), so a loop over Redis calls checks ``stop_if_cancelled`` on every turn,
and ``cancel_and_wait`` cancels again until the task has really ended: a shutdown never hangs on
a task that missed its cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

RECANCEL_SECONDS = 0.1


def stop_if_cancelled() -> None:
    """Raise if this task was asked to stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object] | asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended (re-cancelling one that swallowed it)."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
    for task in every:  # collect outcomes so no "exception was never retrieved" warning is logged
        if not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()
