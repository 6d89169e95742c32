"""``run_unary`` and ``run_stream``: the order of one request, from plan to events.

Both take a validated ``ChatRequest`` (the protocol edges build it) and own everything after:
plan → reserve → call along the fallback chain → settle in ``finally`` → breakers → events.
A refusal before the call (``ProxyError`` from planning, routing or reserving) is recorded by
``refuse`` — a ledger entry with cost 0 and the events — and raised again for the edge to answer.

Streams: ``run_stream`` plans, reserves and opens the upstream (falling back before the first
byte); the returned ``StreamRun.relay`` then writes the frames through the edge's ``write`` and
settles when the stream ends, fails, or the client hangs up (a hang-up is charged what was
generated).  The edge never sees a reservation.

Each attempt speaks to its upstream through an ``Exchange`` (``exchange.py``): the upstream path and
body, the reader of its usage, and the conversion of its answer into the client's API, so the
Responses and Messages edges run through this same code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from costproxy.budgets.accounts import Reservation
from costproxy.errors import BudgetExceeded, ProviderError, ProxyError, ReservationLost, ServerShuttingDown
from costproxy.ledger.entry import LedgerEntry, Status
from costproxy.money import format_usd
from costproxy.pipeline import cached
from costproxy.pipeline.admission import add_refusal_headers, admit_limits, limit_headers, settle_limits
from costproxy.pipeline.events import ModelSwitched, RequestBlocked, RequestCompleted, UpstreamFailed
from costproxy.pipeline.exchange import Exchange, Relay, exchange_for, fit_chain
from costproxy.pipeline.lease import Lease
from costproxy.pipeline.plan import Plan, plan, reserve
from costproxy.pipeline.services import Services, step
from costproxy.pipeline.settle import Outcome, refusal_entry, settle
from costproxy.providers.client import ACCEPTED
from costproxy.providers.transport import UpstreamResponse, UpstreamStream
from costproxy.records import frozen
from costproxy.registry import ModelSpec
from costproxy.request import ChatRequest, RequestContext
from costproxy.settings import ProviderSettings

T = TypeVar("T")
FINAL_WRITE_S = 2.0  # how long a stream cut by the drain deadline may take to send its last event
Write = Callable[[bytes], Awaitable[None]]


@frozen
class UnaryResult:
    plan: Plan
    entry: LedgerEntry
    response: UpstreamResponse  # as the upstream sent it
    body: bytes  # the answer in the client's API (``response.body`` itself when no translation was needed)
    data: dict[str, Any]  # ``body`` parsed


async def refuse(services: Services, ctx: RequestContext, request: ChatRequest | None,
                 error: ProxyError, plan_: Plan | None = None) -> LedgerEntry:
    """Record a request refused before any upstream call: ledger entry (cost 0) and events; the
    error answer gets the caller's rate-limit headers."""
    await add_refusal_headers(services, ctx, plan_, error)
    entry = refusal_entry(services, ctx, request, error)
    await services.accounts.record_refusal(entry)
    if isinstance(error, BudgetExceeded):
        services.events.publish(RequestBlocked(ctx, error))
    services.events.publish(RequestCompleted(ctx, entry))
    return entry


async def admit(services: Services, ctx: RequestContext, request: ChatRequest) -> tuple[Plan, Reservation]:
    """Plan, decide the cache's part, draw from the rate limits and reserve, or record the refusal
    (tokens drawn are given back) and raise it.

    The plan reads the budget definitions this process holds.  When they changed while it was
    made (another replica's change: the reserve found them stale and reloaded them), or when a
    budget refuses and a look at the store finds them changed, the request is planned once more
    on the fresh ones — a plan is never refused, capped or routed by definitions older than a
    change that already answered.  The rate limits are drawn once."""
    accounts = services.accounts
    the_plan: Plan | None = None
    try:
        version = accounts.definitions_version()
        try:
            the_plan = await _planned(services, ctx, request)
            the_plan = await admit_limits(services, the_plan)
            admitted = await reserve(services, the_plan)
            if accounts.definitions_version() == version:
                return admitted
            await accounts.release(admitted[1], None)
        except BudgetExceeded:
            if not await accounts.current() and accounts.definitions_version() == version:
                raise
        fresh = await _planned(services, ctx, request)
        the_plan = await admit_limits(services, fresh) if the_plan is None else \
            replace(fresh, admission=the_plan.admission)
        return await reserve(services, the_plan)
    except ProxyError as exc:
        await settle_limits(services, the_plan, None)
        await refuse(services, ctx, request, exc, the_plan)
        raise
    except asyncio.CancelledError:  # the drain deadline (or a server that cancels handlers) before any call
        await withdrawn(services, ctx, request, the_plan, None)
        raise


