"""The alert manager (``alerts/manager.py``): budget and request events in, one delivery per
matching subscription out, claimed once, throttled per request type, never blocking the caller.
In memory: ``MemoryAlertStore`` plays the ``AlertStore`` protocol and ``RecordingSender`` stands
where the webhook sender sits; the background task is not started, ``process`` is awaited."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.config import AlertSettings
from costproxy.alerts.manager import AlertManager, Raised
from costproxy.alerts.webhooks import Subscription
from costproxy.budgets.book import BudgetEvent
from costproxy.errors import BudgetExceeded, StoreUnavailable
from costproxy.pipeline.events import ModelSwitched, RequestBlocked
from costproxy.request import RequestContext
from tests.unit.fakes import ALICE

SECRET = "a-webhook-secret-of-some-length"


@dataclass
class MemoryAlertStore:
    items_by_kind: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    claims: dict[str, str] = field(default_factory=dict)
    reachable: bool = True

    def _check(self) -> None:
        if not self.reachable:
            raise StoreUnavailable("alert store unreachable")

    async def put(self, kind: str, item_id: str, body: dict[str, Any], ts_ms: int) -> None:
        self._check()
        self.items_by_kind.setdefault(kind, {})[item_id] = body

    async def get(self, kind: str, item_id: str) -> dict[str, Any] | None:
        return self.items_by_kind.get(kind, {}).get(item_id)

    async def delete(self, kind: str, item_id: str) -> bool:
        return self.items_by_kind.get(kind, {}).pop(item_id, None) is not None

    async def items(self, kind: str, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.items_by_kind.get(kind, {}).values())[:limit]

    async def prune(self, kind: str, keep: int) -> int:
        return 0

    async def claim(self, name: str, value: str, now_ms: int, ttl_ms: int | None) -> bool:
        self._check()
        if name in self.claims:
            return False
        self.claims[name] = value
        return True

    async def claimed(self, name: str) -> str | None:
        return self.claims.get(name)

    async def expire_claims(self, now_ms: int) -> int:
        return 0

    async def version(self) -> int:
        return 1

    async def close(self) -> None:
        return None


@dataclass
class RecordingSender:
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def submit(self, sub: Subscription, event: dict[str, Any]) -> Any:
        self.sent.append((sub.id, event))
        return {"subscription": sub.id, "event": event["id"]}


class NoBudgets:
    def get(self, budget_id: str) -> None:
        return None


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def manager_with(*subs: Subscription, clock: Clock | None = None, queue_size: int = 100,
                       store: MemoryAlertStore | None = None) -> tuple[AlertManager, RecordingSender, MemoryAlertStore]:
    store = store or MemoryAlertStore()
    catalog = AlertCatalog(store)
    for sub in subs:
        await catalog.put_subscription(sub)
    sender = RecordingSender()
    settings = AlertSettings(queue_size=queue_size, request_event_interval_s=10.0)
    manager = AlertManager(catalog, store, sender, settings, budgets=NoBudgets(),  # type: ignore[arg-type]
                           clock=clock or Clock())
    return manager, sender, store


def crossed(threshold: int, period: str = "2026-11", request_id: str = "req-1") -> BudgetEvent:
    return BudgetEvent(kind="threshold_crossed", budget_id="team-core", period_key=period, at_ms=1_800_000_000_000,
                       spent_nanos=threshold * 10_000_000, limit_nanos=1_000_000_000, status="warning",
                       previous_status="normal", threshold=threshold, request_id=request_id)


async def run_queue(manager: AlertManager) -> None:
    while not manager.queue.empty():
        await manager.process(manager.queue.get_nowait())


def sub(sub_id: str, *events: str, **extra: Any) -> Subscription:
    return Subscription(id=sub_id, url=f"https://hooks.example/{sub_id}", secret=SECRET, events=frozenset(events),
                        **extra)


# --- budget events -------------------------------------------------------------------------------


async def test_a_threshold_crossing_is_delivered_once_to_each_subscriber_that_wants_it() -> None:
    manager, sender, store = await manager_with(sub("all"), sub("thresholds", "budget.threshold_crossed"),
                                                sub("blocked-only", "request.blocked"))
    manager.observe(crossed(80))
    manager.observe(crossed(80, request_id="req-2"))  # the same crossing reported again (another replica)
    await run_queue(manager)
    assert sorted(s for s, _ in sender.sent) == ["all", "thresholds"]
    event = sender.sent[0][1]
    assert set(event) == {"id", "type", "source", "timestamp", "correlationId", "payload"}
    assert (event["type"], event["source"], event["correlationId"]) == ("budget.threshold_crossed", "costproxy",
                                                                         "req-1")
    payload = event["payload"]
    assert (payload["budgetId"], payload["threshold"], payload["percentUsed"]) == ("team-core", 80, 80.0)
    assert (payload["currentAmount"], payload["limit"], payload["remaining"]) == ("0.8", "1", "0.2")
    assert list(store.items_by_kind["events"]) == [event["id"]]  # stored once for the event list


async def test_a_new_period_fires_the_same_threshold_again() -> None:
    manager, sender, _ = await manager_with(sub("all"))
    for period in ("2026-11", "2026-12"):
        manager.observe(crossed(50, period))
    await run_queue(manager)
    assert [e["payload"]["periodKey"] for _, e in sender.sent] == ["2026-11", "2026-12"]


async def test_an_unreachable_store_still_delivers_what_the_accounts_fired() -> None:
    store = MemoryAlertStore()
    manager, sender, _ = await manager_with(sub("all"), store=store)
    store.reachable = False
    manager.observe(crossed(100))
    await run_queue(manager)
    assert [e["type"] for _, e in sender.sent] == ["budget.threshold_crossed"]


# --- per-request events --------------------------------------------------------------------------


def blocked(request_id: str) -> RequestBlocked:
    error = BudgetExceeded("budget 'team-core' cannot fit this request",
                           details={"budget_id": "team-core", "scope_type": "team", "scope_id": "core"})
    return RequestBlocked(RequestContext(request_id, ALICE, "chat/completions"), error)


async def test_blocked_requests_are_sent_once_per_interval_with_a_count_of_the_rest() -> None:
    clock = Clock()
    manager, sender, _ = await manager_with(sub("blocked", "request.blocked"), clock=clock)
    for n in range(4):
        manager.observe_request(blocked(f"req-{n}"))
    clock.now += 10.0  # the interval has passed
    manager.observe_request(blocked("req-9"))
    await run_queue(manager)
    payloads = [e["payload"] for _, e in sender.sent]
    assert [(p["requestId"], p["suppressedCount"]) for p in payloads] == [("req-0", 0), ("req-9", 3)]
    assert payloads[0]["budgetId"] == "team-core" and payloads[0]["scopeType"] == "team"
    assert payloads[0]["principal"]["userId"] == "alice"


async def test_a_switched_model_is_sent_only_when_someone_subscribed() -> None:
    switched = ModelSwitched(RequestContext("req-1", ALICE, "chat/completions"), "big", "small", ("downgrade",))
    nobody, _, _ = await manager_with(sub("blocked", "request.blocked"))
    nobody.observe_request(switched)
    assert nobody.queue.empty()
    manager, sender, _ = await manager_with(sub("switches", "model.switched"))
    manager.observe_request(switched)
    await run_queue(manager)
    [(_, event)] = sender.sent
    assert (event["payload"]["requestedModel"], event["payload"]["servedModel"]) == ("big", "small")
    assert event["payload"]["reasons"] == ["downgrade"]


# --- never on the request path -------------------------------------------------------------------


async def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    manager, _, _ = await manager_with(sub("all"), queue_size=2)
    for threshold in (50, 80, 100):
        manager.observe(crossed(threshold))
    assert manager.queue.qsize() == 2 and manager.dropped == 1


async def test_a_stopped_manager_takes_no_more_events() -> None:
    manager, _, _ = await manager_with(sub("all"))
    manager.closed = True
    manager.raise_event(Raised("webhook.test", 0, {}, "c"))
    assert manager.queue.empty()


@pytest.mark.parametrize("kind", ["request_blocked", "unknown_kind"])
async def test_budget_events_the_manager_does_not_send_are_ignored(kind: str) -> None:
    manager, _, _ = await manager_with(sub("all"))
    manager.observe(BudgetEvent(kind=kind, budget_id="b", period_key="p", at_ms=0, spent_nanos=0, limit_nanos=1,
                                status="normal"))
    assert manager.queue.empty()
