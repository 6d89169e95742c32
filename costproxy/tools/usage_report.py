"""``costproxy usage``: spend, baseline and saving by scope or model, and the latest requests.

Saving is baseline minus cost over every request served, answers from the response cache included
(cost 0, status ``cache_hit``); the cache's own share — what its hits would have cost had the
provider been called again — is summed from their ``metadata.cache.saved_nanos``.

With a PostgreSQL ledger it refuses (like the reports of ``serve``, 503 ``store_unavailable``)
rather than print figures that leave entries out: when the database cannot be written (read-only,
e.g. the URL now points at a standby), or when this replica's SQLite ledger holds entries older
than ``max(30 s, 2 × store.ledger_timeout_s)`` that PostgreSQL does not have yet, or (Redis store)
while the replica that ships says it cannot write.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from costproxy.errors import StoreUnavailable
from costproxy.ledger.reader import SPEND_COLUMNS as GROUP_COLUMNS
from costproxy.ledger.reader import LedgerReader, spend_by
from costproxy.money import format_usd
from costproxy.store.sqlite import SqliteStore

__all__ = ["GROUP_COLUMNS", "print_usage", "spend_by"]


def _saving_pct(cost: int, baseline: int) -> str:
    return f"{100 * (baseline - cost) / baseline:5.1f}%" if baseline else "    -"


async def print_usage(path: str, *, hours: float, group_by: str, limit: int, ledger_url: str | None = None,
                      ledger_timeout_s: float = 15.0, shipping_failure: Callable[[], str | None] | None = None) -> int:
    """Reads the PostgreSQL ledger when ``ledger_url`` is given, else the SQLite file at ``path``.
    ``shipping_failure`` (Redis mode): why the replica that ships cannot write, as it publishes it."""
    if ledger_url is None:
        store = SqliteStore(path)
        await store.open()
        return await _print(store, hours, group_by, limit, store.close)
    from costproxy.ledger.postgres import PostgresLedger

    postgres = PostgresLedger(ledger_url, max_connections=1, timeout_s=ledger_timeout_s)
    await postgres.pool.open(wait=False)
    try:
        await _refuse_if_stale(postgres, path, max(30.0, 2 * ledger_timeout_s))
        failure = None if shipping_failure is None else shipping_failure()
        if failure is not None:
            raise StoreUnavailable(f"PostgreSQL ledger ({postgres.label}) is behind: entries are waiting that could "
                                   f"not be written to it, so its figures would leave them out ({failure[:300]})")
    except BaseException:
        await postgres.close()
        raise
    return await _print(postgres, hours, group_by, limit, postgres.close)


async def _refuse_if_stale(postgres: Any, path: str, grace_s: float) -> None:
    """``StoreUnavailable`` when the PostgreSQL ledger's figures would leave entries out."""
    rows = await postgres.fetch("SELECT current_setting('transaction_read_only') AS ro")
    if rows and rows[0]["ro"] == "on":
        raise StoreUnavailable(f"PostgreSQL ledger ({postgres.label}) is read-only (a standby, or "
                               "default_transaction_read_only): entries cannot be written to it, so its figures "
                               "would leave them out")
    origin = _local(path, "SELECT value FROM budget_marks WHERE name = 'ledger_origin'")
    if origin is None:  # no file, or one that does not ship (Redis mode: the streams do)
        return
    held = (await postgres.positions(str(origin))).get(str(origin), (0, 0))[0]
    cutoff = int(time.time() * 1000 - grace_s * 1000)
    waiting = _local(path, "SELECT COUNT(*) FROM ledger WHERE seq > ? AND ts_ms < ?", held, cutoff)
    if waiting:
        raise StoreUnavailable(f"PostgreSQL ledger ({postgres.label}) is behind: {waiting} entries of {path} "
                               f"older than {grace_s:g} s are not in it yet (shipping fails: see /readyz), so its "
                               "figures would leave them out")


def _local(path: str, sql: str, *params: Any) -> Any:
    """The first column of the first row in this replica's SQLite file (read-only), or None."""
    import os
    import sqlite3

    if not os.path.exists(path):
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            row = conn.execute(sql, params).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else row[0]


async def _print(store: LedgerReader, hours: float, group_by: str, limit: int, close: Any) -> int:
    try:
        since = int((time.time() - hours * 3600) * 1000)
        rows = await spend_by(store, group_by, since)
        print(f"spend in the last {hours:g} h by {group_by}")
        print(f"{group_by:32} {'requests':>8} {'tokens in':>10} {'tokens out':>10} {'cost USD':>14} "
              f"{'baseline USD':>14} {'saving':>7}")
        total_cost = total_base = hits = cache_saved = 0
        for r in rows:
            cost, base = r["cost"] or 0, r["base"] or 0
            total_cost += cost
            total_base += base
            hits += r["hits"] or 0
            cache_saved += r["cache_saved"] or 0
            print(f"{r['k'] or '-':32} {r['n']:>8} {r['tin'] or 0:>10} {r['tout'] or 0:>10} "
                  f"{format_usd(cost):>14} {format_usd(base):>14} {_saving_pct(cost, base):>7}")
        print(f"{'TOTAL':32} {'':>8} {'':>10} {'':>10} {format_usd(total_cost):>14} "
              f"{format_usd(total_base):>14} {_saving_pct(total_cost, total_base):>7}")
        if hits:
            print(f"response cache: {hits} hits (cost 0), saving {format_usd(cache_saved)} USD of provider calls")
        recent = await store.recent_entries(limit)
        if recent:
            print(f"\nlatest {len(recent)} requests")
        width = max((len(e.request_id) for e in recent), default=0)
        for e in recent:  # the whole request id: it is what GET /api/v1/requests/{id} takes
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts_ms / 1000))
            usage = "reported" if e.usage_reported else "estimated"
            print(f"{stamp}Z {e.request_id:{width}} {e.status:19} {e.requested_model or '-':>18} -> "
                  f"{e.served_model or '-':24} {e.prompt_tokens:>7}+{e.completion_tokens:<6} "
                  f"{format_usd(e.cost_nanos)} ({usage})")
    finally:
        await close()
    return 0
