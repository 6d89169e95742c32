"""The rate-limit algorithm: GCRA (a token bucket kept as one number), in exact integers.

Why GCRA rather than a sliding window: it needs one stored value per bucket (no log of request
times, no cron to roll windows over), it answers "when may this request go" exactly (that is
``retry-after``), it accepts a weight per request (tokens) and a correction afterwards (tokens
per minute are charged at the worst case and corrected to the actual usage), and in Redis it is a
few arithmetic operations inside one Lua script.  A sliding-window log would be exact over every
60-second window but costs memory per request; a sliding-window counter is an approximation.

What it guarantees, exactly: a bucket with ``rate`` units per minute and a ``burst`` capacity is a
token bucket that holds at most ``burst`` units and refills continuously at ``rate`` per minute.
A request of ``cost`` units is admitted when it fits what the bucket holds now; so over any
interval of ``t`` milliseconds at most ``burst + rate * t / 60000`` units are admitted (with the
default ``burst = rate``: a full minute's worth at once, then the steady rate), and the long-run
rate never exceeds ``rate``.  A refused request takes nothing.

Exact integers: the state is the bucket's *fill* in units of 1/60000 (so a bucket drains
``rate`` fill per millisecond, with no rounding), and the time of that fill in milliseconds.  A
correction (actual tokens smaller or larger than the worst case charged) adds to the fill;
clamping at zero makes it equal to having charged the actual amount at admission (see
``tests/unit/test_rate_limit_rules.py``).  The same arithmetic runs in Lua (``ratelimits/redis.py``),
where numbers are doubles: fills stay below 2**53 because ``MAX_UNITS_PER_MINUTE * SCALE`` does.

Pure: no clock, no I/O; callers pass ``now_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence

from costproxy.records import frozen

SCALE = 60_000  # fill per unit: milliseconds in a minute, so a bucket drains `rate` fill per ms
MAX_UNITS_PER_MINUTE = 10**10  # limits and bursts above this are refused (fills stay exact in Lua doubles)


@frozen
class Meter:
    """One limit applied to one request: the bucket it draws from and how much."""

    bucket: str  # the bucket's identity (a store key)
    rate: int  # units per minute (> 0)
    burst: int  # capacity in units (> 0)
    cost: int  # units this request takes (>= 0)


@frozen
class Reading:
    """A bucket after an admission (or a look): what is left and when it is whole again."""

    rate: int
    burst: int
    fill: int  # scaled (units * SCALE)

    @property
    def remaining(self) -> int:
        """Whole units that could be taken now."""
        return max(0, self.burst * SCALE - self.fill) // SCALE

    @property
    def reset_ms(self) -> int:
        """Milliseconds until the bucket is full again (0: it is)."""
        return -(-self.fill // self.rate)


@frozen
class Verdict:
    admitted: bool
    fills: tuple[int, ...]  # per meter: the fill after admission (unchanged when refused)
    wait_ms: int = 0  # refused: how long until every meter fits (0 when admitted)
    never: int | None = None  # index of a meter whose cost exceeds its burst: no wait can help

    def readings(self, meters: Sequence[Meter]) -> tuple[Reading, ...]:
        return tuple(Reading(m.rate, m.burst, f) for m, f in zip(meters, self.fills, strict=True))


def level(fill: int, at_ms: int, rate: int, now_ms: int) -> int:
    """The fill at ``now_ms`` of a bucket that held ``fill`` at ``at_ms`` (a clock going backwards
    drains nothing)."""
    elapsed = now_ms - at_ms
    if elapsed <= 0:
        return fill
    return max(0, fill - elapsed * rate)


def admit(meters: Sequence[Meter], levels: Sequence[int]) -> Verdict:
    """Admit a request on every meter, or on none: ``levels`` are the buckets' fills now."""
    fills: list[int] = []
    wait_ms = 0
    never: int | None = None
    for index, (meter, current) in enumerate(zip(meters, levels, strict=True)):
        capacity = meter.burst * SCALE
        need = current + meter.cost * SCALE
        fills.append(need)
        if meter.cost > meter.burst:
            never = index if never is None else never
        elif need > capacity:
            wait_ms = max(wait_ms, -(-(need - capacity) // meter.rate))
    if never is not None or wait_ms > 0:
        return Verdict(False, tuple(levels), wait_ms, never)
    return Verdict(True, tuple(fills))


def corrected(current: int, delta_units: int) -> int:
    """The fill after adding ``delta_units`` (negative: a refund) to a bucket whose fill is now
    ``current``; never below zero (a bucket cannot hold more than full)."""
    return max(0, current + delta_units * SCALE)


def expiry_ms(fill: int, rate: int) -> int:
    """How long a bucket's state must be kept: once it has drained, it equals no state at all."""
    return -(-fill // rate) + 1000
