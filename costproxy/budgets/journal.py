"""Open budget reservations of the SQLite store, on disk, so a crash cannot make them vanish.

The SQLite store keeps its reservations in memory (``budgets/sqlite.py``); if the process dies
mid-request its calls may still have been billed by the provider, and nothing would charge them.
So each reservation is journaled in ``budget_reservations`` — not on the request path: the
journal rides in the ledger writer's batches (``SqliteStore.riders``), committed every
``flush_interval`` by the writer thread.  Settling or releasing queues the row's removal, which
is committed in the same transaction as the request's ledger entry (both are queued with no
``await`` in between), so an entry and the removal of its reservation are durable together or
not at all.  A reservation opened and closed within one batch never reaches the disk.

At the next start, before the counters are rebuilt, every row left is a reservation its process
died holding (one serving process owns the file: ``store.backend.hold_store_lock``): it is
charged its worst case as a ``lapsed`` ledger entry (usage not reported), to the budget periods
it was reserved in, and its row deleted, in one transaction — so it is charged exactly once, and
the checkpoint fold that follows counts it like any other entry.

The window: a reservation opened less than one ``flush_interval`` before a crash may not be on
disk yet, and is then lost with it — the same window as the ledger's own entries.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import orjson

from costproxy.budgets.book import BudgetReservation
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry, Status
from costproxy.store.sqlite import INSERT_LEDGER, INSERT_QUARANTINE, ROW_ERRORS, ledger_row, quarantine_row, rollback

LAPSE_REASON = ("the serving process ended (a crash, SIGKILL, a lost host) while this request held its budget "
                "reservation; the provider may have billed the call, so the reserved worst case is charged")

_INSERT = "INSERT OR REPLACE INTO budget_reservations (token, opened_ms, body) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM budget_reservations WHERE token = ?"

# (reservation, principal, opened at ms): the row is built on the writer thread, and only for a
# reservation still open when its batch is written.
_Opened = tuple[BudgetReservation, Principal, int]
_Taken = tuple[dict[str, _Opened], list[str]]


class ReservationJournal:
    """Reservations opened and closed since the last batch; a ``Rider`` of the store's writer."""

    __slots__ = ("_closed", "_opened")

    def __init__(self) -> None:
        self._opened: dict[str, _Opened] = {}
        self._closed: list[str] = []

    # --- on the event loop (the request path: a dict operation each) -------------------------
    def opened(self, reservation: BudgetReservation, principal: Principal, now_ms: int) -> None:
        self._opened[reservation.token] = (reservation, principal, now_ms)

    def closed(self, token: str) -> None:
        """Settled, released or late-settled: its row goes with the batch that carries its entry."""
        if self._opened.pop(token, None) is None:
            self._closed.append(token)

    @property
    def pending(self) -> bool:
        return bool(self._opened or self._closed)

    def take(self) -> _Taken:
        taken = (self._opened, self._closed)
        self._opened, self._closed = {}, []
        return taken

    def restore(self, taken: _Taken) -> None:
        """The batch failed: keep it ahead of what came since.  A close queued meanwhile for one of
        its reservations is written after that reservation's row (``write``), so it still cancels it."""
        opened, closed = taken
        self._opened = {**opened, **self._opened}
        self._closed[:0] = closed

    # --- on the writer thread, inside the batch's transaction -------------------------------
    @staticmethod
    def write(conn: sqlite3.Connection, taken: _Taken) -> None:
        opened, closed = taken
        if opened:
            conn.executemany(_INSERT, [(int(token), now, _body(r, p)) for token, (r, p, now) in opened.items()])
        if closed:
            conn.executemany(_DELETE, [(int(token),) for token in closed])


def _body(reservation: BudgetReservation, principal: Principal) -> str:
    """What the lapsed entry needs, as JSON that is always storable: orjson's UTF-8, or for text it
    refuses (a lone surrogate) the standard library's ASCII; amounts beyond 64 bits as text."""
    body = {"request_id": reservation.request_id, "amount_nanos": reservation.amount_nanos,
            "key_id": principal.key_id, "user": principal.user, "team": principal.team, "org": principal.org,
            "project": principal.project,
            "budgets": dict(zip(reservation.budget_ids, reservation.period_keys, strict=True))}
    try:
        return orjson.dumps(body).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


def lapsed_entry(body: dict[str, Any], opened_ms: int, now_ms: int) -> LedgerEntry:
    """The ledger entry of a reservation whose process died holding it: its worst case, charged to
    the periods it was reserved in, dated when it was reserved (the call ran then)."""
    return LedgerEntry(
        request_id=body["request_id"], ts_ms=opened_ms, endpoint="", status=Status.LAPSED.value, http_status=0,
        key_id=body.get("key_id"), user=body.get("user"), team=body.get("team"), org=body.get("org"),
        project=body.get("project"), cost_nanos=int(body["amount_nanos"]),
        baseline_nanos=int(body["amount_nanos"]), usage_reported=False,  # no saving claimed for it
        error_code="replica_lost",
        metadata={"budgets": dict(body["budgets"]), "lapsed": {
            "reason": LAPSE_REASON, "store": "sqlite", "reserved_ms": opened_ms, "charged_ms": now_ms}})


def lapse_sync(conn: sqlite3.Connection, now_ms: int) -> list[LedgerEntry]:
    """At start-up, on the writer thread: charge every journaled reservation as a ``lapsed`` entry
    and delete its row, in one transaction.  Returns the entries written (a row that cannot become
    a ledger row goes to ``ledger_quarantine``, whole, and is deleted too)."""
    charged: list[LedgerEntry] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute("SELECT token, opened_ms, body FROM budget_reservations ORDER BY opened_ms, token")
        for token, opened_ms, body in rows.fetchall():
            try:
                entry = lapsed_entry(json.loads(body), int(opened_ms), now_ms)
                conn.execute(INSERT_LEDGER, ledger_row(entry))
            except (*ROW_ERRORS, KeyError) as exc:
                conn.execute(INSERT_QUARANTINE, quarantine_row({"request_id": None, "token": token, "body": body},
                                                               exc))
                continue
            charged.append(entry)
        conn.execute("DELETE FROM budget_reservations")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return charged
