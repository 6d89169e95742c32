"""The ``selection:`` and ``fallback:`` sections of ``costproxy.yaml``, read into frozen settings.

``load_settings`` is the one caller (so ``check-config`` and ``serve`` share every check)::

    selection:                      # every key optional; shares are fractions in [0, 1]
      default_mode: balanced        # economy | balanced | quality
      economy_gap: 0.10             # how much expected quality each mode may give up …
      balanced_gap: 0.03
      quality_gap: 0.0
      target_reference: baseline    # … measured from models.yaml's baseline_model (or: best)
      quality_floor: 0.0            # budget pressure never lowers the target below this
      pressure_start: 0.5           # budget used (fraction) where pressure starts
      burn_start: 1.0               # burn ratio where pressure starts / is full (>= 0)
      burn_full: 2.0
      pressure_gap: 0.10            # extra gap at full pressure, capped by max_gap
      max_gap: 0.20
      max_fallbacks: 3              # 0..20
      quality_per_usd: null         # set: trade quality against cost instead of cheapest-sufficient
      min_task_samples: 30          # calibration rows a model needs on a task to replace the reference

    fallback:
      circuit_breaker: {failure_threshold: 3, provider_threshold: 8, cooldown_seconds: 10,
                        max_cooldown_seconds: 300}
      chains:                       # model id -> model ids tried next, same kind (chat, embedding…)
        gpt-4o: [azure/gpt-4o, claude-sonnet-5]

Pure: no I/O, errors are ``ConfigError`` naming file, dotted path and value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Any

from costproxy.config_schema import ModelCheck, Node
from costproxy.records import frozen
from costproxy.registry import Registry
from costproxy.routing.breakers import BreakerConfig
from costproxy.routing.policy import QUALITY_MODES
from costproxy.routing.selection import TARGET_REFERENCES, SelectionConfig


@frozen
class FallbackSettings:
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # model id -> alternatives


def parse_selection_config(value: Any, file: str, path: str = "selection") -> SelectionConfig:
    """Read the ``selection:`` section (every key optional)."""
    node = Node(value, file, path)
    d = SelectionConfig()

    def share(key: str, default: float) -> float:
        return node.child(key, default).number(minimum=0.0, maximum=1.0)

    config = SelectionConfig(
        default_mode=node.child("default_mode", d.default_mode).str(choices=QUALITY_MODES),
        economy_gap=share("economy_gap", d.economy_gap),
        balanced_gap=share("balanced_gap", d.balanced_gap),
        quality_gap=share("quality_gap", d.quality_gap),
        pressure_start=share("pressure_start", d.pressure_start),
        burn_start=node.child("burn_start", d.burn_start).number(minimum=0.0),
        burn_full=node.child("burn_full", d.burn_full).number(minimum=0.0),
        pressure_gap=share("pressure_gap", d.pressure_gap),
        max_gap=share("max_gap", d.max_gap),
        quality_floor=share("quality_floor", d.quality_floor),
        max_fallbacks=node.child("max_fallbacks", d.max_fallbacks).int(minimum=0, maximum=20),
        quality_per_usd=_opt_rate(node.child("quality_per_usd", None)),
        target_reference=node.child("target_reference", d.target_reference).str(choices=TARGET_REFERENCES),
        min_task_samples=node.child("min_task_samples", d.min_task_samples).int(minimum=0, maximum=10**9),
    )
    node.done()
    if config.burn_full < config.burn_start:
        raise node.child("burn_full").error("must be >= burn_start", config.burn_full)
    return config


def _opt_rate(node: Node) -> float | None:
    return None if node.value is None else node.number(minimum=0.0)


def parse_breaker_config(node: Node) -> BreakerConfig:
    defaults = BreakerConfig()
    config = BreakerConfig(
        failure_threshold=node.child("failure_threshold", defaults.failure_threshold).int(minimum=1),
        provider_threshold=node.child("provider_threshold", defaults.provider_threshold).int(minimum=1),
        cooldown=node.child("cooldown_seconds", defaults.cooldown).number(minimum=0.01),
        max_cooldown=node.child("max_cooldown_seconds", defaults.max_cooldown).number(minimum=0.01),
    )
    node.done()
    if config.max_cooldown < config.cooldown:
        raise node.child("max_cooldown_seconds").error("must be >= cooldown_seconds", config.max_cooldown)
    return config


def parse_fallback_config(value: Any, file: str, registry: Registry,
                          check_model: ModelCheck | None = None) -> FallbackSettings:
    """``fallback: {circuit_breaker: {...}, chains: {model: [alternatives]}}``; every name is a model id
    of ``registry`` (``check_model`` says why one is not), alternatives are of the same kind."""
    check = check_model or _in_registry(registry)
    node = Node(value, file, "fallback")
    breaker = parse_breaker_config(node.child("circuit_breaker", {}))
    chains: dict[str, tuple[str, ...]] = {}
    for model_id, chain_node in node.child("chains", {}).items():
        problem = check(model_id)
        if problem is not None:
            raise chain_node.error(problem, model_id)
        chains[model_id] = _chain(chain_node, registry, model_id, check)
    node.done()
    return FallbackSettings(breaker, chains)


def _chain(node: Node, registry: Registry, model_id: str, check: ModelCheck) -> tuple[str, ...]:
    names: list[str] = []
    kind = registry.models[model_id].kind
    for element in node.elements():
        name = element.str()
        problem = check(name)
        if problem is not None:
            raise element.error(problem, name)
        if name == model_id:
            raise element.error("a model cannot be its own fallback", name)
        if name in names:
            raise element.error("is listed twice", name)
        if registry.models[name].kind != kind:
            raise element.error(f"is a {registry.models[name].kind} model; {model_id} is a {kind} model", name)
        names.append(name)
    return tuple(names)


def _in_registry(registry: Registry) -> ModelCheck:
    def check(name: str) -> str | None:
        return None if name in registry.models else "names no model in the registry"

    return check
