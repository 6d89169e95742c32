"""Spend analytics for dashboards (the console reads these like any other client).

``GET /api/v1/analytics/overview?tz=``  spend today and this month (in ``tz``, default UTC), saving
                                        against baseline, forecast to month end, budgets at risk,
                                        recent alerts, refused requests, the share of ``auto`` traffic
``GET /api/v1/analytics/spend``         spend grouped by ``groupBy`` (team, user, project, key, model,
                                        provider, org) over time: ``range=24h|7d|30d|<n>h|<n>d`` or
                                        ``from=&to=`` (ISO 8601), ``bucket=hour|day|week`` (default by
                                        range), ``tz=``, drill-down filters ``team=``, ``user=``, … (the
                                        value ``(none)`` matches requests without one), ``top=`` series
                                        in the chart (the rest is ``(other)``), ``format=csv`` for the
                                        table as CSV

Admin and read-only tokens see everything; a scope-limited token sees the requests of its scopes
only (an entry is in scope when its org, team, user, project or key is one of the token's scopes).
Money is a decimal string in USD; requests refused before any upstream call (ledger status
``refused``) cost nothing and are not counted as requests; the overview counts those a budget, a
steering rule or the model policy refused.
"""

from __future__ import annotations

import csv
import io
import re
import time
from typing import Any

from aiohttp import web

from costproxy.budgets.codec import SCOPE_FROM_JSON, iso, percent, usd
from costproxy.budgets.model import STATUSES, BudgetInvalid, zone
from costproxy.errors import InvalidRequest
from costproxy.http.budgets_api import manager_of, status_json, viewer, visible
from costproxy.http.state import BUDGETS, LEDGER
from costproxy.ledger import analytics
from costproxy.ledger.analytics import GROUP_COLUMNS, SCOPE_COLUMNS, LedgerFilter, Series, Sums
from costproxy.wire import TimeInvalid, instant_ms, query_value

NONE_LABEL = "(none)"
OTHER_LABEL = "(other)"
MAX_RANGE_MS = 400 * 86_400_000
_RELATIVE = re.compile(r"^(\d{1,5})([hd])$")
BURN_WINDOW_MS = 7 * 86_400_000


def scope_filter(request: web.Request) -> tuple[tuple[str, str], ...] | None:
    """What a scope-limited read-only token may see, as ledger (column, value) pairs; None: all."""
    token = viewer(request)
    if token is None or not token.scopes:
        return None
    return tuple(sorted((SCOPE_COLUMNS[kind], value) for kind, value in token.scopes))


def time_zone(request: web.Request) -> str:
    name = request.query.get("tz", "UTC") or "UTC"
    try:
        zone(name, field_name="tz")
    except BudgetInvalid as exc:
        raise InvalidRequest(f"'tz' must be an IANA time zone name such as Europe/Berlin (got {exc.value!r})",
                             param="tz") from None
    return name


def now_ms() -> int:
    return int(time.time() * 1000)


def sums_json(sums: Sums) -> dict[str, Any]:
    return {"requests": sums.requests, "amount": usd(sums.cost_nanos), "baseline": usd(sums.baseline_nanos),
            "saving": usd(sums.saving_nanos), "savingPercent": percent(sums.saving_nanos, sums.baseline_nanos)}


# --- overview ----------------------------------------------------------------------------------


def forecast_nanos(spent: int, recent: int, recent_ms: int, remaining_ms: int) -> int:
    """Month-end forecast: spent so far plus the recent daily burn carried to the end of the month."""
    if recent_ms <= 0:
        return spent
    return spent + recent * remaining_ms // recent_ms


