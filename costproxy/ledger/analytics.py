"""Spend analytics over the ledger: the SQL behind the console's overview, reports and routing screens.

Every query reads "the ledger" through a ``LedgerReader`` (``ledger/reader.py``): the local SQLite
ledger (in Redis mode, this replica's mirror of the shared ledger) or the PostgreSQL ledger when
``store.ledger_url`` is set.  Queries aggregate in SQL and hand back small rows; time series are summed per
15-minute bucket in SQL and folded into the viewer's local hours, days or weeks in Python, which
is exact for every time zone offset in use (all are multiples of 15 minutes) and keeps the work
proportional to the range, not to the number of requests.

A ``LedgerFilter`` carries the time range, equality filters (drill-down) and, for a scope-limited
read-only token, the scopes it may see (an entry is visible when any of them matches).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from costproxy.budgets.model import zone
from costproxy.ledger.reader import LedgerReader
from costproxy.records import frozen
from costproxy.store.sqlite import SqliteStore

BUCKET_MS = 900_000
# JSON group name -> ledger column
GROUP_COLUMNS = {"team": "team", "user": "user", "project": "project", "key": "key_id", "model": "served_model",
                 "provider": "provider", "org": "org"}
SCOPE_COLUMNS = {"org": "org", "team": "team", "user": "user", "project": "project", "key": "key_id"}
# A request refused before any upstream call has status "refused" (cost 0).  Refused by policy — a
# budget, a steering rule, a model the policy does not allow — is what the overview counts; a
# malformed request refused with 400 is neither spend nor a refusal worth a figure.
POLICY_CODES = ("budget_exceeded", "rule_rejected", "model_not_allowed")
REFUSED_BY_POLICY = ("(l.status = 'refused' AND l.error_code IN ("
                     + ", ".join(f"'{code}'" for code in POLICY_CODES) + "))")
SERVED = "l.status != 'refused'"
# false, never NULL, for an entry without a requested model (a request refused before its model was
# read): the rollup's ``virtual`` column is NOT NULL, and a NULL there stopped its catch-up for good
VIRTUAL_SQL = ("(l.requested_model IS NOT NULL AND (l.requested_model = 'auto' OR l.requested_model LIKE 'auto:%' "
               "OR l.requested_model IN ('economy', 'standard', 'premium')))")


@frozen
class LedgerFilter:
    start_ms: int | None = None
    end_ms: int | None = None
    equals: tuple[tuple[str, str | None], ...] = ()  # (column, value); None matches NULL
    scopes: tuple[tuple[str, str], ...] | None = None  # (column, value) OR-ed; None: everything

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.start_ms is not None:
            clauses.append("l.ts_ms >= ?")
            params.append(self.start_ms)
        if self.end_ms is not None:
            clauses.append("l.ts_ms < ?")
            params.append(self.end_ms)
        for column, value in self.equals:
            if value is None:
                clauses.append(f"l.{column} IS NULL")
            else:
                clauses.append(f"l.{column} = ?")
                params.append(value)
        if self.scopes is not None:
            if not self.scopes:
                clauses.append("FALSE")
            else:
                clauses.append("(" + " OR ".join(f"l.{c} = ?" for c, _ in self.scopes) + ")")
                params.extend(v for _, v in self.scopes)
        return (" AND ".join(clauses) or "TRUE"), params


@frozen
class Sums:
    requests: int = 0
    cost_nanos: int = 0
    baseline_nanos: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def saving_nanos(self) -> int:
        return self.baseline_nanos - self.cost_nanos


@frozen
class OverviewSums:
    today: Sums
    period: Sums
    refused_today: int
    refused_period: int
    recent_cost_nanos: int  # spend since ``recent_from_ms`` (burn rate for the forecast)


_CATCH_UP = (
    "INSERT INTO ledger_rollup (bucket_ms, served_model, virtual, refused, requests, cost_nanos, baseline_nanos)"
    f" SELECT (l.ts_ms / {BUCKET_MS}) * {BUCKET_MS}, COALESCE(l.served_model, ''), {VIRTUAL_SQL},"
    f" CASE WHEN {SERVED} THEN 0 WHEN {REFUSED_BY_POLICY} THEN 1 ELSE 2 END,"
    " COUNT(*), SUM(l.cost_nanos), SUM(l.baseline_nanos)"
    " FROM ledger l WHERE l.seq > ? AND l.seq <= ? GROUP BY 1, 2, 3, 4"
    " ON CONFLICT (bucket_ms, served_model, virtual, refused) DO UPDATE SET requests = requests + excluded.requests,"
    " cost_nanos = cost_nanos + excluded.cost_nanos, baseline_nanos = baseline_nanos + excluded.baseline_nanos")


def _catch_up_sync(store: SqliteStore) -> int:
    """Fold the ledger entries appended since the last call into ``ledger_rollup`` (one transaction)."""
    conn = store.conn()
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = conn.execute("SELECT seq FROM ledger_rollup_mark WHERE id = 1").fetchone()[0]
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM ledger").fetchone()[0]
        if last > done:
            conn.execute(_CATCH_UP, (done, last))
            conn.execute("UPDATE ledger_rollup_mark SET seq = ? WHERE id = 1", (last,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(last - done)


async def catch_up(store: SqliteStore) -> int:
    """Bring the 15-minute rollup up to date with the ledger; returns how many entries it folded.

    The ledger is append-only and ``seq`` only grows, so each entry is folded exactly once; the
    work is proportional to what was appended since the last read, not to the ledger's size."""
    await store.flush()
    return await store.run(_catch_up_sync, store)


