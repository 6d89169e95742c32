"""Budgets as data: what a budget is, when its period runs, how full it is, whom it applies to.

Pure functions over frozen dataclasses (no I/O).  The stores (``costproxy/ledger/budget_*.py``)
keep the counters; this module decides everything that can be decided from a definition, a
clock and a pair of integers (spent, reserved), so it is the same on SQLite and on Redis.

Vocabulary (DESIGN §3.4, §3.6):

- a ``BudgetSpec`` limits the spend of one scope (``org | team | project | user | key`` and an
  id) to ``limit_nanos`` per ``period`` (``daily | weekly | monthly | quarterly | annual`` —
  calendar-aligned in the budget's ``timezone`` — or ``total``), optionally only between
  ``start_date`` and ``end_date`` (inclusive, in the budget's time zone);
- ``thresholds`` (percent of the limit, default 50/80/100) each fire once per period and carry
  actions: ``notify``, ``restrict-models`` (tiers, models or a max output price),
  ``auto-downgrade``, ``require-approval``, ``block-all``;
- ``on_exhausted`` is ``block`` or ``downgrade`` (both *hard*: settled spend never exceeds the
  limit) or ``notify`` (*soft*: only alerts); ``block`` refuses what does not fit, ``downgrade``
  switches to the cheaper models of ``downgrade_to`` (tiers, models, same provider) first;
- a ``BudgetOverride`` is an explicit, time-limited, audited exception: an ``increase`` of the
  limit or an ``approval`` that lifts ``require-approval`` / ``block-all``;
- status is ``normal | warning | critical | exhausted``: exhausted at 100 %, critical from the
  highest threshold below 100, warning from the lowest (so 50/80/100 gives 50 → warning,
  80 → critical).

Money is integer nano-USD; percentages compare by cross-multiplication, never by division.
``costproxy.budgets.status`` turns a definition and its counters into a status; ``costproxy.
budget_codec`` reads definitions from YAML and converts them to and from the camelCase JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from costproxy.identity.principal import Principal
from costproxy.records import frozen

SCOPE_TYPES = ("org", "team", "project", "user", "key")  # widest first, as Principal.scopes()
PERIODS = ("daily", "weekly", "monthly", "quarterly", "annual", "total")
STATUSES = ("normal", "warning", "critical", "exhausted")  # in order of severity
ACTION_TYPES = ("notify", "restrict-models", "auto-downgrade", "require-approval", "block-all")
GATE_ACTIONS = ("require-approval", "block-all")  # refuse requests once crossed (unless approved)
EXHAUSTION_ACTIONS = ("block", "downgrade", "notify")
OVERRIDE_KINDS = ("increase", "approval")
CURRENCIES = ("USD",)
SOURCES = ("config", "api")  # config: static, from YAML, read-only

MS_PER_DAY = 86_400_000
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


class BudgetInvalid(ValueError):
    """A budget (or override) field has a bad value; ``field`` is the dataclass field name."""

    def __init__(self, field_name: str, message: str, value: object = None) -> None:
        self.field = field_name
        self.message = message
        self.value = value
        super().__init__(f"{field_name}: {message}" + ("" if value is None else f" (got {value!r})"))


@frozen
class ThresholdAction:
    """One action of a threshold.

    ``restrict-models`` limits the models to ``tiers``/``models``/``max_price_per_mtok``.
    ``auto-downgrade`` switches requests to cheaper models; its targets are ``tiers``, ``models``
    and ``same_provider`` (a request that names a concrete model is switched only within them);
    with no target given it stays with the named model's provider.
    """

    type: str
    tiers: frozenset[str] = frozenset()
    models: frozenset[str] = frozenset()
    max_price_per_mtok: str | None = None  # decimal USD per 1M output tokens
    same_provider: bool = False

    def __post_init__(self) -> None:
        if self.type not in ACTION_TYPES:
            raise BudgetInvalid("type", f"must be one of {', '.join(ACTION_TYPES)}", self.type)
        restricts = bool(self.tiers or self.models or self.max_price_per_mtok)
        if self.type == "restrict-models" and not restricts:
            raise BudgetInvalid("type", "restrict-models needs tiers, models or max_price_per_mtok")
        if self.type == "auto-downgrade":
            if self.max_price_per_mtok:
                raise BudgetInvalid("type", "auto-downgrade takes tiers, models or same_provider as its targets")
        elif self.same_provider or (self.type != "restrict-models" and restricts):
            raise BudgetInvalid("type", "only restrict-models and auto-downgrade take model targets", self.type)

    @property
    def stays_with_provider(self) -> bool:
        """An auto-downgrade without explicit targets stays with the named model's provider."""
        return self.same_provider or not (self.tiers or self.models)


