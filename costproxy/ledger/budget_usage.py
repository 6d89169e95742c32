"""The ledger entries charged to one budget, and their sums: the SQL behind the budget usage API.

An entry belongs to a budget when its ``metadata.budgets`` names it; a ``TimeRange`` with a
``period_key`` (``current`` / ``previous``) selects by the period the entry was charged to, any
other range by the entry's timestamp.  Works on every ``LedgerReader`` (``ledger/reader.py``).
"""

from __future__ import annotations

from typing import Any

from costproxy.budgets.reports import BUCKET_MS, Row, TimeRange
from costproxy.ledger.entry import LedgerEntry, entry_from_row
from costproxy.ledger.reader import LedgerReader

GROUPABLE = ("source", "served_model", "user", "team", "project", "key_id")
BUCKET = "bucket"  # group by 15-minute bucket start (ms)


def budget_where(ledger: LedgerReader, budget_id: str, span: TimeRange) -> tuple[str, list[Any]]:
    """Ledger rows charged to ``budget_id`` within ``span`` (``l`` is the ledger alias)."""
    dialect = ledger.dialect
    if span.period_key is not None:
        return dialect.budget_period, [budget_id, span.period_key]
    clauses = [dialect.budget_any]
    params: list[Any] = [budget_id]
    if span.start_ms is not None:
        clauses.append("l.ts_ms >= ?")
        params.append(span.start_ms)
    if span.end_ms is not None:
        clauses.append("l.ts_ms < ?")
        params.append(span.end_ms)
    return " AND ".join(clauses), params


async def budget_entries(ledger: LedgerReader, budget_id: str, span: TimeRange, *, source: str | None = None,
                         limit: int = 100, offset: int = 0) -> list[tuple[int, LedgerEntry]]:
    """``(seq, entry)`` of the entries charged to the budget, newest first."""
    where, params = budget_where(ledger, budget_id, span)
    if source:
        where += " AND l.source = ?"
        params.append(source)
    rows = await ledger.query(
        f"SELECT * FROM {ledger.dialect.table} l WHERE {where} ORDER BY l.seq DESC LIMIT ? OFFSET ?",
        [*params, limit, offset])
    return [(int(r["seq"]), entry_from_row(r)) for r in rows]


async def budget_sums(ledger: LedgerReader, budget_id: str, span: TimeRange, group: str, *,
                      known_only: bool = False) -> list[Row]:
    """Sums per ``group`` (a column of ``GROUPABLE``, or ``BUCKET``), largest amount first;
    ``known_only`` leaves out entries whose group value is NULL."""
    if group == BUCKET:
        key = f"(l.ts_ms / {BUCKET_MS}) * {BUCKET_MS}"
    elif group in GROUPABLE:
        key = f"l.{group}"
    else:
        raise ValueError(f"cannot group budget usage by {group!r}")
    where, params = budget_where(ledger, budget_id, span)
    if known_only:
        where += f" AND {key} IS NOT NULL"
    rows = await ledger.query(
        f"SELECT {key} AS k, SUM(l.cost_nanos) AS amount, COUNT(*) AS n, SUM(l.prompt_tokens) AS tin,"
        " SUM(l.completion_tokens) AS tout, SUM(l.baseline_nanos) AS base"
        f" FROM {ledger.dialect.table} l WHERE {where} GROUP BY {key} ORDER BY amount DESC", params)
    return [Row(r["k"], r["amount"] or 0, r["n"], r["tin"] or 0, r["tout"] or 0, r["base"] or 0) for r in rows]