def _count(condition: str) -> str:
    return f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)"


def _rollup(ledger: LedgerReader, flt: LedgerFilter) -> SqliteStore | None:
    """The store whose 15-minute rollup can answer ``flt`` (unscoped, open-ended), if any."""
    if ledger.dialect.rollup and isinstance(ledger, SqliteStore) and flt.scopes is None and not flt.equals \
            and flt.end_ms is None:
        return ledger
    return None


async def overview_sums(ledger: LedgerReader, flt: LedgerFilter, today_ms: int, recent_from_ms: int) -> OverviewSums:
    """Sums of the period (``flt``'s range), of today, of the recent window, and refusals.

    Without a scope limit they come from the 15-minute rollup (``today_ms`` must be on a
    15-minute boundary, as every local midnight is); with one, from the ledger itself."""
    store = _rollup(ledger, flt)
    if store is not None:
        await catch_up(store)
        rows = await store.query(
            "SELECT SUM(CASE WHEN refused = 0 THEN requests END) AS n, SUM(cost_nanos) AS cost,"
            " SUM(baseline_nanos) AS base, SUM(CASE WHEN refused = 0 AND bucket_ms >= ? THEN requests END) AS tn,"
            " SUM(CASE WHEN bucket_ms >= ? THEN cost_nanos END) AS tcost,"
            " SUM(CASE WHEN bucket_ms >= ? THEN baseline_nanos END) AS tbase,"
            " SUM(CASE WHEN refused = 1 THEN requests END) AS refused,"
            " SUM(CASE WHEN refused = 1 AND bucket_ms >= ? THEN requests END) AS trefused,"
            " SUM(CASE WHEN bucket_ms >= ? THEN cost_nanos END) AS recent FROM ledger_rollup WHERE bucket_ms >= ?",
            [today_ms, today_ms, today_ms, today_ms, recent_from_ms - recent_from_ms % BUCKET_MS, flt.start_ms or 0])
        return _overview(rows[0])
    where, params = flt.where()
    rows = await ledger.query(
        f"SELECT {_count(SERVED)} AS n, SUM(l.cost_nanos) AS cost, SUM(l.baseline_nanos) AS base,"
        f" {_count(SERVED + ' AND l.ts_ms >= ?')} AS tn, SUM(CASE WHEN l.ts_ms >= ? THEN l.cost_nanos END) AS tcost,"
        " SUM(CASE WHEN l.ts_ms >= ? THEN l.baseline_nanos END) AS tbase,"
        f" {_count(REFUSED_BY_POLICY)} AS refused, {_count(REFUSED_BY_POLICY + ' AND l.ts_ms >= ?')} AS trefused,"
        " SUM(CASE WHEN l.ts_ms >= ? THEN l.cost_nanos END) AS recent"
        f" FROM {ledger.dialect.table} l WHERE {where}",
        [today_ms, today_ms, today_ms, today_ms, recent_from_ms, *params])
    return _overview(rows[0])


