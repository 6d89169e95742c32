"""``costproxy usage``: spend, baseline and saving by scope or model, and the latest requests."""

from __future__ import annotations

import time
from typing import Any

from costproxy.money import format_usd
from costproxy.store.sqlite import SqliteStore

GROUP_COLUMNS = {"model": "served_model", "team": "team", "user": "user", "key": "key_id",
                 "project": "project", "org": "org"}


async def spend_by(store: SqliteStore, group_by: str, since_ms: int) -> list[Any]:
    """Requests, tokens, cost, baseline and estimated entries per ``group_by`` value since a time."""
    column = GROUP_COLUMNS[group_by]
    return await store.query(
        f"SELECT {column} AS k, COUNT(*) AS n, SUM(cost_nanos) AS cost, SUM(baseline_nanos) AS base,"
        " SUM(prompt_tokens) AS tin, SUM(completion_tokens) AS tout,"
        " SUM(CASE WHEN usage_reported = 0 THEN 1 ELSE 0 END) AS est"
        " FROM ledger WHERE ts_ms >= ? GROUP BY k ORDER BY cost DESC", (since_ms,))


def _saving_pct(cost: int, baseline: int) -> str:
    return f"{100 * (baseline - cost) / baseline:5.1f}%" if baseline else "    -"


async def print_usage(path: str, *, hours: float, group_by: str, limit: int) -> int:
    store = SqliteStore(path)
    await store.open()
    try:
        since = int((time.time() - hours * 3600) * 1000)
        rows = await spend_by(store, group_by, since)
        print(f"spend in the last {hours:g} h by {group_by}")
        print(f"{group_by:32} {'requests':>8} {'tokens in':>10} {'tokens out':>10} {'cost USD':>14} "
              f"{'baseline USD':>14} {'saving':>7}")
        total_cost = total_base = 0
        for r in rows:
            cost, base = r["cost"] or 0, r["base"] or 0
            total_cost += cost
            total_base += base
            print(f"{r['k'] or '-':32} {r['n']:>8} {r['tin'] or 0:>10} {r['tout'] or 0:>10} "
                  f"{format_usd(cost):>14} {format_usd(base):>14} {_saving_pct(cost, base):>7}")
        print(f"{'TOTAL':32} {'':>8} {'':>10} {'':>10} {format_usd(total_cost):>14} "
              f"{format_usd(total_base):>14} {_saving_pct(total_cost, total_base):>7}")
        recent = await store.recent_entries(limit)
        if recent:
            print(f"\nlatest {len(recent)} requests")
        for e in recent:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts_ms / 1000))
            usage = "reported" if e.usage_reported else "estimated"
            print(f"{stamp}Z {e.request_id[:20]:20} {e.status:19} {e.requested_model or '-':>18} -> "
                  f"{e.served_model or '-':24} {e.prompt_tokens:>7}+{e.completion_tokens:<6} "
                  f"{format_usd(e.cost_nanos)} ({usage})")
    finally:
        await store.close()
    return 0
