"""Open the ``Accounts`` the pipeline uses, from the settings: the composition root calls this.

- ``redis://`` / ``rediss://`` store: ``RedisBudgetAccounts`` (budgets, counters, reservations and
  the ledger stream shared by every replica; ``store`` is this replica's local mirror);
- SQLite or ``memory://`` store: ``SqliteBudgetAccounts`` (counters in this process), unless the
  ``budgets:`` section says ``enabled: false`` — then ``LedgerAccounts`` (no enforcement).

Budgets may be created through the admin API at any time, so budget accounts are used even when
the configuration defines none; an empty chain costs one dictionary lookup per request.
"""

from __future__ import annotations

from costproxy.budgets.accounts import Accounts, LedgerAccounts
from costproxy.budgets.definitions import BudgetStore, SqliteDefinitions, ensure_budget_schema
from costproxy.budgets.sqlite import SqliteBudgetAccounts
from costproxy.settings import Settings
from costproxy.store.sqlite import SqliteStore


async def open_accounts(settings: Settings, store: SqliteStore) -> Accounts:
    config = settings.budgets
    await ensure_budget_schema(store)
    if settings.store_url.startswith(("redis://", "rediss://")):
        from costproxy.budgets.redis import open_redis_accounts

        return await open_redis_accounts(settings.store_url, store, config)
    if not config.settings.enabled:
        return LedgerAccounts(store)
    budgets = BudgetStore(SqliteDefinitions(store), config.static)
    await budgets.load()
    accounts = SqliteBudgetAccounts(store, budgets, reservation_ttl_s=config.settings.reservation_ttl_s,
                                    checkpoint_interval_s=config.settings.checkpoint_interval_s)
    await accounts.open()
    return accounts
