"""ScriptBatcher: script calls of one loop turn share a pipeline, and each caller still gets its own
reply or error, as if its call had been sent alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from costproxy.budgets.batch import ScriptBatcher
from costproxy.budgets.redis import redis_client
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401

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
