"""Budget definitions: static ones from YAML (read-only) merged with dynamic ones (admin API).

``BudgetStore`` is what the admin API and the accounts use; it validates every change, stamps
``created_at``/``updated_at``/``created_by``, writes an audit record for each change (budgets and
overrides alike) and keeps an immutable ``BudgetIndex`` for chain lookups on the request path.
Where definitions live is the ``DefinitionBackend``'s business: SQLite tables in the embedded
default (``SqliteDefinitions``, here), Redis hashes when replicas share state
(``RedisDefinitions`` in ``redis_definitions.py``).  ``generation`` changes whenever the index does, so
callers can cache per generation.

Overrides (temporary increases and approvals) are never edited: they are granted and revoked,
both audited, and expire on their own.

The budget tables are created by ``BUDGET_MIGRATIONS`` with their own version table, so this
module never collides with the ledger's migration numbers.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from typing import Any, Protocol

from costproxy.budgets.codec import spec_from_json, spec_to_json
from costproxy.budgets.model import BudgetIndex, BudgetOverride, BudgetSpec
from costproxy.errors import Forbidden, InvalidRequest, NotFound
from costproxy.identity.principal import Principal
from costproxy.records import frozen
from costproxy.store.sqlite import SqliteStore, apply_migrations

BUDGET_MIGRATIONS: list[tuple[int, str]] = [
    (1, """
        CREATE TABLE budget_defs (id TEXT PRIMARY KEY, body TEXT NOT NULL, updated_at_ms INTEGER NOT NULL);
        CREATE TABLE budget_overrides (
            id TEXT PRIMARY KEY, budget_id TEXT NOT NULL, body TEXT NOT NULL
        );
        CREATE INDEX budget_overrides_budget ON budget_overrides (budget_id);
        CREATE TABLE budget_audit (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, actor TEXT,
            action TEXT NOT NULL, budget_id TEXT NOT NULL, detail TEXT NOT NULL
        );
        CREATE INDEX budget_audit_budget ON budget_audit (budget_id, seq);
        CREATE TABLE budget_spend (
            budget_id TEXT NOT NULL, period_key TEXT NOT NULL, spent_nanos INTEGER NOT NULL,
            PRIMARY KEY (budget_id, period_key)
        );
        CREATE TABLE budget_marks (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE budget_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)
    """),
    (2, """
        CREATE TABLE usage_claims (
            budget_id TEXT NOT NULL, claim TEXT NOT NULL, request_id TEXT NOT NULL, ts_ms INTEGER NOT NULL,
            PRIMARY KEY (budget_id, claim)
        );
        CREATE INDEX usage_claims_ts ON usage_claims (ts_ms)
    """),
    # What the claiming record was (``book.usage_fingerprint``): the same key with another record is
    # refused, not taken for a duplicate.  Claims made before it have none and stay plain duplicates.
    (3, """
        ALTER TABLE usage_claims ADD COLUMN fingerprint TEXT
    """),
    # Open reservations of the SQLite store (``budgets/journal.py``): what a crashed process held is
    # charged as ``lapsed`` at the next start.  ``token`` is the reservation's (a number: the rowid, no
    # second index to write), ``body`` what the lapsed entry needs, as JSON.
    (4, """
        CREATE TABLE budget_reservations (token INTEGER PRIMARY KEY, opened_ms INTEGER NOT NULL, body TEXT NOT NULL)
    """),
]


def migrate_budgets(conn: sqlite3.Connection) -> int:
    """Apply pending budget migrations (own version table); returns the resulting version."""
    return apply_migrations(conn, "budget_schema_version", BUDGET_MIGRATIONS)


async def ensure_budget_schema(store: SqliteStore) -> None:
    # SqliteStore runs every statement on its one writer thread; ``run`` is how to get there.
    await store.run(lambda: migrate_budgets(store.conn()))


@frozen
class AuditRecord:
    ts_ms: int
    actor: str | None
    action: str  # budget.created | budget.updated | budget.deleted | override.granted | override.revoked
    budget_id: str
    detail: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {"timestamp": self.ts_ms, "actor": self.actor, "action": self.action,
                "budgetId": self.budget_id, "detail": self.detail}


def spec_body(spec: BudgetSpec) -> str:
    """A spec as stored: its JSON form plus the stamps JSON does not read back."""
    data = spec_to_json(spec)
    data["_stamps"] = [spec.created_at_ms, spec.updated_at_ms, spec.created_by]
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def spec_from_body(body: str) -> BudgetSpec:
    data = json.loads(body)
    created, updated, created_by = data.pop("_stamps", [None, None, None])
    return replace(spec_from_json(data, stored=True), created_at_ms=created, updated_at_ms=updated,
                   created_by=created_by)


def override_body(override: BudgetOverride) -> str:
    return json.dumps(asdict(override), separators=(",", ":"), sort_keys=True)


def override_from_body(body: str) -> BudgetOverride:
    return BudgetOverride(**json.loads(body))


class DefinitionBackend(Protocol):
    async def load(self) -> tuple[list[BudgetSpec], list[BudgetOverride], int]:
        """Every dynamic budget and override, and the backend's change version."""
        ...

    async def version(self) -> int: ...

    async def put_spec(self, spec: BudgetSpec, audit: AuditRecord, *, create: bool) -> bool:
        """Store ``spec``; ``create`` fails (False) if the id exists, an update if it does not."""
        ...

    async def delete_spec(self, budget_id: str, audit: AuditRecord) -> bool: ...

    async def put_override(self, override: BudgetOverride, audit: AuditRecord) -> None: ...

    async def audit(self, budget_id: str | None, limit: int) -> list[AuditRecord]: ...


