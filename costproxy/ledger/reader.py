""""The ledger" as reports read it, whichever store holds it.

``LedgerReader`` is what every report (usage API, analytics, the console, ``costproxy usage``)
reads through: the replica's SQLite file (``store.sqlite.SqliteStore``: the ledger itself, or in
Redis mode this replica's mirror of the shared streams) or, when ``store.ledger_url`` is set, the
PostgreSQL ledger every replica writes (``ledger.postgres.PostgresLedger``).  Report SQL lives in
the ledger layer (this module, ``ledger/analytics.py``), written once with ``?`` placeholders in
the SQL both engines share; the few spots where they differ (JSON in ``metadata``) come from the
reader's ``Dialect``.  ``l`` is always the ledger's alias; columns are always qualified with it
(``user`` is a reserved word in PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from costproxy.ledger.entry import LedgerEntry, entry_from_row
from costproxy.records import frozen


@frozen
class Dialect:
    name: str  # sqlite | postgresql
    rollup: bool  # the 15-minute rollup table is kept (SQLite only)
    rules_source: str  # FROM item yielding the rule ids in metadata.rules as column ``j.value``
    no_rules: str  # true when metadata has no rules
    budget_any: str  # true when metadata.budgets names the budget ``?``
    budget_period: str  # true when metadata.budgets maps budget ``?`` to period ``?``
    table: str  # the ledger table
    cache_saved: str  # metadata.cache.saved_nanos as an integer (0 when absent): what a cache hit saved


SQLITE = Dialect(
    name="sqlite", rollup=True, rules_source="json_each(l.metadata, '$.rules') j",
    no_rules="json_extract(l.metadata, '$.rules') IS NULL",
    budget_any="EXISTS (SELECT 1 FROM json_each(l.metadata, '$.budgets') j WHERE j.key = ?)",
    budget_period="EXISTS (SELECT 1 FROM json_each(l.metadata, '$.budgets') j WHERE j.key = ? AND j.value = ?)",
    table="ledger", cache_saved="COALESCE(json_extract(l.metadata, '$.cache.saved_nanos'), 0)")
POSTGRES = Dialect(
    name="postgresql", rollup=False,
    rules_source="jsonb_array_elements_text(CASE WHEN jsonb_typeof(l.metadata->'rules') = 'array'"
                 " THEN l.metadata->'rules' ELSE '[]'::jsonb END) AS j(value)",
    no_rules="l.metadata->'rules' IS NULL",
    budget_any="(l.metadata->'budgets')->>? IS NOT NULL", budget_period="(l.metadata->'budgets')->>? = ?",
    table="costproxy_ledger", cache_saved="COALESCE((l.metadata->'cache'->>'saved_nanos')::bigint, 0)")


class LedgerReader(Protocol):
    dialect: Dialect

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows addressable by column name (``row["k"]``); integers stay integers."""
        ...

    async def recent_entries(self, limit: int = 50) -> list[LedgerEntry]: ...

    async def entries_for(self, request_id: str) -> list[LedgerEntry]: ...


async def recent(ledger: LedgerReader, limit: int) -> list[LedgerEntry]:
    rows = await ledger.query(f"SELECT * FROM {ledger.dialect.table} l ORDER BY l.seq DESC LIMIT ?", [limit])
    return [entry_from_row(r) for r in rows]


async def for_request(ledger: LedgerReader, request_id: str) -> list[LedgerEntry]:
    rows = await ledger.query(f"SELECT * FROM {ledger.dialect.table} l WHERE l.request_id = ? ORDER BY l.seq",
                              [request_id])
    return [entry_from_row(r) for r in rows]


SPEND_COLUMNS = {"model": "served_model", "team": "team", "user": "user", "key": "key_id",
                 "project": "project", "org": "org"}


async def spend_by(ledger: LedgerReader, group_by: str, since_ms: int) -> list[Any]:
    """Requests, tokens, cost, baseline, estimated entries, response-cache hits and what they saved
    per ``group_by`` value since a time (rows ``k, n, cost, base, tin, tout, est, hits, cache_saved``),
    largest cost first."""
    column = SPEND_COLUMNS[group_by]
    hit = "l.status = 'cache_hit'"
    return await ledger.query(
        f"SELECT l.{column} AS k, COUNT(*) AS n, SUM(l.cost_nanos) AS cost, SUM(l.baseline_nanos) AS base,"
        " SUM(l.prompt_tokens) AS tin, SUM(l.completion_tokens) AS tout,"
        " SUM(CASE WHEN l.usage_reported THEN 0 ELSE 1 END) AS est,"
        f" SUM(CASE WHEN {hit} THEN 1 ELSE 0 END) AS hits,"
        f" SUM(CASE WHEN {hit} THEN {ledger.dialect.cache_saved} ELSE 0 END) AS cache_saved"
        f" FROM {ledger.dialect.table} l WHERE l.ts_ms >= ? GROUP BY l.{column} ORDER BY cost DESC", [since_ms])
