from __future__ import annotations

from datetime import date
from decimal import Decimal

from costproxy.registry import ModelPrice, ModelSpec
from costproxy.routing.breakers import BreakerConfig, CircuitBreakers


def model(name: str, provider: str = "p1") -> ModelSpec:
    return ModelSpec(id=name, provider=provider, upstream_model=name, kind="chat", tier="economy",
                     context_window=1000, max_output_tokens=100, capabilities=frozenset(),
                     price=ModelPrice(Decimal(1), Decimal(2), source="t", as_of=date(2026, 1, 1)))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_half_opens_after_cooldown() -> None:
    clock = Clock()
    breakers = CircuitBreakers(BreakerConfig(failure_threshold=2, provider_threshold=10, cooldown=5), clock)
    a = model("a")
    breakers.record(a, ok=False)
    assert breakers.allows(a)
    breakers.record(a, ok=False)
    assert not breakers.allows(a)
    clock.now = 5.1
    assert breakers.claim(a)  # the single half-open probe
    assert not breakers.allows(a)  # a second concurrent probe is refused
    breakers.record(a, ok=True)
    assert breakers.allows(a) and breakers.snapshot()["p1/a"]["state"] == "closed"


def test_failed_probe_doubles_cooldown() -> None:
    clock = Clock()
    breakers = CircuitBreakers(BreakerConfig(failure_threshold=1, provider_threshold=10, cooldown=5), clock)
    a = model("a")
    breakers.record(a, ok=False)
    clock.now = 6
    assert breakers.claim(a)
    breakers.record(a, ok=False)
    clock.now = 12  # 6 s after the failed probe: still open with a 10 s cooldown
    assert not breakers.allows(a)
    clock.now = 16.5
    assert breakers.allows(a)


def test_provider_circuit_covers_all_its_models() -> None:
    breakers = CircuitBreakers(BreakerConfig(failure_threshold=5, provider_threshold=3), Clock())
    a, b, other = model("a"), model("b"), model("c", provider="p2")
    for m in (a, b, a):
        breakers.record(m, ok=False)
    assert not breakers.allows(b)  # b never failed itself, but its provider is down
    assert breakers.allows(other)
    assert [m.id for m in breakers.order([a, other, b])] == ["c", "a", "b"]


def test_success_resets_failures() -> None:
    breakers = CircuitBreakers(BreakerConfig(failure_threshold=2), Clock())
    a = model("a")
    breakers.record(a, ok=False)
    breakers.record(a, ok=True)
    breakers.record(a, ok=False)
    assert breakers.allows(a)
