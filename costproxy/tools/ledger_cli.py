"""``costproxy ledger status | migrate [--to N] | rollback [--to N] [--yes]``: the PostgreSQL ledger's schema.

Works on ``store.ledger_url`` (or ``$COSTPROXY_LEDGER_URL``).  ``migrate`` applies the pending
migrations (what ``serve`` also does on start), ``rollback`` runs the ``down`` scripts of the
newest migrations — one by default, down to ``--to N`` if given; a step that drops ledger data
needs ``--yes``.  Exit status 1 with a message when the server cannot be reached or refuses.
While another session holds the migration lock, it says who and waits for it.

Roll back only with every replica stopped: a running replica keeps the schema it started with
(it migrated on start) and its shipping fails on the tables the rollback dropped until restarted
by a costproxy that knows only the older version.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from costproxy.ledger.pg_schema import LATEST, MIGRATIONS, SchemaTooNew, current_version, migrate, rollback
from costproxy.settings import Settings
from costproxy.store.config import redacted_url


def add_parser(command: argparse.ArgumentParser) -> None:
    sub = command.add_subparsers(dest="ledger_command", required=True)
    sub.add_parser("status", help="the schema version of the PostgreSQL ledger and its migrations")
    up = sub.add_parser("migrate", help="apply pending migrations (up to --to N)")
    up.add_argument("--to", type=int, default=None, metavar="N", help=f"target version (default: {LATEST})")
    down = sub.add_parser("rollback", help="run the rollback (down) scripts of the newest migrations")
    down.add_argument("--to", type=int, default=None, metavar="N", help="target version (default: one step back)")
    down.add_argument("--yes", action="store_true", help="allow steps that drop ledger data")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    url = settings.store.ledger_url
    if url is None:
        print("error: no PostgreSQL ledger is configured: set store.ledger_url (or $COSTPROXY_LEDGER_URL)",
              file=sys.stderr)
        return 1
    import psycopg  # the [postgres] extra: check-config says when it is missing

    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=10) as conn:
            return await _command(conn, args, redacted_url(url))
    except psycopg.OperationalError as exc:
        print(f"error: cannot reach the PostgreSQL ledger at {redacted_url(url)}: {str(exc).strip()}",
              file=sys.stderr)
        return 1
    except (SchemaTooNew, PermissionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


async def _command(conn: Any, args: argparse.Namespace, where: str) -> int:
    before = await current_version(conn)
    if args.ledger_command == "status":
        print(f"ledger database {where}: schema version {before} (this costproxy knows up to {LATEST})")
        for migration in MIGRATIONS:
            state = "applied" if migration.version <= before else "pending"
            print(f"  {migration.version}  {state:8} {migration.name}")
        return 0
    if args.ledger_command == "migrate":
        steps = await migrate(conn, args.to, on_wait=_waiting)
        verb = "applied"
    else:
        steps = await rollback(conn, max(0, before - 1) if args.to is None else args.to, allow_data_loss=args.yes,
                               on_wait=_waiting)
        verb = "rolled back"
    for migration in steps:
        print(f"{verb} {migration.version}: {migration.name}")
    print(f"ledger database {where}: schema version {await current_version(conn)} (was {before})")
    if verb == "rolled back" and steps:
        print("every replica must be stopped before a rollback and started again with the costproxy version that "
              "matches this schema: a replica still running keeps the newer schema in mind and its shipping fails "
              "(entries wait, unshipped) until it is restarted — and a newer costproxy migrates up again on start")
    return 0


def _waiting(holder: str) -> None:
    print(f"waiting for the ledger migration lock, held by {holder}", file=sys.stderr, flush=True)
