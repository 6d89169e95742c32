"""Budget enforcement shared by several replicas through Redis (``store: redis://…``).

Money moves only inside Lua scripts (``budget_lua.py``): ``reserve`` checks every hard limit of
the chain and then reserves on all of them, or on none; ``settle``/``release`` drop the
reservation, charge the actual cost and append the ledger entry to the organisation's stream in
the same atomic step.  Scripts are idempotent (a reservation token, a settled marker), so a retry
after a lost reply never counts twice.

Where the ledger lives: in the Redis stream ``P:{<org>}:ledger`` (written by the settle script,
so counters and ledger cannot disagree; as durable as the Redis persistence you configure —
run Redis with AOF ``everysec`` or better), and mirrored by every replica into its local SQLite
(``ledger/mirror.py``) for reports.  Each replica therefore holds a full copy of the ledger; the
streams are trimmed once every live replica's mirror holds them (``ledger/trim.py``).

Reservations expire after ``reservation_ttl_s``: every reserve first reclaims a few expired ones
of its partition, and each replica's maintenance loop reclaims the rest, so the reservations of a
SIGKILLed replica come back within the TTL plus one ``refresh_interval_s``.

When Redis is unreachable:
- ``reserve`` raises ``StoreUnavailable`` (HTTP 503) if the chain has a hard budget or a gating
  threshold — a hard budget is never passed unchecked; a chain of soft budgets only proceeds;
- ``settle``/``release``/``record_usage``/``record_refusal`` never fail the request: the operation
  (its Lua call, ledger entry included) is committed to this replica's SQLite file
  (``outbox.SettlementOutbox``, fsync'd) before the call returns, so a SIGKILL at any instant
  loses no settlement and no ledger entry; the outbox is replayed in order when Redis answers
  again (every ``refresh_interval_s``) and at start-up, each item deleted only after Redis applied
  it.  Replays are exactly once: the settle script's per-token ``done`` marker turns a replay of an
  operation Redis already applied (reply lost) into a no-op, for ``2 x reservation_ttl_s + 1 h``
  (7 days for usage records with an idempotency key).  Only if the SQLite file cannot be written
  either does an operation wait in memory (logged as an error);
- ``view``/``status`` answer from the local cache of counters, refreshed every
  ``refresh_interval_s`` and after every script this replica runs.  ``BudgetStatus.stale_ms`` says
  how old it is when refreshes fail; while Redis is reachable it is at most one refresh interval
  behind the other replicas' activity (and exact for this replica's own).

Definitions (budgets, overrides, audit) live in Redis too (``definitions_redis.py``); replicas
reload them every ``refresh_interval_s``, but never reserve on older ones than a change that
already answered: every reserve script checks the version its chain was built from against the
partition's copy (``lua.py``, "Definitions versions") and, finding it stale, reserves nothing;
``reserve`` then reloads and tries again (``STALE_RELOADS``).  A request with no budget at all
pays one small script for that check.  The budget API reads through ``current`` (one version
read) so they answer from definitions at least as new as any change that answered before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson
import structlog
from hiredis import pack_command
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from costproxy.background import cancel_and_wait, stop_if_cancelled
from costproxy.budgets.accounts import Reservation, lease_ms
from costproxy.budgets.batch import bounded, script_sender
from costproxy.budgets.book import (
    IDEMPOTENCY_TTL_MS,
    BudgetBook,
    BudgetReservation,
    CompiledBudget,
    Recorded,
    key_reused,
    overran,
    refusal,
    reused_entry,
    usage_fingerprint,
)
from costproxy.budgets.config import BudgetConfig
from costproxy.budgets.definitions import BudgetStore
from costproxy.budgets.definitions_redis import RedisDefinitions
from costproxy.budgets.lua import (
    DEFS_RAISE,
    DEFS_VERSION,
    MAX_EXACT_NANOS,
    RECLAIM,
    RENEW,
    RESERVE,
    SETTLE,
    RedisKeys,
)
from costproxy.budgets.model import approved
from costproxy.budgets.outbox import Settlement, SettlementOutbox
from costproxy.budgets.status import Counters
from costproxy.errors import StoreUnavailable
from costproxy.identity.principal import Principal
from costproxy.ledger.entry import LedgerEntry, Status, as_refusal
from costproxy.ledger.mirror import LedgerMirror, entry_json
from costproxy.ledger.trim import StreamKeeper, replica_id
from costproxy.money import format_usd
from costproxy.records import frozen
from costproxy.store.config import DEFAULT_TIMEOUT_S
from costproxy.store.outage import unavailable
from costproxy.store.sqlite import INSERT_QUARANTINE, SqliteStore, quarantine_row

log = structlog.get_logger("costproxy.budgets.model")
RECLAIM_BATCH = 16
STALE_RELOADS = 3  # reloads of the definitions one reserve may need before it gives up (503)


@frozen
class Stale:
    """A reserve script's answer that the definitions changed since this process loaded them:
    nothing was reserved.  ``seen`` is the partition's version copy (-1: the copy is missing)."""

    partition: str
    seen: int