async def withdrawn(services: Services, ctx: RequestContext, request: ChatRequest | None, plan_: Plan | None,
                    reservation: Reservation | None) -> None:
    """A request cancelled before anything was sent upstream: its reservation is released, its
    rate-limit tokens are given back and, when the drain deadline ended it, it is ledgered as a
    ``server_shutting_down`` refusal (cost 0).  Shielded: a second cancellation does not leave the
    reservation to its lease."""
    cut = asyncio.current_task() in services.cut

    async def undo() -> None:
        if reservation is not None:
            await services.accounts.release(reservation, None)
        await settle_limits(services, plan_, None)
        if cut:
            await refuse(services, ctx, request, shutting_down(), plan_)

    await asyncio.shield(undo())


async def _lookup(services: Services, ctx: RequestContext, request: ChatRequest, plan_: Plan,
                  reservation: Reservation) -> cached.StoredAnswer | None:
    """The cache's stored answer for ``plan_``, if any; a request cancelled while looking is withdrawn."""
    try:
        return await cached.lookup(services, plan_)
    except asyncio.CancelledError:
        await withdrawn(services, ctx, request, plan_, reservation)
        raise


async def _planned(services: Services, ctx: RequestContext, request: ChatRequest) -> Plan:
    return cached.with_cache(services, await fit_chain(services, await plan(services, ctx, request)))


async def run_unary(services: Services, ctx: RequestContext, request: ChatRequest) -> UnaryResult:
    the_plan, reservation = await admit(services, ctx, request)
    stored = await _lookup(services, ctx, request, the_plan, reservation)
    if stored is not None:
        hit_plan, entry, body, data = await cached.serve_unary(services, the_plan, reservation, stored)
        _finished(services, hit_plan, entry)
        return UnaryResult(hit_plan, entry, UpstreamResponse(200, {}, body, data), body, data)
    outcome = Outcome(model=the_plan.primary)
    accepted: list[bool] = []  # the provider sent a 2xx status line (client.ACCEPTED)
    marking = ACCEPTED.set(accepted)
    try:
        async with lease(services, reservation):
            response, exchange = await _call_unary(services, the_plan, outcome)
            body, data = exchange.reply(response)
    except ProxyError as exc:
        outcome.failed(exc)
        if isinstance(exc, ReservationLost) and accepted:  # its lease ended a call the provider had accepted:
            outcome.billed = True  # it bills it all (charged 0, it was billed but uncharged); not accepted: no bill
        exc.headers.update(limit_headers(the_plan))
        raise
    except asyncio.CancelledError:  # cancelled in flight (a hang-up, a drain deadline): the provider may bill it all
        _cancelled(services, outcome)
        outcome.billed = True
        raise
    finally:
        ACCEPTED.reset(marking)
        _past_the_call(services)
        entry = await settle(services, the_plan, reservation, outcome)
        _finished(services, the_plan, entry)
    if response.status == 200:
        await cached.keep(services, the_plan, entry, data)
    return UnaryResult(the_plan, entry, response, body, data)


async def run_stream(services: Services, ctx: RequestContext, request: ChatRequest) -> StreamRun | cached.ReplayRun:
    the_plan, reservation = await admit(services, ctx, request)
    stored = await _lookup(services, ctx, request, the_plan, reservation)
    if stored is not None:
        return cached.ReplayRun(services, the_plan, reservation, stored,
                                comment=lambda entry: cost_comment(entry, the_plan.budget_remaining_nanos),
                                finished=lambda entry: _finished(services, the_plan, entry))
    outcome = Outcome(model=the_plan.primary)
    try:
        upstream, exchange = await _open_stream(services, the_plan, outcome)
    except ProxyError as exc:
        outcome.failed(exc)
        outcome.unread = outcome.billed  # accepted, but its answer was not a stream: nothing was read
        exc.headers.update(limit_headers(the_plan))
        _finished(services, the_plan, await settle(services, the_plan, reservation, outcome))
        raise
    except asyncio.CancelledError:  # waiting for the upstream's headers (a hang-up, the drain deadline)
        _cancelled(services, outcome)
        outcome.billed = outcome.unread = True  # sent, its answer never read: the provider may bill it all
        _finished(services, the_plan, await settle(services, the_plan, reservation, outcome))
        raise
    return StreamRun(services, the_plan, reservation, outcome, upstream, relay=exchange.relay())


