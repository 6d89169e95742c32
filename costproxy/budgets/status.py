"""How full a budget is: status, thresholds reached, actions in force, burn rate and projection.

Pure functions over ``costproxy.budgets.model`` definitions and a ``Counters`` snapshot (spent and
reserved nano-USD of one period), shared by the SQLite and the Redis accounts so both answer the
same way.  Percentages compare by cross-multiplication; burn rates are integer nano-USD per day.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field

from costproxy.budgets.model import (
    GATE_ACTIONS,
    MS_PER_DAY,
    BudgetOverride,
    BudgetSpec,
    PeriodWindow,
    Threshold,
    ThresholdAction,
    active_span,
    approved,
    effective_limit,
    elapsed_fraction,
)
from costproxy.records import frozen
from costproxy.routing.policy import EMPTY, Constraints

_MIN_ELAPSED_MS = 3_600_000  # burn rates are measured over at least an hour


def status_of(spec: BudgetSpec, spent: int, limit: int) -> str:
    return status_from(below_full(spec), spent, limit)


def below_full(spec: BudgetSpec) -> tuple[Threshold, ...]:
    """The thresholds under 100 %: the warning and critical marks ``status_from`` reads."""
    return tuple(t for t in spec.thresholds if t.percent < 100)


def status_from(marks: Sequence[Threshold], spent: int, limit: int) -> str:
    """The status for ``spent`` against ``limit``, given the budget's ``below_full`` thresholds
    (a compiled budget picks them out once)."""
    if spent >= limit:
        return "exhausted"
    if len(marks) >= 2 and marks[-1].reached(spent, limit):
        return "critical"
    if marks and marks[0].reached(spent, limit):
        return "warning"
    return "normal"


def crossed(spec: BudgetSpec, limit: int, before: int, after: int) -> tuple[Threshold, ...]:
    """Thresholds reached by going from ``before`` to ``after`` spent (each fires once)."""
    return tuple(t for t in spec.thresholds if not t.reached(before, limit) and t.reached(after, limit))


def reached(spec: BudgetSpec, spent: int, limit: int) -> tuple[Threshold, ...]:
    return tuple(t for t in spec.thresholds if t.reached(spent, limit))


def gate_amount(spec: BudgetSpec, limit: int) -> int | None:
    """Spend from which ``require-approval``/``block-all`` refuse requests (None: never)."""
    for threshold in spec.thresholds:
        if any(a.type in GATE_ACTIONS for a in threshold.actions):
            return threshold.amount(limit)
    return None


def restrictions_of(actions: Iterable[ThresholdAction], budget_id: str) -> Constraints:
    """Threshold actions of one budget as routing ``Constraints`` (the stricter demand wins).

    ``restrict-models`` limits every request to its tiers, models and output price;
    ``auto-downgrade`` widens the quality gap and lets a request that names a concrete model be
    switched, but only to the action's targets (by default: the same provider's models).
    """
    result = EMPTY
    for action in actions:
        if action.type == "auto-downgrade":
            result = result.merge(Constraints(
                downgrade=True, may_switch=True, same_provider=action.stays_with_provider,
                allowed_tiers=action.tiers or None, allowed_models=action.models or None,
                reasons=(f"budget {budget_id}: auto-downgrade",)))
        elif action.type == "restrict-models":
            result = result.merge(Constraints(
                allowed_tiers=action.tiers or None, allowed_models=action.models or None,
                max_price_per_mtok_output=action.max_price_per_mtok,
                reasons=(f"budget {budget_id}: restrict-models",)))
    return result


@frozen
class BudgetStatus:
    """A budget's state in its current period, as the status API and steering see it."""

    spec: BudgetSpec
    window: PeriodWindow
    spent_nanos: int
    reserved_nanos: int
    limit_nanos: int  # effective: the limit plus active temporary increases
    status: str
    as_of_ms: int
    burn_rate_nanos_per_day: int
    projected_nanos: int | None  # spend at the end of the period at the current pace
    ms_remaining: int | None  # until the period (or the budget) ends
    thresholds_reached: tuple[tuple[int, int | None], ...] = ()  # (percent, fired at ms)
    actions: tuple[ThresholdAction, ...] = ()  # actions of reached thresholds
    approved: bool = False  # an approval override is in force
    stale_ms: int = 0  # age of the counters when they could not be refreshed (Redis down)
    overrides: tuple[BudgetOverride, ...] = field(default=())
    # ``[from, until)`` in epoch ms when the budget applies (start/end dates, a non-recurring budget's
    # first period); outside it the proxy charges nothing to it and enforces nothing of it
    active_from_ms: int | None = None
    active_until_ms: int | None = None
    in_force: bool = True  # inside that span now

    @property
    def remaining_nanos(self) -> int:
        """What can still be reserved: limit - spent - reserved, never below zero."""
        return max(0, self.limit_nanos - self.spent_nanos - self.reserved_nanos)

    @property
    def used_fraction(self) -> float:
        if self.limit_nanos <= 0:
            return 1.0
        return self.spent_nanos / self.limit_nanos

    @property
    def blocked(self) -> bool:
        """Refusing every request: a gate action is in force and no approval lifts it."""
        return not self.approved and any(a.type in GATE_ACTIONS for a in self.actions)


