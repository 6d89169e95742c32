"""The response cache's part in a request: decide, look up, answer a hit, keep a miss.

``with_cache`` decides after routing (``cache.policy.decide``: the steering rule's ``cache`` action,
the ``x-costproxy-cache`` header, whether the request is deterministic, the key); the plan then
carries a ``CachePlan``.  After the budget reservation, ``lookup`` finds a stored answer for it.

A hit is answered without calling the provider: in the client's API (the unary body, or the
stream ``replay`` writes), with ``x-costproxy-cache: hit``.  It is settled at cost 0 — the budget
reservation is released, the tokens drawn from the rate limits are given back — and ledgered
with status ``cache_hit``: no tokens billed, the baseline (what the baseline model would have
cost for the stored answer's tokens, so it counts in every savings report) and, in
``metadata.cache``, what the hit saved (the stored answer's own cost), its tokens, age and the
request that produced it.  A Response (``/v1/responses``) gets a new id, so it can be stored and
continued like any other.

A miss that ends well (status ok, HTTP 200, a complete answer) is stored: the client's answer as
returned (streams are rebuilt from the frames sent, ``cache.capture``), with the served model, its
usage and cost.  A cache store that fails never fails the request: a failed lookup is a miss, a
failed store is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

import orjson
import structlog

from costproxy.budgets.accounts import Reservation
from costproxy.cache.capture import Capture
from costproxy.cache.policy import HEADER, decide
from costproxy.cache.replay import replay
from costproxy.errors import StoreUnavailable
from costproxy.ledger.entry import LedgerEntry, Status
from costproxy.money import format_usd
from costproxy.pipeline.plan import Plan
from costproxy.pipeline.services import Services, step
from costproxy.pipeline.settle import base_entry, record
from costproxy.protocols.responses import new_id
from costproxy.records import frozen
from costproxy.registry import ModelSpec, Usage
from costproxy.request import Api

log = structlog.get_logger("costproxy.cache")
FORMAT = 1
Write = Callable[[bytes], Awaitable[None]]


@frozen
class StoredAnswer:
    answer: dict[str, Any]  # in the client's API, as it was returned
    model: str  # the model that answered
    provider: str
    usage: Usage
    cost_nanos: int  # what the answer cost when it was produced: what each hit saves
    request_id: str
    created_ms: int

    def to_bytes(self) -> bytes:
        return orjson.dumps({"v": FORMAT, "answer": self.answer, "model": self.model, "provider": self.provider,
                             "usage": asdict(self.usage), "cost_nanos": self.cost_nanos,
                             "request_id": self.request_id, "created_ms": self.created_ms})

    @staticmethod
    def from_bytes(data: bytes) -> StoredAnswer | None:
        """The entry, or None when it is not one this version wrote."""
        try:
            raw = orjson.loads(data)
            if raw.get("v") != FORMAT or not isinstance(raw.get("answer"), dict):
                return None
            return StoredAnswer(raw["answer"], str(raw["model"]), str(raw["provider"]), Usage(**raw["usage"]),
                                int(raw["cost_nanos"]), str(raw["request_id"]), int(raw["created_ms"]))
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            return None


def with_cache(services: Services, plan: Plan) -> Plan:
    """The plan with its ``CachePlan`` (a bad ``x-costproxy-cache`` header is a 400)."""
    if services.cache is None:
        return plan
    ctx, model = plan.ctx, plan.primary
    decision = decide(services.settings.cache, plan.route.cache, ctx.headers.get(HEADER), plan.request,
                      who=(ctx.principal, ctx.tenant), answer=(model.id, plan.output_caps[model.id]))
    return plan if decision is None else replace(plan, cache=decision)


def cache_label(plan: Plan) -> str | None:
    return None if plan.cache is None else plan.cache.label


async def lookup(services: Services, plan: Plan) -> StoredAnswer | None:
    if plan.cache is None or not plan.cache.lookup or services.cache is None or plan.cache.key is None:
        return None
    try:
        with step(services, "costproxy.cache_lookup"):
            data = await services.cache.get(plan.cache.key)
    except StoreUnavailable as exc:
        log.warning("cache_lookup_failed", error=exc.message)
        return None
    stored = None if data is None else StoredAnswer.from_bytes(data)
    if stored is None or stored.model not in services.registry.models:
        return None
    return stored


def client_answer(plan: Plan, stored: StoredAnswer) -> dict[str, Any]:
    """The stored answer for this client: a Response gets an id of its own."""
    if plan.request.api is Api.RESPONSES:
        return {**stored.answer, "id": new_id("resp")}
    return stored.answer


def hit_entry(services: Services, plan: Plan, stored: StoredAnswer) -> LedgerEntry:
    baseline = plan.route.baseline
    usage = stored.usage
    now_ms = int(services.clock() * 1000)
    metadata: dict[str, Any] = {"cache": {
        "saved_nanos": stored.cost_nanos, "saved_usd": format_usd(stored.cost_nanos),
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "source_request_id": stored.request_id, "age_s": max(0, now_ms - stored.created_ms) // 1000}}
    if plan.route.rules:
        metadata["rules"] = list(plan.route.rules)
    return replace(base_entry(services, plan.ctx, plan.request, plan.requested_model), status=Status.CACHE_HIT,
                   served_model=stored.model, provider=stored.provider, decision_id=plan.route.decision_id,
                   cost_nanos=0, baseline_nanos=baseline.cost(usage) if baseline is not None else stored.cost_nanos,
                   usage_reported=usage.reported, task_type=plan.route.task_type, metadata=metadata)


async def settle_hit(services: Services, plan: Plan, reservation: Reservation, stored: StoredAnswer) -> LedgerEntry:
    """Charge nothing (the reservation goes), give the drawn tokens back, write the ledger entry."""
    entry = hit_entry(services, plan, stored)
    with step(services, "costproxy.settle"):
        await asyncio.shield(record(services, plan, reservation, entry))
    return entry


def as_hit(plan: Plan) -> Plan:
    assert plan.cache is not None
    return replace(plan, cache=replace(plan.cache, label="hit"))


async def serve_unary(services: Services, plan: Plan, reservation: Reservation,
                      stored: StoredAnswer) -> tuple[Plan, LedgerEntry, bytes, dict[str, Any]]:
    answer = client_answer(plan, stored)
    entry = await settle_hit(services, plan, reservation, stored)
    return as_hit(plan), entry, orjson.dumps(answer), answer


class ReplayRun:
    """A stream answered from the cache: the same surface as ``run.StreamRun`` for the edges."""

    def __init__(self, services: Services, plan: Plan, reservation: Reservation, stored: StoredAnswer, *,
                 finished: Callable[[LedgerEntry], None], comment: Callable[[LedgerEntry], bytes]) -> None:
        self.services = services
        self.plan = as_hit(plan)
        self._reservation = reservation
        self._stored = stored
        self._finished = finished
        self._comment = comment
        self.answer = client_answer(plan, stored)

    @property
    def final(self) -> dict[str, Any] | None:
        return self.answer if self.plan.request.api is Api.RESPONSES else None

    @property
    def model(self) -> ModelSpec:
        return self.services.registry.models[self._stored.model]

    async def relay(self, start: Callable[[], Awaitable[None]], write: Write) -> LedgerEntry:
        request = self.plan.request
        try:
            await start()
            for chunk in replay(request.api, self.plan.ctx.endpoint, self.answer, include_usage=request.include_usage):
                await write(chunk)
            await write(self._comment(hit_entry(self.services, self.plan, self._stored)))
        except ConnectionError:
            pass  # the client left: a hit costs nothing either way
        finally:
            entry = await settle_hit(self.services, self.plan, self._reservation, self._stored)
            self._finished(entry)
        return entry


def capture_for(plan: Plan) -> Capture | None:
    """A capture of the stream's frames when its answer is to be stored."""
    if plan.cache is None or not plan.cache.store:
        return None
    return Capture(plan.request.api, plan.ctx.endpoint)