class StreamRun:
    """An open upstream stream whose settlement the pipeline still owes."""

    def __init__(self, services: Services, plan_: Plan, reservation: Reservation, outcome: Outcome,
                 upstream: UpstreamStream, *, relay: Relay) -> None:
        self.services = services
        self.plan = plan_
        self.outcome = outcome
        self._reservation = reservation
        self._upstream = upstream
        self._relay = relay

    @property
    def final(self) -> dict[str, Any] | None:
        """The whole answer once relayed, for APIs that have one (a Response, to be stored)."""
        return self._relay.final

    @property
    def model(self) -> ModelSpec:
        """The model whose stream this is (after fallbacks)."""
        return self.outcome.model

    async def relay(self, start: Callable[[], Awaitable[None]], write: Write) -> LedgerEntry:
        """``start`` the client response, relay every frame through ``write``, then settle.

        The client hanging up (``ConnectionError`` from ``start`` or ``write``) ends the relay and
        charges what was generated; an upstream failure mid-stream is sent as an error event
        in the client's API.  Returns the ledger entry; a final SSE comment carries its cost.
        """
        outcome, relay = self.outcome, self._relay
        capture = cached.capture_for(self.plan)
        write = cached.teed(write, capture)
        try:
            async with lease(self.services, self._reservation):
                await start()
                await _pump(self._upstream, relay, outcome, write)
            if relay.failure is not None:  # reported by the upstream in a frame relayed as it was
                outcome.failed(relay.failure)
        except ReservationLost as exc:
            outcome.failed(exc)
            await _write_quietly(write, relay.error(exc))
        except ConnectionError:
            outcome.disconnected()
        except asyncio.CancelledError:  # the client hung up (a server that cancels its handler), or the drain deadline
            ended = _cancelled(self.services, outcome)
            if ended is None:
                raise
            # the drain deadline (ours, not the client's): tell the client the answer was cut, in its API,
            # and end the stream as a stream; the server's own deadline follows if this cannot be written
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_write_quietly(write, relay.error(ended)), FINAL_WRITE_S)
        except ProviderError as exc:
            outcome.failed(exc)
            await _write_quietly(write, relay.error(exc))
        finally:
            self._upstream.close()
            _past_the_call(self.services)
            entry = await settle(self.services, self.plan, self._reservation, outcome)
            self.services.router.record_result(outcome.model, ok=outcome.status is not Status.ERROR)
            _finished(self.services, self.plan, entry)
        if outcome.status is Status.OK:
            await _write_quietly(write, cost_comment(entry, self.plan.budget_remaining_nanos))
            if capture is not None:
                await cached.keep(self.services, self.plan, entry, capture.answer())
        return entry


async def _pump(upstream: UpstreamStream, relay: Relay, outcome: Outcome, write: Write) -> None:
    """Relay the upstream's events until its last one; the usage is read from the upstream's own
    frames, before any conversion.  Events the upstream delivered in one piece (``pending``) go to
    the client in one write, each frame as it was; an event that arrives alone is written at once."""
    held: list[bytes] = []  # frames of events that arrived together: one write to the client for all
    try:
        async for raw, data in upstream.events():
            if isinstance(data, dict):
                outcome.observe(data)
            held.extend(relay.frames(raw, data, upstream.done))
            if relay.finished:
                break
            if held and not getattr(upstream, "pending", False):
                await write(b"".join(held) if len(held) > 1 else held[0])
                held.clear()
    except ProviderError:  # a bad event after good ones of the same piece: those still reach the client
        if held:
            await write(b"".join(held))
        raise
    held.extend(relay.end())
    if held:
        await write(b"".join(held))


def _past_the_call(services: Services) -> None:
    """The upstream call is over (answered, failed or cut): what is left — settling, the answer or
    a stream's last frames — is short, and the drain deadline no longer ends it (cut while it
    settled, a stream lost its end and a paid answer became a 503)."""
    task = asyncio.current_task()
    if task is not None:
        services.in_flight.discard(task)


def _cancelled(services: Services, outcome: Outcome) -> ServerShuttingDown | None:
    """Record why a running call was cancelled: the drain deadline (``Services.end_in_flight``; the
    error is returned, for a stream's last event), else the client hanging up."""
    if asyncio.current_task() in services.cut:
        ended = shutting_down()
        outcome.failed(ended)
        return ended
    outcome.disconnected()
    return None