def burn(spent: int, elapsed_ms: int, total_ms: int | None) -> tuple[int, int | None]:
    """(nanos per day, projected total for the period) at the pace so far; integer maths."""
    measured = max(elapsed_ms, _MIN_ELAPSED_MS)
    rate = spent * MS_PER_DAY // measured
    if total_ms is None:
        return rate, None
    if elapsed_ms >= total_ms:
        return rate, spent
    return rate, max(spent, spent * total_ms // measured)


def burn_ratio(spent: int, limit: int, elapsed_ms: int, total_ms: int | None) -> float:
    """Share of the limit used over share of the period elapsed (1.0 = on an even pace)."""
    if total_ms is None or total_ms <= 0 or limit <= 0:
        return 0.0
    elapsed = max(elapsed_ms, min(_MIN_ELAPSED_MS, total_ms))
    return (spent / limit) / (elapsed / total_ms)


@frozen
class Counters:
    spent_nanos: int = 0
    reserved_nanos: int = 0
    fired: Mapping[int, int] = field(default_factory=dict)  # threshold percent -> fired at ms
    as_of_ms: int = 0
    stale_ms: int = 0


def build_status(spec: BudgetSpec, window: PeriodWindow, counters: Counters,
                 overrides: tuple[BudgetOverride, ...], now_ms: int) -> BudgetStatus:
    limit = effective_limit(spec, overrides, now_ms)
    spent = counters.spent_nanos
    elapsed, total = elapsed_fraction(window, spec, now_ms)
    rate, projected = burn(spent, elapsed, total)
    hit = reached(spec, spent, limit)
    since, until = active_span(spec)
    ends = [x for x in (window.end_ms, until) if x is not None]
    return BudgetStatus(
        spec=spec, window=window, spent_nanos=spent, reserved_nanos=counters.reserved_nanos,
        limit_nanos=limit, status=status_of(spec, spent, limit), as_of_ms=counters.as_of_ms or now_ms,
        burn_rate_nanos_per_day=rate, projected_nanos=projected,
        ms_remaining=max(0, min(ends) - now_ms) if ends else None,
        thresholds_reached=tuple((t.percent, counters.fired.get(t.percent)) for t in hit),
        actions=tuple(a for t in hit for a in t.actions),
        approved=approved(overrides, now_ms), stale_ms=counters.stale_ms,
        overrides=tuple(o for o in overrides if o.active(now_ms)),
        active_from_ms=since, active_until_ms=until,
        in_force=(since is None or now_ms >= since) and (until is None or now_ms < until),
    )