async def overview(request: web.Request) -> web.Response:
    started = time.perf_counter()
    tz, now = time_zone(request), now_ms()
    month_start, month_end, month_name = analytics.local_month(now, tz)
    today = analytics.local_midnight(now, tz)
    recent_from = max(month_start, now - BURN_WINDOW_MS)
    scopes = scope_filter(request)
    store = request.app[LEDGER]
    month = LedgerFilter(start_ms=month_start, scopes=scopes)
    sums = await analytics.overview_sums(store, month, today, recent_from)
    share = await analytics.auto_share(store, month)
    auto_total = sum(n for _, n, _ in share)
    forecast = forecast_nanos(sums.period.cost_nanos, sums.recent_cost_nanos, now - recent_from, month_end - now)
    body: dict[str, Any] = {
        "currency": "USD", "timezone": tz, "generatedAt": iso(now),
        "today": {**sums_json(sums.today), "from": iso(today), "refused": sums.refused_today},
        "period": {**sums_json(sums.period), "label": month_name, "from": iso(month_start), "to": iso(month_end),
                   "refused": sums.refused_period, "forecast": usd(forecast)},
        "autoShare": [{"model": model, "requests": n, "amount": usd(cost), "percent": percent(n, auto_total)}
                      for model, n, cost in share],
        "budgetsAtRisk": await _budgets_at_risk(request),
        "recentAlerts": await _recent_alerts(request, 8),
    }
    body["serverMs"] = round((time.perf_counter() - started) * 1000, 2)
    return web.json_response(body)


async def _budgets_at_risk(request: web.Request) -> list[dict[str, Any]]:
    """Budgets past a threshold or projected to overrun, the fullest first."""
    accounts = request.app[BUDGETS]
    if accounts is None:
        return []
    await accounts.current()  # no older than a change another replica already answered
    found = []
    for spec in accounts.budgets.all():
        if not visible(request, spec):
            continue
        status = await accounts.status(spec.id)
        projected = status.projected_nanos
        if status.status != "normal" or (projected is not None and projected > status.limit_nanos):
            found.append(await status_json(request, status))
    found.sort(key=lambda s: (-STATUSES.index(s["status"]), -s["percentUsed"]))
    return found


async def _recent_alerts(request: web.Request, limit: int) -> list[dict[str, Any]]:
    manager = manager_of(request.app)
    if manager is None:
        return []
    token = viewer(request)
    found = []
    for event in await manager.store.items("events"):
        if not str(event.get("type", "")).startswith("budget."):
            continue
        payload = event.get("payload", {})
        kind = SCOPE_FROM_JSON.get(str(payload.get("scopeType"))) or ""
        if token is not None and not token.sees(kind, str(payload.get("scopeId"))):
            continue
        found.append(event)
        if len(found) >= limit:
            break
    return found


# --- spend over time -----------------------------------------------------------------------------


def _instant(name: str, text: str) -> int:
    try:
        return instant_ms(text)
    except TimeInvalid as exc:
        raise InvalidRequest(f"'{name}' {exc} (got {text[:60]!r})", param=name) from None


def span(request: web.Request, now_ms: int, default: str = "7d") -> tuple[int, int, str]:
    """``(start, end, label)`` from ``from``/``to`` or ``range`` (``<n>h`` or ``<n>d``)."""
    query = request.query
    if "from" in query or "to" in query:
        start = _instant("from", query.get("from", ""))
        end = _instant("to", query["to"]) if query.get("to") else now_ms
        label = f"{iso(start)}/{iso(end)}"
    else:
        text = query.get("range", default)
        match = _RELATIVE.match(text)
        if match is None:
            raise InvalidRequest(f"'range' must look like 24h or 30d (got {text!r})", param="range")
        end, label = now_ms, text
        start = now_ms - int(match.group(1)) * (3_600_000 if match.group(2) == "h" else 86_400_000)
    if end <= start:
        raise InvalidRequest("the end of the range must be after its start", param="to")
    if end - start > MAX_RANGE_MS:
        raise InvalidRequest("a range may cover at most 400 days", param="range")
    return start, end, label


def bucket_of(request: web.Request, start: int, end: int) -> str:
    chosen = request.query.get("bucket")
    if chosen is None or chosen == "auto":
        days = (end - start) / 86_400_000
        return "hour" if days <= 2 else "day" if days <= 92 else "week"
    if chosen not in analytics.BUCKETS:
        raise InvalidRequest(f"'bucket' must be one of auto, {', '.join(analytics.BUCKETS)}", param="bucket")
    if chosen == "hour" and end - start > 31 * 86_400_000:
        raise InvalidRequest("hourly buckets cover at most 31 days; use bucket=day", param="bucket")
    return chosen


def drill_filters(request: web.Request) -> tuple[tuple[str, str | None], ...]:
    return tuple((GROUP_COLUMNS[name], None if value == NONE_LABEL else value)
                 for name, value in drill_values(request).items())


def drill_values(request: web.Request) -> dict[str, str]:
    """The drill-down filters given (``organization=`` is accepted for ``org=``)."""
    found = {}
    for name in GROUP_COLUMNS:
        value = request.query.get(name)
        if value is None and name == "org":
            value = request.query.get("organization")
        if value is not None:
            found[name] = value
    return found


