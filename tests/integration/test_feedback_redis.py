"""Feedback on Redis (database 13): two replicas share the estimates, the write script moves the
sums by exactly what a write changes even when replicas race, and the judge's daily cap holds."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from costproxy.budgets.redis import redis_client
from costproxy.http.app import create_app
from costproxy.http.state import ROUTER
from costproxy.learning.feedback import Feedback
from costproxy.learning.redis import RedisLearningStore
from tests.conftest import ADMIN_TOKEN, load_test_settings
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

pytestmark = pytest.mark.redis
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = {"model": "auto", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}


def feedback(request_id: str, source: str, score: float, model: str = "small") -> Feedback:
    return Feedback(request_id=request_id, source=source, score=score, comment=None, model=model,
                    task_type="classification", bucket=1, weight=1.0, actor="test", created_at_ms=1,
                    updated_at_ms=1)


async def test_two_stores_race_and_agree(redis_space: RedisSpace) -> None:  # noqa: F811
    clients = [redis_client(redis_space.url), redis_client(redis_space.url)]
    try:
        one, two = (RedisLearningStore(c, redis_space.prefix) for c in clients)
        writes = [store.put(feedback(f"r{i}", "eval", 1.0 if i % 2 else 0.0))
                  for i, store in enumerate([one, two] * 20)]
        writes += [store.put(feedback(f"r{i}", "user", 1.0)) for i, store in enumerate([two, one] * 20)]
        await asyncio.gather(*writes)
        assert await one.put(feedback("r0", "eval", 1.0)) == feedback("r0", "eval", 0.0)  # replaced: 0 -> 1
        for store in (one, two):
            cells = await store.evidence()
            assert cells[("classification", 1, "small")].n == pytest.approx(80.0)
            assert cells[("classification", 1, "small")].successes == pytest.approx(61.0)
        assert [f.source for f in await two.feedback_for("r3")] == ["eval", "user"]
        unlearned = replace(feedback("r9", "agent", 1.0), model=None)
        await one.put(unlearned)
        assert (await two.evidence())[("classification", 1, "small")].n == pytest.approx(80.0)
        assert await one.charge("2026-01-01", 700, 1000)
        assert not await two.charge("2026-01-01", 400, 1000) and await two.spent("2026-01-01") == 700
    finally:
        for client in clients:
            await client.aclose()


async def test_feedback_on_one_replica_reaches_the_others_router(aiohttp_client: Any, simulator: Any,
                                                                write_config: Any,
                                                                redis_space: RedisSpace) -> None:  # noqa: F811
    path = write_config(simulator[0], extra={"budgets": {"key_prefix": redis_space.prefix},
                                             "learning": {"refresh_interval_s": 0.1}})
    settings = load_test_settings(path, COSTPROXY_STORE_URL=redis_space.url)
    replicas = [await aiohttp_client(create_app(replace(settings, server=replace(settings.server, port=port))))
                for port in (18101, 18102)]
    a, b = replicas
    created = await a.post("/api/v1/keys", headers=ADMIN, json={"user": "alice", "team": "core"})
    key = (await created.json())["key"]
    resp = await a.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200
    rid = resp.headers["x-costproxy-request-id"]
    accepted: list[dict[str, Any]] = []

    async def sent() -> bool:  # the other replica: 404 until the entry reaches its ledger mirror
        answer = await b.post("/api/v1/feedback", json={"requestId": rid, "thumbs": "up", "source": "user"},
                              headers=ADMIN)
        assert answer.status in (201, 404), await answer.text()
        if answer.status == 201:
            accepted.append(await answer.json())
        return bool(accepted)

    await eventually(sent, 30, what="the entry on the other replica's mirror")
    body = accepted[0]
    cell = (body["taskType"], body["difficultyBucket"], body["model"])

    async def learned() -> bool:
        estimates = a.app[ROUTER].estimates
        return estimates is not None and estimates.evidence(*cell).n == 1.0

    await eventually(learned, 30, what="the feedback in the other replica's router")
