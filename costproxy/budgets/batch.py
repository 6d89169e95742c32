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
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from hiredis import pack_command
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_BATCH = 64  # calls per pipeline; more waiting calls go in further pipelines, sent at once

_Call = tuple[AsyncScript, Sequence[Any], Sequence[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Redis, max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._waiting: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Nothing of its own to close: the calls travel on the client's connections."""

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``await script(keys=keys, args=args)``, sent with the other calls of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((script, keys, args, future))
        if len(self._waiting) == 1:
            loop.call_soon(self._flush)
        return await future

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
    matched to a later call), and each such call is sent once more on a new connection, as
    ``redis_client``'s one retry does (scripts are idempotent by token, so a retry never counts
    twice).  Plain TCP and Unix sockets only (``script_sender`` keeps TLS on ``ScriptBatcher``).
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

    async def run(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``await script(keys=keys, args=args)``, written with the other calls of this loop turn."""
        try:
            return await self._submit(script, keys, args)
        except (RedisConnectionError, RedisTimeoutError):  # one retry on a new connection, as redis-py's
            return await self._submit(script, keys, args)

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._conn is not None:
            self._conn.drop(RedisConnectionError("the budget accounts were closed"))
        self._fail_queue(RedisConnectionError("the budget accounts were closed"))

    def _submit(self, script: AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> asyncio.Future[Any]:
        if self._closed:
            raise RedisConnectionError("the budget accounts were closed")
        loop = asyncio.get_running_loop()
        try:
            packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
        except TypeError as exc:  # what redis-py refuses too (a bool, None)
            raise DataError(str(exc)) from None
        call = _Sent(loop.create_future(), packed, script, keys, args)
        self._enqueue(call)
        return call.future

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
        calls, self._queue = self._queue, []
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
                f"Error connecting to {self.path or f'{self.host}:{self.port}'}: {str(exc) or exc.__class__.__name__}")
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
        call.packed = pack_command(("EVAL", script.script, len(call.keys), *call.keys, *call.args))
        call.script = None
        self._enqueue(call)


class _ErrorReply(Exception):
    """What hiredis returns (not raises) for an error reply; turned into redis-py's exception."""


class _Sent:
    __slots__ = ("args", "future", "keys", "packed", "script", "sent_at")

    def __init__(self, future: asyncio.Future[Any], packed: bytes, script: AsyncScript | None,
                 keys: Sequence[Any], args: Sequence[Any]) -> None:
        self.future = future
        self.packed = packed
        self.script = script  # None once sent as EVAL (a second NOSCRIPT is the caller's error)
        self.keys = keys
        self.args = args
        self.sent_at = 0.0


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
        calls = [_Sent(loop.create_future(), pack_command(c), None, (), ()) for c in commands]
        if calls:
            self.send(calls)
            for call in calls:
                await call.future

    def send(self, calls: list[_Sent]) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for call in calls:
            call.sent_at = now
        self.pending.extend(calls)
        self.transport.write(b"".join(call.packed for call in calls) if len(calls) > 1 else calls[0].packed)
        if self._timer is None:
            self._timer = loop.call_at(now + self.channel.timeout_s, self._check_timeout)

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
            self.drop(RedisConnectionError(f"budget store protocol error: {exc}"))
            return
        if not self.pending and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.pending:
            return
        loop = asyncio.get_running_loop()
        due = self.pending[0].sent_at + self.channel.timeout_s
        if loop.time() >= due:
            self.drop(RedisTimeoutError("Timeout reading from the budget store"))
        else:
            self._timer = loop.call_at(due, self._check_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop(RedisConnectionError(f"Connection closed by the budget store{f': {exc}' if exc else '.'}"))

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
    if not plain or kwargs.get("credential_provider") is not None:
        return ScriptBatcher(redis)
    return ScriptChannel(host=kwargs.get("host", "127.0.0.1"), port=int(kwargs.get("port", 6379)),
                         path=kwargs.get("path"), db=int(kwargs.get("db", 0) or 0), username=kwargs.get("username"),
                         password=kwargs.get("password"), client_name=kwargs.get("client_name"),
                         timeout_s=float(kwargs.get("socket_timeout") or 1.0),
                         connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 1.0))
