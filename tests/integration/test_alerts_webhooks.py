"""Alerts end to end: thresholds fire once per period (also with two replicas sharing one real
Redis) and re-arm when the period rolls over, webhooks are signed and verified by a receiver on
loopback, failed deliveries are retried with backoff and recorded, pending deliveries survive a
restart, and a receiver that hangs never slows a request down."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from costproxy.alerts.manager import AlertManager
from costproxy.alerts.webhooks import verify
from costproxy.http.app import create_app
from costproxy.http.state import ALERTS
from tests.conftest import ADMIN_TOKEN, Proxy, load_test_settings
from tests.conftest_redis import RedisSpace, redis_endpoint, redis_space  # noqa: F401
from tests.polling import eventually

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
T0 = 1_795_600_000.0  # 2026-11-25T09:46:40Z
CHAT = {"model": "small", "messages": [{"role": "user", "content": "Classify this sentence as happy or sad."}]}
GATED = [50, {"percent": 75, "actions": ["notify", "block-all"]}, 100]  # refuses requests from 75 %
FAST_RETRIES = {"backoff_base_s": 0.05, "backoff_max_s": 0.2, "refresh_interval_s": 0.1,
                "request_event_interval_s": 0}


class FakeClock:
    def __init__(self, start: float = T0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# --- a webhook receiver on loopback -------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))


@dataclass
class Receiver:
    url: str = ""
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers to give first, then 200
    hang_s: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "try later")

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r.event for r in self.received if kind is None or r.event.get("type") == kind]

    async def wait(self, predicate: Callable[[], bool]) -> None:
        await eventually(predicate, what=f"the deliveries expected (received so far: {len(self.received)})")


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server: TestServer = await aiohttp_server(app)
    hook.url = str(server.make_url("/hook"))
    return hook


# --- apps with a fake clock ------------------------------------------------------------------------


AppFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def make_app(aiohttp_client: Any, simulator: Any, write_config: Any, tmp_path: Path) -> AppFactory:
    url, sim = simulator

    async def make(extra: dict[str, Any], *, clock: FakeClock | None = None, store_url: str | None = None,
                   replica: str | None = None) -> Proxy:
        path: Path = write_config(url, extra=extra)
        if replica is not None:  # a replica of its own: own config dir, so its own local SQLite mirror
            root = tmp_path / replica
            for name in ("config", "rules"):
                shutil.copytree(tmp_path / name, root / name, dirs_exist_ok=True)
            path = root / "config" / path.name
        env = {"COSTPROXY_STORE_URL": store_url} if store_url else {}
        settings = load_test_settings(path, **env)
        app = create_app(settings, clock=clock or FakeClock())
        client = await aiohttp_client(app)
        key = await Proxy(client, app, "", sim).new_key(user="alice", team="core", org="acme", project="p1")
        return Proxy(client, app, key, sim)

    return make


def budgets(limit: str = "1", period: str = "daily", **extra: Any) -> dict[str, Any]:
    return {"refresh_interval_s": 0.1, "checkpoint_interval_s": 0.1, "definitions": [
        {"id": "team-core", "scope_type": "team", "scope_id": "core", "org": "acme", "limit_usd": limit,
         "period": period, **extra}]}


async def subscribe(proxy: Proxy, url: str, **fields: Any) -> dict[str, Any]:
    resp = await proxy.client.post("/api/v1/webhooks", headers=ADMIN, json={"url": url, **fields})
    body = await resp.json()
    assert resp.status == 201, body
    return dict(body)


async def spend(proxy: Proxy, amount: str, budget_id: str = "team-core") -> None:
    resp = await proxy.client.post(f"/api/v1/budgets/{budget_id}/usage", headers=ADMIN,
                                   json={"amount": amount, "source": "manual"})
    assert resp.status == 201, await resp.text()


def manager(proxy: Proxy) -> AlertManager:
    found = proxy.app[ALERTS]
    assert isinstance(found, AlertManager)
    return found


async def quiet(*proxies: Proxy) -> None:
    """Every queued event processed and every delivery finished."""
    for proxy in proxies:
        await manager(proxy).drain()
    for proxy in proxies:
        await manager(proxy).sender.wait_idle()


def verified(hook: Receiver, secret: str) -> None:
    for item in hook.received:
        assert verify(secret, item.headers["X-Costproxy-Signature"], item.body, now=time.time()), item.headers
        assert item.headers["X-Costproxy-Event-Id"] == item.event["id"]


def crossings(hook: Receiver) -> list[tuple[str, int]]:
    return [(e["payload"]["periodKey"], e["payload"]["threshold"]) for e in hook.events("budget.threshold_crossed")]


# --- tests ---------------------------------------------------------------------------------------


async def test_thresholds_fire_once_per_period_and_rearm_when_it_rolls_over(make_app: AppFactory,
                                                                            receiver: Receiver) -> None:
    clock = FakeClock()
    proxy = await make_app({"budgets": budgets(), "alerts": FAST_RETRIES}, clock=clock)
    sub = await subscribe(proxy, receiver.url)
    for amount in ("0.3", "0.3", "0.1", "0.15", "0.05", "0.2", "0.1"):  # 30 60 70 85 90 110 120 %
        await spend(proxy, amount)
    await quiet(proxy)
    assert crossings(receiver) == [("2026-11-25", 50), ("2026-11-25", 80), ("2026-11-25", 100)]
    changes = [(e["payload"]["previousStatus"], e["payload"]["status"])
               for e in receiver.events("budget.status_changed")]
    assert changes == [("normal", "warning"), ("warning", "critical"), ("critical", "exhausted")]
    [exhausted] = receiver.events("budget.exhausted")
    assert exhausted["payload"]["currentAmount"] == "1.1" and exhausted["payload"]["limit"] == "1"
    first = receiver.events()[0]
    assert set(first) == {"id", "type", "source", "timestamp", "correlationId", "payload"}
    assert first["source"] == "costproxy" and first["timestamp"] == "2026-11-25T09:46:40.000Z"
    assert first["payload"]["scopeType"] == "team" and first["payload"]["percentUsed"] == 60.0
    verified(receiver, sub["secret"])

    clock.now += 86_400  # the next day: a new period, the thresholds re-arm
    await spend(proxy, "0.55")
    await quiet(proxy)
    assert crossings(receiver)[3:] == [("2026-11-26", 50)]
    status = await (await proxy.client.get("/api/v1/budgets/team-core/status", headers=ADMIN)).json()
    assert status["periodKey"] == "2026-11-26" and [a["threshold"] for a in status["activeAlerts"]] == [50]
    history = await (await proxy.client.get(f"/api/v1/webhooks/{sub['id']}/deliveries", headers=ADMIN)).json()
    assert len(history["data"]) == len(receiver.received)
    assert {d["status"] for d in history["data"]} == {"delivered"}
    events = await (await proxy.client.get("/api/v1/events?type=budget.threshold_crossed", headers=ADMIN)).json()
    assert [e["payload"]["threshold"] for e in events["data"]] == [50, 100, 80, 50]


async def test_proxied_requests_cross_thresholds_and_refusals_are_reported(make_app: AppFactory,
                                                                           receiver: Receiver) -> None:
    proxy = await make_app({"budgets": budgets("0.0001", thresholds=GATED), "alerts": FAST_RETRIES})
    sub = await subscribe(proxy, receiver.url)
    answers: list[tuple[int, str, str | None, str | None]] = []
    for _ in range(12):
        resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
        answers.append((resp.status, resp.headers["x-costproxy-request-id"], resp.headers.get("x-costproxy-model"),
                        resp.headers.get("x-costproxy-requested-model")))
    await quiet(proxy)
    assert [t for _, t in crossings(receiver)] == [50, 75]
    refused = [rid for status, rid, _, _ in answers if status == 429]
    assert refused, answers
    blocked = receiver.events("request.blocked")
    # deliveries run concurrently: they may arrive in any order, each exactly once
    assert sorted(e["payload"]["requestId"] for e in blocked) == sorted(refused)
    assert all(e["payload"]["budgetId"] == "team-core" and e["correlationId"] == e["payload"]["requestId"]
               for e in blocked)
    assert blocked[0]["payload"]["principal"]["teamId"] == "core"
    # no budget here allows a downgrade: the named model is served as asked or refused, never switched
    assert all(served == asked == "small" for status, _, served, asked in answers if status == 200)
    assert receiver.events("model.switched") == []
    verified(receiver, sub["secret"])


async def test_a_downgrading_budget_switches_named_models_within_its_targets(make_app: AppFactory,
                                                                              receiver: Receiver) -> None:
    downgrade = {"on_exhausted": "downgrade", "downgrade_to": {"models": ["backup"]}, "thresholds": [50, 80, 100]}
    proxy = await make_app({"budgets": budgets("0.0001", **downgrade), "alerts": FAST_RETRIES})
    sub = await subscribe(proxy, receiver.url)
    answers: list[tuple[int, str, str | None]] = []
    for _ in range(12):
        resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
        answers.append((resp.status, resp.headers["x-costproxy-request-id"], resp.headers.get("x-costproxy-model")))
    await quiet(proxy)
    switched = [rid for status, rid, served in answers if status == 200 and served != "small"]
    assert switched, answers
    assert {served for status, _, served in answers if status == 200} == {"small", "backup"}
    events = receiver.events("model.switched")
    assert sorted(e["payload"]["requestId"] for e in events) == sorted(switched)
    assert events[0]["payload"]["servedModel"] == "backup" and events[0]["payload"]["requestedModel"] == "small"
    assert any("switched from small" in reason for reason in events[0]["payload"]["reasons"])
    verified(receiver, sub["secret"])


async def test_failed_deliveries_are_retried_with_backoff_and_recorded(make_app: AppFactory,
                                                                      receiver: Receiver) -> None:
    proxy = await make_app({"alerts": {**FAST_RETRIES, "max_attempts": 4}})
    sub = await subscribe(proxy, receiver.url, format="json")
    receiver.statuses = [503, 500]
    resp = await proxy.client.post(f"/api/v1/webhooks/{sub['id']}/test", headers=ADMIN)
    assert resp.status == 202
    delivery_id = (await resp.json())["id"]
    await quiet(proxy)
    assert len(receiver.received) == 3 and len({r.event["id"] for r in receiver.received}) == 1
    assert [r.headers["X-Costproxy-Attempt"] for r in receiver.received] == ["1", "2", "3"]
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    assert gaps[0] >= 0.05 * 0.25 and gaps[1] >= 0.1 * 0.25  # backoff windows of 0.05 s, then 0.1 s
    verified(receiver, sub["secret"])
    detail = await (await proxy.client.get(f"/api/v1/webhooks/{sub['id']}/deliveries/{delivery_id}",
                                           headers=ADMIN)).json()
    assert detail["status"] == "delivered" and [a["statusCode"] for a in detail["attempts"]] == [503, 500, 200]
    assert detail["event"]["type"] == "webhook.test"

    receiver.received.clear()
    receiver.statuses = [500] * 10  # never succeeds: gives up after max_attempts
    failing = (await (await proxy.client.post(f"/api/v1/webhooks/{sub['id']}/test", headers=ADMIN)).json())["id"]
    await quiet(proxy)
    gone = await (await proxy.client.get(f"/api/v1/webhooks/{sub['id']}/deliveries/{failing}", headers=ADMIN)).json()
    assert (gone["status"], gone["attemptCount"]) == ("failed", 4)
    receiver.statuses = [400]  # not retryable: one attempt
    refused = (await (await proxy.client.post(f"/api/v1/webhooks/{sub['id']}/test", headers=ADMIN)).json())["id"]
    await quiet(proxy)
    once = await (await proxy.client.get(f"/api/v1/webhooks/{sub['id']}/deliveries/{refused}", headers=ADMIN)).json()
    assert (once["status"], once["attemptCount"], once["lastStatusCode"]) == ("failed", 1, 400)
    receiver.statuses = []
    again = await proxy.client.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{failing}/redeliver", headers=ADMIN)
    assert again.status == 202
    await quiet(proxy)
    listed = await (await proxy.client.get(f"/api/v1/webhooks/{sub['id']}/deliveries?status=failed",
                                           headers=ADMIN)).json()
    assert {d["id"] for d in listed["data"]} == {failing, refused}
    assert receiver.received[-1].event["id"] == gone["eventId"]


async def test_slack_format_and_subscription_filters(make_app: AppFactory, receiver: Receiver) -> None:
    proxy = await make_app({"budgets": budgets(), "alerts": FAST_RETRIES})
    slack = await subscribe(proxy, receiver.url, format="slack", events=["budget.exhausted"])
    await subscribe(proxy, receiver.url, budgetIds=["another-budget"])
    await spend(proxy, "1.5")
    await quiet(proxy)
    [message] = [r for r in receiver.received]
    body = orjson.loads(message.body)
    assert set(body) == {"text", "blocks"} and "Budget team-core is exhausted" in body["text"]
    assert verify(slack["secret"], message.headers["X-Costproxy-Signature"], message.body, now=time.time())
    assert message.headers["X-Costproxy-Event"] == "budget.exhausted"


async def test_pending_deliveries_survive_a_restart(make_app: AppFactory, receiver: Receiver) -> None:
    config = {"alerts": {"backoff_base_s": 1.0, "backoff_max_s": 1.0, "refresh_interval_s": 0.1}}
    first = await make_app(config)
    sub = await subscribe(first, receiver.url)
    receiver.statuses = [503]
    delivery_id = (await (await first.client.post(f"/api/v1/webhooks/{sub['id']}/test", headers=ADMIN)).json())["id"]
    await receiver.wait(lambda: len(receiver.received) == 1)
    await first.client.close()  # stopped while waiting to retry: the delivery stays pending in SQLite
    second = await make_app(config)
    await receiver.wait(lambda: len(receiver.received) == 2)
    await quiet(second)
    detail = await (await second.client.get(f"/api/v1/webhooks/{sub['id']}/deliveries/{delivery_id}",
                                            headers=ADMIN)).json()
    assert detail["status"] == "delivered" and [a["statusCode"] for a in detail["attempts"]] == [503, 200]


async def test_a_hanging_receiver_never_slows_requests(make_app: AppFactory, receiver: Receiver) -> None:
    receiver.hang_s = 30
    proxy = await make_app({"budgets": budgets("0.0001", thresholds=GATED), "alerts": {**FAST_RETRIES, "timeout_s": 20,
                                                                       "concurrency": 2}})
    await subscribe(proxy, receiver.url)
    durations, statuses = [], []
    for _ in range(12):
        started = time.monotonic()
        resp = await proxy.client.post("/v1/chat/completions", json=CHAT, headers=proxy.auth())
        await resp.read()
        durations.append(time.monotonic() - started)
        statuses.append(resp.status)
    started = time.monotonic()
    await spend(proxy, "1")
    durations.append(time.monotonic() - started)
    await receiver.wait(lambda: len(receiver.received) >= 2)  # both delivery slots are stuck
    # a request that waited for a delivery would take the 20 s delivery timeout; 10 s is far from both
    # that and from what a loaded machine needs to answer
    assert 429 in statuses and max(durations) < 10, durations
    # the rest wait their turn in the background (the alerts of the last spend are raised off the
    # request path, so the third delivery may start a moment after the answer)
    await eventually(lambda: manager(proxy).sender.running() >= 3, what="a third delivery waiting its turn")
    started = time.monotonic()
    await proxy.client.close()  # shutting down does not wait for the hung receiver either
    assert time.monotonic() - started < 10


@pytest.mark.redis
async def test_two_replicas_sharing_redis_fire_each_threshold_exactly_once(
        make_app: AppFactory, receiver: Receiver, redis_space: RedisSpace) -> None:  # noqa: F811
    clock = FakeClock()
    config = {"budgets": {**budgets("1"), "key_prefix": redis_space.prefix}, "alerts": FAST_RETRIES}
    one = await make_app(config, clock=clock, store_url=redis_space.url, replica="one")
    two = await make_app(config, clock=clock, store_url=redis_space.url, replica="two")
    sub = await subscribe(one, receiver.url)
    await receiver.wait(lambda: sub["id"] in manager(two).catalog.subscriptions)  # seen by the other replica

    async def burst(count: int, amount: str, crossed: int) -> None:
        await asyncio.gather(*(spend(one if i % 2 else two, amount) for i in range(count)))

        async def delivered() -> bool:  # a replica sees the other's spend when its cache refreshes
            await quiet(one, two)
            return len(crossings(receiver)) >= crossed

        await eventually(delivered, what=f"{crossed} threshold crossings delivered")

    await burst(40, "0.03", 3)  # 120 % of the limit, from both replicas at once
    kinds = Counter(e["type"] for e in receiver.events())
    assert sorted(crossings(receiver)) == [("2026-11-25", 50), ("2026-11-25", 80), ("2026-11-25", 100)]
    assert (kinds["budget.exhausted"], kinds["budget.status_changed"]) == (1, 3)
    sources = {r.event["id"]: r for r in receiver.received}
    assert len(sources) == len(receiver.received)  # no event delivered twice
    verified(receiver, sub["secret"])

    clock.now += 86_400
    await burst(20, "0.03", 4)  # 60 % of the next day's limit
    assert crossings(receiver)[3:] == [("2026-11-26", 50)]
    for proxy in (one, two):
        async def refreshed(proxy: Proxy = proxy) -> bool:
            status = await (await proxy.client.get("/api/v1/budgets/team-core/status", headers=ADMIN)).json()
            return (status["periodKey"], status["currentAmount"]) == ("2026-11-26", "0.6")

        await eventually(refreshed, what="the new day's spend on both replicas")