def _overview(r: Any) -> OverviewSums:
    return OverviewSums(
        today=Sums(r["tn"] or 0, r["tcost"] or 0, r["tbase"] or 0),
        period=Sums(r["n"] or 0, r["cost"] or 0, r["base"] or 0),
        refused_today=r["trefused"] or 0, refused_period=r["refused"] or 0, recent_cost_nanos=r["recent"] or 0)


async def auto_share(ledger: LedgerReader, flt: LedgerFilter) -> list[tuple[str, int, int]]:
    """``(served model, requests, cost)`` of the requests that asked for ``auto`` or a tier, answered."""
    store = _rollup(ledger, flt)
    if store is not None:  # the rollup (see overview_sums)
        await catch_up(store)
        rows = await store.query(
            "SELECT served_model AS k, SUM(requests) AS n, SUM(cost_nanos) AS cost FROM ledger_rollup"
            " WHERE bucket_ms >= ? AND virtual AND refused = 0 AND served_model != '' GROUP BY k ORDER BY n DESC, k",
            [flt.start_ms or 0])
        return [(r["k"], r["n"], r["cost"] or 0) for r in rows]
    where, params = flt.where()
    rows = await ledger.query(
        f"SELECT l.served_model AS k, COUNT(*) AS n, SUM(l.cost_nanos) AS cost FROM {ledger.dialect.table} l"
        f" WHERE {where}"
        f" AND {VIRTUAL_SQL} AND {SERVED} AND l.served_model IS NOT NULL"
        " GROUP BY l.served_model ORDER BY n DESC, k", params)
    return [(r["k"], r["n"], r["cost"] or 0) for r in rows]


@frozen
class BucketRow:
    key: str | None
    bucket_ms: int
    sums: Sums


def sql_bucket_ms(tz_name: str, start_ms: int, end_ms: int) -> int:
    """The coarsest SQL bucket that still folds exactly into local hours: an hour where the zone's
    offset is a whole number of hours at both ends of the range, else 15 minutes."""
    tz = zone(tz_name, field_name="tz")
    for at in (start_ms, end_ms):
        offset = datetime.fromtimestamp(at / 1000, tz=UTC).astimezone(tz).utcoffset()
        if offset is None or offset.total_seconds() % 3600:
            return BUCKET_MS
    return 4 * BUCKET_MS


async def spend_buckets(ledger: LedgerReader, column: str, flt: LedgerFilter, bucket_ms: int = BUCKET_MS
                        ) -> list[BucketRow]:
    """Sums per ``column`` value and bucket of ``bucket_ms`` (refused requests excluded: they cost nothing)."""
    where, params = flt.where()
    rows = await ledger.query(
        f"SELECT l.{column} AS k, (l.ts_ms / {bucket_ms}) * {bucket_ms} AS b, COUNT(*) AS n,"
        " SUM(l.cost_nanos) AS cost, SUM(l.baseline_nanos) AS base, SUM(l.prompt_tokens) AS tin,"
        f" SUM(l.completion_tokens) AS tout FROM {ledger.dialect.table} l WHERE {where}"
        f" AND {SERVED} GROUP BY l.{column}, b", params)
    return [BucketRow(r["k"], r["b"], Sums(r["n"], r["cost"] or 0, r["base"] or 0, r["tin"] or 0, r["tout"] or 0))
            for r in rows]


async def key_activity(ledger: LedgerReader) -> dict[str, tuple[int, int]]:
    """``key id -> (last use in epoch ms, requests)``, derived from the ledger (no write per request)."""
    rows = await ledger.query(
        f"SELECT l.key_id AS k, MAX(l.ts_ms) AS last, COUNT(*) AS n FROM {ledger.dialect.table} l"
        " WHERE l.key_id IS NOT NULL GROUP BY l.key_id")
    return {r["k"]: (r["last"], r["n"]) for r in rows}