def lapsed_entry(reservation: BudgetReservation, principal: Principal, now_ms: int) -> bytes:
    """The ledger entry (JSON) of a reservation whose replica died holding it: the call may have
    been billed, so it is charged the worst case that was reserved, marked as not reported.  Built
    as a plain dict (the fields a ``LedgerEntry`` does not default), since every reserve pays for it."""
    return orjson.dumps({
        "request_id": reservation.request_id, "ts_ms": now_ms, "endpoint": "", "status": Status.LAPSED.value,
        "http_status": 0, "key_id": principal.key_id, "user": principal.user, "team": principal.team,
        "org": principal.org, "project": principal.project, "cost_nanos": reservation.amount_nanos,
        "baseline_nanos": reservation.amount_nanos,  # no saving is claimed for a call nobody saw end
        "usage_reported": False, "error_code": "replica_lost",
        "metadata": {"budgets": dict(zip(reservation.budget_ids, reservation.period_keys, strict=True))}})


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBudgetAccounts(BudgetBook):
    def __init__(self, redis: Redis, store: SqliteStore, budgets: BudgetStore, keys: RedisKeys, *,
                 clock: Callable[[], float] = time.time, reservation_ttl_s: float = 900.0,
                 refresh_interval_s: float = 1.0, ledger_retention_days: int = 7,
                 mirror_redis: Redis | None = None, label: str = "redis", owns_redis: bool = True,
                 trim_interval_s: float = 5.0, mirror_expiry_s: float = 86_400.0) -> None:
        super().__init__(budgets, clock, reservation_ttl_s)
        self.redis = redis
        self._owns_redis = owns_redis  # False: the command client is shared (store.backend closes it)
        self.store = store
        self.keys = keys
        self.refresh_interval_s = refresh_interval_s
        self.retention_ms = ledger_retention_days * 86_400_000
        self.label = label
        self._reserve = redis.register_script(RESERVE)
        self._settle = redis.register_script(SETTLE)
        self._reclaim = redis.register_script(RECLAIM)
        self._renew = redis.register_script(RENEW)
        self._defs_raise = redis.register_script(DEFS_RAISE)
        self._defs_version = redis.register_script(DEFS_VERSION)
        self._reloading = asyncio.Lock()  # one reload for the requests that found the definitions stale
        # reserve and settle calls of one loop turn: one write on a pipelined connection of their own
        self._scripts = script_sender(redis)
        self._cache: dict[tuple[str, str], Counters] = {}
        self._threshold_marks: dict[str, tuple[CompiledBudget, int, str]] = {}  # _marks, per compiled spec and limit
        self._partitions: set[str] = set()
        self._registered: set[str] = set()
        self.outbox = SettlementOutbox(store)
        self._unsaved: list[Settlement] = []  # deferred while the SQLite outbox could not be written either
        self._outbox_lock = asyncio.Lock()
        self._healthy = True
        self._last_ok_ms = 0
        self.owner = uuid.uuid4().hex[:16]  # this process: its reservations die with it (lua.py, reclaim)
        self._serial = itertools.count(1)  # with ``owner``, the unique part of this process's tokens
        self._tasks: list[asyncio.Task[None]] = []
        self._mirror_redis = mirror_redis
        self.mirror = LedgerMirror(mirror_redis or redis, store, keys, lambda: set(self._partitions))
        self.keeper = StreamKeeper(redis, keys, "", lambda: set(self._partitions), clock,
                                   interval_s=trim_interval_s, expiry_s=mirror_expiry_s)

    # --- life cycle ----------------------------------------------------------------------
    async def open(self) -> None:
        await self.outbox.load()
        await self.mirror.load_marks()
        self.keeper.replica = await replica_id(self.store)
        self.keeper.sources[self.keeper.replica] = self.mirror.positions
        try:
            await self._seed_versions({s.partition for s in self.budgets.all()})
            await self.refresh()
            await self.keeper.publish()  # registered before the first trim round can pass it by
            await self.flush_outbox()  # what a previous run could not settle, before new traffic
        except RedisError as exc:
            self._down(exc)
        for spec in self.budgets.all():
            if spec.limit_nanos > MAX_EXACT_NANOS:
                log.error("budget_limit_too_large_for_redis", budget_id=spec.id)
        self._tasks = [asyncio.create_task(self._maintain(), name="costproxy-budget-refresh"),
                       asyncio.create_task(self.mirror.run(), name="costproxy-ledger-mirror"),
                       asyncio.create_task(self.keeper.run(), name="costproxy-ledger-trim")]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        try:
            await asyncio.wait_for(self.flush_outbox(), timeout=2.0)
            await asyncio.wait_for(self.mirror.catch_up(), timeout=5.0)
        except (RedisError, OSError, TimeoutError) as exc:
            log.error("budget_close_incomplete", error=str(exc), outbox=self.pending())
        await self._save_unsaved()
        self._scripts.close()
        if self._owns_redis:
            await self.redis.aclose(close_connection_pool=True)
        if self._mirror_redis is not None:
            await self._mirror_redis.aclose(close_connection_pool=True)

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval_s)
            stop_if_cancelled()
            try:
                await self.refresh()
                await self._heartbeat()
                await self.flush_outbox()  # before reclaiming: a returning Redis gets our own settlements first
                await self.reclaim_expired()
            except RedisError as exc:
                stop_if_cancelled()  # redis-py may turn a cancellation into a connection error
                self._down(exc)

    async def _heartbeat(self) -> None:
        """This process is alive: a lapsed reservation of ours is released, not charged (lua.py)."""
        if not self._registered:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in self._registered:
                pipe.set(self.keys.alive(partition, self.owner), "1", px=self.ttl_ms)
            await pipe.execute()

    def _down(self, exc: BaseException) -> None:
        if self._healthy:
            log.error("budget_store_unreachable", store=self.label, error=str(exc))
        self._healthy = False

    def _up(self, now_ms: int) -> None:
        if not self._healthy:
            log.info("budget_store_reachable", store=self.label)
        self._healthy = True
        self._last_ok_ms = now_ms

    # --- refresh: definitions, partitions, counters --------------------------------------
    async def refresh(self) -> None:
        await self.budgets.refresh()
        self._sync()
        now = self.now_ms()
        wanted = [(c.spec.id, self.window(c.spec, now).key, c.spec.partition) for c in self._compiled.values()]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(self.keys.partitions)
            for budget_id, key, partition in wanted:
                pipe.hgetall(self.keys.counter(partition, budget_id, key))
            replies = await pipe.execute()
        self._partitions |= {_text(p) for p in replies[0]}
        fresh = {(b, k): _counters_from(h, now) for (b, k, _), h in zip(wanted, replies[1:], strict=True)}
        self._cache = fresh
        self._up(now)

    async def _seed_versions(self, partitions: set[str]) -> None:
        """Give the partitions of the known budgets a definitions version copy if they have none,
        so the first reserve there need not find it missing and reload: registered first, then
        loaded, so the version seeded is at least that of any change whose writer missed them."""
        if not partitions:
            return
        await self._register(sorted(partitions))
        await self.budgets.load()
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition in sorted(partitions):
                await self._defs_raise(keys=[self.keys.defs_seen(partition)], args=[self.budgets.version],
                                       client=pipe)
            await pipe.execute()

    async def current(self) -> bool:
        """Reload the definitions if they changed in Redis (one version read): what the budget API
        reads before answering, and a refusal checks before it stands.  While Redis is away the
        definitions in memory stay (status says how stale), so this neither waits for nor raises a
        failure the maintenance loop already saw."""
        if not self._healthy:
            return False
        try:
            version = int(await self._scripts.run(self._defs_version, [self.keys.defs("version")], []))
            if version == self.budgets.version:
                return False
            await self.budgets.load()
        except RedisError as exc:
            self._down(exc)
            return False
        return True

    async def reclaim_expired(self) -> int:
        now = self.now_ms()
        total = 0
        for partition in sorted(self._partitions):
            total += int(await self._reclaim(keys=[self.keys.expiries(partition)],
                                             args=[self.keys.reservation_prefix(partition), now, 100]))
        return total

    def _counters(self, budget_id: str, period_key: str, now_ms: int) -> Counters:
        cached = self._cache.get((budget_id, period_key))
        stale = 0 if self._healthy else max(0, now_ms - self._last_ok_ms)
        if cached is None:
            return Counters(as_of_ms=self._last_ok_ms or now_ms, stale_ms=stale)
        return Counters(cached.spent_nanos, cached.reserved_nanos, cached.fired, cached.as_of_ms, stale)

    def _amounts(self, budget_id: str, period_key: str, now_ms: int) -> tuple[int, int]:
        cached = self._cache.get((budget_id, period_key))
        return (0, 0) if cached is None else (cached.spent_nanos, cached.reserved_nanos)

    def _remember(self, budget_id: str, key: str, spent: int, reserved: int, *, now: int,
                  fired: dict[int, int] | None = None) -> None:
        old = self._cache.get((budget_id, key))
        marks: Mapping[int, int]
        if fired:
            marks = {**old.fired, **fired} if old is not None else dict(fired)
        else:  # nothing fired (the usual case): the marks are the same, shared, never mutated
            marks = old.fired if old is not None else {}
        self._cache[(budget_id, key)] = Counters(spent, reserved, marks, now)

    async def _register(self, partitions: Sequence[str]) -> None:
        missing = [p for p in partitions if p not in self._registered]
        if missing:
            await bounded(lambda: self.redis.sadd(self.keys.partitions, *[p or "" for p in missing]),
                          self._scripts.timeout_s)
            self._registered.update(missing)
            self._partitions.update(missing)

    # --- reserve -------------------------------------------------------------------------
    async def reserve(self, request_id: str, principal: Principal, worst_case_nanos: int) -> Reservation:
        """Reserve on the chain of the definitions this process holds; a script that finds them
        older than a change another replica already answered (``stale``) reserves nothing, and the
        reserve is tried again on freshly loaded ones, at most ``STALE_RELOADS`` times."""
        reloads = 0
        while True:
            done = await self._reserve_at(request_id, principal, worst_case_nanos, self.budgets.version)
            if not isinstance(done, Stale):
                return done
            if reloads == STALE_RELOADS:
                raise StoreUnavailable(f"the budget definitions kept changing while request {request_id} was "
                                       f"being admitted ({reloads} reloads); retry it")
            await self._catch_up(done)
            reloads += 1

    async def _reserve_at(self, request_id: str, principal: Principal, worst_case_nanos: int,
                          known: int) -> Reservation | Stale:
        """One reserve on the chain of the definitions at version ``known`` (the ones in memory)."""
        now = self.now_ms()
        chain = self.chain(principal, now)
        if not chain:
            return await self._unbudgeted(request_id, principal, worst_case_nanos, known)
        home = chain[0].spec.partition
        token = self._token()
        keys, args, periods = self._reserve_call(chain, home, token, worst_case_nanos, now)
        reservation = BudgetReservation(
            request_id=request_id, amount_nanos=worst_case_nanos, budget_ids=tuple(c.spec.id for c in chain),
            token=token, period_keys=periods, counter_keys=tuple(keys[:-3]), home=home)
        args += [self.owner, lapsed_entry(reservation, principal, now).decode(), known]
        try:
            await self._register([home, *(c.spec.partition for c in chain)])
            reply = await self._scripts.run(self._reserve, keys, args)
        except RedisError as exc:
            self._down(exc)
            if any(c.spec.hard or c.gate_percent is not None for c in chain):
                # The script may have reached Redis and run there, its reply lost or too late (a
                # stalled Redis): release the token — from the outbox, once Redis answers — so a
                # request answered 503 never holds budget room, nor is charged as lapsed if this
                # replica dies.  Run first, the release's settled marker keeps a late reserve from
                # ever being charged.
                await self._release_later(reservation)
                gated = ", ".join(c.spec.id for c in chain if c.spec.hard or c.gate_percent is not None)
                raise unavailable("budget store", self.label, exc,
                                  f"reserve on the budgets {gated}, so they cannot be checked") from None
            return reservation  # soft budgets only: proceed; settling waits in the outbox if needed
        except asyncio.CancelledError:  # the request was ended while the script was out (a drain deadline):
            await self._release_later(reservation)  # it may have run: release its token, as above
            raise
        self._up(now)
        verdict = _text(reply[0])
        if verdict == "stale":
            return Stale(home, int(reply[1]))
        if verdict in ("over", "gate"):
            self._refused(chain, periods, reply, request_id=request_id, amount=worst_case_nanos, now=now)
        if verdict == "ok":
            for i, compiled in enumerate(chain):
                spent, reserved = int(reply[1 + 2 * i]), int(reply[2 + 2 * i])
                self._remember(compiled.spec.id, periods[i], spent, reserved + worst_case_nanos, now=now)
        return reservation

    async def _release_later(self, reservation: BudgetReservation) -> None:
        """Queue the release of a reserve whose script may have run but whose reply never came: sent
        from the outbox once Redis answers (shielded: the request may be being cancelled)."""
        release = self._settle_op(reservation, None, 0)
        if release is not None:
            await asyncio.shield(self._defer(release))

    async def _unbudgeted(self, request_id: str, principal: Principal, amount: int, known: int) -> Reservation | Stale:
        """No budget applies, as far as the definitions in memory say: a reserve of no counter looks
        at the version copy of the caller's partition (was one created meanwhile?) and journals the
        call.  Redis away: proceed, as a chain of soft budgets does."""
        partition = principal.org or ""
        now = self.now_ms()
        token = self._token()
        # a reservation of no counter: its hash carries the ledger entry a reclaim appends if this
        # replica dies during the call, so a crash never drops the request from the ledger
        reservation = BudgetReservation(request_id=request_id, amount_nanos=amount, token=token, home=partition)
        keys, args, _ = self._reserve_call((), partition, token, amount, now)
        args += [self.owner, lapsed_entry(reservation, principal, now).decode(), known]
        try:
            await self._register([partition])
            reply = await self._scripts.run(self._reserve, keys, args)
        except RedisError as exc:
            self._down(exc)
            return reservation  # proceed; the script may have run, so its settle (from the outbox) drops it
        except asyncio.CancelledError:  # nobody will settle it: release its token, as a budgeted reserve does
            await self._release_later(reservation)
            raise
        self._up(now)
        if _text(reply[0]) == "stale":
            return Stale(partition, int(reply[1]))
        return reservation

    async def _catch_up(self, stale: Stale) -> None:
        """Reload the definitions a reserve found stale (once for every request that found the same
        copy), and seed a missing copy with the version loaded — after this process registered the
        partition, so at least that of any change whose writer did not see it (lua.py)."""
        copy = self.keys.defs_seen(stale.partition)
        try:
            async with self._reloading:
                seen = stale.seen
                if seen < 0:  # seeded meanwhile (by the request that held the lock)? then it counts
                    seen = int(await self.redis.get(copy) or -1)
                if seen < 0 or self.budgets.version < seen:
                    await self.budgets.load()
                if seen < 0:
                    await self._defs_raise(keys=[copy], args=[self.budgets.version])
        except RedisError as exc:
            self._down(exc)
            raise unavailable("budget store", self.label, exc, "load the budget definitions that changed") from None
        self._sync()

    def _token(self) -> str:
        """A reservation or settle token no other process uses: this process's random ``owner`` and
        a serial number (a ``uuid4`` per request cost a getrandom call; uniqueness is all Redis needs)."""
        return f"{self.owner}{next(self._serial):x}"

    def _reserve_call(self, chain: tuple[CompiledBudget, ...], home: str, token: str, amount: int,
                      now: int) -> tuple[list[str], list[str | int], tuple[str, ...]]:
        keys: list[str] = []
        args: list[str | int] = [now, self.ttl_ms, str(amount), token, self.keys.reservation_prefix(home),
                                 RECLAIM_BATCH]
        periods: list[str] = []
        for compiled in chain:
            spec = compiled.spec
            window = self.window(spec, now)
            limit = compiled.limit(now)
            if limit + amount >= 2 * MAX_EXACT_NANOS:
                raise StoreUnavailable(f"budget {spec.id!r}: a limit of ${format_usd(limit)} is beyond what Redis "
                                       f"mode counts exactly (${format_usd(MAX_EXACT_NANOS)} per period)")
            gate = -1  # spend from which require-approval / block-all refuse, unless approved
            if compiled.gate_percent is not None and not approved(compiled.overrides, now):
                gate = -(-limit * compiled.gate_percent // 100)
            keys.append(self.keys.counter(spec.partition, spec.id, window.key))
            args += [limit if spec.hard else -1, gate, self._expire_at(window.end_ms)]
            periods.append(window.key)
        keys += [self.keys.reservation_prefix(home) + token, self.keys.expiries(home), self.keys.defs_seen(home)]
        return keys, args, tuple(periods)

    def _expire_at(self, end_ms: int | None) -> int:
        return 0 if end_ms is None else end_ms + self.retention_ms

    def _refused(self, chain: tuple[CompiledBudget, ...], periods: tuple[str, ...], reply: list[Any], *,
                 request_id: str, amount: int, now: int) -> None:
        gated = _text(reply[0]) == "gate"
        index = int(reply[1]) - 1
        spent, reserved = int(reply[2]), int(reply[3])
        compiled = chain[index]
        limit = compiled.limit(now)
        self._remember(compiled.spec.id, periods[index], spent, reserved, now=now)
        self.emit_blocked(compiled.spec, periods[index], spent=spent, limit=limit, now_ms=now,
                          request_id=request_id, reason="approval required" if gated else "over budget")
        raise refusal(compiled.spec, gated=gated, amount=amount, available=limit - spent - reserved)

    # --- leases --------------------------------------------------------------------------
    async def renew(self, reservation: Reservation, ttl_s: float | None = None) -> bool:
        """Extend the lease in Redis; False if a reclaim (any replica's) already took it."""
        length = lease_ms(ttl_s, self.ttl_ms)
        if not isinstance(reservation, BudgetReservation) or not reservation.token:
            return True  # nothing held
        home, token = reservation.home, reservation.token
        try:
            held = await self._renew(keys=[self.keys.reservation_prefix(home) + token, self.keys.expiries(home)],
                                     args=[token, self.now_ms(), length])
        except RedisError as exc:
            self._down(exc)
            if not reservation.counter_keys:
                return True  # no budget room at stake: the call goes on
            raise unavailable("budget store", self.label, exc,
                              f"renew the lease of request {reservation.request_id}") from None
        return bool(int(held)) or not reservation.counter_keys

    # --- settle / release / usage --------------------------------------------------------
    async def settle(self, reservation: Reservation, entry: LedgerEntry) -> None:
        await self._send(self._settle_op(reservation, entry, entry.cost_nanos))

    async def release(self, reservation: Reservation, entry: LedgerEntry | None) -> None:
        await self._send(self._settle_op(reservation, entry, 0 if entry is None else entry.cost_nanos))

    async def record_refusal(self, entry: LedgerEntry) -> None:
        refused = as_refusal(entry)
        await self._send(self._settle_op(Reservation(refused.request_id, 0), refused, 0))

    async def record_usage(self, budget_id: str, nanos: int, entry: LedgerEntry, *,
                           idempotency_key: str | None = None, fingerprint: str | None = None) -> Recorded:
        """Charge usage that happened elsewhere (no limit check: the money is already spent).

        With ``idempotency_key`` the settle token is derived from it, so the settle script's
        ``done`` marker claims the key in the same atomic step that charges the counter; the marker
        holds the record's fingerprint, and a different record under the key is refused by the
        script, which appends its refusal entry instead (``IdempotencyKeyReused``).  While Redis
        is away the record waits in the outbox (answered as recorded); the check runs on replay."""
        now = self.now_ms()
        spec = self.compiled(budget_id).spec
        window = self.window(spec, now)
        if entry.cost_nanos != nanos:  # the ledger must say what the counter was charged
            entry = replace(entry, cost_nanos=nanos)
        token = "u" + (uuid.uuid4().hex if idempotency_key is None else
                       hashlib.sha256(f"{spec.id}\0{idempotency_key}".encode()).hexdigest()[:40])
        usage = BudgetReservation(
            request_id=entry.request_id, amount_nanos=nanos, budget_ids=(spec.id,), token=token,
            period_keys=(window.key,), counter_keys=(self.keys.counter(spec.partition, spec.id, window.key),),
            home=spec.partition)
        if idempotency_key is not None and self.pending():
            # a record answered as recorded while Redis was away may be this one, retried: replayed
            # first, it is the one that charges, and this call is answered as its duplicate
            with contextlib.suppress(RedisError, StoreUnavailable):
                await self.flush_outbox()
        op = self._settle_op(usage, entry, nanos,
                             done_ttl_ms=None if idempotency_key is None else IDEMPOTENCY_TTL_MS)
        if op is not None and idempotency_key is not None:
            op.args += [fingerprint or usage_fingerprint(spec.id, nanos),
                        entry_json(reused_entry(entry, nanos, idempotency_key)).decode()]
        verdict = await self._send(op)
        if verdict == "reused":
            raise key_reused(spec.id, idempotency_key or "", entry, nanos)
        return Recorded(self.status_now(budget_id), duplicate=verdict == "dup")

    def _settle_op(self, reservation: Reservation, entry: LedgerEntry | None, cost: int, *,
                   done_ttl_ms: int | None = None) -> Settlement | None:
        now = self.now_ms()
        if isinstance(reservation, BudgetReservation) and reservation.token:  # counters, or none (unbudgeted)
            home, token, counters = reservation.home, reservation.token, list(reservation.counter_keys)
            ids, periods = reservation.budget_ids, reservation.period_keys
            entry = None if entry is None else self.tagged(entry, reservation)
        elif entry is not None:  # no budget applies: the entry still goes to the shared ledger
            home, token, counters, ids, periods = entry.org or "", "n" + self._token(), [], (), ()
        else:
            return None
        args: list[str | int] = [now, token, str(cost), entry_json(entry).decode() if entry else "",
                       "0", done_ttl_ms or 2 * self.ttl_ms + 3_600_000]
        for budget_id, period_key in zip(ids, periods, strict=True):
            args += [self._expire_for(budget_id, period_key, now), self._marks(budget_id, now)]
        keys = [*counters, self.keys.reservation_prefix(home) + token, self.keys.expiries(home),
                self.keys.done(home, token), self.keys.ledger(home)]
        reserved = reservation.amount_nanos if overran(reservation, cost) else cost
        return Settlement(keys, args, ids, periods, reservation.request_id, home, reserved)

    def _expire_for(self, budget_id: str, period_key: str, now: int) -> int:
        """Expiry to (re)set on a charged counter: 0 keeps the one its reserve set (a past period)."""
        compiled = self._compiled.get(budget_id)
        if compiled is None:
            return 0
        window = self.window(compiled.spec, now)
        return self._expire_at(window.end_ms) if window.key == period_key else 0

    def _marks(self, budget_id: str, now: int) -> str:
        compiled = self._compiled.get(budget_id)
        if compiled is None:
            return ""
        limit = compiled.limit(now)
        known = self._threshold_marks.get(budget_id)
        if known is not None and known[0] is compiled and known[1] == limit:
            return known[2]
        marks = ",".join(f"{t.percent}:{t.amount(limit)}" for t in compiled.spec.thresholds)
        if len(self._threshold_marks) > 10_000:
            self._threshold_marks.clear()
        self._threshold_marks[budget_id] = (compiled, limit, marks)
        return marks

    async def _send(self, op: Settlement | None) -> str:
        """Run ``op``'s settle script: ``ok``, ``dup`` (already applied), ``reused`` (a usage
        record's key holds another record: its refusal was ledgered), or ``deferred`` (Redis is
        away: ``op`` is in the durable outbox before this returns)."""
        if op is None:
            return "ok"
        try:
            await self._register([op.home])
            reply = await self._scripts.run(self._settle, op.keys, op.args)
        except RedisError as exc:
            self._down(exc)
            await self._defer(op)
            log.error("budget_settle_deferred", request_id=op.request_id, error=str(exc), outbox=self.pending())
            return "deferred"
        return self._applied(op, reply)

    def _applied(self, op: Settlement, reply: list[Any]) -> str:
        now = self.now_ms()
        self._up(now)
        verdict = _text(reply[0])
        if verdict != "ok":
            return verdict  # already settled (a retry after a lost reply, an outbox replay)
        cost = int(_text(op.args[2]))
        for i, (budget_id, period_key) in enumerate(zip(op.budget_ids, op.period_keys, strict=True)):
            spent, reserved, fired = int(reply[1 + 3 * i]), int(reply[2 + 3 * i]), _text(reply[3 + 3 * i])
            percents = [int(p) for p in fired.split(",") if p]
            self._remember(budget_id, period_key, spent, reserved, now=now, fired=dict.fromkeys(percents, now))
            compiled = self._compiled.get(budget_id)
            if compiled is None:
                continue
            if percents:
                hit = tuple(t for t in compiled.spec.thresholds if t.percent in percents)
                self.emit_crossings(compiled, period_key, before=spent - cost, after=spent, fired=hit, now_ms=now,
                                    request_id=op.request_id)
            if cost > op.reserved_nanos:
                self.emit_overrun(compiled, period_key, spent=spent, now_ms=now, request_id=op.request_id,
                                  reserved=op.reserved_nanos, charged=cost)
        return verdict

    # --- outbox --------------------------------------------------------------------------
    async def _defer(self, op: Settlement) -> None:
        try:
            await self.outbox.put(op)
        except StoreUnavailable as exc:  # the local file too: keep it in memory, say so loudly
            self._unsaved.append(op)
            log.error("budget_outbox_unwritable", request_id=op.request_id, error=str(exc),
                      in_memory=len(self._unsaved))

    async def flush_outbox(self) -> int:
        """Replay what waits, oldest first; returns how many were sent.  ``RedisError``: the rest
        stays queued (durably) for the next try."""
        sent = 0
        async with self._outbox_lock:
            while self._unsaved:
                await self._replay(self._unsaved[0])
                self._unsaved.pop(0)
                sent += 1
            sent += await self.outbox.replay(self._replay)
        if sent:
            log.info("budget_outbox_replayed", count=sent, left=self.pending())
        return sent

    async def _replay(self, op: Settlement) -> None:
        await self._register([op.home])
        try:
            reply = await self._settle(keys=op.keys, args=op.args)
        except ResponseError as exc:
            if _transient(exc):
                raise  # Redis out of memory, loading, busy: the item waits, as for an outage
            # Redis ran the script and refused it (its data, not its availability): retried, it would
            # fail every time and hold every later settlement behind it — kept aside instead, whole
            await self._quarantine(op, exc)
            return
        verdict = self._applied(op, reply)  # "dup" if it already applied
        if verdict == "reused":  # answered as recorded while Redis was away; the script ledgered the refusal
            log.error("usage_idempotency_key_reused_on_replay", request_id=op.request_id, budget_ids=op.budget_ids)

    async def _quarantine(self, op: Settlement, exc: ResponseError) -> None:
        """The settlement Redis refuses every time, in the local ``ledger_quarantine`` (with its ledger
        entry), logged: an operator can see it and apply it by hand."""
        row = quarantine_row({"request_id": op.request_id, "settlement": op.body()}, exc)
        await self.store.run(lambda: self.store.conn().execute(INSERT_QUARANTINE, row))
        log.error("budget_settlement_quarantined", request_id=op.request_id, budget_ids=op.budget_ids,
                  error=str(exc)[:300])

    async def _save_unsaved(self) -> None:
        """At shutdown: what only memory held goes to the durable outbox if the file now allows."""
        while self._unsaved:
            try:
                await self.outbox.put(self._unsaved[0])
            except StoreUnavailable as exc:
                log.error("budget_settlements_lost_at_shutdown", count=len(self._unsaved), error=str(exc))
                return
            self._unsaved.pop(0)

    def pending(self) -> int:
        """Settlements waiting for Redis (durable outbox plus any held only in memory)."""
        return self.outbox.count + len(self._unsaved)


def _counters_from(fields: dict[bytes, bytes], now: int) -> Counters:
    fired = {int(k[1:]): int(v) for k, v in fields.items() if k.startswith(b"f")}
    return Counters(int(fields.get(b"spent", 0)), int(fields.get(b"reserved", 0)), fired, now)


class PackedConnection(Connection):
    """A TCP connection that packs commands with hiredis's C packer.

    redis-py's asyncio connection packs in Python (~19 µs for a reserve or settle script call with
    its 30 arguments and the ledger entry, against ~2 µs here), and every request sends two of
    those.  Arguments hiredis refuses (a bool) go to redis-py's packer, which raises its own error.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):  # "CONFIG GET": one argument per word, as redis-py sends it
            args = (*first.encode().split(), *args[1:])
        elif b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [pack_command(args)]
        except TypeError:
            packed: list[bytes] = super().pack_command(*args)
            return packed


def redis_client(url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_connections: int = 64) -> Redis:
    """A client that fails fast when Redis is down — one retry, at once, on a new connection when a
    connection breaks; none when Redis does not answer within ``timeout_s`` (``store.timeout_s``): a
    stalled Redis would keep the retry waiting as long again — and queues for one of
    ``max_connections`` connections (rather than failing) when many requests are in flight.  Plain
    TCP connections pack commands with hiredis (``PackedConnection``); TLS and Unix sockets keep
    redis-py's own classes."""
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=0)
    if pool.connection_class is Connection:
        pool.connection_class = PackedConnection
    return Redis(connection_pool=pool)


