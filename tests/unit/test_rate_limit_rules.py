"""The rate-limit algorithm with a fake clock, limit resolution, headers, and the config section."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from costproxy.errors import ConfigError, ExceedsRateLimit, InvalidRequest, RateLimited
from costproxy.identity.principal import Principal
from costproxy.ratelimits.config import parse_rate_limits
from costproxy.ratelimits.gcra import SCALE, Meter, Reading, admit, corrected, level
from costproxy.ratelimits.limiter import RateLimiter
from costproxy.ratelimits.model import LimitIndex, RateLimit, duration, limit_from_json, limit_to_json
from costproxy.ratelimits.store import LocalBuckets, SqliteLimitDefinitions, ensure_schema
from costproxy.store.sqlite import SqliteStore


class Bucket:
    """One bucket driven through the pure functions, as the stores do."""

    def __init__(self, rate: int, burst: int | None = None) -> None:
        self.rate, self.burst = rate, burst or rate
        self.fill, self.at = 0, 0

    def take(self, now_ms: int, cost: int = 1) -> tuple[bool, int]:
        meter = Meter("b", self.rate, self.burst, cost)
        verdict = admit([meter], [level(self.fill, self.at, self.rate, now_ms)])
        if verdict.admitted:
            self.fill, self.at = verdict.fills[0], now_ms
        return verdict.admitted, verdict.wait_ms


def test_a_minute_s_worth_at_once_then_the_steady_rate() -> None:
    bucket = Bucket(rate=60)  # one a second, up to 60 at once
    assert all(bucket.take(0)[0] for _ in range(60))
    admitted, wait = bucket.take(0)
    assert not admitted and wait == 1000  # exactly when one unit has drained
    assert not bucket.take(999)[0]
    assert bucket.take(1000)[0]
    assert not bucket.take(1000)[0]
    assert bucket.take(60_000 + 1000) == (True, 0)


def test_a_smaller_burst_paces_requests() -> None:
    bucket = Bucket(rate=600, burst=1)  # ten a second, never two at once
    assert bucket.take(0)[0]
    assert bucket.take(0) == (False, 100)
    assert bucket.take(100)[0]


def test_over_any_interval_at_most_the_burst_plus_the_rate_are_admitted() -> None:
    rng = random.Random(7)
    bucket = Bucket(rate=120, burst=30)
    now, admitted = 0, []
    for _ in range(20_000):
        now += rng.choice([0, 1, 7, 50, 300])
        cost = rng.randint(1, 5)
        if bucket.take(now, cost)[0]:
            admitted.append((now, cost))
    for start_index in range(0, len(admitted), 97):
        start = admitted[start_index][0]
        for span in (1, 500, 10_000, 60_000, 180_000):
            units = sum(c for t, c in admitted if start <= t < start + span)
            assert units * SCALE <= 30 * SCALE + 120 * span, (start, span, units)
    total = sum(c for _, c in admitted)
    assert total * SCALE <= 30 * SCALE + 120 * now  # the long-run rate holds
    assert total * SCALE >= 120 * now * 0.9  # and the limit is not needlessly strict


def test_all_or_nothing_and_the_wait_is_the_longest() -> None:
    meters = [Meter("r", 60, 60, 1), Meter("t", 6000, 6000, 500)]
    verdict = admit(meters, [0, 5800 * SCALE])
    assert not verdict.admitted and verdict.fills == (0, 5800 * SCALE)  # nothing taken from either
    assert verdict.wait_ms == -(-(300 * SCALE) // 6000)
    never = admit([Meter("t", 100, 100, 101)], [0])
    assert not never.admitted and never.never == 0


def test_a_correction_equals_having_charged_the_actual_amount() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        rate, fill0 = rng.randint(1, 5000), rng.randint(0, 10**9)
        worst, actual = rng.randint(0, 10**5), rng.randint(0, 10**5)
        t0, t1 = rng.randint(0, 10**6), rng.randint(0, 10**6)
        t1 += t0
        charged_worst = fill0 + worst * SCALE
        then_corrected = corrected(level(charged_worst, t0, rate, t1), actual - worst)
        charged_actual = level(fill0 + actual * SCALE, t0, rate, t1)
        if actual <= worst:
            assert then_corrected == charged_actual
        else:  # a provider that counted more: charged in full now, never less
            assert then_corrected >= charged_actual


def test_a_clock_going_backwards_drains_nothing() -> None:
    assert level(5 * SCALE, 1000, 60, 500) == 5 * SCALE


def test_readings_and_durations() -> None:
    reading = Reading(rate=60, burst=60, fill=3 * SCALE + 1)
    assert reading.remaining == 56 and reading.reset_ms == 3001
    assert [duration(ms) for ms in (0, 20, 999, 1000, 1500, 60_000, 61_500, 3_600_000, 3_723_400)] == \
        ["0s", "20ms", "999ms", "1s", "1.5s", "1m0s", "1m1.5s", "1h0m0s", "1h2m3.4s"]


def test_a_named_limit_replaces_the_default_of_its_type() -> None:
    every = RateLimit("every", "key", "*", requests_per_minute=10)
    named = RateLimit("vip", "key", "k2", requests_per_minute=1000)
    team = RateLimit("team", "team", "core", tokens_per_minute=5000)
    index = LimitIndex([every, named, team])
    one = index.applied(Principal(key_id="k1", team="core", org="acme"))
    assert [(a.limit.id, a.scope_id, a.partition) for a in one] == [("team", "core", "acme"), ("every", "k1", "acme")]
    two = index.applied(Principal(key_id="k2"))
    assert [(a.limit.id, a.partition) for a in two] == [("vip", "_")]
    assert not index.applied(Principal(user="nobody"))


def _limiter(*limits: RateLimit) -> tuple[RateLimiter, Any]:
    from costproxy.ratelimits.config import RateLimitConfig

    clock = [100.0]

    class Memory:
        def __init__(self) -> None:
            self.state: dict[str, tuple[int, int]] = {}

        async def admit(self, partition: str, meters: Any) -> Any:
            now = int(clock[0] * 1000)
            levels = [level(*self.state.get(m.bucket, (0, 0)), m.rate, now) for m in meters]
            verdict = admit(meters, levels)
            if verdict.admitted:
                self.state.update({m.bucket: (f, now) for m, f in zip(meters, verdict.fills, strict=True)})
            return verdict

        async def correct(self, partition: str, meters: Any, deltas: Any) -> None:
            now = int(clock[0] * 1000)
            for m, d in zip(meters, deltas, strict=True):
                self.state[m.bucket] = (corrected(level(*self.state.get(m.bucket, (0, 0)), m.rate, now), d), now)

        async def peek(self, partition: str, meters: Any) -> Any:
            now = int(clock[0] * 1000)
            return tuple(Reading(m.rate, m.burst, level(*self.state.get(m.bucket, (0, 0)), m.rate, now))
                         for m in meters)

        async def close(self) -> None:
            return None

    class NoDefinitions:
        async def load(self) -> Any:
            return [], 0

    limiter = RateLimiter(RateLimitConfig(static=limits), NoDefinitions(), Memory())  # type: ignore[arg-type]
    return limiter, clock


async def test_the_limiter_refuses_with_openai_s_message_and_headers() -> None:
    limiter, clock = _limiter(RateLimit("k", "key", "*", requests_per_minute=2, tokens_per_minute=1000))
    alice = Principal(key_id="k1", org="acme")
    first = await limiter.admit(alice, 300)
    assert first is not None and first.headers()["x-ratelimit-remaining-tokens"] == "700"
    await limiter.settle(first, 100)  # the call used 100 of the 300 drawn
    assert (await limiter.headers(alice))["x-ratelimit-remaining-tokens"] == "900"
    await limiter.admit(alice, 10)
    with pytest.raises(RateLimited) as info:
        await limiter.admit(alice, 10)
    error = info.value
    assert error.status == 429 and error.code == "rate_limited" and "x-should-retry" not in error.headers
    assert error.headers["retry-after"] == "30" and error.headers["retry-after-ms"] == "30000"
    assert "on requests per min (RPM): Limit 2, Used 2, Requested 1" in error.message
    clock[0] += 30
    assert await limiter.admit(alice, 10) is not None
    with pytest.raises(ExceedsRateLimit) as too_big:
        await limiter.admit(alice, 5000)
    assert too_big.value.headers["x-should-retry"] == "false"


# --- configuration ------------------------------------------------------------------------------


def test_the_section_reads_limits_and_settings() -> None:
    config = parse_rate_limits({"on_store_error": "refuse", "limits": [
        {"id": "a", "scope_type": "team", "scope_id": "core", "requests_per_minute": 5, "burst_requests": 2},
        {"id": "b", "scope_type": "key", "scope_id": "*", "tokens_per_minute": 100}]}, "c.yaml")
    assert config.settings.on_store_error == "refuse"
    assert [(x.id, x.burst_requests, x.read_only) for x in config.static] == [("a", 2, True), ("b", None, True)]
    plain = parse_rate_limits([{"id": "a", "scope_type": "org", "scope_id": "acme", "requests_per_minute": 1}], "c")
    assert plain.settings.enabled and len(plain.static) == 1
    assert parse_rate_limits(None, "c").static == ()


@pytest.mark.parametrize(("section", "where", "message"), [
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x"}]}, "limits[0]", "give requests_per_minute"),
    ({"limits": [{"id": "a", "scope_type": "planet", "scope_id": "x", "requests_per_minute": 1}]},
     "limits[0].scope_type", "must be one of"),
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x", "requests_per_minute": "5"}]},
     "limits[0].requests_per_minute", "must be an integer"),
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x", "requests_per_minute": 0}]},
     "limits[0].requests_per_minute", ">= 1"),
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x", "tokens_per_minute": 1, "burst_requests": 1}]},
     "limits[0].burst_requests", "needs requests_per_minute"),
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x", "requests_per_minute": 1, "rpm": 1}]},
     "limits[0].rpm", "unknown key"),
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x", "requests_per_minute": 1},
                 {"id": "a", "scope_type": "team", "scope_id": "y", "requests_per_minute": 1}]},
     "limits[1].id", "duplicate"),
    ({"limits": [{"id": "a", "scope_type": "team", "scope_id": "x", "requests_per_minute": 1},
                 {"id": "b", "scope_type": "team", "scope_id": "x", "requests_per_minute": 1}]},
     "limits[1].scope_id", "already has rate limit 'a'"),
    ({"on_store_error": "maybe"}, "on_store_error", "must be one of allow, refuse"),
    ({"checkpoint_interval_s": 0}, "checkpoint_interval_s", ">= 0.1"),
    ({"limit": []}, "limit", "unknown key"),
])
def test_section_errors_name_the_path(section: dict[str, Any], where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rate_limits(section, "costproxy.yaml")
    assert f"costproxy.yaml: rate_limits.{where}: " in str(info.value) and message in str(info.value)


def test_json_round_trip_and_errors() -> None:
    limit = limit_from_json({"id": "x", "scopeType": "organization", "scopeId": "acme", "tokensPerMinute": 5})
    assert limit.scope_type == "org" and limit.source == "api"
    again = limit_from_json({k: v for k, v in limit_to_json(limit).items()})
    assert again == limit
    with pytest.raises(InvalidRequest) as info:
        limit_from_json({"id": "x", "scopeType": "org", "scopeId": "acme", "tokensPerMinute": -1})
    assert info.value.param == "tokensPerMinute"


async def test_local_buckets_survive_a_restart(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    meter = Meter("rl:user:alice:r", 6, 6, 1)

    async def open_buckets() -> tuple[SqliteStore, LocalBuckets]:
        store = SqliteStore(str(tmp_path / "s.sqlite3"))
        await store.open()
        await ensure_schema(store)
        buckets = LocalBuckets(store, clock=lambda: clock[0], checkpoint_interval_s=3600)
        await buckets.open()
        return store, buckets

    store, buckets = await open_buckets()
    for _ in range(6):
        assert (await buckets.admit("acme", [meter])).admitted
    await buckets.close()
    await store.close()
    store, buckets = await open_buckets()
    assert not (await buckets.admit("acme", [meter])).admitted  # the minute's draws are remembered
    clock[0] += 10  # one per 10 s drains
    assert (await buckets.admit("acme", [meter])).admitted
    clock[0] += 3600
    await buckets.checkpoint()  # drained buckets are forgotten, in memory and on disk
    rows = await store.query("SELECT COUNT(*) AS n FROM rate_limit_buckets")
    assert rows[0]["n"] == 0
    await buckets.close()
    await store.close()


async def test_sqlite_definitions_keep_one_limit_per_scope(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "d.sqlite3"))
    await store.open()
    await ensure_schema(store)
    definitions = SqliteLimitDefinitions(store)
    one = RateLimit("one", "team", "core", requests_per_minute=1, source="api")
    assert await definitions.put(one, create=True) is None
    assert "already exists" in (await definitions.put(one, create=True) or "")
    clash = RateLimit("two", "team", "core", requests_per_minute=1, source="api")
    assert "already has rate limit 'one'" in (await definitions.put(clash, create=True) or "")
    missing = RateLimit("three", "team", "other", requests_per_minute=1, source="api")
    assert "no rate limit" in (await definitions.put(missing, create=False) or "")
    loaded, version = await definitions.load()
    assert loaded == [one] and version == 1
    assert await definitions.delete("one") and not await definitions.delete("one")
    await store.close()
