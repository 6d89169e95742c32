"""What the SQLite and the Redis budget accounts share, and the interface the admin API uses.

``BudgetAccounts`` (a Protocol) is ``Accounts`` plus what the budget API needs: ``budgets`` (the
``BudgetStore``), ``status``/``statuses``, ``record_usage``, ``check``, ``subscribe``, ``close``.

``BudgetBook`` is the shared machinery: per-spec precomputation (``CompiledBudget``), cached period
windows, cached chains per principal, the ``BudgetView`` handed to selection and steering, and the
fan-out of ``BudgetEvent``s.  Subclasses only say where the counters are (``_counters``).

Events (``BudgetEvent.kind``): ``threshold_crossed`` (once per threshold per budget period — the
counter that crossed it decides, atomically, so once across replicas too), ``status_changed``,
``exhausted``, ``request_blocked`` and ``overrun`` (a provider billed more than was reserved: the
actual cost was charged anyway, ``overrun_nanos`` says by how much; one event per budget charged).
Listeners are called on the event loop and must not block (queue the work); an exception in one
is logged and does not reach the request.  ``observability.budget_event_metrics`` is the listener
that counts overruns for ``/metrics``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

import structlog

from costproxy.budgets.accounts import Accounts, BudgetView, Reservation
from costproxy.budgets.codec import UsageRecord
from costproxy.budgets.definitions import BudgetStore
from costproxy.budgets.model import (
    GATE_ACTIONS,
    BudgetOverride,
    BudgetSpec,
    PeriodWindow,
    Threshold,
    active_span,
    effective_limit,
    window_at,
)
from costproxy.budgets.status import (
    BudgetStatus,
    Counters,
    below_full,
    build_status,
    burn_ratio,
    restrictions_of,
    status_from,
    status_of,
)
from costproxy.errors import BudgetExceeded, IdempotencyKeyReused
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry, as_refusal, with_metadata
from costproxy.money import format_usd, nanos_to_decimal
from costproxy.records import frozen
from costproxy.routing.policy import EMPTY, Constraints
from costproxy.steering.fields import BudgetState, budget_fields

log = structlog.get_logger("costproxy.budgets.model")

EVENT_KINDS = ("threshold_crossed", "status_changed", "exhausted", "request_blocked", "overrun")


@frozen
class BudgetEvent:
    kind: str
    budget_id: str
    period_key: str
    at_ms: int
    spent_nanos: int
    limit_nanos: int
    status: str
    previous_status: str | None = None
    threshold: int | None = None  # percent, for threshold_crossed
    request_id: str | None = None
    reason: str | None = None  # for request_blocked
    overrun_nanos: int | None = None  # for overrun: charged minus reserved
    scope_type: str | None = None  # of the budget (bounded label for metrics)


@frozen
class BudgetReservation(Reservation):
    """A ``Reservation`` with what settling needs: an internal token (request ids may repeat, they
    come from clients) and the period each budget was charged in."""

    token: str = ""
    period_keys: tuple[str, ...] = ()
    counter_keys: tuple[str, ...] = ()  # Redis: the counters reserved on
    home: str = ""  # Redis: partition of the reservation and of the ledger stream


@frozen
class Check:
    can_proceed: bool
    reason: str
    suggested_actions: tuple[str, ...] = ()

    def public(self) -> dict[str, Any]:
        return {"canProceed": self.can_proceed, "reason": self.reason,
                "suggestedActions": list(self.suggested_actions)}


@frozen
class Recorded:
    """What ``record_usage`` did: the budget's status after it, and whether the record was a
    duplicate of one already charged (same idempotency key: nothing charged this time)."""

    status: BudgetStatus
    duplicate: bool = False


IDEMPOTENCY_TTL_MS = 7 * 86_400_000  # how long a usage record's idempotency key is remembered


class BudgetAccounts(Accounts, Protocol):
    budgets: BudgetStore
    clock: Callable[[], float]

    async def status(self, budget_id: str) -> BudgetStatus: ...

    async def statuses(self, scope_type: str, scope_id: str) -> list[BudgetStatus]: ...

    async def record_usage(self, budget_id: str, nanos: int, entry: LedgerEntry, *,
                           idempotency_key: str | None = None, fingerprint: str | None = None) -> Recorded:
        """Charge usage that happened elsewhere.  With ``idempotency_key`` the key is claimed
        atomically with the charge, together with ``fingerprint`` (``usage_fingerprint``; default:
        that of the budget and ``nanos`` alone).  A second record with the same key (within
        ``IDEMPOTENCY_TTL_MS``) charges nothing: with the same fingerprint (or a claim stored before
        fingerprints were) it is a duplicate; with another one it is refused — ``IdempotencyKeyReused``,
        its entry ledgered as refused (``reused_entry``) in the same atomic step."""
        ...

    async def check(self, budget_id: str, nanos: int) -> Check: ...

    def subscribe(self, listener: Callable[[BudgetEvent], None]) -> None: ...

    async def close(self) -> None: ...


@frozen
class CompiledBudget:
    """Per-spec facts computed once per store generation, for the request path."""

    spec: BudgetSpec
    overrides: tuple[BudgetOverride, ...]
    gate_percent: int | None  # first threshold with require-approval / block-all
    span: tuple[int | None, int | None]
    marks: tuple[Threshold, ...] = ()  # thresholds under 100 %: what ``status_of`` reads
    least_percent: int | None = None  # the lowest threshold: below it none is reached

    def limit(self, now_ms: int) -> int:
        if not self.overrides:
            return self.spec.limit_nanos
        return effective_limit(self.spec, self.overrides, now_ms)

    def status(self, spent: int, limit: int) -> str:
        """``status_of(spec, spent, limit)``, with the thresholds it reads picked out once."""
        return status_from(self.marks, spent, limit)

    def reached(self, spent: int, limit: int) -> list[Threshold]:
        """The thresholds ``spent`` has reached (none, without a look at each, below the lowest)."""
        least = self.least_percent
        if least is None or spent * 100 < limit * least:
            return []
        return [t for t in self.spec.thresholds if t.reached(spent, limit)]

    def gated(self, spent: int, limit: int, now_ms: int) -> bool:
        if self.gate_percent is None or spent * 100 < limit * self.gate_percent:
            return False
        return not any(o.kind == "approval" and o.active(now_ms) for o in self.overrides)


def compile_spec(spec: BudgetSpec, overrides: tuple[BudgetOverride, ...]) -> CompiledBudget:
    gate = next((t.percent for t in spec.thresholds if any(a.type in GATE_ACTIONS for a in t.actions)), None)
    marks = below_full(spec)
    least = min((t.percent for t in spec.thresholds), default=None)
    return CompiledBudget(spec, overrides, gate, active_span(spec), marks, least)


def refusal(spec: BudgetSpec, *, gated: bool, amount: int, available: int) -> BudgetExceeded:
    scope = f"{spec.scope_type} {spec.scope_id!r}"
    if gated:
        message = (f"budget {spec.id!r} ({scope}) has crossed a threshold that requires approval; "
                   "an admin can grant an approval override")
    else:
        message = (f"budget {spec.id!r} ({scope}, {spec.period}) cannot fit this request: worst case "
                   f"${format_usd(amount)}, ${format_usd(max(0, available))} left")
    return BudgetExceeded(message, details={"budget_id": spec.id, "scope_type": spec.scope_type,
                                            "scope_id": spec.scope_id})


def overran(reservation: Reservation, cost: int) -> bool:
    """A charge above its reservation: the money was spent, so it is charged anyway (the ledger
    records the truth), and only then can settled spend pass a hard limit."""
    return cost > reservation.amount_nanos and isinstance(reservation, BudgetReservation) \
        and bool(reservation.budget_ids)


def usage_entry(record: UsageRecord, spec: BudgetSpec, request_id: str) -> LedgerEntry:
    """The ledger entry for usage another system reports against ``spec``."""
    principal = {spec.scope_type: spec.scope_id}
    return LedgerEntry(
        request_id=record.request_id or request_id, ts_ms=record.timestamp_ms, endpoint="usage",
        status="ok", http_status=200, key_id=principal.get("key"), user=record.user or principal.get("user"),
        team=record.team or principal.get("team"), org=spec.org or principal.get("org"),
        project=record.project or principal.get("project"), served_model=record.model_id,
        requested_model=record.model_id, cost_nanos=record.amount_nanos, baseline_nanos=record.amount_nanos,
        usage_reported=True, source=record.source,
        metadata={"description": record.description, "tags": list(record.tags), "budget_id": spec.id},
    )


FINGERPRINT_FORM = "usage/1"  # names the canonical form below: change it whenever the form changes


def usage_fingerprint(budget_id: str, nanos: int, record: UsageRecord | None = None) -> str:
    """SHA-256 (hex) of the canonical form of a usage record charged ``nanos`` to ``budget_id``:
    the same for a replay of the record, different for another record under the same idempotency key.

    The form is every field the client chose, as parsed, so equal meaning gives equal bytes
    (``"412.50"`` and ``412.5`` are one amount in nano-USD; snake_case spellings and defaults are
    applied): budget, amount, source, description, requestId, modelId, userId, teamId, projectId,
    tags (in order), and the timestamp in ms when one was sent.  Without one the arrival time stands
    in, which a retry cannot repeat, so it is left out.  Description and tags are in: two records
    that differ only there are still two records, and refusing the second loses nothing (it is
    ledgered as refused) where taking it for a duplicate would.  Without ``record``: budget and
    amount only (the Python API's default)."""
    form: list[object] = [FINGERPRINT_FORM, budget_id, nanos]
    if record is not None:
        form += [record.source, record.description, record.request_id, record.model_id, record.user,
                 record.team, record.project, list(record.tags),
                 record.timestamp_ms if record.timestamp_sent else None]
    return hashlib.sha256(json.dumps(form, ensure_ascii=True, separators=(",", ":")).encode()).hexdigest()


def reused_entry(entry: LedgerEntry, nanos: int, idempotency_key: str) -> LedgerEntry:
    """The ledger entry of a usage record refused for its reused idempotency key: a refusal like any
    (status ``refused``, cost 0, HTTP 409, the error code), charged to no budget, with what it
    asked to charge and its key in ``metadata`` so the record is kept, not lost."""
    refused = as_refusal(replace(entry, http_status=IdempotencyKeyReused.status,
                                 error_code=IdempotencyKeyReused.code))
    metadata = {k: v for k, v in refused.metadata.items() if k != "budgets"}
    return with_metadata(refused, {**metadata, "refused_amount_nanos": nanos, "idempotency_key": idempotency_key})


def key_reused(budget_id: str, idempotency_key: str, entry: LedgerEntry, nanos: int) -> IdempotencyKeyReused:
    """Log a refused record and say why it was refused (the caller raises it)."""
    log.warning("usage_idempotency_key_reused", budget_id=budget_id, idempotency_key=idempotency_key,
                request_id=entry.request_id, refused_amount_nanos=nanos)
    return IdempotencyKeyReused(
        f"idempotency key {idempotency_key!r} was used within the last 7 days for a different usage record "
        f"on budget {budget_id!r} (another amount, source, timestamp, description or metadata); nothing was "
        "charged and this record is in the ledger as refused. Send the first record unchanged to replay it, "
        "or a new key for a new record", details={"budget_id": budget_id})


class BudgetBook:
    """Shared machinery of the budget accounts; subclasses provide ``_counters``."""

    def __init__(self, budgets: BudgetStore, clock: Callable[[], float] = time.time,
                 reservation_ttl_s: float = 900.0) -> None:
        self.budgets = budgets
        self.clock = clock
        self.ttl_ms = int(reservation_ttl_s * 1000)
        self._listeners: list[Callable[[BudgetEvent], None]] = []
        self._compiled: dict[str, CompiledBudget] = {}
        self._windows: dict[str, PeriodWindow] = {}
        self._chains: dict[Principal, tuple[int, int, tuple[CompiledBudget, ...]]] = {}
        self._generation = -1

    # --- caches ----------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _sync(self) -> None:
        if self._generation == self.budgets.generation:
            return
        self._compiled = {s.id: compile_spec(s, self.budgets.overrides(s.id)) for s in self.budgets.all()}
        self._windows.clear()
        self._chains.clear()
        self._generation = self.budgets.generation

    def chain(self, principal: Principal, now_ms: int) -> tuple[CompiledBudget, ...]:
        """The compiled chain of ``principal``, cached per store generation and per second."""
        self._sync()
        second = now_ms // 1000
        cached = self._chains.get(principal)
        if cached is not None and cached[0] == self._generation and cached[1] == second:
            return cached[2]
        found = tuple(self._compiled[s.id] for s in self.budgets.chain(principal, now_ms))
        if len(self._chains) > 50_000:
            self._chains.clear()
        self._chains[principal] = (self._generation, second, found)
        return found

    def compiled(self, budget_id: str) -> CompiledBudget:
        self._sync()
        spec = self.budgets.require(budget_id)
        return self._compiled.get(spec.id) or compile_spec(spec, self.budgets.overrides(spec.id))

    def window(self, spec: BudgetSpec, now_ms: int) -> PeriodWindow:
        cached = self._windows.get(spec.id)
        if cached is not None and cached.contains(now_ms):
            return cached
        fresh = window_at(spec, now_ms)
        self._windows[spec.id] = fresh
        return fresh

    # --- counters (subclasses) -------------------------------------------------------------
    def _counters(self, budget_id: str, period_key: str, now_ms: int) -> Counters:
        raise NotImplementedError

    def _amounts(self, budget_id: str, period_key: str, now_ms: int) -> tuple[int, int]:
        """Spent and reserved of one period: what ``view`` reads (subclasses skip building ``Counters``)."""
        counters = self._counters(budget_id, period_key, now_ms)
        return counters.spent_nanos, counters.reserved_nanos

    # --- events ----------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[BudgetEvent], None]) -> None:
        self._listeners.append(listener)

    def emit(self, event: BudgetEvent) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break money accounting
                log.exception("budget_listener_failed", kind=event.kind, budget_id=event.budget_id)

    def emit_crossings(self, compiled: CompiledBudget, period_key: str, *, before: int, after: int,
                       fired: tuple[Threshold, ...], now_ms: int, request_id: str | None = None) -> None:
        """Events for thresholds this process saw fire (it won the once-per-period race)."""
        if not fired or not self._listeners:
            return
        spec = compiled.spec
        limit = compiled.limit(now_ms)
        old, new = status_of(spec, before, limit), status_of(spec, after, limit)
        for threshold in fired:
            self.emit(BudgetEvent("threshold_crossed", spec.id, period_key, now_ms, after, limit, new,
                                  old, threshold.percent, request_id))
        if new != old:
            self.emit(BudgetEvent("status_changed", spec.id, period_key, now_ms, after, limit, new, old,
                                  None, request_id))
            if new == "exhausted":
                self.emit(BudgetEvent("exhausted", spec.id, period_key, now_ms, after, limit, new, old,
                                      None, request_id))

    def emit_overrun(self, compiled: CompiledBudget, period_key: str, *, spent: int, now_ms: int,
                     request_id: str, reserved: int, charged: int) -> None:
        """An ``overrun`` event for one budget a request was charged more than reserved on."""
        spec = compiled.spec
        limit = compiled.limit(now_ms)
        log.warning("budget_reservation_overrun", request_id=request_id, budget_id=spec.id,
                    reserved_nanos=reserved, cost_nanos=charged, spent_nanos=spent, limit_nanos=limit)
        if self._listeners:
            self.emit(BudgetEvent("overrun", spec.id, period_key, now_ms, spent, limit, status_of(spec, spent, limit),
                                  None, None, request_id, f"charged {charged} nano-USD, reserved {reserved}",
                                  charged - reserved, spec.scope_type))

    def emit_blocked(self, spec: BudgetSpec, period_key: str, *, spent: int, limit: int, now_ms: int,
                     request_id: str, reason: str) -> None:
        if self._listeners:
            self.emit(BudgetEvent("request_blocked", spec.id, period_key, now_ms, spent, limit,
                                  status_of(spec, spent, limit), None, None, request_id, reason))

    # --- reading ---------------------------------------------------------------------------
    def definitions_version(self) -> int:
        return self.budgets.generation

    async def current(self) -> bool:
        """One process owns the definitions (SQLite): a look at the local version, no I/O."""
        return await self.budgets.refresh()

    def status_now(self, budget_id: str) -> BudgetStatus:
        now = self.now_ms()
        compiled = self.compiled(budget_id)
        window = self.window(compiled.spec, now)
        return build_status(compiled.spec, window, self._counters(compiled.spec.id, window.key, now),
                            self.budgets.overrides(compiled.spec.id), now)

    async def status(self, budget_id: str) -> BudgetStatus:
        return self.status_now(budget_id)

    async def statuses(self, scope_type: str, scope_id: str) -> list[BudgetStatus]:
        return [self.status_now(s.id) for s in self.budgets.for_scope(scope_type, scope_id)]

    async def check(self, budget_id: str, nanos: int) -> Check:
        status = await self.status(budget_id)
        if not status.in_force:
            return Check(True, "the budget is not in force now (outside its start and end dates, or a "
                               "non-recurring budget past its period): nothing is charged to it", ())
        if status.blocked:
            return Check(False, "a threshold action requires approval before further spend",
                         ("request an approval override", "wait for the next period"))
        if status.spec.hard and nanos > status.remaining_nanos:
            return Check(False, f"${format_usd(nanos)} exceeds the ${format_usd(status.remaining_nanos)} left",
                         ("use a cheaper model", "lower max_tokens", "request a temporary increase"))
        if status.status in ("critical", "exhausted"):
            return Check(True, f"budget is {status.status}", ("prefer cheaper models",))
        return Check(True, "within budget")

    async def view(self, principal: Principal) -> BudgetView:
        now = self.now_ms()
        chain = self.chain(principal, now)
        if not chain:
            return BudgetView()
        return self._view(chain, now)

    def _view(self, chain: tuple[CompiledBudget, ...], now: int) -> BudgetView:
        states: list[tuple[str, BudgetState]] = []
        used, ratio, remaining = 0.0, 0.0, None
        tightest: str | None = None
        restrictions = EMPTY
        for compiled in chain:
            spec = compiled.spec
            window = self.window(spec, now)
            spent, reserved = self._amounts(spec.id, window.key, now)
            limit = compiled.limit(now)
            left = max(0, limit - spent - reserved)
            status = compiled.status(spent, limit)
            pct = 100.0 if limit <= 0 else spent * 100 / limit
            used, ratio = max(used, pct / 100), max(ratio, self._ratio(compiled, window, spent, limit, now))
            states.append((spec.scope_type, BudgetState(pct, status, nanos_to_decimal(left) if spec.hard else None)))
            reached = compiled.reached(spent, limit)
            if reached:  # restrictions_of([]) is EMPTY: skip the call on the usual path
                restrictions = restrictions.merge(restrictions_of([a for t in reached for a in t.actions], spec.id))
            if spec.hard:
                if remaining is None or left < remaining:
                    remaining, tightest = left, f"{spec.name} ({spec.id})" if spec.name else spec.id
                if spec.on_exhausted == "downgrade" and status in ("critical", "exhausted"):
                    restrictions = restrictions.merge(restrictions_of([spec.downgrade_to], spec.id)).merge(
                        Constraints(max_cost_nanos=left))
        return BudgetView(used_fraction=used, burn_ratio=ratio, remaining_nanos=remaining,
                          fields=budget_fields(states), restrictions=restrictions, tightest_budget=tightest)

    @staticmethod
    def _ratio(compiled: CompiledBudget, window: PeriodWindow, spent: int, limit: int, now: int) -> float:
        since, until = compiled.span  # the later start and the earlier end of the two that are set
        start = since if window.start_ms is None else window.start_ms if since is None else max(window.start_ms, since)
        end = until if window.end_ms is None else window.end_ms if until is None else min(window.end_ms, until)
        if start is None or end is None:
            return 0.0
        return burn_ratio(spent, limit, max(0, now - start), end - start)

    def tagged(self, entry: LedgerEntry, reservation: Reservation) -> LedgerEntry:
        """``entry`` with the budget periods it was charged to (``metadata.budgets``) for audit."""
        if not isinstance(reservation, BudgetReservation) or not reservation.budget_ids:
            return entry
        charged = dict(zip(reservation.budget_ids, reservation.period_keys, strict=True))
        return with_metadata(entry, {**entry.metadata, "budgets": charged})
