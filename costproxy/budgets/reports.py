"""Budget spend reports: time ranges, calendar buckets in the budget's time zone, report shape.

Pure functions: the admin API runs the SQL (sums per 15-minute bucket or per column, over the
ledger entries charged to one budget) and hands the rows here.  Bucketing by 15 minutes before
converting to local days keeps the work proportional to the range, not to the number of
requests, and is exact for every time zone offset in use (all are multiples of 15 minutes).

``timeRange`` values: ``current`` (the budget's current period, the default), ``previous``,
``<n>h`` / ``<n>d`` (the last n hours or days), ``all``, or ``<start>/<end>`` (each an ISO 8601
date or date-time, or a unix time in seconds or milliseconds: ``costproxy.wire.instant_ms``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from costproxy.budgets.codec import iso, percent, usd
from costproxy.budgets.model import BudgetSpec, PeriodWindow, window_at, zone
from costproxy.records import frozen
from costproxy.wire import TimeInvalid, instant_ms

BUCKET_MS = 900_000
GROUPS = {"day": None, "week": None, "model": "served_model", "user": "user", "team": "team",
          "project": "project", "key": "key_id", "source": "source"}
_RELATIVE = re.compile(r"^(\d{1,5})([hd])$")


class RangeInvalid(ValueError):
    pass


@frozen
class TimeRange:
    label: str
    start_ms: int | None
    end_ms: int | None
    period_key: str | None = None  # set: select by the period entries were charged to

    def to_json(self) -> dict[str, object]:
        return {"label": self.label, "from": iso(self.start_ms), "to": iso(self.end_ms), "periodKey": self.period_key}


def time_range(value: str | None, spec: BudgetSpec, window: PeriodWindow, now_ms: int) -> TimeRange:
    text = (value or "current").strip()
    if text == "current":
        return TimeRange(text, window.start_ms, window.end_ms, window.key)
    if text == "previous":
        if spec.period == "total" or window.start_ms is None:
            raise RangeInvalid("a total budget has no previous period")
        before = window_at(spec, window.start_ms - 1)
        return TimeRange(text, before.start_ms, before.end_ms, before.key)
    if text == "all":
        return TimeRange(text, None, None)
    match = _RELATIVE.match(text)
    if match:
        span = int(match.group(1)) * (3_600_000 if match.group(2) == "h" else 86_400_000)
        return TimeRange(text, now_ms - span, now_ms)
    if "/" in text:
        start, _, end = text.partition("/")
        start_ms, end_ms = _instant(start), _instant(end)
        if end_ms <= start_ms:
            raise RangeInvalid("the end of timeRange must be after its start")
        return TimeRange(text, start_ms, end_ms)
    raise RangeInvalid("timeRange must be current, previous, all, <n>h, <n>d or <ISO start>/<ISO end>")


def _instant(text: str) -> int:
    try:
        return instant_ms(text)
    except TimeInvalid as exc:
        raise RangeInvalid(f"timeRange: {text[:60]!r} {exc}") from None


@frozen
class Row:
    """Sums over one group (a column value, or a 15-minute bucket start in ms)."""

    key: str | int | None
    amount_nanos: int
    requests: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    baseline_nanos: int = 0


def calendar_key(bucket_ms: int, group: str, tz_name: str) -> str:
    local = datetime.fromtimestamp(bucket_ms / 1000, tz=UTC).astimezone(zone(tz_name)).date()
    if group == "day":
        return local.isoformat()
    iso_year, iso_week, _ = local.isocalendar()
    return f"{iso_year}-W{iso_week:02d}"


def by_calendar(rows: Iterable[Row], group: str, tz_name: str) -> list[Row]:
    """15-minute bucket rows folded into local days or ISO weeks, in time order."""
    merged: dict[str, list[int]] = {}
    for row in rows:
        key = calendar_key(int(row.key or 0), group, tz_name)
        sums = merged.setdefault(key, [0, 0, 0, 0, 0])
        for i, value in enumerate((row.amount_nanos, row.requests, row.prompt_tokens, row.completion_tokens,
                                   row.baseline_nanos)):
            sums[i] += value
    return [Row(k, *v) for k, v in sorted(merged.items())]


def totals(rows: Sequence[Row]) -> dict[str, object]:
    amount = sum(r.amount_nanos for r in rows)
    requests = sum(r.requests for r in rows)
    baseline = sum(r.baseline_nanos for r in rows)
    return {"amount": usd(amount), "requests": requests,
            "promptTokens": sum(r.prompt_tokens for r in rows),
            "completionTokens": sum(r.completion_tokens for r in rows),
            "baselineAmount": usd(baseline), "savings": usd(max(0, baseline - amount)),
            "averageCost": usd(amount // requests) if requests else usd(0)}


def row_json(row: Row, total_nanos: int, key_name: str = "key") -> dict[str, object]:
    return {key_name: row.key, "amount": usd(row.amount_nanos), "requests": row.requests,
            "percent": percent(row.amount_nanos, total_nanos), "promptTokens": row.prompt_tokens,
            "completionTokens": row.completion_tokens}


def report(spec: BudgetSpec, span: TimeRange, group: str, grouped: Sequence[Row], everything: Sequence[Row],
           spenders: Sequence[Row], models: Sequence[Row]) -> dict[str, object]:
    """The ``GET /api/v1/budgets/{id}/reports`` body.  ``everything`` is the 15-minute series."""
    total = totals(everything)
    total_nanos = sum(r.amount_nanos for r in everything)
    data = by_calendar(grouped, group, spec.timezone) if group in ("day", "week") else list(grouped)
    return {
        "budgetId": spec.id, "currency": spec.currency, "timeRange": span.to_json(), "groupBy": group,
        "totals": total, "limit": usd(spec.limit_nanos),
        "data": [row_json(r, total_nanos) for r in data],
        "topSpenders": [row_json(r, total_nanos, "userId") for r in spenders[:10]],
        "modelUsage": [row_json(r, total_nanos, "model") for r in models],
    }

