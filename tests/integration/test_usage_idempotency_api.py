"""POST /api/v1/budgets/{id}/usage with an idempotency key, on the SQLite and the Redis store: the same
record again answers 200 ``duplicate``, a different record under a used key (the ``Idempotency-Key``
header, or ``metadata.requestId`` standing in for it) answers 409 ``idempotency_key_reused`` in
OpenAI's error shape, charges nothing and leaves a refused entry in the ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from costproxy.http.app import create_app
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TEAM = {"id": "team-core", "scope_type": "team", "scope_id": "core", "limit_usd": "10", "period": "monthly"}
USAGE = "/api/v1/budgets/team-core/usage"


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def client(request: pytest.FixtureRequest, aiohttp_client: Any, simulator: Any,
                 write_config: Any) -> TestClient[Any, Any]:
    budgets: dict[str, Any] = {"definitions": [TEAM]}
    env: dict[str, str] = {}
    if request.param == "redis":
        space: RedisSpace = request.getfixturevalue("redis_space")
        budgets["key_prefix"] = space.prefix
        env["COSTPROXY_STORE_URL"] = space.url
    settings = load_test_settings(write_config(simulator[0], extra={"budgets": budgets}), **env)
    made: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
    return made


async def post(client: TestClient[Any, Any], body: dict[str, Any], key: str | None = None) -> tuple[int, Any, Any]:
    headers = ADMIN if key is None else {**ADMIN, "Idempotency-Key": key}
    async with client.post(USAGE, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers


async def spent(client: TestClient[Any, Any]) -> str:
    async with client.get("/api/v1/budgets/team-core/status", headers=ADMIN) as resp:
        return str((await resp.json())["currentAmount"])


async def test_records_sharing_a_request_id_are_refused_not_dropped(client: TestClient[Any, Any]) -> None:
    first = {"amount": "0.25", "source": "relaycore", "metadata": {"requestId": "rc-1", "userId": "bob"}}
    assert (await post(client, first))[0] == 201
    status, again, _ = await post(client, {**first, "amount": 0.25})  # the same record, the amount as a number
    assert (status, again["duplicate"], again["idempotencyKey"]) == (200, True, "rc-1")
    status, body, headers = await post(client, {"amount": "0.4", "source": "relaycore",
                                                "metadata": {"requestId": "rc-1", "userId": "carol"}})
    assert status == 409 and headers["x-should-retry"] == "false"
    error = body["error"]
    assert (error["code"], error["type"], error["param"]) == ("idempotency_key_reused", "invalid_request_error",
                                                              "metadata.requestId")
    assert "rc-1" in error["message"] and "no Idempotency-Key header was sent" in error["message"]
    assert await spent(client) == "0.25"

    async def refused() -> list[dict[str, Any]]:  # the ledger (Redis: this replica's mirror) keeps the record
        async with client.get("/api/v1/usage?limit=10", headers=ADMIN) as resp:
            data = (await resp.json())["data"]
        return [e for e in data if e["status"] == "refused"]

    [entry] = await eventually(refused, what="the refused record in the ledger")
    assert (entry["requestId"], entry["httpStatus"], entry["errorCode"], entry["cost"], entry["userId"]) == (
        "rc-1", 409, "idempotency_key_reused", "0", "carol")
    assert (entry["metadata"]["refused_amount_nanos"], entry["metadata"]["idempotency_key"]) == (400_000_000, "rc-1")


async def test_the_header_key_names_one_record(client: TestClient[Any, Any]) -> None:
    record = {"amount": "1", "source": "manual", "timestamp": "2026-11-25T10:00:00Z", "metadata": {"tags": ["a"]}}
    assert (await post(client, record, "batch-7"))[0] == 201
    same = {"amount": "1.000", "timestamp": "2026-11-25T10:00:00.000Z", "metadata": {"tags": ["a"]}}
    status, again, _ = await post(client, same, "batch-7")  # the same record: spellings and defaults aside
    assert (status, again["duplicate"], again["idempotencyKey"]) == (200, True, "batch-7")
    for other in ({**record, "amount": "2"}, {**record, "metadata": {"tags": ["b"]}},
                  {**record, "timestamp": "2026-11-25T10:00:01Z"}, {**record, "metadata": {"requestId": "x"}}):
        status, body, _ = await post(client, other, "batch-7")
        assert (status, body["error"]["code"], body["error"]["param"]) == (409, "idempotency_key_reused",
                                                                          "Idempotency-Key"), other
    assert (await post(client, {**record, "amount": "2"}, "batch-8"))[0] == 201  # a new key: a new record
    assert await spent(client) == "3"


async def test_racing_different_records_under_one_key_charge_one(client: TestClient[Any, Any]) -> None:
    bodies = [{"amount": amount, "metadata": {"requestId": "rc-race"}} for amount in ("0.1", "0.2") * 8]
    answers = await asyncio.gather(*(post(client, body) for body in bodies))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(201) == 1 and set(statuses) <= {200, 201, 409}
    [winner] = [body["amount"] for body, (status, _, _) in zip(bodies, answers, strict=True) if status == 201]
    for body, (status, _, _) in zip(bodies, answers, strict=True):  # the winner's copies are duplicates
        assert status == 409 if body["amount"] != winner else status in (200, 201), (body, status)
    assert await spent(client) == winner
