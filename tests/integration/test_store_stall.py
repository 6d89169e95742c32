"""A Redis that stalls or runs out of memory, seen by a client (a private redis-server: the tests pause
it with SIGSTOP and fill its maxmemory, which the shared Redis must never see).

- A stalled Redis: the request answers 503 ``store_unavailable`` within one ``store.timeout_s`` — not
  one per store call it would have made (rate-limit admission, reservation, refusal headers, the
  refusal's ledger entry), nor a second one for a retry — and once Redis is back the reservation its
  reply never came for is released from the outbox: nothing held, nothing charged.
- A Redis out of memory: the 503 names the store and the operation that failed, and says it is out of
  memory, not "unreachable".
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis as sync_redis
from aiohttp.test_utils import TestClient

from costproxy.http.app import create_app
from costproxy.http.state import BACKEND
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisServer, own_redis  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "hi [[sim:tokens=3]]"}]}
TIMEOUT_S = 0.5  # store.timeout_s: small, so "within one timeout, never two" is a bound a loaded machine keeps
HARD = {"id": "acme", "scope_type": "org", "scope_id": "acme", "limit_usd": "1", "period": "monthly"}
PER_KEY = [{"id": "k", "scope_type": "key", "scope_id": "*", "requests_per_minute": 100}]
Client = TestClient[Any, Any]
Factory = Callable[..., Awaitable[tuple[Client, str]]]


@pytest.fixture
async def make_replica(aiohttp_client: Any, simulator: Any, write_config: Any,
                       own_redis: RedisServer) -> AsyncIterator[Factory]:  # noqa: F811
    async def make(rate_limits: dict[str, Any] | None = None) -> tuple[Client, str]:
        extra: dict[str, Any] = {
            "store": {"url": f"{own_redis.endpoint}/0", "timeout_s": TIMEOUT_S},
            "budgets": {"refresh_interval_s": 0.1, "definitions": [HARD]}}
        if rate_limits is not None:
            extra["rate_limits"] = rate_limits
        client = await aiohttp_client(create_app(load_test_settings(write_config(simulator[0], extra=extra))))
        async with client.post("/api/v1/keys", headers=ADMIN, json={"user": "alice", "team": "core",
                                                                      "org": "acme"}) as resp:
            assert resp.status == 201, await resp.text()
            key = (await resp.json())["key"]
        async with client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)) as resp:
            assert resp.status == 200, await resp.text()  # connections open, the partition registered
        return client, key

    yield make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """Redis stalled: the process stopped (its connections stay open, nothing is answered)."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


def budget_counter(server: RedisServer) -> dict[str, int]:
    client = sync_redis.Redis(port=server.port)
    try:
        keys = list(client.scan_iter(match="*:b:acme:*"))
        assert len(keys) == 1, keys
        return {k.decode(): int(v) for k, v in client.hgetall(keys[0]).items()}
    finally:
        client.close()


BUDGETS = "cannot reserve on the budgets acme, so they cannot be checked: the budget store"
LIMITS = "cannot draw from the rate limits: the rate-limit store"


@pytest.mark.parametrize(("rate_limits", "stream", "failed"), [
    (None, False, BUDGETS),
    ({"limits": PER_KEY}, False, BUDGETS),  # on_store_error: allow — the rate limits' call came first and waited
    ({"limits": PER_KEY}, True, BUDGETS),
    ({"limits": PER_KEY, "on_store_error": "refuse"}, False, LIMITS),
], ids=["budgets", "rate-limits-and-budgets", "stream", "rate-limits-refuse"])
async def test_a_stalled_store_answers_503_within_one_timeout(make_replica: Factory, own_redis: RedisServer,  # noqa: F811
                                                              rate_limits: dict[str, Any] | None,
                                                              stream: bool, failed: str) -> None:
    client, key = await make_replica(rate_limits)
    spent = budget_counter(own_redis)["spent"]
    loop = asyncio.get_running_loop()
    with paused(own_redis):
        started = loop.time()
        async with client.post("/v1/chat/completions", json={**CHAT, "stream": stream}, headers=bearer(key)) as resp:
            body = await resp.json()
        elapsed = loop.time() - started
    assert resp.status == 503 and body["error"]["code"] == "store_unavailable", body
    assert body["error"]["type"] == "server_error" and set(body["error"]) == {"message", "type", "param", "code"}
    message = body["error"]["message"]
    assert message.startswith(f"{failed} (redis://127.0.0.1:{own_redis.port}/0) did not answer within store.timeout_s")
    assert ("budget" in message) == (failed == BUDGETS), message  # the store that failed, and only that one
    assert elapsed < 1.5 * TIMEOUT_S, f"answered after {elapsed:.2f} s with store.timeout_s {TIMEOUT_S}"

    accounts = client.app[BACKEND].accounts

    def settled() -> bool:  # Redis answers again: the outbox released the lost reservation
        return accounts.pending() == 0 and budget_counter(own_redis).get("reserved", 0) == 0

    await eventually(settled, what="the outbox replayed and nothing reserved")
    assert budget_counter(own_redis)["spent"] == spent  # the refused request was charged nothing
    async with client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)) as resp:
        assert resp.status == 200, await resp.text()


@contextmanager
def out_of_memory(server: RedisServer) -> Iterator[None]:
    """Redis past its maxmemory with no eviction: every write is refused with ``OOM``."""
    client = sync_redis.Redis(port=server.port)
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")
    try:
        yield
    finally:
        client.config_set("maxmemory", "0")
        client.close()


@pytest.mark.parametrize(("rate_limits", "store", "doing"), [
    (None, "the budget store", "cannot reserve on the budgets acme, so they cannot be checked"),
    ({"limits": PER_KEY}, "the budget store",  # on_store_error allow: the rate limits are skipped, the budgets refuse
     "cannot reserve on the budgets acme, so they cannot be checked"),
    ({"limits": PER_KEY, "on_store_error": "refuse"}, "the rate-limit store", "cannot draw from the rate limits"),
], ids=["budgets", "rate-limits-allow", "rate-limits-refuse"])
async def test_a_store_out_of_memory_is_named_with_the_operation_that_failed(
        make_replica: Factory, own_redis: RedisServer, rate_limits: dict[str, Any] | None,  # noqa: F811
        store: str, doing: str) -> None:
    client, key = await make_replica(rate_limits)
    with out_of_memory(own_redis):
        async with client.post("/v1/chat/completions", json=CHAT, headers=bearer(key)) as resp:
            body = await resp.json()
        async with client.post("/api/v1/keys", headers=ADMIN, json={"user": "bob"}) as keys_resp:
            keys_body = await keys_resp.json()
    assert resp.status == 503 and body["error"]["code"] == "store_unavailable", body
    message = body["error"]["message"]
    assert message.startswith(f"{doing}: {store} (redis://127.0.0.1:{own_redis.port}/0) is out of memory"), message
    assert "maxmemory" in message and "unreachable" not in message and "script:" not in message, message
    other = "the rate-limit store" if store == "the budget store" else "the budget store"
    assert other not in message, message
    assert keys_resp.status == 503 and keys_body["error"]["code"] == "store_unavailable", keys_body
    assert keys_body["error"]["message"].startswith("cannot create the key: the key store"), keys_body
    assert "is out of memory" in keys_body["error"]["message"], keys_body
