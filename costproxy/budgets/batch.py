"""Budget scripts that travel to Redis together.

Two ways, same contract (``run(script, keys, args)``: the reply of that one ``EVALSHA``, or its
error), chosen by ``script_sender``:

- ``ScriptChannel`` (plain TCP and Unix sockets, what ``redis_client`` builds): one pipelined
  connection of the accounts' own.  The calls of one loop turn go out in one ``write``; replies are
  parsed by hiredis in the protocol's ``data_received`` and handed to their callers in order.  At one
  request at a time this is what matters: through redis-py a lone script call cost ~200 µs of the
  proxy's CPU (a connection from the pool, the retry wrapper, a timeout context, a stream reader)
  for ~50 µs of Redis's own, and every request sends two before its response.
- ``ScriptBatcher`` (TLS, credential providers): the calls of one loop turn go out in one redis-py
  pipeline, one pass through redis-py's per-command machinery for the batch instead of one per
  call; a lone call is sent as it always was.

Each call stays one atomic ``EVALSHA``: batching changes how calls travel, never what Redis runs or
in which atomic steps.  Every caller gets its own reply or its own error: a script error is that
call's; a script Redis does not hold (``NOSCRIPT``: a restart, ``SCRIPT FLUSH``) is sent again on
its own, which loads it; a connection error fails every call of the batch, exactly as it would have
failed each of them alone (one retry, as ``redis_client`` retries a single command; the scripts are
idempotent by token, so a retry never counts twice).

How long a call waits: at most the timeout of the client's connections (``store.timeout_s``), and no
longer than the request it serves may still wait for the store (``store.wait``), a retry included.
A call that fails on a broken connection (refused, reset, closed) is sent once more on a new one while
that time lasts; a call Redis did not answer in time is never sent again — a stalled Redis keeps a
second copy waiting just as long, which is how a stall used to cost a request twice the timeout.
"""
from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import hiredis
from hiredis import pack_command
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from costproxy.store import wait as store_wait

T = TypeVar("T")
MAX_BATCH = 64  # calls per pipeline; more waiting calls go in further pipelines, sent at once

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


def allowance(timeout_s: float) -> tuple[store_wait.StoreWait | None, float]:
    """The running request's allowance (None outside a request) and how long one call may wait now."""
    wait = store_wait.current()
    return wait, timeout_s if wait is None else min(timeout_s, wait.left)


def out_of_time() -> RedisTimeoutError:
    return RedisTimeoutError("Timeout: no reply from Redis within what the request may wait (store.timeout_s)")


async def bounded(call: Callable[[], Awaitable[T]], timeout_s: float) -> T:
    """``await call()`` — a redis-py command on the path of a request — within what the request may
    still wait for the store (outside a request, redis-py's own socket timeout bounds it)."""
    wait, limit = allowance(timeout_s)
    if wait is None:
        return await call()
    if limit <= 0:
        raise out_of_time()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with asyncio.timeout(limit):
            return await call()
    except TimeoutError:
        raise out_of_time() from None
    finally:
        wait.left -= loop.time() - started


def client_timeout(redis: Redis) -> float:
    """The reply timeout of ``redis``'s connections (``redis_client``: ``store.timeout_s``)."""
    return float(redis.connection_pool.connection_kwargs.get("socket_timeout") or 1.0)