def shutting_down() -> ServerShuttingDown:
    return ServerShuttingDown("the server is shutting down and its drain deadline passed before this request "
                              "finished; retry it")


def cost_comment(entry: LedgerEntry, budget_remaining_nanos: int | None = None) -> bytes:
    """The SSE comment after ``[DONE]`` that tells a client what the stream cost: what the
    ``x-costproxy-*`` headers of a unary answer say but a stream's cannot (they go out first)."""
    payload: dict[str, object] = {
        "request_id": entry.request_id, "model": entry.served_model, "cost_usd": format_usd(entry.cost_nanos),
        "baseline_cost_usd": format_usd(entry.baseline_nanos),
        "usage": "reported" if entry.usage_reported else "estimated",
        "prompt_tokens": entry.prompt_tokens, "completion_tokens": entry.completion_tokens}
    if budget_remaining_nanos is not None:  # what this request left (others may spend too)
        payload["budget_remaining_usd"] = format_usd(max(0, budget_remaining_nanos - entry.cost_nanos))
    return b": costproxy " + orjson.dumps(payload) + b"\n\n"


async def _write_quietly(write: Write, data: bytes) -> None:
    try:
        await write(data)
    except (ConnectionError, RuntimeError):
        pass


def lease(services: Services, reservation: Reservation) -> Lease:
    """The lease that keeps ``reservation`` while the call runs (see ``lease.py``)."""
    return Lease(services.accounts, reservation, services.settings.budgets.settings.reservation_ttl_s)


def _finished(services: Services, plan_: Plan, entry: LedgerEntry) -> None:
    """Events for a request that reached the upstream (or tried to)."""
    ctx = plan_.ctx
    asked = services.registry.resolve(plan_.requested_model)
    if asked is not None and entry.served_model is not None and asked.id != entry.served_model:
        services.events.publish(ModelSwitched(ctx, plan_.requested_model, entry.served_model, plan_.route.reasons))
    fallback = entry.served_model != plan_.primary.id
    services.events.publish(RequestCompleted(ctx, entry, fallback))


# --- calling the upstream ------------------------------------------------------------------------


def provider_of(services: Services, model: ModelSpec) -> ProviderSettings:
    return services.settings.providers[model.provider]


async def _along_chain(services: Services, plan_: Plan, outcome: Outcome, span_name: str,
                       attempt: Callable[[ProviderSettings, Exchange], Awaitable[T]]) -> tuple[T, Exchange]:
    """Try each model of the chain until one answers; ``outcome.model`` names the one tried last.

    A retryable failure (timeout, connection error, 429, 5xx) moves on to the next model; any
    other failure, or the last model's, is raised.  Every attempt feeds the circuit breakers.
    """
    last: ProviderError | None = None
    for model in plan_.route.chain:
        outcome.model = model
        exchange = exchange_for(services, plan_, model)
        outcome.reader = exchange.reader()
        try:
            with step(services, span_name, {"costproxy.model": model.id, "costproxy.provider": model.provider}):
                return await attempt(provider_of(services, model), exchange), exchange
        except ProviderError as exc:
            services.router.record_result(model, ok=False)
            services.events.publish(UpstreamFailed(plan_.ctx, model.id, model.provider, exc))
            last = exc
            if not exc.retryable:
                raise
    assert last is not None
    raise last


async def _call_unary(services: Services, plan_: Plan, outcome: Outcome) -> tuple[UpstreamResponse, Exchange]:
    """Call along the chain; the first success wins and its usage (or text) is recorded."""
    ctx = plan_.ctx

    async def attempt(provider: ProviderSettings, exchange: Exchange) -> UpstreamResponse:
        return await services.upstream.call(provider, exchange.path, exchange.model.upstream_model,
                                            exchange.payload(), ctx.request_id, headers=exchange.headers)

    response, exchange = await _along_chain(services, plan_, outcome, "costproxy.upstream", attempt)
    services.router.record_result(outcome.model, ok=True)
    outcome.observe(response.data)
    return response, exchange


async def _open_stream(services: Services, plan_: Plan, outcome: Outcome) -> tuple[UpstreamStream, Exchange]:
    """Open the stream along the chain; the breakers learn its outcome when it ends."""
    ctx = plan_.ctx

    async def attempt(provider: ProviderSettings, exchange: Exchange) -> UpstreamStream:
        return await services.upstream.open_stream(provider, exchange.path, exchange.model.upstream_model,
                                                   exchange.payload(), ctx.request_id, headers=exchange.headers)

    return await _along_chain(services, plan_, outcome, "costproxy.upstream_open_stream", attempt)
