"""The alert manager: budget and request events in, signed webhooks out, never on the request path.

Event flow::

    settle / record_usage (budget accounts)            proxy handler (middleware)
      └─ BudgetEvent: threshold_crossed,                 └─ BudgetExceeded → request.blocked
         status_changed, exhausted                          served ≠ requested → model.switched
                     └──────────── observe(): O(1), put_nowait on a bounded queue ────┘
                                          │  (full: the event is dropped and counted, never awaited)
                     run(): claim once-only name → store the event → one Delivery per matching
                            subscription → WebhookSender task per delivery (retries, history)

Once per period, once across replicas: a threshold is "fired" by the accounts in the same atomic
step that moves the money past it (SQLite: the one process's counters; Redis: ``HSETNX f<pct>``
inside the settle script), so exactly one replica ever sees each crossing.  The manager then
claims ``fired:<budget>:<period>:<what>`` in the alert store (``INSERT OR IGNORE`` / ``SET NX``)
before delivering, a second guard that also records when it fired (``triggeredAt`` survives a
restart of the embedded store).  A new period has a new key, so thresholds re-arm by themselves.

Per-request events (``request.blocked``, ``model.switched``) can come by the thousand when a
budget is exhausted; each (type, budget or model pair) is sent at most once per
``request_event_interval_s``, the next one carrying ``suppressedCount``.

The ``alerts:`` section of ``config/costproxy.yaml`` tunes it: see ``costproxy.alerts.config``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import structlog

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.config import AlertSettings
from costproxy.alerts.sender import WebhookSender
from costproxy.alerts.store import AlertStore
from costproxy.alerts.webhooks import Delivery, Subscription, sortable_id
from costproxy.background import cancel_and_wait
from costproxy.budgets.book import BudgetEvent
from costproxy.budgets.codec import JSON_SCOPE, action_to_json, iso, percent, usd
from costproxy.budgets.definitions import BudgetStore
from costproxy.errors import StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.pipeline.events import Event, ModelSwitched, RequestBlocked
from costproxy.records import frozen

log = structlog.get_logger("costproxy.alerts.manager")

EVENT_NAMES = {"threshold_crossed": "budget.threshold_crossed", "exhausted": "budget.exhausted",
               "status_changed": "budget.status_changed", "request_blocked": "request.blocked",
               "overrun": "budget.overrun"}
_RETENTION_MS = 7 * 86_400_000  # claims outlive their period by a week


@frozen
class Raised:
    """An event accepted by ``observe``, waiting for the background task."""

    type: str
    at_ms: int
    payload: dict[str, Any]
    correlation_id: str
    claim: str | None = None  # once-only name, for budget events
    claim_ttl_ms: int | None = None


def envelope(raised: Raised, source: str, seq: int = 0) -> dict[str, Any]:
    """The DESIGN §3.6 envelope ``{id, type, source, timestamp, correlationId, payload}``."""
    return {"id": sortable_id("evt_", raised.at_ms, seq), "type": raised.type, "source": source,
            "timestamp": iso(raised.at_ms), "correlationId": raised.correlation_id, "payload": raised.payload}


def budget_payload(event: BudgetEvent, budgets: BudgetStore) -> dict[str, Any]:
    spec = budgets.get(event.budget_id)
    payload: dict[str, Any] = {
        "budgetId": event.budget_id, "periodKey": event.period_key, "status": event.status,
        "previousStatus": event.previous_status, "currentAmount": usd(event.spent_nanos),
        "limit": usd(event.limit_nanos), "remaining": usd(max(0, event.limit_nanos - event.spent_nanos)),
        "percentUsed": percent(event.spent_nanos, event.limit_nanos), "currency": "USD",
        "requestId": event.request_id,
    }
    if event.threshold is not None:
        payload["threshold"] = event.threshold
    if event.reason is not None:
        payload["reason"] = event.reason
    if event.overrun_nanos is not None:
        payload["overrunAmount"] = usd(event.overrun_nanos)
    if spec is not None:
        payload.update(budgetName=spec.name or spec.id, scopeType=JSON_SCOPE[spec.scope_type], scopeId=spec.scope_id,
                       period=spec.period, hardLimit=spec.hard)
        mark = next((t for t in spec.thresholds if t.percent == event.threshold), None)
        if mark is not None:
            payload.update(actions=[action_to_json(a) for a in mark.actions], message=mark.message,
                           notificationChannels=list(mark.channels))
    return payload


def claim_name(event: BudgetEvent) -> str:
    if event.kind == "overrun":  # one per request and budget
        return f"fired:{event.budget_id}:{event.period_key}:overrun:{event.request_id}"
    what = f"threshold:{event.threshold}" if event.kind == "threshold_crossed" else f"{event.kind}:{event.status}"
    return f"fired:{event.budget_id}:{event.period_key}:{what}"


class AlertManager:
    def __init__(self, catalog: AlertCatalog, store: AlertStore, sender: WebhookSender, settings: AlertSettings,
                 *, budgets: BudgetStore | None = None, clock: Callable[[], float] = time.time,
                 period_end: Callable[[str, int], int | None] | None = None) -> None:
        self.catalog = catalog
        self.store = store
        self.sender = sender
        self.settings = settings
        self.budgets = budgets
        self.clock = clock
        self.period_end = period_end
        self.queue: asyncio.Queue[Raised] = asyncio.Queue(settings.queue_size)
        self.dropped = 0
        self.processed = 0
        self._throttle: dict[tuple[str, ...], list[int]] = {}  # key -> [window start ms, suppressed]
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self._seq = itertools.count()

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- intake: synchronous, O(1), never raises into the caller -------------------------------
    def observe(self, event: BudgetEvent) -> None:
        """``BudgetAccounts.subscribe`` listener.  ``request_blocked`` comes from the pipeline's
        events instead (``observe_request``): the accounts also see refusals the pipeline then
        retries with a cheaper chain."""
        name = EVENT_NAMES.get(event.kind)
        if name is None or event.kind == "request_blocked" or self.budgets is None:
            return
        end = self.period_end(event.budget_id, event.at_ms) if self.period_end else None
        ttl = None if end is None else max(0, end - event.at_ms) + _RETENTION_MS
        self.raise_event(Raised(name, event.at_ms, budget_payload(event, self.budgets),
                                event.request_id or f"{event.budget_id}:{event.period_key}",
                                claim_name(event), ttl))

    def request_blocked(self, request_id: str, principal: Principal | None, details: dict[str, Any],
                        reason: str, correlation_id: str | None = None) -> None:
        budget_id = str(details.get("budget_id") or "")
        spec = self.budgets.get(budget_id) if self.budgets is not None else None
        payload: dict[str, Any] = {
            "requestId": request_id, "budgetId": budget_id or None, "reason": reason,
            "scopeType": JSON_SCOPE.get(str(details.get("scope_type"))), "scopeId": details.get("scope_id"),
            "budgetName": (spec.name or spec.id) if spec is not None else None,
            "principal": _principal_json(principal),
        }
        self._per_request("request.blocked", (budget_id,), payload, correlation_id or request_id)

    def model_switched(self, request_id: str, principal: Principal | None, requested: str, served: str,
                       correlation_id: str | None = None, reasons: tuple[str, ...] = ()) -> None:
        payload = {"requestId": request_id, "requestedModel": requested, "servedModel": served,
                   "reasons": list(reasons), "principal": _principal_json(principal)}
        self._per_request("model.switched", (requested, served), payload, correlation_id or request_id)

    def observe_request(self, event: Event) -> None:
        """The pipeline's event subscriber: blocked requests and switched models become webhooks."""
        if isinstance(event, RequestBlocked):
            ctx = event.ctx
            self.request_blocked(ctx.request_id, ctx.principal, event.error.details, event.error.message,
                                 ctx.correlation_id)
        elif isinstance(event, ModelSwitched) and self.wants("model.switched"):
            ctx = event.ctx
            self.model_switched(ctx.request_id, ctx.principal, event.requested, event.served, ctx.correlation_id,
                                event.reasons)

    def wants(self, event_type: str) -> bool:
        return self.catalog.wants(event_type)

    def _per_request(self, event_type: str, key: tuple[str, ...], payload: dict[str, Any], correlation: str) -> None:
        if not self.catalog.wants(event_type):
            return
        now = self.now_ms()
        interval = int(self.settings.request_event_interval_s * 1000)
        slot = self._throttle.get((event_type, *key))
        if interval and slot is not None and now - slot[0] < interval:
            slot[1] += 1
            return
        payload["suppressedCount"] = slot[1] if slot is not None else 0
        if len(self._throttle) > 10_000:
            self._throttle.clear()
        self._throttle[(event_type, *key)] = [now, 0]
        self.raise_event(Raised(event_type, now, payload, correlation))

    def raise_event(self, raised: Raised) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(raised)
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("alert_dropped_queue_full", type=raised.type, dropped=self.dropped)

    # --- background ---------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self.sender.resume(None)
        except StoreUnavailable as exc:
            log.warning("alert_resume_failed", error=str(exc))  # the maintenance loop tries again
        self._tasks = [asyncio.create_task(self._run(), name="costproxy-alerts"),
                       asyncio.create_task(self._maintain(), name="costproxy-alerts-maintenance")]

    async def stop(self) -> None:
        self.closed = True
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self.sender.stop()

    async def _run(self) -> None:
        while True:
            raised = await self.queue.get()
            try:
                await self.process(raised)
            except Exception:  # the supervisor of a background task: log and keep going
                log.exception("alert_processing_failed", type=raised.type)
            finally:
                self.queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued event is processed (tests, shutdown)."""
        await self.queue.join()

    async def process(self, raised: Raised) -> list[Delivery]:
        if raised.claim is not None and not await self._claim(raised):
            return []
        event = envelope(raised, self.settings.source, next(self._seq))
        self.processed += 1
        log.info("alert_raised", type=raised.type, event_id=event["id"], correlation_id=raised.correlation_id)
        try:
            await self.store.put("events", event["id"], event, raised.at_ms)
        except StoreUnavailable as exc:
            log.warning("alert_event_not_stored", event_id=event["id"], error=str(exc))
        return [await self.sender.submit(sub, event) for sub in self.catalog.matching(raised.type, raised.payload)]

    async def _claim(self, raised: Raised) -> bool:
        assert raised.claim is not None
        try:
            won = await self.store.claim(raised.claim, str(raised.at_ms), raised.at_ms, raised.claim_ttl_ms)
        except StoreUnavailable as exc:
            log.warning("alert_claim_unavailable", claim=raised.claim, error=str(exc))
            return True  # the accounts already fired it exactly once; deliver rather than lose it
        if not won:
            log.info("alert_already_fired", claim=raised.claim)
        return won

    async def send_test(self, sub: Subscription, actor: str | None) -> Delivery:
        raised = Raised("webhook.test", self.now_ms(), {"subscriptionId": sub.id, "requestedBy": actor},
                        "test:" + sub.id)
        return await self.sender.submit(sub, envelope(raised, self.settings.source, next(self._seq)))

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.settings.maintenance_interval_s)
            try:
                await self.sender.resume()
                await self._prune()
            except StoreUnavailable as exc:
                log.warning("alert_maintenance_failed", error=str(exc))

    async def _prune(self) -> None:
        await self.store.prune("events", self.settings.events_kept)
        await self.store.prune("acks", 10_000)
        for sub_id in list(self.catalog.subscriptions):
            await self.store.prune(f"deliveries:{sub_id}", self.settings.history_per_subscription)
        await self.store.expire_claims(int(time.time() * 1000))

    async def fired_at(self, budget_id: str, period_key: str, threshold: int) -> int | None:
        """When a threshold fired, from the claim (the counters forget it across a restart)."""
        try:
            value = await self.store.claimed(f"fired:{budget_id}:{period_key}:threshold:{threshold}")
        except StoreUnavailable:
            return None
        return int(value) if value else None


def _principal_json(principal: Principal | None) -> dict[str, Any] | None:
    if principal is None:
        return None
    return {"keyId": principal.key_id, "userId": principal.user, "teamId": principal.team,
            "organizationId": principal.org, "projectId": principal.project}
