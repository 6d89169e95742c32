"""The rate limiter the pipeline and the admin API talk to: limits, buckets, admissions.

``RateLimiter`` joins the limit definitions (YAML, read-only, plus those managed through
``/api/v1/rate-limits``: a ``Definitions`` store) and the bucket state (a ``Buckets`` store: in
memory with a SQLite checkpoint for the embedded default, Redis for replicas).  For one request::

    admission = await limiter.admit(principal, worst_case_tokens)   # or RateLimited / ExceedsRateLimit
    ...the call...
    await limiter.settle(admission, actual_tokens)                  # tokens per minute corrected

Tokens per minute are charged at admission with the request's worst case (every input token plus
every output token it may produce, for every choice) — the only amount known before the call, and
the one that keeps concurrent requests from overshooting — and corrected at settlement to the
tokens the provider reported: the difference goes back into the bucket (or is charged, if the
provider counted more).  A request refused after admission (by a budget, say) keeps its request
but gives its tokens back.

When the bucket store is unreachable (Redis down), ``rate_limits.on_store_error`` decides: ``allow``
(the default: rate limits protect capacity, and the budgets, which protect money, still refuse
without their store) or ``refuse`` (503 ``store_unavailable``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from costproxy.background import cancel_and_wait, stop_if_cancelled
from costproxy.errors import ExceedsRateLimit, Forbidden, InvalidRequest, NotFound, RateLimited, StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.ratelimits.config import RateLimitConfig
from costproxy.ratelimits.gcra import SCALE, Meter, Reading, Verdict
from costproxy.ratelimits.model import (
    REQUESTS,
    Admission,
    Draw,
    LimitIndex,
    RateLimit,
    check_unique,
    limit_headers,
    stamped,
)

log = structlog.get_logger("costproxy.ratelimits")


class Buckets(Protocol):
    """Where bucket state lives; every call is atomic over the meters of one partition."""

    async def admit(self, partition: str, meters: Sequence[Meter]) -> Verdict: ...

    async def correct(self, partition: str, meters: Sequence[Meter], deltas: Sequence[int]) -> None:
        """Add ``deltas`` (units; negative gives back) to the buckets of ``meters``."""
        ...

    async def peek(self, partition: str, meters: Sequence[Meter]) -> tuple[Reading, ...]: ...

    async def close(self) -> None: ...


class Definitions(Protocol):
    """Limits managed through the API (the YAML ones are not stored)."""

    async def load(self) -> tuple[list[RateLimit], int]:
        """Every stored limit and the store's change version."""
        ...

    async def version(self) -> int: ...

    async def put(self, limit: RateLimit, *, create: bool) -> str | None:
        """Store ``limit``; an error message when ``create`` finds the id taken, an update finds
        no such id, or another limit holds the scope."""
        ...

    async def delete(self, limit_id: str) -> bool: ...


