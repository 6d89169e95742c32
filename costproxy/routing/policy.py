"""Routing constraints: what rules, budgets, headers and API callers may demand of a selection.

Every source of policy (a steering rule's actions, a budget's ``restrict-models`` or
``auto-downgrade`` action, ``auto:economy`` in the model name, ``X-Costproxy-Max-Cost-Usd``, the
``constraints`` of ``POST /api/v1/models/select``) is expressed as one ``Constraints`` value.
Several are combined with ``merge``, which always keeps the stricter demand, so the order in
which sources are applied never loosens anything.
"""

from __future__ import annotations

from dataclasses import field, replace
from decimal import Decimal

from costproxy.records import frozen

QUALITY_MODES = ("economy", "balanced", "quality")


def _min_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _max_opt(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@frozen
class Constraints:
    """Demands on the model choice.  ``None`` / empty means "no demand"."""

    pinned_model: str | None = None  # route to exactly this model (steering `route`)
    pinned_tier: str | None = None  # route to the cheapest sufficient model of this tier
    allowed_models: frozenset[str] | None = None  # only these (None: any)
    excluded_models: frozenset[str] = frozenset()
    allowed_tiers: frozenset[str] | None = None  # only models of these tiers (budget restrict-models)
    max_price_per_mtok_output: str | None = None  # decimal string; models above it are excluded
    max_cost_nanos: int | None = None  # worst-case cost of this request must fit
    min_quality: float | None = None  # expected quality in [0, 1] must reach this
    quality_mode: str | None = None  # economy | balanced | quality
    max_output_tokens: int | None = None  # cap injected into the upstream request
    downgrade: bool = False  # prefer the cheapest model that still meets the floor
    required_capabilities: frozenset[str] = frozenset()
    # A concrete model the caller named is switched only when an operator policy says so (a rule
    # that routes, selects or downgrades; a budget that downgrades), never for cost alone:
    may_switch: bool = False
    same_provider: bool = False  # switching stays with the named model's provider
    reasons: tuple[str, ...] = field(default=())  # human-readable provenance, in order applied

    def merge(self, other: Constraints) -> Constraints:
        """Combine two sets of demands, keeping the stricter of each."""
        if other is EMPTY:
            return self
        if self is EMPTY:
            return other
        allowed = self.allowed_models
        if other.allowed_models is not None:
            allowed = other.allowed_models if allowed is None else allowed & other.allowed_models
        tiers = self.allowed_tiers
        if other.allowed_tiers is not None:
            tiers = other.allowed_tiers if tiers is None else tiers & other.allowed_tiers
        price_caps = [p for p in (self.max_price_per_mtok_output, other.max_price_per_mtok_output) if p]
        return replace(
            self,
            pinned_model=other.pinned_model or self.pinned_model,
            pinned_tier=other.pinned_tier or self.pinned_tier,
            allowed_models=allowed,
            excluded_models=self.excluded_models | other.excluded_models,
            allowed_tiers=tiers,
            max_price_per_mtok_output=min(price_caps, key=_decimal_key) if price_caps else None,
            max_cost_nanos=_min_opt(self.max_cost_nanos, other.max_cost_nanos),
            min_quality=_max_opt(self.min_quality, other.min_quality),
            quality_mode=other.quality_mode or self.quality_mode,
            max_output_tokens=_min_opt(self.max_output_tokens, other.max_output_tokens),
            downgrade=self.downgrade or other.downgrade,
            required_capabilities=self.required_capabilities | other.required_capabilities,
            may_switch=self.may_switch or other.may_switch,
            same_provider=self.same_provider or other.same_provider,
            reasons=self.reasons + other.reasons,
        )


def _decimal_key(value: str) -> Decimal:
    return Decimal(value)


EMPTY = Constraints()  # "no demand": merging it is free (checked by identity)
