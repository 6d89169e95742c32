"""Stored Responses (``POST /v1/responses`` with ``store`` true, the default), for
``GET``/``DELETE /v1/responses/{id}``, ``/input_items`` and ``previous_response_id``.

Kept in the proxy's local SQLite file (table ``responses``, its own versioned migrations), for
``responses.retention_days`` (30 by default; expired rows are invisible at once and deleted at
most once an hour while responses are being written).  Each row records the conversation's input
items (history included) and the Response, and belongs to the caller who created it: the same
tenant, organisation and user (or, for a key without a user, the same key) may read or delete it;
to anyone else it does not exist.  With a Redis store every replica keeps its own file, so a
follow-up must reach the replica that answered (sticky sessions) or it gets a 404.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from costproxy.config_schema import Node
from costproxy.identity.principal import Principal
from costproxy.records import frozen
from costproxy.store.sqlite import SqliteStore, apply_migrations

MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE responses (
            id TEXT PRIMARY KEY, owner TEXT NOT NULL, request_id TEXT NOT NULL,
            created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, model TEXT,
            input TEXT NOT NULL, response TEXT NOT NULL
        );
        CREATE INDEX responses_expiry ON responses (expires_ms)
    """),
]
PURGE_EVERY_MS = 3_600_000


@frozen
class ResponsesSettings:
    enabled: bool = True  # false: nothing is stored, previous_response_id always 404s
    retention_days: float = 30.0


def parse_responses_settings(value: Any, file: str) -> ResponsesSettings:
    """``responses: {enabled, retention_days}`` of costproxy.yaml."""
    node = Node(value if value is not None else {}, file, "responses")
    settings = ResponsesSettings(enabled=node.child("enabled", True).bool(),
                                 retention_days=node.child("retention_days", 30).number(minimum=0.001))
    node.done()
    return settings


def owner_of(principal: Principal, tenant: str | None) -> str:
    """Who a stored response belongs to (see the module docstring)."""
    who = f"user:{principal.user}" if principal.user else f"key:{principal.key_id or ''}"
    return "\x1f".join((tenant or "", principal.org or "", who))


@frozen
class StoredResponse:
    id: str
    input: list[Any]
    response: dict[str, Any]

    def conversation(self) -> list[Any]:
        """The items a follow-up continues from: this input, then this output."""
        output = self.response.get("output")
        return [*self.input, *(output if isinstance(output, list) else [])]


class ResponseStore:
    def __init__(self, store: SqliteStore, settings: ResponsesSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._next_purge = 0

    async def open(self) -> None:
        await self.store.run(lambda: apply_migrations(self.store.conn(), "responses_schema_version", MIGRATIONS))

    def _now(self) -> int:
        return int(self.clock() * 1000)

    async def save(self, owner: str, request_id: str, items: list[Any], response: dict[str, Any]) -> None:
        now = self._now()
        expires = now + int(self.settings.retention_days * 86_400_000)
        row = (str(response.get("id")), owner, request_id, now, expires, response.get("model"),
               json.dumps(items, separators=(",", ":")), json.dumps(response, separators=(",", ":")))
        purge = now >= self._next_purge
        if purge:
            self._next_purge = now + PURGE_EVERY_MS

        def write() -> None:
            conn = self.store.conn()
            conn.execute("INSERT OR REPLACE INTO responses (id, owner, request_id, created_ms, expires_ms, model,"
                         " input, response) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            if purge:
                conn.execute("DELETE FROM responses WHERE expires_ms <= ?", (now,))

        await self.store.run(write)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        rows = await self.store.run(lambda: self.store.conn().execute(
            "SELECT input, response FROM responses WHERE id = ? AND owner = ? AND expires_ms > ?",
            (response_id, owner, self._now())).fetchall())
        if not rows:
            return None
        return StoredResponse(response_id, json.loads(rows[0]["input"]), json.loads(rows[0]["response"]))

    async def delete(self, response_id: str, owner: str) -> bool:
        changed = await self.store.execute("DELETE FROM responses WHERE id = ? AND owner = ? AND expires_ms > ?",
                                           (response_id, owner, self._now()))
        return changed > 0