class RateLimiter:
    def __init__(self, config: RateLimitConfig, definitions: Definitions, buckets: Buckets, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = config.settings
        self.static = {limit.id: limit for limit in config.static}
        self.definitions = definitions
        self.buckets = buckets
        self.clock = clock
        self.index = LimitIndex(self.static.values())
        self._seen_version: int | None = None
        self._refresher: asyncio.Task[None] | None = None

    # --- life cycle --------------------------------------------------------------------------
    async def open(self, *, refresh: bool) -> None:
        """Load the stored limits; ``refresh``: keep picking up other replicas' changes."""
        try:
            await self.load()
        except StoreUnavailable as exc:
            log.error("rate_limits_unavailable", error=str(exc))  # the YAML limits still apply
        if refresh:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="costproxy-rate-limits-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            await cancel_and_wait([self._refresher])
            self._refresher = None
        await self.buckets.close()

    async def load(self) -> None:
        stored, version = await self.definitions.load()
        dynamic = [limit for limit in stored if limit.id not in self.static]
        self.index = LimitIndex([*self.static.values(), *dynamic])
        self._seen_version = version

    async def refresh(self) -> bool:
        if await self.definitions.version() == self._seen_version:
            return False
        await self.load()
        return True

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_interval_s)
            stop_if_cancelled()
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                log.warning("rate_limits_refresh_failed", error=str(exc))

    # --- the request path ----------------------------------------------------------------------
    def applies(self, principal: Principal) -> bool:
        return self.settings.enabled and bool(self.index) and bool(self.index.applied(principal))

    async def admit(self, principal: Principal, tokens: int) -> Admission | None:
        """Draw one request and ``tokens`` from every limit of the principal, or raise."""
        if not self.applies(principal):
            return None
        pairs = self.index.meters(principal)
        meters = [meter if metric == REQUESTS else Meter(meter.bucket, meter.rate, meter.burst, tokens)
                  for _, metric, meter in pairs]
        try:
            verdict = await self.buckets.admit(pairs[0][0].partition, meters)
        except StoreUnavailable as exc:
            self._unavailable(exc)
            return None
        draws = tuple(Draw(a, metric, meter, Reading(meter.rate, meter.burst, fill))
                      for (a, metric, _), meter, fill in zip(pairs, meters, verdict.fills, strict=True))
        if not verdict.admitted:
            raise _refusal(verdict, draws)
        return Admission(draws, tokens)

    def _unavailable(self, exc: StoreUnavailable) -> None:
        if self.settings.on_store_error == "refuse":
            raise StoreUnavailable(f"{exc.message} (rate_limits.on_store_error: refuse)")
        log.warning("rate_limits_skipped", error=exc.message)
        return None

    async def settle(self, admission: Admission | None, tokens: int) -> None:
        """Correct the tokens charged at admission to ``tokens`` (what the provider billed)."""
        if admission is None:
            return
        draws = admission.token_draws()
        delta = tokens - admission.tokens
        if not draws or delta == 0:
            return
        try:
            await self.buckets.correct(draws[0].applied.partition, [d.meter for d in draws], [delta] * len(draws))
        except StoreUnavailable as exc:
            log.warning("rate_limit_correction_lost", error=exc.message, tokens=delta)

    async def headers(self, principal: Principal) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers of the principal right now, without drawing anything."""
        if not self.applies(principal):
            return {}
        pairs = self.index.meters(principal)
        try:
            readings = await self.buckets.peek(pairs[0][0].partition, [meter for _, _, meter in pairs])
        except StoreUnavailable:
            return {}
        return limit_headers(Draw(a, metric, meter, reading)
                             for (a, metric, meter), reading in zip(pairs, readings, strict=True))

    # --- the admin API ---------------------------------------------------------------------------
    def all(self) -> list[RateLimit]:
        return sorted(self.index.limits.values(), key=lambda limit: limit.id)

    def require(self, limit_id: str) -> RateLimit:
        limit = self.index.limits.get(limit_id)
        if limit is None:
            raise NotFound(f"no rate limit with id {limit_id!r}")
        return limit

    def _writable(self, limit_id: str) -> RateLimit:
        limit = self.require(limit_id)
        if limit.read_only:
            raise Forbidden(f"rate limit {limit_id!r} is defined in the configuration file and is read-only")
        return limit

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def create(self, limit: RateLimit, actor: str | None) -> RateLimit:
        if limit.id in self.index.limits:
            raise InvalidRequest(f"a rate limit with id {limit.id!r} already exists", param="id")
        clash = check_unique(self.index.limits.values(), limit)
        if clash is not None:
            raise InvalidRequest(clash, param="scopeId")
        stored = stamped(limit, self._now_ms(), actor)
        problem = await self.definitions.put(stored, create=True)
        if problem is not None:
            raise InvalidRequest(problem, param="id")
        await self.load()
        log.info("rate_limit_created", limit_id=stored.id, actor=actor)
        return stored

    async def update(self, limit: RateLimit, actor: str | None) -> RateLimit:
        before = self._writable(limit.id)
        clash = check_unique(self.index.limits.values(), limit)
        if clash is not None:
            raise InvalidRequest(clash, param="scopeId")
        stored = stamped(limit, self._now_ms(), actor, before)
        problem = await self.definitions.put(stored, create=False)
        if problem is not None:
            raise InvalidRequest(problem)
        await self.load()
        log.info("rate_limit_updated", limit_id=stored.id, actor=actor)
        return stored

    async def delete(self, limit_id: str, actor: str | None) -> RateLimit:
        before = self._writable(limit_id)
        if not await self.definitions.delete(limit_id):
            raise NotFound(f"no rate limit with id {limit_id!r}")
        await self.load()
        log.info("rate_limit_deleted", limit_id=limit_id, actor=actor)
        return before

    async def status(self, principal: Principal) -> list[Draw]:
        """Every limit of ``principal`` with its buckets' state now (nothing drawn)."""
        pairs = self.index.meters(principal)
        if not pairs:
            return []
        readings = await self.buckets.peek(pairs[0][0].partition, [meter for _, _, meter in pairs])
        return [Draw(a, metric, meter, reading) for (a, metric, meter), reading in zip(pairs, readings, strict=True)]


def _wait_ms(draw: Draw) -> int:
    """How long until ``draw``'s meter fits (0: it does now)."""
    over = draw.reading.fill + (draw.meter.cost - draw.meter.burst) * SCALE
    return max(0, -(-over // draw.meter.rate))


def _refusal(verdict: Verdict, draws: Sequence[Draw]) -> RateLimited | ExceedsRateLimit:
    headers = limit_headers(draws)
    if verdict.never is not None:
        draw = draws[verdict.never]
        return ExceedsRateLimit(
            f"Request too large for the rate limit of {draw.applied.label} on tokens per minute: limit "
            f"{draw.meter.burst}, requested {draw.meter.cost} (the prompt plus every output token this request "
            "allows). Lower max_tokens or shorten the input.", headers=headers,
            details={"rate_limit": draw.applied.limit.id, "scope": draw.applied.label, "metric": draw.metric})
    blocked = max(draws, key=_wait_ms)
    seconds = verdict.wait_ms / 1000
    unit = "requests per min (RPM)" if blocked.metric == REQUESTS else "tokens per min (TPM)"
    used = blocked.meter.burst - blocked.reading.remaining
    headers["retry-after"] = str(max(1, -(-verdict.wait_ms // 1000)))
    headers["retry-after-ms"] = str(verdict.wait_ms)
    return RateLimited(
        f"Rate limit reached for {blocked.applied.label} on {unit}: Limit {blocked.meter.rate}, Used {used}, "
        f"Requested {blocked.meter.cost}. Please try again in {seconds:g}s.", headers=headers,
        details={"rate_limit": blocked.applied.limit.id, "scope": blocked.applied.label, "metric": blocked.metric})
