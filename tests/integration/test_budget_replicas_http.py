"""Two proxy replicas on one Redis: a budget created, changed or deleted through one replica's API
binds the other's very next request, and the other's budget API answers from it at once.

The replicas re-read definitions once an hour (``refresh_interval_s: 3600``), so no poll can carry
a change within the test; every request to ``b`` follows the ``2xx`` of the change on ``a`` without
a sleep or a wait.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from costproxy.http.app import create_app
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401

pytestmark = pytest.mark.redis
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "small", "max_tokens": 20, "messages": [{"role": "user", "content": "hi [[sim:tokens=3]]"}]}
Factory = Callable[[int], Awaitable[TestClient[Any, Any]]]
BUDGET = "/api/v1/budgets/alice-total"
SELECT = {"content": {"messages": CHAT["messages"]}, "metadata": {"userId": "alice", "teamId": "core"}}


@pytest.fixture
def make_replica(aiohttp_client: Any, simulator: Any, write_config: Any, redis_space: RedisSpace) -> Factory:  # noqa: F811
    async def make(port: int) -> TestClient[Any, Any]:
        path = write_config(simulator[0], extra={
            "budgets": {"key_prefix": redis_space.prefix, "refresh_interval_s": 3600}})
        loaded = load_test_settings(path, COSTPROXY_STORE_URL=redis_space.url)
        return await aiohttp_client(create_app(replace(loaded, server=replace(loaded.server, port=port))))

    return make


async def chat(client: TestClient[Any, Any], key: str) -> tuple[int, dict[str, Any]]:
    async with client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, await resp.json()


async def admin(client: TestClient[Any, Any], method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with client.request(method, path, json=body, headers=ADMIN) as resp:
        return resp.status, await resp.json()


async def test_budget_changes_on_one_replica_bind_the_others_next_request(make_replica: Factory) -> None:
    a = await make_replica(18301)
    status, made = await admin(a, "POST", "/api/v1/keys", {"user": "alice", "team": "core", "org": "acme"})
    assert status == 201
    key = made["key"]
    b = await make_replica(18302)  # started after the key was issued: it knows the key from its start
    assert (await chat(b, key))[0] == 200  # no budget for alice yet

    status, _ = await admin(a, "POST", "/api/v1/budgets", {
        "id": "alice-total", "scopeType": "user", "scopeId": "alice", "amount": "0.000001", "period": "total"})
    assert status == 201
    status, body = await chat(b, key)
    assert (status, body.get("error", {}).get("code")) == (429, "budget_exceeded"), body
    assert "alice-total" in body["error"]["message"]
    status, shown = await admin(b, "GET", f"{BUDGET}/status")  # b's status API knows it too
    assert (status, shown["limit"]) == (200, "0.000001")
    status, scoped = await admin(b, "GET", "/api/v1/budgets/status/user/alice")
    assert status == 200 and [s["budgetId"] for s in scoped["budgets"]] == ["alice-total"]
    status, selected = await admin(b, "POST", "/api/v1/models/select", SELECT)  # b's selection reads it too
    assert status == 429 and "alice-total" in selected["error"]["message"], selected

    assert (await admin(a, "PATCH", BUDGET, {"amount": "5"}))[0] == 200
    status, selected = await admin(b, "POST", "/api/v1/models/select", SELECT)
    assert status == 200 and selected["budgetImpact"]["remainingBefore"].startswith("5"), selected
    status, body = await chat(b, key)
    assert status == 200, body  # room at once, and charged to the budget
    status, shown = await admin(b, "GET", f"{BUDGET}/status")
    spent = shown["currentAmount"]
    assert status == 200 and float(spent) > 0

    assert (await admin(a, "PATCH", BUDGET, {"amount": spent}))[0] == 200  # down to what was spent
    status, body = await chat(b, key)
    assert (status, body.get("error", {}).get("code")) == (429, "budget_exceeded"), body

    assert (await admin(a, "DELETE", BUDGET))[0] == 200
    assert (await chat(b, key))[0] == 200  # no budget any more
    assert (await admin(b, "GET", f"{BUDGET}/status"))[0] == 404
