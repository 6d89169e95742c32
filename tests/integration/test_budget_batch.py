"""ScriptBatcher: script calls of one loop turn share a pipeline, and each caller still gets its own
reply or error, as if its call had been sent alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from costproxy.budgets.batch import ScriptBatcher, ScriptChannel, script_sender
from costproxy.budgets.redis import redis_client
from costproxy.store import wait as store_wait
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis


def echo_script() -> str:
    """A script no Redis has loaded yet (its text is new), so the first calls meet NOSCRIPT."""
    return (f"-- {uuid.uuid4().hex}\n"
            "if ARGV[1] == 'boom' then return redis.error_reply('boom') end\n"
            "redis.call('INCR', KEYS[1])\n"
            "return {ARGV[1], KEYS[1]}")


@pytest.fixture
async def client(redis_space: RedisSpace) -> AsyncIterator[Redis]:  # noqa: F811
    redis = redis_client(redis_space.url)
    yield redis
    await redis.aclose(close_connection_pool=True)


async def test_calls_of_one_turn_share_a_pipeline_and_each_gets_its_own_reply(
        client: Redis, redis_space: RedisSpace, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    batcher = ScriptBatcher(client, max_batch=16)
    script = client.register_script(echo_script())
    pipelines = 0
    original = client.pipeline

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal pipelines
        pipelines += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(client, "pipeline", counted)
    key = f"{redis_space.prefix}:count"
    calls = [batcher.run(script, [key], [str(i) if i != 7 else "boom"]) for i in range(40)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert pipelines == 3  # 40 calls of one turn, 16 per pipeline
    for i, result in enumerate(results):
        if i == 7:
            assert isinstance(result, ResponseError) and "boom" in str(result)  # its own error only
        else:
            assert result == [str(i).encode(), key.encode()]
    assert int(await client.get(key) or 0) == 39  # each call ran once: NOSCRIPT calls were sent again alone


async def test_a_lone_call_is_sent_as_it_always_was(client: Redis, redis_space: RedisSpace) -> None:  # noqa: F811
    batcher = ScriptBatcher(client)
    script = client.register_script(echo_script())
    key = f"{redis_space.prefix}:one"
    assert await batcher.run(script, [key], ["a"]) == [b"a", key.encode()]
    with pytest.raises(ResponseError, match="boom"):
        await batcher.run(script, [key], ["boom"])


async def test_an_unreachable_store_fails_every_call_of_the_batch() -> None:
    redis = redis_client("redis://127.0.0.1:1/0", timeout_s=0.2)
    try:
        batcher = ScriptBatcher(redis)
        script = redis.register_script(echo_script())
        results = await asyncio.gather(*(batcher.run(script, ["k"], [str(i)]) for i in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(r, RedisError) for r in results), results
    finally:
        await redis.aclose(close_connection_pool=True)


# --- ScriptChannel: the accounts' own pipelined connection ----------------------------------------


async def test_the_accounts_send_scripts_on_a_channel_of_their_own_over_plain_tcp(client: Redis) -> None:
    assert isinstance(script_sender(client), ScriptChannel)
    tls = redis_client("rediss://127.0.0.1:6379/0")
    try:
        assert isinstance(script_sender(tls), ScriptBatcher)  # TLS stays on redis-py's connections
    finally:
        await tls.aclose(close_connection_pool=True)


async def test_channel_calls_get_their_own_replies_errors_and_noscript_is_sent_again(
        client: Redis, redis_space: RedisSpace) -> None:  # noqa: F811
    channel = script_sender(client)
    assert isinstance(channel, ScriptChannel)
    script = client.register_script(echo_script())
    key = f"{redis_space.prefix}:chan"
    try:
        results = await asyncio.gather(*(channel.run(script, [key], [str(i) if i != 7 else "boom"]) for i in range(40)),
                                       return_exceptions=True)
        for i, result in enumerate(results):
            if i == 7:
                assert isinstance(result, ResponseError) and "boom" in str(result)
            else:
                assert result == [str(i).encode(), key.encode()]
        assert int(await client.get(key) or 0) == 39  # each ran once: the NOSCRIPT calls went again as EVAL
        assert await channel.run(script, [key], ["alone"]) == [b"alone", key.encode()]  # now loaded: EVALSHA
        with pytest.raises(ResponseError, match="boom"):
            await channel.run(script, [key], ["boom"])
    finally:
        channel.close()


async def test_channel_calls_reach_redis_in_the_order_they_were_made(client: Redis, redis_space: RedisSpace) -> None:  # noqa: F811
    """One connection, answered in order: a settle made before a later reserve is applied before it."""
    channel = script_sender(client)
    script = client.register_script("redis.call('RPUSH', KEYS[1], ARGV[1]) return redis.call('LLEN', KEYS[1])")
    key = f"{redis_space.prefix}:order"
    try:
        await channel.run(script, [key], ["warm"])  # loads the script
        calls = []
        for i in range(30):
            calls.append(asyncio.ensure_future(channel.run(script, [key], [str(i)])))
            if i % 7 == 0:
                await asyncio.sleep(0)  # calls of several loop turns
        replies = await asyncio.gather(*calls)
        assert replies == list(range(2, 32))
        assert await client.lrange(key, 1, -1) == [str(i).encode() for i in range(30)]
    finally:
        channel.close()


async def test_channel_to_an_unreachable_store_fails_every_call_with_a_redis_error() -> None:
    channel = script_sender(redis_client("redis://127.0.0.1:1/0", timeout_s=0.2))
    script = AsyncScriptStub()
    results = await asyncio.gather(*(channel.run(script, ["k"], [str(i)]) for i in range(5)),  # type: ignore[arg-type]
                                   return_exceptions=True)
    assert all(isinstance(r, RedisConnectionError) for r in results), results
    channel.close()


class SilentServer:
    """Accepts connections, reads what is written to them and never answers: a stalled Redis."""

    def __init__(self) -> None:
        self.connections: list[asyncio.StreamWriter] = []
        self.received = bytearray()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections.append(writer)
        while data := await reader.read(65536):
            self.received += data

    async def stop(self) -> None:
        for writer in self.connections:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[SilentServer]:
    server = SilentServer()
    yield server
    await server.stop()


TIMEOUT_S = 0.5  # small, so that "within one timeout, never two" is a bound a loaded machine keeps


async def test_channel_fails_calls_redis_does_not_answer_in_time_after_one_timeout(silent: SilentServer) -> None:
    """Every call in flight fails with ``TimeoutError`` after one timeout: none is sent again on a new
    connection (a stalled Redis would keep the copy waiting as long again), and the silent
    connection is dropped, so the next call opens a new one."""
    channel = ScriptChannel(port=await silent.start(), timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)
    script = AsyncScriptStub()
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(*(channel.run(script, ["k"], [str(i)]) for i in range(3)),  # type: ignore[arg-type]
                                       return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        assert loop.time() - started < 1.5 * TIMEOUT_S
        assert len(silent.connections) == 1  # no retry on a second connection
        with pytest.raises(RedisTimeoutError):
            await channel.run(script, ["k"], ["next"])  # type: ignore[arg-type]
        assert len(silent.connections) == 2  # a new connection for the next call
    finally:
        channel.close()


@pytest.mark.parametrize("sender", ["channel", "batcher"])
async def test_a_request_waits_for_the_store_once_over_all_its_calls(silent: SilentServer, sender: str) -> None:
    """Inside a request (``store.wait``), the timeout is the request's: the first call to a stalled
    Redis takes it all, the next calls fail at once and are never sent."""
    port = await silent.start()
    redis = redis_client(f"redis://127.0.0.1:{port}/0", timeout_s=TIMEOUT_S)
    runner = (ScriptChannel(port=port, timeout_s=TIMEOUT_S) if sender == "channel"
              else ScriptBatcher(redis, timeout_s=TIMEOUT_S))
    script = redis.register_script("return ARGV[1]")
    loop = asyncio.get_running_loop()
    waiting = store_wait.begin(TIMEOUT_S)
    try:
        started = loop.time()
        for call in ("reserve", "refusal"):
            with pytest.raises(RedisTimeoutError):
                await runner.run(script, ["k"], [call])
        assert loop.time() - started < 1.5 * TIMEOUT_S
        assert b"refusal" not in silent.received  # the second call was never written
    finally:
        store_wait.end(waiting)
        runner.close()
        await redis.aclose(close_connection_pool=True)


async def test_a_call_whose_request_stopped_waiting_while_connecting_is_never_written(silent: SilentServer) -> None:
    """The connection's handshake (``SELECT``) is answered only after the request's time ran out: the
    call queued behind it has failed by then and is dropped from the queue, never run by Redis."""
    channel = ScriptChannel(port=await silent.start(), db=13, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)
    script = AsyncScriptStub()
    loop = asyncio.get_running_loop()
    waiting = store_wait.begin(TIMEOUT_S / 2)
    try:
        started = loop.time()
        with pytest.raises(RedisTimeoutError):
            await channel.run(script, ["k"], ["gave-up"])  # type: ignore[arg-type]
        assert loop.time() - started < 0.75 * TIMEOUT_S  # the request's time, not the connect timeout
    finally:
        store_wait.end(waiting)
    try:
        await eventually(lambda: b"SELECT" in silent.received, what="the handshake written")
        assert b"EVALSHA" not in silent.received
        silent.connections[0].write(b"+OK\r\n")  # the handshake completes: the queue is flushed
        later = asyncio.ensure_future(channel.run(script, ["k"], ["later"]))  # type: ignore[arg-type]
        await eventually(lambda: b"later" in silent.received, what="the later call written")
        assert b"gave-up" not in silent.received
        later.cancel()
    finally:
        channel.close()


class AsyncScriptStub:
    """Enough of ``AsyncScript`` for a channel that never reaches a real Redis."""

    sha = "0" * 40
    script = "return 1"


async def test_a_cancelled_caller_leaves_the_replies_of_the_others_in_order(client: Redis) -> None:
    channel = script_sender(client)
    script = client.register_script("return ARGV[1]")
    try:
        assert await channel.run(script, [], ["warm"]) == b"warm"  # loaded
        tasks = [asyncio.ensure_future(channel.run(script, [], [str(i)])) for i in range(5)]
        await asyncio.sleep(0)  # every call is queued
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 2] == [b"0", b"1", b"3", b"4"]
        assert await channel.run(script, [], ["after"]) == b"after"  # the cancelled call's reply was not handed on
    finally:
        channel.close()
