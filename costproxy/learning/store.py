"""Where feedback and the evidence it adds up to persist: the replica's SQLite file, or Redis.

Both stores keep, per request, one piece of feedback per source, and per cell (task, difficulty
bucket, model) the weighted sums ``n`` and ``successes`` that ``estimates.posterior`` reads.
``put`` writes a piece of feedback and moves the cell's sums by the difference between it and the
piece it replaces, in one transaction (SQLite) or one script (Redis, ``learning/redis.py``), so
two replicas recording at once never lose an observation.  The judge's spend per UTC day is kept
next to them (``charge``: add if it stays within the cap, atomically).
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from costproxy.learning.estimates import Cell, Evidence
from costproxy.learning.feedback import Feedback, feedback_from_stored
from costproxy.store.sqlite import SqliteStore, apply_migrations

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE feedback (
            request_id TEXT NOT NULL, source TEXT NOT NULL, body TEXT NOT NULL, updated_at_ms INTEGER NOT NULL,
            PRIMARY KEY (request_id, source)
        ) WITHOUT ROWID;
        CREATE TABLE learning_evidence (
            task TEXT NOT NULL, bucket INTEGER NOT NULL, model TEXT NOT NULL, n REAL NOT NULL,
            successes REAL NOT NULL, PRIMARY KEY (task, bucket, model)
        ) WITHOUT ROWID;
        CREATE TABLE judge_spend (day TEXT PRIMARY KEY, nanos INTEGER NOT NULL)
    """),
]


def contribution(feedback: Feedback | None) -> tuple[float, float]:
    """(observations, successes) a piece of feedback adds to its cell."""
    if feedback is None or feedback.cell is None:
        return 0.0, 0.0
    return feedback.weight, feedback.weight * feedback.score


class LearningStore(Protocol):
    label: str

    async def open(self) -> None: ...

    async def feedback_for(self, request_id: str) -> list[Feedback]: ...

    async def put(self, feedback: Feedback) -> Feedback | None:
        """Store ``feedback`` (replacing the same source's) and move its cell; the replaced one."""
        ...

    async def evidence(self) -> dict[Cell, Evidence]: ...

    async def charge(self, day: str, nanos: int, cap: int) -> bool:
        """Add ``nanos`` to ``day``'s judge spend if the total stays within ``cap``."""
        ...

    async def spent(self, day: str) -> int: ...


class SqliteLearningStore:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.label = store.path

    async def open(self) -> None:
        await self.store.run(lambda: apply_migrations(self.store.conn(), "learning_schema_version", MIGRATIONS))

    async def feedback_for(self, request_id: str) -> list[Feedback]:
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT body FROM feedback WHERE request_id = ? ORDER BY source", (request_id,)).fetchall())
        return [feedback_from_stored(row[0]) for row in rows]

    async def put(self, feedback: Feedback) -> Feedback | None:
        def write() -> Feedback | None:
            conn = self.store.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                previous = _replace(conn, feedback)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return previous

        return await self.store.run(write)

    async def evidence(self) -> dict[Cell, Evidence]:
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT task, bucket, model, n, successes FROM learning_evidence").fetchall())
        return {(r[0], int(r[1]), r[2]): Evidence(float(r[3]), float(r[4])) for r in rows}

    async def charge(self, day: str, nanos: int, cap: int) -> bool:
        def write() -> bool:
            conn = self.store.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT nanos FROM judge_spend WHERE day = ?", (day,)).fetchone()
                total = (row[0] if row else 0) + nanos
                if total > cap:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute("INSERT OR REPLACE INTO judge_spend (day, nanos) VALUES (?, ?)", (day, total))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return True

        return await self.store.run(write)

    async def spent(self, day: str) -> int:
        row = await self.store.run(lambda: self.store.conn().execute(
            "SELECT nanos FROM judge_spend WHERE day = ?", (day,)).fetchone())
        return int(row[0]) if row else 0


def _replace(conn: sqlite3.Connection, feedback: Feedback) -> Feedback | None:
    row = conn.execute("SELECT body FROM feedback WHERE request_id = ? AND source = ?",
                       (feedback.request_id, feedback.source)).fetchone()
    previous = feedback_from_stored(row[0]) if row else None
    conn.execute("INSERT OR REPLACE INTO feedback (request_id, source, body, updated_at_ms) VALUES (?, ?, ?, ?)",
                 (feedback.request_id, feedback.source, feedback.stored(), feedback.updated_at_ms))
    for item, sign in ((previous, -1.0), (feedback, 1.0)):
        n, successes = contribution(item)
        if item is not None and item.cell is not None and n:
            task, bucket, model = item.cell
            conn.execute(
                "INSERT INTO learning_evidence (task, bucket, model, n, successes) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (task, bucket, model) DO UPDATE SET n = n + excluded.n,"
                " successes = successes + excluded.successes",
                (task, bucket, model, sign * n, sign * successes))
    return previous