async def open_redis_accounts(url: str, store: SqliteStore, config: BudgetConfig, *,
                              clock: Callable[[], float] = time.time,
                              redis: Redis | None = None) -> RedisBudgetAccounts:
    """Budget accounts on the Redis at ``url``: commands go through ``redis`` when given (a client
    shared with other stores, closed by its owner), else through a client of their own; the ledger
    mirror's blocking reads always get a client of their own (longer timeouts)."""
    settings = config.settings
    keys = RedisKeys(settings.key_prefix)
    shared = redis is not None
    redis = redis if redis is not None else redis_client(url)
    budgets = BudgetStore(RedisDefinitions(redis, keys), config.static, clock)
    try:
        await budgets.load()
    except RedisError as exc:
        log.error("budget_definitions_unavailable", error=str(exc))  # static budgets still apply
    label = url.split("@")[-1]  # never log a password
    accounts = RedisBudgetAccounts(
        redis, store, budgets, keys, clock=clock, reservation_ttl_s=settings.reservation_ttl_s,
        refresh_interval_s=settings.refresh_interval_s, ledger_retention_days=settings.ledger_retention_days,
        mirror_redis=redis_client(url, timeout_s=5.0), label=label, owns_redis=not shared,
        trim_interval_s=settings.ledger_trim_interval_s, mirror_expiry_s=settings.mirror_expiry_s)
    await accounts.open()
    return accounts


_TRANSIENT = (OutOfMemoryError, ReadOnlyError, TryAgainError, ClusterDownError, NoPermissionError, NoScriptError)
_TRANSIENT_CODES = ("OOM", "BUSY", "LOADING", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "NOSCRIPT",
                    "NOPERM")


def _transient(exc: ResponseError) -> bool:
    """An error Redis answers while it cannot run scripts now (memory, loading, a failover, an ACL
    being fixed), as opposed to one about the script's own data, which a retry meets again."""
    return isinstance(exc, _TRANSIENT) or str(exc).startswith(_TRANSIENT_CODES)
