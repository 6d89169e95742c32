"""Circuit breakers per provider and model, so a failing upstream stops being tried.

States, per key (``provider`` and ``provider/model``):

    closed     calls flow; ``failure_threshold`` consecutive failures open the circuit
    open       no calls for ``cooldown`` seconds (the model is skipped, fallbacks serve)
    half-open  after the cooldown one probe call is let through; success closes the circuit,
               failure opens it again with the cooldown doubled (up to ``max_cooldown``)

A provider-wide circuit opens when ``provider_threshold`` consecutive failures hit any of its
models, so an outage of a whole vendor is detected as fast as that of one model.  Pure state
machine with an injected clock: no I/O, unit-testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from costproxy.records import frozen
from costproxy.registry import ModelSpec


@frozen
class BreakerConfig:
    failure_threshold: int = 3
    provider_threshold: int = 8
    cooldown: float = 10.0
    max_cooldown: float = 300.0


@dataclass(slots=True)
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    cooldown: float = 0.0
    probing: bool = False

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at < self.cooldown:
            return "open"
        return "half-open"


class CircuitBreakers:
    def __init__(self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or BreakerConfig()
        self.clock = clock
        self._circuits: dict[str, _Circuit] = {}
        # keys whose circuit has been opened (open or half-open): while none has, every model is
        # allowed without reading the clock (the router asks for each of ~30 candidates per request)
        self._tripped: set[str] = set()

    def _circuit(self, key: str) -> _Circuit:
        circuit = self._circuits.get(key)
        if circuit is None:
            circuit = self._circuits[key] = _Circuit(cooldown=self.config.cooldown)
        return circuit

    def _admits(self, key: str, now: float) -> bool:
        circuit = self._circuits.get(key)
        if circuit is None:
            return True
        state = circuit.state(now)
        if state == "closed":
            return True
        if state == "open":
            return False
        return not circuit.probing  # half-open: exactly one probe at a time

    def allows(self, model: ModelSpec) -> bool:
        """Whether a call to ``model`` may be attempted now (without claiming a probe)."""
        if not self._tripped:
            return True
        now = self.clock()
        return self._admits(model.provider, now) and self._admits(f"{model.provider}/{model.id}", now)

    def claim(self, model: ModelSpec) -> bool:
        """Like ``allows``, and marks half-open circuits as probing: call right before the attempt."""
        if not self.allows(model):
            return False
        if not self._tripped:
            return True
        now = self.clock()
        for key in (model.provider, f"{model.provider}/{model.id}"):
            circuit = self._circuits.get(key)
            if circuit is not None and circuit.state(now) == "half-open":
                circuit.probing = True
        return True

    def record(self, model: ModelSpec, ok: bool) -> None:
        now = self.clock()
        thresholds = ((model.provider, self.config.provider_threshold),
                      (f"{model.provider}/{model.id}", self.config.failure_threshold))
        for key, threshold in thresholds:
            circuit = self._circuit(key)
            if ok:
                circuit.failures, circuit.opened_at, circuit.probing = 0, None, False
                circuit.cooldown = self.config.cooldown
                self._tripped.discard(key)
                continue
            circuit.failures += 1
            if circuit.opened_at is not None and circuit.state(now) == "half-open":
                circuit.cooldown = min(circuit.cooldown * 2, self.config.max_cooldown)  # failed probe
                circuit.opened_at, circuit.probing = now, False
            elif circuit.failures >= threshold:
                circuit.opened_at, circuit.probing = now, False
                self._tripped.add(key)

    def order(self, chain: Iterable[ModelSpec]) -> list[ModelSpec]:
        """The chain with models behind open circuits moved to the end (tried only as last resort)."""
        models = list(chain)
        if not self._tripped:
            return models
        healthy = [m for m in models if self.allows(m)]
        return healthy + [m for m in models if m not in healthy]

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self.clock()
        return {key: {"state": c.state(now), "failures": c.failures, "cooldown": c.cooldown}
                for key, c in sorted(self._circuits.items())}