class ScriptBatcher:
    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH, timeout_s: float = 1.0) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._waiting: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Nothing of its own to close: the calls travel on the client's connections."""

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``await script(keys=keys, args=args)``, sent with the other calls of this loop turn, waited
        for no longer than the module docstring says."""
        loop = asyncio.get_running_loop()
        wait, limit = allowance(self.timeout_s)
        if limit <= 0:
            raise out_of_time()
        started = loop.time()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((script, keys, args, future))
        if len(self._waiting) == 1:
            loop.call_soon(self._flush)
        try:
            async with asyncio.timeout(limit):  # redis-py's socket timeout and retry may take longer
                return await future
        except TimeoutError:
            raise out_of_time() from None
        finally:
            if wait is not None:
                wait.left -= loop.time() - started

    def _flush(self) -> None:
        calls, self._waiting = self._waiting, []
        for start in range(0, len(calls), self.max_batch):
            task = asyncio.create_task(self._send(calls[start:start + self.max_batch]), name="costproxy-budget-scripts")
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            if len(calls) == 1:
                script, keys, args, future = calls[0]
                _resolve(future, await script(keys=keys, args=args))
                return
            async with self.redis.pipeline(transaction=False) as pipe:
                for script, keys, args, _ in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            for (script, keys, args, future), reply in zip(calls, replies, strict=True):
                if isinstance(reply, NoScriptError):  # not loaded yet: alone, the call loads the script
                    try:
                        reply = await script(keys=keys, args=args)
                    except Exception as exc:  # this call's error only
                        reply = exc
                _resolve(future, reply)
        except asyncio.CancelledError:
            for *_, future in calls:
                future.cancel()
            raise
        except Exception as exc:  # the callers' to handle (RedisError: the store is away), as if sent alone
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)


def _resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)


# --- one pipelined connection of the accounts' own ---------------------------------------------


class ScriptChannel:
    """Reserve and settle calls over one pipelined connection of their own, bypassing redis-py's
    per-command machinery.

    At one request at a time a budget script sent through redis-py costs ~200 µs of the proxy's
    CPU for ~50 µs of Redis's (a connection from the pool, the retry wrapper, a timeout context and a
    stream reader for each call: ``bench/proxy_bench.py``, bench/README.md), and every request sends
    two, both on the path of its response.  Here a call is packed with hiredis, written with the
    other calls of its loop turn in one ``write``, and answered from ``data_received``: replies come
    back in the order the calls went out (Redis answers one connection in order), so each is matched
    to its call without a lookup, and a settle sent before a later request's reserve is applied
    before it.

    What the callers see is what redis-py gave them: each call its own reply or its own error
    (``ResponseError`` and its subclasses, parsed the way redis-py parses them); a script Redis does
    not hold (``NOSCRIPT``) is sent again as ``EVAL``, which loads it; a connection that fails or a
    reply that takes longer than ``timeout_s`` fails every call in flight on it with
    ``ConnectionError``/``TimeoutError`` (the connection is dropped, so no late reply can be
    matched to a later call).  A call that failed on a broken connection is sent once more on a new
    connection, as ``redis_client``'s one retry does (scripts are idempotent by token, so a retry never
    counts twice); a call that timed out is not (module docstring).  A call whose caller stopped
    waiting — its request's time for the store ran out first — fails alone: its reply, when it comes,
    is read and dropped, and a call not written yet is never written.  Plain TCP and Unix sockets
    only (``script_sender`` keeps TLS on ``ScriptBatcher``).
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, client_name: str | None = None,
                 timeout_s: float = 1.0, connect_timeout_s: float = 1.0) -> None:
        self.host, self.port, self.path, self.db = host, port, path, db
        self.username, self.password, self.client_name = username, password, client_name
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queue: list[_Sent] = []  # calls of this loop turn, not written yet
        self._closed = False
        self._expiry: asyncio.TimerHandle | None = None  # fails the calls whose callers stop waiting
        self._expiry_at = math.inf

    @property
    def address(self) -> str:
        """Where the channel connects (its errors name Redis, not the store that uses the channel: the
        budgets and the rate limits each have one)."""
        return self.path or f"{self.host}:{self.port}"

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``await script(keys=keys, args=args)``, written with the other calls of this loop turn."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        wait, limit = allowance(self.timeout_s)
        deadline = started + limit  # for the retry too: a call never waits longer than one timeout
        try:
            try:
                return await self._submit(script, keys, args, started, deadline)
            except RedisConnectionError:  # one retry on a new connection, as redis-py's; never after a timeout
                return await self._submit(script, keys, args, loop.time(), deadline)
        finally:
            if wait is not None:
                wait.left -= loop.time() - started

    def close(self) -> None:
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.drop(RedisConnectionError("the script channel was closed"))
        self._fail_queue(RedisConnectionError("the script channel was closed"))

    def _submit(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any], now: float,
                deadline: float) -> asyncio.Future[Any]:
        if self._closed:
            raise RedisConnectionError("the script channel was closed")
        if now >= deadline:  # the request has no time left for the store: not sent at all
            raise out_of_time()
        try:
            packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        except TypeError as exc:  # what redis-py refuses too (a bool, None)
            raise DataError(str(exc)) from None
        call = _Sent(asyncio.get_running_loop().create_future(), packed, script, keys, args, now, deadline)
        self._enqueue(call)
        if deadline < self._expiry_at:
            self._expire_at(deadline)
        return call.future

    def _expire_at(self, when: float) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = when
        self._expiry = asyncio.get_running_loop().call_at(when, self._expire)

    def _expire(self) -> None:
        """Fail the calls whose deadline passed (their replies, if written, are read and dropped in
        order) and wake again for the next deadline.  One timer per channel: most calls are answered
        long before it fires, and then it only finds the next deadline."""
        # the loop may run a timer up to its clock resolution early: it is due all the same
        now = max(asyncio.get_running_loop().time(), self._expiry_at)
        self._expiry, self._expiry_at = None, math.inf
        conn = self._conn
        if conn is not None and conn.pending and now >= conn.pending[0].since + self.timeout_s:
            conn.drop(conn.stalled())  # no reply for a whole timeout: the connection is dead or Redis stalled
            conn = None
        following = math.inf
        for calls in (self._queue, conn.pending if conn is not None else ()):
            for call in calls:
                if call.future.done():
                    continue
                if call.deadline <= now:
                    call.future.set_exception(out_of_time())
                elif call.deadline < following:
                    following = call.deadline
        if following < math.inf and not self._closed:
            self._expire_at(following)

    def _enqueue(self, call: _Sent) -> None:
        self._queue.append(call)
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        if not self._queue:
            return
        conn = self._conn
        if conn is None or conn.lost:
            if self._connecting is None:
                self._connecting = asyncio.create_task(self._connect(), name="costproxy-budget-connect")
            return  # written once connected
        calls, self._queue = [call for call in self._queue if not call.future.done()], []  # done: nobody waits
        if calls:
            conn.send(calls)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.path is not None:
                    await loop.create_unix_connection(lambda: conn, self.path)
                else:
                    await loop.create_connection(lambda: conn, self.host, self.port)
                await conn.handshake(self._handshake())
        except (OSError, TimeoutError, RedisError) as exc:
            error = exc if isinstance(exc, RedisError) else RedisConnectionError(
                f"Error connecting to {self.address}: {str(exc) or exc.__class__.__name__}")
            conn.drop(error)
            self._connecting = None
            self._fail_queue(error)
            return
        except asyncio.CancelledError:
            conn.drop(RedisConnectionError("connection attempt cancelled"))
            self._connecting = None
            raise
        self._conn = conn
        self._connecting = None
        self._flush()

    def _handshake(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            commands.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        if self.client_name:
            commands.append(("CLIENT", "SETNAME", self.client_name))
        return commands

    def _fail_queue(self, error: BaseException) -> None:
        calls, self._queue = self._queue, []
        for call in calls:
            if not call.future.done():
                call.future.set_exception(error)

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    def _again(self, call: _Sent) -> None:
        """A call Redis answered ``NOSCRIPT``: sent again as ``EVAL``, which loads the script."""
        script = call.script
        assert script is not None
        if call.future.done():  # its caller stopped waiting: the script did not run, nor will it
            return
        call.packed = pack_command(("EVAL", script.script, len(call.keys), *call.keys, *call.args))
        call.script = None
        self._enqueue(call)


class _ErrorReply(Exception):
    """What hiredis returns (not raises) for an error reply; turned into redis-py's exception."""


class _Sent:
    __slots__ = ("args", "deadline", "future", "keys", "packed", "script", "since")

    def __init__(self, future: asyncio.Future[Any], packed: bytes, script: AsyncScript | None,
                 keys: Sequence[Any], args: Sequence[Any], since: float, deadline: float = math.inf) -> None:
        self.future = future
        self.packed = packed
        self.script = script  # None once sent as EVAL (a second NOSCRIPT is the caller's error)
        self.keys = keys
        self.args = args
        self.since = since  # loop time at which it was handed to the channel
        self.deadline = deadline  # loop time at which its caller stops waiting


class _Connection(asyncio.Protocol):
    """One connection of a ``ScriptChannel``: calls in flight in the order they were written."""

    def __init__(self, channel: ScriptChannel) -> None:
        self.channel = channel
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader(replyError=_ErrorReply)
        self.pending: deque[_Sent] = deque()
        self.lost = False
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    async def handshake(self, commands: list[tuple[Any, ...]]) -> None:
        loop = asyncio.get_running_loop()
        calls = [_Sent(loop.create_future(), pack_command(c), None, (), (), loop.time()) for c in commands]
        if calls:
            self.send(calls)
            for call in calls:
                await call.future

    def send(self, calls: list[_Sent]) -> None:
        assert self.transport is not None
        self.pending.extend(calls)
        self.transport.write(b"".join(call.packed for call in calls) if len(calls) > 1 else calls[0].packed)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(self.pending[0].since + self.channel.timeout_s,
                                                             self._check_timeout)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                call = self.pending.popleft()
                if isinstance(reply, _ErrorReply):
                    error = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
                    if isinstance(error, NoScriptError) and call.script is not None:
                        self.channel._again(call)
                        continue
                    if not call.future.done():
                        call.future.set_exception(error)
                elif not call.future.done():  # else the caller was cancelled meanwhile
                    call.future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # a reply no call waits for: the stream is broken
            self.drop(RedisConnectionError(f"Redis protocol error: {exc}"))
            return
        if not self.pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.pending:
            return
        loop = asyncio.get_running_loop()
        due = self.pending[0].since + self.channel.timeout_s
        if loop.time() >= due:
            self.drop(self.stalled())
        else:
            self._timer = loop.call_at(due, self._check_timeout)

    def stalled(self) -> RedisTimeoutError:
        return RedisTimeoutError(f"Timeout reading from {self.channel.address}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(RedisConnectionError(f"Connection closed by {self.channel.address}{f': {exc}' if exc else '.'}"))

    def drop(self, error: BaseException) -> None:
        """Fail every call in flight on this connection with ``error`` and close it."""
        self.lost = True
        self.channel._lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self.pending = self.pending, deque()
        for call in pending:
            if not call.future.done():
                call.future.set_exception(error)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


def script_sender(redis: Redis) -> ScriptBatcher | ScriptChannel:
    """How the accounts send their reserve and settle scripts: a ``ScriptChannel`` on the client's
    address when it speaks plain TCP (``redis_client``'s connections) or a Unix socket, else (TLS, a
    credential provider, another connection class) a ``ScriptBatcher`` over the client itself."""
    pool = redis.connection_pool
    kwargs = pool.connection_kwargs
    plain = pool.connection_class.__name__ in ("PackedConnection", "UnixDomainSocketConnection")
    timeout_s = client_timeout(redis)
    if not plain or kwargs.get("credential_provider") is not None:
        return ScriptBatcher(redis, timeout_s=timeout_s)
    return ScriptChannel(host=kwargs.get("host", "127.0.0.1"), port=int(kwargs.get("port", 6379)),
                         path=kwargs.get("path"), db=int(kwargs.get("db", 0) or 0), username=kwargs.get("username"),
                         password=kwargs.get("password"), client_name=kwargs.get("client_name"),
                         timeout_s=timeout_s,
                         connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 1.0))