async def rule_sums(ledger: LedgerReader, flt: LedgerFilter) -> tuple[dict[str, Sums], Sums]:
    """Per steering rule applied: the requests it touched with their spend and baseline; and the
    requests no rule touched (``metadata.rules`` is written by the pipeline)."""
    where, params = flt.where()
    served = f"{where} AND {SERVED}"
    dialect = ledger.dialect
    per_rule = await ledger.query(
        "SELECT j.value AS k, COUNT(*) AS n, SUM(l.cost_nanos) AS cost, SUM(l.baseline_nanos) AS base"
        f" FROM {dialect.table} l, {dialect.rules_source} WHERE {served} GROUP BY j.value", params)
    rest = await ledger.query(
        f"SELECT COUNT(*) AS n, SUM(l.cost_nanos) AS cost, SUM(l.baseline_nanos) AS base FROM {dialect.table} l"
        f" WHERE {served} AND {dialect.no_rules}", params)
    found = {r["k"]: Sums(r["n"], r["cost"] or 0, r["base"] or 0) for r in per_rule}
    none = rest[0]
    return found, Sums(none["n"] or 0, none["cost"] or 0, none["base"] or 0)


async def decision_outcomes(ledger: LedgerReader, decision_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ledger entry of each decision (served model, cost, baseline, status), by decision id."""
    if not decision_ids:
        return {}
    marks = ", ".join("?" for _ in decision_ids)
    rows = await ledger.query(
        "SELECT l.decision_id, l.served_model, l.cost_nanos, l.baseline_nanos, l.status, l.usage_reported,"
        f" l.request_id FROM {ledger.dialect.table} l WHERE l.decision_id IN ({marks}) ORDER BY l.seq",
        list(decision_ids))
    return {r["decision_id"]: dict(r) for r in rows}


# --- calendar buckets in the viewer's zone (pure) ------------------------------------------------

BUCKETS = ("hour", "day", "week")


def bucket_label(bucket_ms: int, bucket: str, tz_name: str) -> str:
    local = datetime.fromtimestamp(bucket_ms / 1000, tz=UTC).astimezone(zone(tz_name, field_name="tz"))
    if bucket == "hour":
        return local.strftime("%Y-%m-%dT%H:00")
    if bucket == "day":
        return local.date().isoformat()
    year, week, _ = local.isocalendar()
    return f"{year}-W{week:02d}"


def bucket_labels(start_ms: int, end_ms: int, bucket: str, tz_name: str) -> list[str]:
    """Every bucket label from ``start_ms`` to ``end_ms`` in order, empty ones included."""
    labels: list[str] = []
    step = BUCKET_MS if bucket == "hour" else 4 * BUCKET_MS  # local hours may start at :30 or :45 UTC
    at = start_ms - start_ms % BUCKET_MS
    while at < end_ms:
        label = bucket_label(at, bucket, tz_name)
        if not labels or labels[-1] != label:
            labels.append(label)
        at += step
    return labels


@dataclass(slots=True)
class Series:
    key: str | None
    total: Sums = field(default_factory=Sums)
    points: dict[str, int] = field(default_factory=dict)  # bucket label -> cost nanos


def fold(rows: Iterable[BucketRow], bucket: str, tz_name: str) -> list[Series]:
    """Bucket rows folded into one series per key (largest spend first), with local bucket labels."""
    points: dict[str | None, dict[str, int]] = {}
    totals: dict[str | None, list[int]] = {}
    labels: dict[int, str] = {}
    for row in rows:
        label = labels.get(row.bucket_ms)
        if label is None:
            label = labels[row.bucket_ms] = bucket_label(row.bucket_ms, bucket, tz_name)
        series = points.setdefault(row.key, {})
        s = row.sums
        series[label] = series.get(label, 0) + s.cost_nanos
        sums = totals.setdefault(row.key, [0, 0, 0, 0, 0])
        sums[0] += s.requests
        sums[1] += s.cost_nanos
        sums[2] += s.baseline_nanos
        sums[3] += s.prompt_tokens
        sums[4] += s.completion_tokens
    found = [Series(key, Sums(*totals[key]), series) for key, series in points.items()]
    return sorted(found, key=lambda s: (-s.total.cost_nanos, -s.total.requests, s.key or ""))


def local_midnight(now_ms: int, tz_name: str) -> int:
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(zone(tz_name, field_name="tz"))
    return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)


def local_month(now_ms: int, tz_name: str) -> tuple[int, int, str]:
    """Start and end (epoch ms) of the calendar month containing ``now_ms`` in ``tz_name``, and its name."""
    tz = zone(tz_name, field_name="tz")
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(tz)
    start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start + timedelta(days=32)).replace(day=1)
    end = datetime(following.year, following.month, 1, tzinfo=tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000), start.strftime("%B %Y")