class SqliteDefinitions:
    """Definitions in the embedded SQLite file (one process owns it: the version is local)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self._version = 0

    async def load(self) -> tuple[list[BudgetSpec], list[BudgetOverride], int]:
        specs = await self.store.run(lambda: self.store.conn().execute("SELECT body FROM budget_defs").fetchall())
        rows = await self.store.run(
            lambda: self.store.conn().execute("SELECT body FROM budget_overrides").fetchall())
        return [spec_from_body(r[0]) for r in specs], [override_from_body(r[0]) for r in rows], self._version

    async def version(self) -> int:
        return self._version

    async def put_spec(self, spec: BudgetSpec, audit: AuditRecord, *, create: bool) -> bool:
        verb = "INSERT OR IGNORE INTO budget_defs (id, body, updated_at_ms) VALUES (?, ?, ?)" if create else \
            "UPDATE budget_defs SET body = ?2, updated_at_ms = ?3 WHERE id = ?1"
        return await self._write(verb, (spec.id, spec_body(spec), spec.updated_at_ms or 0), audit)

    async def delete_spec(self, budget_id: str, audit: AuditRecord) -> bool:
        return await self._write("DELETE FROM budget_defs WHERE id = ?", (budget_id,), audit)

    async def put_override(self, override: BudgetOverride, audit: AuditRecord) -> None:
        await self._write("INSERT OR REPLACE INTO budget_overrides (id, budget_id, body) VALUES (?, ?, ?)",
                          (override.id, override.budget_id, override_body(override)), audit)

    async def _write(self, sql: str, params: tuple[Any, ...], audit: AuditRecord) -> bool:
        def run() -> bool:
            conn = self.store.conn()
            conn.execute("BEGIN")
            try:
                changed = conn.execute(sql, params).rowcount > 0
                if changed:
                    conn.execute("INSERT INTO budget_audit (ts_ms, actor, action, budget_id, detail)"
                                 " VALUES (?, ?, ?, ?, ?)", (audit.ts_ms, audit.actor, audit.action,
                                                             audit.budget_id, json.dumps(audit.detail)))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return changed

        changed = await self.store.run(run)
        self._version += int(changed)
        return changed

    async def audit(self, budget_id: str | None, limit: int) -> list[AuditRecord]:
        where, params = ("WHERE budget_id = ?", (budget_id, limit)) if budget_id else ("", (limit,))
        rows = await self.store.run(lambda: self.store.conn().execute(
            f"SELECT ts_ms, actor, action, budget_id, detail FROM budget_audit {where}"
            " ORDER BY seq DESC LIMIT ?", params).fetchall())
        return [AuditRecord(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]


def new_override_id() -> str:
    return "ovr_" + secrets.token_hex(8)


class BudgetStore:
    """Static (YAML, read-only) plus dynamic budgets, their overrides, and the audit trail."""

    def __init__(self, backend: DefinitionBackend, static: Sequence[BudgetSpec] = (),
                 clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.static = {s.id: s for s in static}
        self.clock = clock
        self.generation = 0
        self._dynamic: dict[str, BudgetSpec] = {}
        self._overrides: dict[str, BudgetOverride] = {}
        self._by_budget: dict[str, tuple[BudgetOverride, ...]] = {}
        self._seen_version: int | None = None
        self._loading = asyncio.Lock()  # loads install in the order they read: never an older one last
        self.index = BudgetIndex(self.static.values())

    # --- loading ---------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The backend's change version the definitions in memory were loaded at (-1: never loaded)."""
        return -1 if self._seen_version is None else self._seen_version

    async def load(self) -> None:
        async with self._loading:
            specs, overrides, version = await self.backend.load()
            self._install(specs, overrides, version)

    async def refresh(self) -> bool:
        """Reload if another replica changed something; True if the index changed."""
        if await self.backend.version() == self._seen_version:
            return False
        await self.load()
        return True

    def _install(self, specs: Iterable[BudgetSpec], overrides: Iterable[BudgetOverride], version: int) -> None:
        self._dynamic = {s.id: s for s in specs if s.id not in self.static}
        self._overrides = {o.id: o for o in overrides}
        by_budget: dict[str, list[BudgetOverride]] = {}
        for override in self._overrides.values():
            by_budget.setdefault(override.budget_id, []).append(override)
        self._by_budget = {k: tuple(sorted(v, key=lambda o: o.starts_at_ms)) for k, v in by_budget.items()}
        self.index = BudgetIndex([*self.static.values(), *self._dynamic.values()])
        self._seen_version = version
        self.generation += 1

    # --- reading (synchronous: from memory) -----------------------------------------------
    def get(self, budget_id: str) -> BudgetSpec | None:
        return self.static.get(budget_id) or self._dynamic.get(budget_id)

    def require(self, budget_id: str) -> BudgetSpec:
        spec = self.get(budget_id)
        if spec is None:
            raise NotFound(f"no budget with id {budget_id!r}")
        return spec

    def all(self) -> list[BudgetSpec]:
        return sorted([*self.static.values(), *self._dynamic.values()], key=lambda s: s.id)

    def for_scope(self, scope_type: str, scope_id: str) -> tuple[BudgetSpec, ...]:
        return self.index.for_scope(scope_type, scope_id)

    def chain(self, principal: Principal, now_ms: int) -> tuple[BudgetSpec, ...]:
        return self.index.chain(principal, now_ms)

    def overrides(self, budget_id: str) -> tuple[BudgetOverride, ...]:
        """Every override ever granted on the budget (active or not), oldest first."""
        return self._by_budget.get(budget_id, ())

    def children(self, budget_id: str) -> list[BudgetSpec]:
        return [s for s in self.all() if s.parent_id == budget_id]

    async def audit_log(self, budget_id: str | None = None, limit: int = 100) -> list[AuditRecord]:
        return await self.backend.audit(budget_id, limit)

    # --- changes ---------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _check_parent(self, spec: BudgetSpec) -> None:
        seen = {spec.id}
        parent_id = spec.parent_id
        while parent_id is not None:
            parent = self.get(parent_id)
            if parent is None:
                raise InvalidRequest(f"parentBudgetId names no budget: {parent_id!r}", param="parentBudgetId")
            if parent.id in seen:
                raise InvalidRequest(f"parentBudgetId {spec.parent_id!r} makes a cycle", param="parentBudgetId")
            seen.add(parent.id)
            parent_id = parent.parent_id

    def _writable(self, budget_id: str) -> BudgetSpec:
        spec = self.require(budget_id)
        if spec.read_only:
            raise Forbidden(f"budget {budget_id!r} is defined in the configuration file and is read-only")
        return spec

    async def create(self, spec: BudgetSpec, actor: str | None) -> BudgetSpec:
        if self.get(spec.id) is not None:
            raise InvalidRequest(f"a budget with id {spec.id!r} already exists", param="id")
        self._check_parent(spec)
        now = self._now_ms()
        stored = replace(spec, source="api", created_at_ms=now, updated_at_ms=now, created_by=actor)
        audit = AuditRecord(now, actor, "budget.created", spec.id, {"after": spec_to_json(stored)})
        if not await self.backend.put_spec(stored, audit, create=True):
            raise InvalidRequest(f"a budget with id {spec.id!r} already exists", param="id")
        await self.load()
        return stored

    async def update(self, spec: BudgetSpec, actor: str | None) -> BudgetSpec:
        """Replace a dynamic budget (its counters keep running: same id, same period keys)."""
        before = self._writable(spec.id)
        self._check_parent(spec)
        now = self._now_ms()
        stored = replace(spec, source="api", created_at_ms=before.created_at_ms, created_by=before.created_by,
                         updated_at_ms=now)
        audit = AuditRecord(now, actor, "budget.updated", spec.id,
                            {"before": spec_to_json(before), "after": spec_to_json(stored)})
        if not await self.backend.put_spec(stored, audit, create=False):
            raise NotFound(f"no budget with id {spec.id!r}")
        await self.load()
        return stored

    async def delete(self, budget_id: str, actor: str | None) -> BudgetSpec:
        before = self._writable(budget_id)
        children = self.children(budget_id)
        if children:
            names = ", ".join(c.id for c in children)
            raise InvalidRequest(f"budget {budget_id!r} is the parent of {names}; delete or move those first")
        audit = AuditRecord(self._now_ms(), actor, "budget.deleted", budget_id, {"before": spec_to_json(before)})
        if not await self.backend.delete_spec(budget_id, audit):
            raise NotFound(f"no budget with id {budget_id!r}")
        await self.load()
        return before

    async def grant(self, override: BudgetOverride, actor: str | None) -> BudgetOverride:
        """Record a temporary increase or an approval (explicit, time-limited, audited)."""
        self.require(override.budget_id)
        stored = replace(override, created_by=actor, created_at_ms=override.created_at_ms or self._now_ms())
        audit = AuditRecord(self._now_ms(), actor, "override.granted", override.budget_id, asdict(stored))
        await self.backend.put_override(stored, audit)
        await self.load()
        return stored

    async def revoke(self, override_id: str, actor: str | None) -> BudgetOverride:
        current = self._overrides.get(override_id)
        if current is None:
            raise NotFound(f"no override with id {override_id!r}")
        if current.revoked_at_ms is not None:
            return current
        now = self._now_ms()
        revoked = replace(current, revoked_at_ms=now, revoked_by=actor)
        await self.backend.put_override(revoked, AuditRecord(now, actor, "override.revoked",
                                                             current.budget_id, {"id": override_id}))
        await self.load()
        return revoked