NOTIFY = ThresholdAction("notify")


@frozen
class Threshold:
    percent: int  # of the limit, 1..1000
    actions: tuple[ThresholdAction, ...] = (NOTIFY,)
    channels: tuple[str, ...] = ()
    message: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.percent, bool) or not 1 <= self.percent <= 1000:
            raise BudgetInvalid("percent", "must be an integer from 1 to 1000", self.percent)

    def reached(self, spent: int, limit: int) -> bool:
        return spent * 100 >= limit * self.percent

    def amount(self, limit: int) -> int:
        """Smallest spend that reaches this threshold (``reached`` <=> ``spent >= amount``)."""
        return -(-limit * self.percent // 100)


DEFAULT_THRESHOLDS = (Threshold(50), Threshold(80), Threshold(100))


@frozen
class BudgetSpec:
    id: str
    scope_type: str
    scope_id: str
    limit_nanos: int
    period: str = "monthly"
    name: str = ""
    description: str = ""
    currency: str = "USD"
    timezone: str = "UTC"
    start_date: date | None = None
    end_date: date | None = None  # inclusive
    recurring: bool = True  # False: only the period that contains start_date
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS
    on_exhausted: str = "block"
    downgrade_to: ThresholdAction = ThresholdAction("auto-downgrade")  # targets of on_exhausted: downgrade
    org: str | None = None  # owning organisation of a non-org budget: matching and Redis partition
    tags: tuple[str, ...] = ()
    parent_id: str | None = None
    created_at_ms: int | None = None
    updated_at_ms: int | None = None
    created_by: str | None = None
    source: str = "api"

    def __post_init__(self) -> None:
        _check_spec(self)

    @property
    def hard(self) -> bool:
        """Hard budgets refuse what does not fit; soft ones (``on_exhausted: notify``) only alert."""
        return self.on_exhausted != "notify"

    @property
    def partition(self) -> str:
        """The organisation whose Redis hash tag holds this budget's counters ('' = shared)."""
        return self.scope_id if self.scope_type == "org" else (self.org or "")

    @property
    def read_only(self) -> bool:
        return self.source == "config"


def _check_spec(spec: BudgetSpec) -> None:
    if not isinstance(spec.id, str) or not _ID.match(spec.id):
        raise BudgetInvalid("id", "must be 1-128 characters of letters, digits, _ . : @ -", spec.id)
    _choice("scope_type", spec.scope_type, SCOPE_TYPES)
    if not isinstance(spec.scope_id, str) or not spec.scope_id.strip():
        raise BudgetInvalid("scope_id", "must be a non-empty string", spec.scope_id)
    if isinstance(spec.limit_nanos, bool) or not isinstance(spec.limit_nanos, int) or spec.limit_nanos < 0:
        raise BudgetInvalid("limit_nanos", "must be a non-negative integer", spec.limit_nanos)
    _choice("period", spec.period, PERIODS)
    _choice("currency", spec.currency, CURRENCIES)
    _choice("on_exhausted", spec.on_exhausted, EXHAUSTION_ACTIONS)
    if spec.downgrade_to.type != "auto-downgrade":
        raise BudgetInvalid("downgrade_to", "must name downgrade targets (tiers, models, same_provider)")
    _choice("source", spec.source, SOURCES)
    zone(spec.timezone, field_name="timezone")
    if spec.start_date and spec.end_date and spec.end_date < spec.start_date:
        raise BudgetInvalid("end_date", "must not be before start_date", spec.end_date.isoformat())
    if not spec.recurring and spec.period != "total" and spec.start_date is None:
        raise BudgetInvalid("recurring", "a non-recurring budget needs a start_date")
    percents = [t.percent for t in spec.thresholds]
    if len(set(percents)) != len(percents):
        raise BudgetInvalid("thresholds", "two thresholds with the same percent", percents)
    if list(spec.thresholds) != sorted(spec.thresholds, key=lambda t: t.percent):
        raise BudgetInvalid("thresholds", "must be in increasing order of percent", percents)
    if spec.scope_type == "org" and spec.org not in (None, spec.scope_id):
        raise BudgetInvalid("org", "an org budget belongs to its own org", spec.org)
    if spec.parent_id == spec.id:
        raise BudgetInvalid("parent_id", "a budget cannot be its own parent", spec.parent_id)


def _choice(field_name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise BudgetInvalid(field_name, f"must be one of {', '.join(choices)}", value)


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


MAX_ZONE_CHARS = 64  # the longest IANA name is 32 characters (America/Argentina/ComodRivadavia)


def zone(name: str, *, field_name: str = "timezone") -> ZoneInfo:
    """The time zone ``name`` names: the one check of every time zone a budget, a YAML definition or
    an analytics query gives.  A name that is not an IANA zone (also one too long for a file name,
    which ``ZoneInfo`` looks up as a path and fails with ``OSError``) is ``BudgetInvalid``."""
    try:
        if not isinstance(name, str) or len(name) > MAX_ZONE_CHARS:
            raise ValueError(name)
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        shown = name[:MAX_ZONE_CHARS] + "…" if isinstance(name, str) and len(name) > MAX_ZONE_CHARS else name
        raise BudgetInvalid(field_name, "is not an IANA time zone name (e.g. Europe/Berlin)", shown) from None


@frozen
class BudgetOverride:
    """An explicit, time-limited exception to a budget: a temporary increase or an approval."""

    id: str
    budget_id: str
    kind: str  # increase | approval
    starts_at_ms: int
    expires_at_ms: int
    amount_nanos: int = 0  # increase only
    reason: str = ""
    created_by: str | None = None
    created_at_ms: int = 0
    revoked_at_ms: int | None = None
    revoked_by: str | None = None

    def __post_init__(self) -> None:
        _choice("kind", self.kind, OVERRIDE_KINDS)
        if self.expires_at_ms <= self.starts_at_ms:
            raise BudgetInvalid("expires_at_ms", "must be after starts_at_ms", self.expires_at_ms)
        if self.kind == "increase" and self.amount_nanos <= 0:
            raise BudgetInvalid("amount_nanos", "an increase needs a positive amount", self.amount_nanos)
        if self.kind == "approval" and self.amount_nanos:
            raise BudgetInvalid("amount_nanos", "an approval carries no amount", self.amount_nanos)
        if not self.reason.strip():
            raise BudgetInvalid("reason", "an override must say why (it is audited)")

    def active(self, now_ms: int) -> bool:
        return self.revoked_at_ms is None and self.starts_at_ms <= now_ms < self.expires_at_ms


def effective_limit(spec: BudgetSpec, overrides: Iterable[BudgetOverride], now_ms: int) -> int:
    """The limit plus every temporary increase in force at ``now_ms``."""
    extra = sum(o.amount_nanos for o in overrides if o.kind == "increase" and o.active(now_ms))
    return spec.limit_nanos + extra


def approved(overrides: Iterable[BudgetOverride], now_ms: int) -> bool:
    return any(o.kind == "approval" and o.active(now_ms) for o in overrides)


# --- periods ---------------------------------------------------------------------------------


@frozen
class PeriodWindow:
    """One period of a budget: ``key`` names it in counters; ``[start, end)`` in the budget's zone."""

    key: str
    start: datetime | None  # None: a total budget with no start date
    end: datetime | None  # None: open-ended
    start_ms: int | None
    end_ms: int | None

    def contains(self, now_ms: int) -> bool:
        return (self.start_ms is None or self.start_ms <= now_ms) and (self.end_ms is None or now_ms < self.end_ms)


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # A midnight skipped by a DST jump resolves (fold=0) to the first instant of that day.
    return datetime.combine(day, time(0), tzinfo=tz)


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp()) * 1000


def _bounds(period: str, day: date) -> tuple[str, date, date]:
    """Key, first day and first day after, of the calendar period that contains ``day``."""
    if period == "daily":
        return day.isoformat(), day, day + timedelta(days=1)
    if period == "weekly":
        monday = day - timedelta(days=day.weekday())
        iso = monday.isocalendar()
        return f"{iso.year}-W{iso.week:02d}", monday, monday + timedelta(days=7)
    if period == "monthly":
        first = day.replace(day=1)
        return f"{day.year:04d}-{day.month:02d}", first, _add_months(first, 1)
    if period == "quarterly":
        first = date(day.year, 3 * ((day.month - 1) // 3) + 1, 1)
        return f"{day.year:04d}-Q{(day.month - 1) // 3 + 1}", first, _add_months(first, 3)
    if period == "annual":
        return f"{day.year:04d}", date(day.year, 1, 1), date(day.year + 1, 1, 1)
    raise ValueError(f"not a calendar period: {period}")


def _add_months(first: date, months: int) -> date:
    index = first.year * 12 + first.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def period_window(spec: BudgetSpec, now: datetime) -> PeriodWindow:
    """The period of ``spec`` that contains ``now`` (an aware datetime), in the budget's zone."""
    tz = zone(spec.timezone)
    if spec.period == "total":
        start = _midnight(spec.start_date, tz) if spec.start_date else None
        end = _midnight(spec.end_date + timedelta(days=1), tz) if spec.end_date else None
        return PeriodWindow("total", start, end, _ms(start), _ms(end))
    key, first, after = _bounds(spec.period, now.astimezone(tz).date())
    start, end = _midnight(first, tz), _midnight(after, tz)
    return PeriodWindow(key, start, end, _ms(start), _ms(end))


def window_at(spec: BudgetSpec, now_ms: int) -> PeriodWindow:
    return period_window(spec, datetime.fromtimestamp(now_ms / 1000, tz=UTC))


def active_span(spec: BudgetSpec) -> tuple[int | None, int | None]:
    """``[from, until)`` in epoch ms during which the budget applies (``None``: unbounded)."""
    tz = zone(spec.timezone)
    since = _ms(_midnight(spec.start_date, tz)) if spec.start_date else None
    until = _ms(_midnight(spec.end_date + timedelta(days=1), tz)) if spec.end_date else None
    if not spec.recurring and spec.period != "total" and spec.start_date is not None:
        first_end = _ms(_midnight(_bounds(spec.period, spec.start_date)[2], tz))
        assert first_end is not None
        until = first_end if until is None else min(until, first_end)
    return since, until


def elapsed_fraction(window: PeriodWindow, spec: BudgetSpec, now_ms: int) -> tuple[int, int | None]:
    """(elapsed ms, total ms) of the part of the window where the budget applies.

    ``total`` is None when open-ended (a total budget with no end date); a total budget with no
    start date counts from its creation.
    """
    since, until = active_span(spec)
    starts = [x for x in (window.start_ms, since) if x is not None]
    start = max(starts) if starts else (spec.created_at_ms if spec.created_at_ms is not None else now_ms)
    ends = [x for x in (window.end_ms, until) if x is not None]
    end = min(ends) if ends else None
    elapsed = max(0, (now_ms if end is None else min(now_ms, end)) - start)
    return elapsed, (None if end is None else max(0, end - start))


# --- which budgets apply ---------------------------------------------------------------------


def applies_to(spec: BudgetSpec, principal: Principal) -> bool:
    if (spec.scope_type, spec.scope_id) not in principal.scopes():
        return False
    return spec.scope_type == "org" or spec.org is None or spec.org == principal.org


class BudgetIndex:
    """Budgets by scope, for O(scopes) chain lookups on the request path (immutable once built)."""

    def __init__(self, specs: Iterable[BudgetSpec]) -> None:
        self.specs: Mapping[str, BudgetSpec] = {s.id: s for s in specs}
        by_scope: dict[tuple[str, str], list[tuple[BudgetSpec, int | None, int | None]]] = {}
        for spec in sorted(self.specs.values(), key=lambda s: s.id):
            by_scope.setdefault((spec.scope_type, spec.scope_id), []).append((spec, *active_span(spec)))
        self._by_scope = by_scope

    def chain(self, principal: Principal, now_ms: int) -> tuple[BudgetSpec, ...]:
        """Every budget that applies to ``principal`` now, widest scope first."""
        found: list[BudgetSpec] = []
        for scope in principal.scopes():
            for spec, since, until in self._by_scope.get(scope, ()):
                if (since is not None and now_ms < since) or (until is not None and now_ms >= until):
                    continue
                if spec.scope_type == "org" or spec.org is None or spec.org == principal.org:
                    found.append(spec)
        return tuple(found)

    def for_scope(self, scope_type: str, scope_id: str) -> tuple[BudgetSpec, ...]:
        return tuple(s for s, _, _ in self._by_scope.get((scope_type, scope_id), ()))
