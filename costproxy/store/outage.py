"""What a failed Redis call is called in a 503 ``store_unavailable``: which store, doing what, and why.

Every Redis-backed store (budgets, rate limits, client keys, the response cache, the learning store)
turns its Redis errors into ``StoreUnavailable`` through ``unavailable`` (or the ``reachable``
context manager), so the message names the operation that failed, the store it needed and what
Redis did — in one shape::

    cannot reserve on the hard budgets acme: the budget store (redis://10.0.0.5:6379/0) is out of
    memory: Redis refuses writes above its maxmemory (OOM command not allowed when used memory > 'maxmemory')

A Redis that answers with an error is not "unreachable": out of memory (``maxmemory`` reached under
``noeviction``), a read-only replica, a data set still loading, refused credentials and a timeout
each read as what they are, so the operator looks in the right place.

Only the Redis-backed stores import this module (it imports redis).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from costproxy.background import stop_if_cancelled
from costproxy.errors import StoreUnavailable


def problem(exc: BaseException) -> str:
    """What went wrong, as the rest of a sentence whose subject is the store."""
    said = _said(exc)
    if isinstance(exc, OutOfMemoryError):
        return f"is out of memory: Redis refuses writes above its maxmemory (OOM {said})"
    if isinstance(exc, ReadOnlyError):
        return f"is a read-only replica: writes need the primary (READONLY {said})"
    if isinstance(exc, BusyLoadingError):
        return f"is still loading its data set into memory (LOADING {said})"
    if isinstance(exc, (AuthenticationError, NoPermissionError)):
        return f"refused costproxy's credentials or permissions: {said}"
    if isinstance(exc, (RedisTimeoutError, TimeoutError)):
        return "did not answer within store.timeout_s (stalled, overloaded or failing over)"
    if isinstance(exc, (RedisConnectionError, OSError)):
        return f"is unreachable: {said}"
    if isinstance(exc, ResponseError):
        return f"answered with an error: {said}"
    return f"failed: {said}"


def _said(exc: BaseException) -> str:
    """The error's own text, without the script digest and line Redis appends to an error raised
    inside a Lua script (``... script: <sha>, on @user_script:66.``)."""
    text = str(exc).strip() or exc.__class__.__name__
    return text.split(" script: ", 1)[0].rstrip(".") if " script: " in text else text


def unavailable(what: str, label: str, exc: BaseException, doing: str) -> StoreUnavailable:
    """``StoreUnavailable`` for a failed call: ``doing`` (``"reserve on the hard budgets x"``) needed
    the ``what`` (``"budget store"``) at ``label`` (its redacted URL)."""
    return StoreUnavailable(f"cannot {doing}: the {what} ({label}) {problem(exc)}")


@contextlib.contextmanager
def reachable(label: str, what: str, doing: str) -> Iterator[None]:
    """Redis errors inside as ``StoreUnavailable`` (``unavailable``)."""
    try:
        yield
    except (RedisError, OSError) as exc:
        stop_if_cancelled()  # redis-py may turn a cancellation into a connection error
        raise unavailable(what, label, exc, doing) from None