def _top(request: web.Request) -> int:
    try:
        return min(20, max(1, int(request.query.get("top", "8"))))
    except ValueError:
        raise InvalidRequest("'top' must be an integer", param="top") from None


def label_of(key: str | None) -> str:
    return NONE_LABEL if key is None else key


def spend_body(group: str, series: list[Series], labels: list[str], top: int) -> dict[str, Any]:
    """The JSON body: the chart's series (top ``top`` and the rest together) and the table's rows."""
    shown, rest = series[:top], series[top:]
    chart: list[dict[str, Any]] = [
        {"key": s.key, "label": label_of(s.key), "amounts": [usd(s.points.get(b, 0)) for b in labels]} for s in shown]
    if rest:
        chart.append({"key": None, "label": OTHER_LABEL, "other": len(rest),
                      "amounts": [usd(sum(s.points.get(b, 0) for s in rest)) for b in labels]})
    total = Sums(*(sum(getattr(s.total, f) for s in series) for f in Sums.__dataclass_fields__))
    rows = [{"key": s.key, "label": label_of(s.key), **sums_json(s.total), "promptTokens": s.total.prompt_tokens,
             "completionTokens": s.total.completion_tokens, "percent": percent(s.total.cost_nanos, total.cost_nanos)}
            for s in series]
    return {"groupBy": group, "labels": labels, "series": chart, "rows": rows,
            "totals": {**sums_json(total), "promptTokens": total.prompt_tokens,
                       "completionTokens": total.completion_tokens}}


async def spend(request: web.Request) -> web.StreamResponse:
    raw = query_value(request.query, "groupBy") or "team"
    group = "org" if raw == "organization" else raw
    if group not in GROUP_COLUMNS:
        raise InvalidRequest(f"'groupBy' must be one of {', '.join(GROUP_COLUMNS)}", param="groupBy")
    tz, now = time_zone(request), now_ms()
    start, end, label = span(request, now)
    bucket = bucket_of(request, start, end)
    filters = drill_filters(request)
    flt = LedgerFilter(start_ms=start, end_ms=end, equals=filters, scopes=scope_filter(request))
    rows = await analytics.spend_buckets(request.app[LEDGER], GROUP_COLUMNS[group], flt,
                                         analytics.sql_bucket_ms(tz, start, end))
    body = spend_body(group, analytics.fold(rows, bucket, tz), analytics.bucket_labels(start, end, bucket, tz),
                      _top(request))
    body.update(currency="USD", timezone=tz, bucket=bucket, range=label, **{"from": iso(start), "to": iso(end)},
                filters=drill_values(request))
    if request.query.get("format", "json") == "csv":
        return csv_response(body)
    if request.query.get("format", "json") != "json":
        raise InvalidRequest("'format' must be json or csv", param="format")
    return web.json_response(body)


CSV_COLUMNS = ("requests", "amount", "baseline", "saving", "savingPercent", "percent", "promptTokens",
               "completionTokens")
CSV_HEADERS = ("requests", "cost_usd", "baseline_usd", "saving_usd", "saving_percent", "share_percent",
               "prompt_tokens", "completion_tokens")


def csv_text(body: dict[str, Any]) -> str:
    """The table of a spend body as CSV: one row per group in the order shown, then the total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow((body["groupBy"], *CSV_HEADERS))
    for row in body["rows"]:
        writer.writerow((_cell(row["label"]), *(row[c] for c in CSV_COLUMNS)))
    totals = body["totals"]
    writer.writerow(("TOTAL", *(totals.get(c, 100.0 if c == "percent" else "") for c in CSV_COLUMNS)))
    return out.getvalue()


def _cell(text: str) -> str:
    """Keep a spreadsheet from running a value as a formula (CSV injection)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_response(body: dict[str, Any]) -> web.Response:
    name = "costproxy-spend-by-{}-{}.csv".format(body["groupBy"], re.sub(r"[^0-9A-Za-z]+", "", body["from"])[:8])
    return web.Response(text=csv_text(body), content_type="text/csv", charset="utf-8",
                        headers={"content-disposition": f'attachment; filename="{name}"'})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/analytics/overview", overview)
    app.router.add_get("/api/v1/analytics/spend", spend)
