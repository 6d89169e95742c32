"""Webhook delivery: signed POSTs, retries with backoff and jitter, a history of every attempt.

Each delivery runs as its own background task: wait until its next attempt is due, claim attempt
*n* in the alert store (``attempt:<delivery>:<n>``, a lease of ``timeout_s`` + 30 s, so across
replicas every attempt is made once), POST, record the outcome, and either finish or schedule the
next attempt.  The delivery document is written after every attempt, so a restarted replica — or
any other replica, once the lease has run out — resumes deliveries left pending (``resume``).

Nothing here is awaited by a proxied request: the tasks use their own HTTP session (a receiver
that hangs holds one of ``concurrency`` slots for ``timeout_s``, never an upstream connection).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import structlog

from costproxy.alerts.catalog import AlertCatalog
from costproxy.alerts.store import AlertStore
from costproxy.alerts.webhooks import (
    SIGNATURE_HEADER,
    Attempt,
    Delivery,
    Subscription,
    backoff_delay,
    delivery_from_stored,
    retry_after,
    retryable,
    signature,
    slack_message,
    sortable_id,
)
from costproxy.background import cancel_and_wait
from costproxy.errors import NotFound, StoreUnavailable
from costproxy.records import frozen

log = structlog.get_logger("costproxy.alerts.manager")
USER_AGENT = "costproxy-webhooks/1"
_ORPHAN_GRACE_MS = 5_000


@frozen
class SenderSettings:
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    timeout_s: float = 10.0
    concurrency: int = 16


class WebhookSender:
    def __init__(self, catalog: AlertCatalog, store: AlertStore, session: aiohttp.ClientSession,
                 settings: SenderSettings, *, wall: Callable[[], float] = time.time,
                 rng: random.Random | None = None, on_result: Callable[[str], None] | None = None) -> None:
        self.catalog = catalog
        self.store = store
        self.session = session
        self.settings = settings
        self.wall = wall
        self.rng = rng or random.Random()
        self.on_result = on_result
        self.replica = uuid.uuid4().hex[:12]
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._seq = itertools.count()

    def _now_ms(self) -> int:
        return int(self.wall() * 1000)

    async def submit(self, sub: Subscription, event: dict[str, Any]) -> Delivery:
        """Record a new delivery of ``event`` to ``sub`` and start it in the background."""
        now = self._now_ms()
        delivery = Delivery(id=sortable_id("dlv_", now, next(self._seq)), subscription_id=sub.id, event=event,
                            created_at_ms=now, next_attempt_ms=now)
        await self._save(delivery)
        self._start(delivery)
        return delivery

    async def redeliver(self, delivery: Delivery) -> Delivery:
        sub = self.catalog.subscriptions.get(delivery.subscription_id)
        if sub is None:
            raise NotFound(f"subscription {delivery.subscription_id} no longer exists")
        return await self.submit(sub, delivery.event)

    def _start(self, delivery: Delivery) -> None:
        if delivery.id in self._running:
            return
        task = asyncio.create_task(self._deliver(delivery), name=f"costproxy-webhook-{delivery.id}")
        self._running[delivery.id] = task
        task.add_done_callback(lambda _: self._running.pop(delivery.id, None))

    async def resume(self, overdue_by_ms: int | None = _ORPHAN_GRACE_MS) -> int:
        """Start stored pending deliveries nobody here runs: at start-up all of them (``None``);
        later those overdue by ``overdue_by_ms`` (their replica died).  Attempt claims keep two
        replicas from both making the same attempt, so a wrong guess costs a claim, not a POST."""
        started = 0
        horizon = None if overdue_by_ms is None else self._now_ms() - overdue_by_ms
        for sub_id in list(self.catalog.subscriptions):
            for data in await self.store.items(f"deliveries:{sub_id}"):
                delivery = delivery_from_stored(data)
                due = delivery.next_attempt_ms or 0
                if delivery.state != "pending" or delivery.id in self._running or (horizon is not None
                                                                                    and due > horizon):
                    continue
                self._start(delivery)
                started += 1
        return started

    async def stop(self) -> None:
        """Cancel running deliveries; they stay pending in the store and resume at the next start."""
        await cancel_and_wait(list(self._running.values()))

    async def wait_idle(self, limit_s: float = 10.0) -> None:
        """Wait until no delivery is running (tests)."""
        deadline = time.monotonic() + limit_s
        while self._running and time.monotonic() < deadline:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    # --- one delivery ---------------------------------------------------------------------------
    async def _deliver(self, delivery: Delivery) -> None:
        while delivery.state == "pending":
            due = delivery.next_attempt_ms or 0
            wait_s = (due - self._now_ms()) / 1000
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            sub = self.catalog.subscriptions.get(delivery.subscription_id)
            if sub is None or not sub.enabled:
                attempt = Attempt(self._now_ms(), None, "subscription deleted or disabled", 0)
                delivery = delivery.after(attempt, state="failed", next_attempt_ms=None)
                await self._save(delivery)
                return
            if not await self._claim(delivery):
                return  # another replica makes this attempt
            attempt, pause_s = await self._attempt(sub, delivery)
            delivery = self._next(delivery, attempt, pause_s)
            await self._save(delivery)
            if self.on_result is not None and delivery.state != "pending":
                self.on_result(delivery.state)

    async def _claim(self, delivery: Delivery) -> bool:
        lease_ms = int(self.settings.timeout_s * 1000) + 30_000
        name = f"attempt:{delivery.id}:{len(delivery.attempts)}"
        try:
            return await self.store.claim(name, self.replica, self._now_ms(), lease_ms)
        except StoreUnavailable as exc:
            log.warning("webhook_claim_unavailable", delivery_id=delivery.id, error=str(exc))
            return True  # a duplicate attempt beats a lost one; receivers dedupe on the event id

    def _next(self, delivery: Delivery, attempt: Attempt, pause_s: float | None) -> Delivery:
        status = attempt.status_code
        if status is not None and 200 <= status < 300:
            return delivery.after(attempt, state="delivered", next_attempt_ms=None)
        done = len(delivery.attempts) + 1
        if not retryable(status) or done >= self.settings.max_attempts:
            log.warning("webhook_failed", delivery_id=delivery.id, status=status, error=attempt.error, attempts=done)
            return delivery.after(attempt, state="failed", next_attempt_ms=None)
        delay = backoff_delay(done, self.settings.backoff_base_s, self.settings.backoff_max_s, self.rng, pause_s)
        return delivery.after(attempt, state="pending", next_attempt_ms=attempt.at_ms + int(delay * 1000))

    async def _attempt(self, sub: Subscription, delivery: Delivery) -> tuple[Attempt, float | None]:
        """POST once; returns the attempt and the receiver's ``Retry-After`` (seconds), if any."""
        message = delivery.event if sub.format == "json" else slack_message(delivery.event)
        body = orjson.dumps(message)
        sent_at = self.wall()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   SIGNATURE_HEADER: signature(sub.secret, int(sent_at), body),
                   "X-Costproxy-Event": delivery.event_type, "X-Costproxy-Event-Id": str(delivery.event["id"]),
                   "X-Costproxy-Delivery": delivery.id, "X-Costproxy-Attempt": str(len(delivery.attempts) + 1)}
        started = time.monotonic()
        async with self._slots:
            try:
                timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
                async with self.session.post(sub.url, data=body, headers=headers, timeout=timeout,
                                             allow_redirects=False) as response:
                    await response.content.read(4096)
                    status, pause = response.status, retry_after(response.headers.get("Retry-After"))
                    error = None if status < 300 else f"HTTP {status}"
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                status, pause, error = None, None, f"{type(exc).__name__}: {exc}"[:300]
        elapsed = int((time.monotonic() - started) * 1000)
        return Attempt(int(sent_at * 1000), status, error, elapsed), pause

    async def _save(self, delivery: Delivery) -> None:
        try:
            await self.store.put(f"deliveries:{delivery.subscription_id}", delivery.id, delivery.stored(),
                                 delivery.created_at_ms)
        except StoreUnavailable as exc:
            log.warning("webhook_history_not_saved", delivery_id=delivery.id, error=str(exc))

    async def get(self, sub_id: str, delivery_id: str) -> Delivery | None:
        data = await self.store.get(f"deliveries:{sub_id}", delivery_id)
        return None if data is None else delivery_from_stored(data)

    async def history(self, sub_id: str, limit: int, state: str | None = None) -> list[Delivery]:
        found = [delivery_from_stored(d) for d in await self.store.items(f"deliveries:{sub_id}")]
        return [d for d in found if state is None or d.state == state][:limit]

    def running(self) -> int:
        return len(self._running)