def teed(write: Write, capture: Capture | None) -> Write:
    if capture is None:
        return write

    async def tee(data: bytes) -> None:
        capture.feed(data)
        await write(data)

    return tee


async def keep(services: Services, plan: Plan, entry: LedgerEntry, answer: Mapping[str, Any] | None) -> None:
    """Store a miss's answer when the plan says so and the call ended well."""
    cache, decision = services.cache, plan.cache
    if cache is None or decision is None or decision.key is None or answer is None or entry.status != Status.OK:
        return
    if answer.get("status") not in (None, "completed", "incomplete") or entry.served_model is None:
        return
    usage = Usage(entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens, entry.usage_reported,
                  entry.cache_write_tokens, entry.cache_write_1h_tokens)
    body = dict(answer)
    if body.get("usage") is None and plan.request.api is Api.CHAT:
        body["usage"] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                         "total_tokens": usage.total_tokens}
    stored = StoredAnswer(body, entry.served_model, entry.provider or "", usage, entry.cost_nanos, entry.request_id,
                          int(services.clock() * 1000))
    try:
        with step(services, "costproxy.cache_store"):
            if not await cache.put(decision.key, stored.to_bytes(), decision.ttl_s):
                log.info("cache_entry_too_large", request_id=entry.request_id)
    except StoreUnavailable as exc:
        log.warning("cache_store_failed", error=exc.message, request_id=entry.request_id)
