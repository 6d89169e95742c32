"""The alerting configuration every request-time reader needs, in memory: webhook subscriptions,
read-only tokens and alert acknowledgements.

Reads are synchronous dictionary lookups (token checks in the auth middleware, subscriptions when
an event is dispatched, acknowledgements in the status API), so they keep working while the store
is away.  Writes go to the ``AlertStore`` first and then to memory; other replicas pick them up
when the store's change version moves (polled every ``refresh_interval_s`` by the alert manager).
"""

from __future__ import annotations

from typing import Any

from costproxy.alerts.store import AlertStore
from costproxy.alerts.webhooks import Subscription, subscription_from_stored
from costproxy.identity.access_tokens import ScopedToken, TokenRing, token_from_stored
from costproxy.records import frozen


@frozen
class Ack:
    budget_id: str
    period_key: str
    threshold: int
    by: str | None
    at_ms: int
    note: str = ""

    @property
    def key(self) -> str:
        return ack_key(self.budget_id, self.period_key, self.threshold)

    def stored(self) -> dict[str, Any]:
        return {"budgetId": self.budget_id, "periodKey": self.period_key, "threshold": self.threshold,
                "by": self.by, "at": self.at_ms, "note": self.note}


def ack_key(budget_id: str, period_key: str, threshold: int) -> str:
    return f"{budget_id}|{period_key}|{threshold}"


def _ack(data: dict[str, Any]) -> Ack:
    return Ack(data["budgetId"], data["periodKey"], data["threshold"], data["by"], data["at"], data.get("note", ""))


class AlertCatalog:
    def __init__(self, store: AlertStore) -> None:
        self.store = store
        self.subscriptions: dict[str, Subscription] = {}
        self.tokens = TokenRing()
        self.acks: dict[str, Ack] = {}
        self._version: int | None = None

    async def load(self) -> None:
        version = await self.store.version()
        subs = await self.store.items("subscriptions")
        tokens = await self.store.items("tokens")
        acks = await self.store.items("acks")
        self.subscriptions = {s.id: s for s in map(subscription_from_stored, subs)}
        self.tokens.replace(token_from_stored(t) for t in tokens)
        self.acks = {a.key: a for a in map(_ack, acks)}
        self._version = version

    async def refresh(self) -> bool:
        """Reload if the store changed (another replica wrote); True if it did."""
        if await self.store.version() == self._version:
            return False
        await self.load()
        return True

    # --- subscriptions ---------------------------------------------------------------------
    async def put_subscription(self, sub: Subscription) -> None:
        await self.store.put("subscriptions", sub.id, sub.stored(), sub.created_at_ms)
        self.subscriptions[sub.id] = sub

    async def delete_subscription(self, sub_id: str) -> bool:
        removed = await self.store.delete("subscriptions", sub_id)
        self.subscriptions.pop(sub_id, None)
        return removed

    def matching(self, event_type: str, payload: dict[str, Any]) -> list[Subscription]:
        return [s for s in self.subscriptions.values() if s.wants(event_type, payload)]

    def wants(self, event_type: str) -> bool:
        """Does any subscription take this event type at all (cheap pre-check on hot paths)?"""
        return any(s.enabled and (not s.events or event_type in s.events) for s in self.subscriptions.values())

    # --- tokens ----------------------------------------------------------------------------
    async def put_token(self, token: ScopedToken) -> None:
        await self.store.put("tokens", token.id, token.stored(), token.created_at_ms)
        self.tokens.add(token)

    # --- acknowledgements ------------------------------------------------------------------
    async def acknowledge(self, ack: Ack) -> Ack:
        existing = self.acks.get(ack.key)
        if existing is not None:
            return existing
        await self.store.put("acks", ack.key, ack.stored(), ack.at_ms)
        self.acks[ack.key] = ack
        return ack

    def ack_for(self, budget_id: str, period_key: str, threshold: int) -> Ack | None:
        return self.acks.get(ack_key(budget_id, period_key, threshold))
