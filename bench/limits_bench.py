"""What rate limits and the response cache add to one request, measured in-process.

``proxy_bench.py --rate-limits`` gives the end-to-end picture (the whole proxy, limits configured
against not), but on a shared machine its CPU per request moves by more than these steps cost.
This script times the steps themselves, as the pipeline runs them, with the CPU clock of this
process (every thread, so the SQLite thread counts too):

* rate limits, SQLite store (buckets in memory): ``admit``, the answer's headers and ``settle`` for a
  caller with a key, a user and a team limit, each on requests and tokens (six buckets);
* the same on Redis (``--redis URL``, database of your choice; keys under a random prefix, deleted
  after): client CPU and wall time per request (one Lua script to admit, one to correct);
* the response cache: deciding and deriving the key of a typical chat request, a miss on the
  SQLite store (no disk read), and a hit (read, decode, encode the answer);
* the whole pipeline (``run_unary``: tokens, routing with the project's rules, budgets, ledger) for
  a named model against an in-memory upstream, with the three limits and without any, in
  alternating batches in one process (so the machine's load affects both alike): the difference
  is what rate limiting adds to a request.

Usage::

    python3 bench/limits_bench.py                          # SQLite only, 32 calls at a time
    python3 bench/limits_bench.py --redis redis://127.0.0.1:6379/13 --concurrency 50
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from costproxy.cache.policy import CacheDirective, CacheSettings, decide
from costproxy.cache.store import SqliteResponseCache
from costproxy.identity.principal import Principal
from costproxy.pipeline.cached import StoredAnswer
from costproxy.ratelimits.config import RateLimitConfig
from costproxy.ratelimits.limiter import Buckets, RateLimiter
from costproxy.ratelimits.model import RateLimit
from costproxy.ratelimits.store import LocalBuckets, SqliteLimitDefinitions, ensure_schema
from costproxy.registry import Usage
from costproxy.request import Endpoint, parse_request
from costproxy.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
LIMITS = tuple(RateLimit(f"bench-{kind}", kind, scope, requests_per_minute=10**9, tokens_per_minute=10**10)
               for kind, scope in (("key", "*"), ("user", "bench"), ("team", "perf")))
CALLER = Principal(key_id="key_bench", user="bench", team="perf", org="acme")
BODY = {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 256,
        "messages": [{"role": "system", "content": "You are a concise assistant."},
                     {"role": "user", "content": "What is the capital of France? Give one fact about its size."}]}


CONCURRENCY = [1]  # set from --concurrency: calls in flight at once, as requests are in the proxy


async def per_call(step: Callable[[], Awaitable[object]], n: int) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``step``, after a warm-up; ``CONCURRENCY`` callers at once
    (the wall time is then per call of the whole run, not a latency)."""
    async def caller(calls: int) -> None:
        for _ in range(calls):
            await step()

    width = CONCURRENCY[0]
    await asyncio.gather(*(caller(max(1, 200 // width)) for _ in range(width)))
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(max(1, n // width)) for _ in range(width)))
    done = max(1, n // width) * width
    return (time.process_time() - cpu) / done * 1e6, (time.perf_counter() - wall) / done * 1e6


async def limiter_steps(limiter: RateLimiter, n: int) -> dict[str, tuple[float, float]]:
    async def limited() -> None:
        admission = await limiter.admit(CALLER, 300)
        assert admission is not None
        admission.headers()  # the x-ratelimit-* headers of the answer
        await limiter.settle(admission, 120)

    return {"admit + headers + settle, 3 limits x (requests, tokens)": await per_call(limited, n)}


async def open_sqlite_limiter(path: Path) -> tuple[SqliteStore, RateLimiter]:
    """A SQLite store at ``path`` and a limiter over it holding ``LIMITS``, both open."""
    store = SqliteStore(str(path))
    await store.open()
    await ensure_schema(store)
    buckets = LocalBuckets(store)
    await buckets.open()
    limiter = RateLimiter(RateLimitConfig(static=LIMITS), SqliteLimitDefinitions(store), buckets)
    await limiter.open(refresh=False)
    return store, limiter


async def sqlite_limits(work: Path, n: int) -> dict[str, tuple[float, float]]:
    store, limiter = await open_sqlite_limiter(work / "limits.sqlite3")
    try:
        return await limiter_steps(limiter, n)
    finally:
        await limiter.close()
        await store.close()


async def redis_limits(url: str, n: int) -> dict[str, tuple[float, float]]:
    from costproxy.budgets.redis import redis_client
    from costproxy.ratelimits.redis import RedisBuckets, RedisLimitDefinitions

    redis = redis_client(url)
    prefix = "bench" + uuid.uuid4().hex[:8]
    buckets: Buckets = RedisBuckets(redis, prefix)
    limiter = RateLimiter(RateLimitConfig(static=LIMITS), RedisLimitDefinitions(redis, prefix), buckets)
    await limiter.open(refresh=False)
    try:
        return await limiter_steps(limiter, n)
    finally:
        await limiter.close()
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def cache_steps(work: Path, n: int) -> dict[str, tuple[float, float]]:
    request = parse_request(Endpoint.CHAT, BODY)
    settings, rule = CacheSettings(), CacheDirective(ttl_s=600)

    async def key() -> None:
        decide(settings, rule, None, request, who=(CALLER, None), answer=("gpt-4o-mini", 256))

    store = SqliteStore(str(work / "cache.sqlite3"))
    await store.open()
    cache = SqliteResponseCache(store, max_bytes=1 << 28, max_entry_bytes=1 << 20)
    await cache.open()
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris. " * 40},
                           "finish_reason": "stop"}], "usage": {"prompt_tokens": 40, "completion_tokens": 80}}
    stored = StoredAnswer(answer, "gpt-4o-mini", "openai", Usage(40, 80), 57_000, "req_1", 0)
    await cache.put("present", stored.to_bytes(), 3600)

    async def miss() -> None:
        await cache.get("absent")

    async def hit() -> None:
        data = await cache.get("present")
        assert data is not None
        found = StoredAnswer.from_bytes(data)
        assert found is not None
        orjson.dumps(found.answer)

    try:
        return {"decide + key of a chat request": await per_call(key, n),
                "lookup, miss (SQLite)": await per_call(miss, n),
                "lookup, hit: read, decode, encode (SQLite)": await per_call(hit, max(1, n // 10))}
    finally:
        await store.close()


class CannedUpstream:
    """An ``Upstream`` that answers every call at once with one chat completion."""

    def __init__(self) -> None:
        data = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}}
        from costproxy.providers.transport import UpstreamResponse

        self.response = UpstreamResponse(200, {}, orjson.dumps(data), data)

    async def call(self, *args: object, **kwargs: object) -> object:
        return self.response

    async def open_stream(self, *args: object, **kwargs: object) -> object:
        raise NotImplementedError


async def pipeline_ab(work: Path, rounds: int, batch: int) -> dict[str, tuple[float, float]]:
    """CPU per ``run_unary`` with and without limits, in alternating batches; medians over rounds."""
    from dataclasses import replace

    from costproxy.analyzer.encodings import load_encodings
    from costproxy.analyzer.tokens import TokenCounter
    from costproxy.budgets.accounts import LedgerAccounts
    from costproxy.pipeline.run import run_unary
    from costproxy.pipeline.services import Services
    from costproxy.request import RequestContext
    from costproxy.routing.router import build_router
    from costproxy.settings import load_settings

    settings = load_settings(ROOT / "config" / "costproxy.yaml", {"OPENAI_API_KEY": "sk-bench"})
    store, limiter = await open_sqlite_limiter(work / "pipeline.sqlite3")
    plain = Services(settings=settings, registry=settings.registry, counter=TokenCounter(load_encodings()),
                     upstream=CannedUpstream(), accounts=LedgerAccounts(store),  # type: ignore[arg-type]
                     router=build_router(settings))
    limited = replace(plain, limits=limiter)
    request = parse_request(Endpoint.CHAT, {**BODY, "temperature": 0.2})
    samples: dict[str, list[float]] = {"without limits": [], "with 3 limits": []}
    try:
        for _ in range(rounds):
            for name, services in (("without limits", plain), ("with 3 limits", limited)):
                start = time.process_time()
                for i in range(batch):
                    await run_unary(services, RequestContext(f"req-{i}", CALLER, "chat/completions"), request)
                samples[name].append((time.process_time() - start) / batch * 1e6)
            await store.flush()
    finally:
        await limiter.close()
        await store.close()
    result = {name: (sorted(values)[len(values) // 2], min(values)) for name, values in samples.items()}
    result["difference (median, min)"] = (result["with 3 limits"][0] - result["without limits"][0],
                                          result["with 3 limits"][1] - result["without limits"][1])
    return result


def show(title: str, rows: dict[str, tuple[float, float]]) -> None:
    print(title)
    for name, (cpu, wall) in rows.items():
        print(f"  {name:48} {cpu:8.1f} µs CPU   {wall:8.1f} µs wall")


async def main(args: argparse.Namespace) -> None:
    CONCURRENCY[0] = args.concurrency
    print(f"{args.concurrency} calls at a time")
    with tempfile.TemporaryDirectory(prefix="costproxy-limits-bench-") as work:
        show("rate limits, SQLite store (buckets in memory):", await sqlite_limits(Path(work), args.n))
        if args.redis:
            show(f"rate limits, Redis ({args.redis.split('@')[-1]}), client side:",
                 await redis_limits(args.redis, max(1, args.n // 10)))
        show("response cache:", await cache_steps(Path(work), args.n))
        rows = await pipeline_ab(Path(work), args.rounds, args.batch)
        print(f"the pipeline in-process (run_unary, {args.rounds} alternating rounds of {args.batch}), "
              "CPU µs per request, median and min:")
        for name, (median, low) in rows.items():
            print(f"  {name:48} {median:8.1f}   {low:8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per step (Redis: a tenth)")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight at once (default 32)")
    parser.add_argument("--rounds", type=int, default=10, help="pipeline A/B rounds (default 10)")
    parser.add_argument("--batch", type=int, default=500, help="requests per pipeline batch (default 500)")
    parser.add_argument("--redis", default=None, help="redis://host:port/db to measure the Redis store too")
    asyncio.run(main(parser.parse_args()))
