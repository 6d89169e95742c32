"""Trimming the shared ledger streams once every replica's mirror holds them (Redis mode).

Each replica mirrors every per-organisation stream ``P:{<org>}:ledger`` into its own SQLite file
(``ledger/mirror.py``) and commits each batch with the stream id it reached, fsync'd.  This
module lets the streams shrink without losing an entry any live replica still needs:

- **register and publish**: every ``ledger_trim_interval_s`` a replica writes its heartbeat into
  ``P:replicas`` (replica id -> ms) and, for every partition, the id of the last entry its mirror
  has committed into ``P:{<org>}:ledger:mirrors`` (replica id -> ``"<id> <ms>"``).  The replica id
  is kept in the replica's SQLite file, so a restart resumes the same registration;
- **trim**: one replica per round (the lease ``P:ledger-trim``) runs ``TRIM`` on each partition:
  an atomic script that takes the lowest published position and ``XTRIM … MINID`` just above it.
  Several trimmers at once are still safe: each script is atomic and a MINID only ever removes
  what every counted replica holds.  A partition is left alone while a live replica (heartbeat
  within ``mirror_expiry_s``) has not published a position in it yet (a replica that has not
  discovered a new organisation), and nothing younger than ``TRIM_GRACE_MS`` is removed, which
  covers a replica that registers while a trimmer is between reading the heartbeats and trimming;
- **gone for good**: a replica whose heartbeat and position are both older than
  ``mirror_expiry_s`` (default one day) stops holding the trim back; its position is deleted.  If
  it comes back, the stream may have moved past it: each stream keeps the bound it was trimmed to
  (``…:ledger:trimmed``) and a replica whose position lies below it logs ``ledger_mirror_gap``
  with the range its mirror may lack (reports that read PostgreSQL are not affected).

Other consumers of the streams (the PostgreSQL ledger sink) publish their positions the same
way under a replica id of their own, so the streams also wait for them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from costproxy.background import stop_if_cancelled
from costproxy.budgets.lua import RedisKeys
from costproxy.records import frozen
from costproxy.store.sqlite import SqliteStore

log = structlog.get_logger("costproxy.ledger")

TRIM_GRACE_MS = 60_000
START = "0-0"

_ID_FNS = """
local function parse(id)
  local ms, seq = string.match(id or '', '^(%d+)-(%d+)$')
  if not ms then return nil end
  return tonumber(ms), tonumber(seq)
end
local function less(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
"""

# KEYS: positions hash, trimmed bound; ARGV: replica, last mirrored id, now ms.
# Returns the bound the stream was trimmed to (nil: never trimmed).
PUBLISH = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
return redis.call('GET', KEYS[2])
"""

# KEYS: stream, positions hash, trimmed bound
# ARGV: now ms, expiry ms, grace ms, then the ids of the replicas whose heartbeat is live.
# Returns {'trimmed', removed, bound, lowest replica}, {'wait', replica} (a live replica has no
# position here yet, or an unreadable one), or {'none'} (nobody mirrors this stream: keep it).
TRIM = _ID_FNS + """
local now, expiry, grace = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local live, seen = {}, {}
for i = 4, #ARGV do live[ARGV[i]] = true end
local held = redis.call('HGETALL', KEYS[2])
local lms, lseq, lowest = nil, nil, ''
for j = 1, #held, 2 do
  local replica = held[j]
  local id, stamp = string.match(held[j + 1], '^(%S+) (%d+)$')
  local ms, seq = parse(id)
  if not ms then return {'wait', replica} end
  if not live[replica] and tonumber(stamp) < now - expiry then
    redis.call('HDEL', KEYS[2], replica)
  else
    seen[replica] = true
    if lms == nil or less(ms, seq, lms, lseq) then lms, lseq, lowest = ms, seq, replica end
  end
end
for replica in pairs(live) do
  if not seen[replica] then return {'wait', replica} end
end
if lms == nil then return {'none'} end
local bms, bseq = lms, lseq + 1
if now - grace < bms then bms, bseq = now - grace, 0 end
if bms < 0 then return {'trimmed', 0, '0-0', lowest} end
local bound = string.format('%d-%d', bms, bseq)
local removed = redis.call('XTRIM', KEYS[1], 'MINID', bound)
local oms, oseq = parse(redis.call('GET', KEYS[3]))
if not oms or less(oms, oseq, bms, bseq) then redis.call('SET', KEYS[3], bound) end
return {'trimmed', removed, bound, lowest}
"""


def id_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair (``"1700000000000-3"`` -> ``(1700000000000, 3)``)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def next_id(stream_id: str) -> str:
    ms, seq = id_order(stream_id)
    return f"{ms}-{seq + 1}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def replica_id(store: SqliteStore) -> str:
    """This replica's id, created once and kept in its SQLite file (``budget_marks``)."""

    def load() -> str:
        conn = store.conn()
        row = conn.execute("SELECT value FROM budget_marks WHERE name = 'replica'").fetchone()
        if row is not None:
            return str(row[0])
        made = uuid.uuid4().hex[:16]
        conn.execute("INSERT INTO budget_marks (name, value) VALUES ('replica', ?)", (made,))
        return made

    return await store.run(load)


@frozen
class Trimmed:
    partition: str
    verdict: str  # trimmed | wait | none
    removed: int = 0
    bound: str | None = None
    replica: str | None = None  # trimmed: the replica with the lowest position; wait: the one awaited


Positions = Callable[[], Mapping[str, str] | None]  # partition -> last id held; None: not active now


@dataclass
class StreamKeeper:
    """Publishes where this replica's consumers stand and trims the streams (see the module doc)."""

    redis: Redis
    keys: RedisKeys
    replica: str
    partitions: Callable[[], set[str]]
    clock: Callable[[], float]
    interval_s: float = 5.0
    expiry_s: float = 86_400.0
    grace_ms: int = TRIM_GRACE_MS
    sources: dict[str, Positions] = field(default_factory=dict)  # replica id -> its positions
    gaps: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)  # (replica, partition) -> range
    removed: int = 0  # entries this replica's trims removed since start
    _publish: Any = None
    _trim: Any = None

    def __post_init__(self) -> None:
        self._publish = self.redis.register_script(PUBLISH)
        self._trim = self.redis.register_script(TRIM)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def run(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                await self.publish()
                await self.trim()
            except RedisError as exc:
                stop_if_cancelled()
                log.warning("ledger_trim_round_failed", error=str(exc))
            await asyncio.sleep(self.interval_s)

    async def publish(self) -> None:
        """Heartbeat and position, per partition, of every active source."""
        now, partitions = self.now_ms(), sorted(self.partitions())
        for replica, positions in list(self.sources.items()):
            held = positions()
            if held is None:
                continue
            await self.redis.hset(self.keys.replicas, replica, str(now))
            async with self.redis.pipeline(transaction=False) as pipe:
                for partition in partitions:
                    at = held.get(partition, START)
                    await self._publish(keys=[self.keys.mirrors(partition), self.keys.trimmed(partition)],
                                        args=[replica, at, now], client=pipe)
                bounds = await pipe.execute()
            for partition, bound in zip(partitions, bounds, strict=True):
                self._check_gap(replica, partition, held.get(partition), None if bound is None else _text(bound))

    def _check_gap(self, replica: str, partition: str, held: str | None, bound: str | None) -> None:
        """A position below the trimmed bound: entries between them may be missing downstream."""
        if bound is None or (replica, partition) in self.gaps:
            return
        if id_order(bound) <= id_order(next_id(held or START)):
            return
        self.gaps[(replica, partition)] = (held or START, bound)
        if held is None:
            log.info("ledger_mirror_starts_after_trim", replica=replica, partition=partition, first=bound)
        else:
            log.error("ledger_mirror_gap", replica=replica, partition=partition, after=held, before=bound,
                      hint=f"this consumer was silent longer than mirror_expiry_s ({self.expiry_s:g} s); "
                           "entries between these ids may be missing from it")

    async def live_replicas(self) -> list[str]:
        beats = await self.redis.hgetall(self.keys.replicas)
        oldest = self.now_ms() - int(self.expiry_s * 1000)
        live: list[str] = []
        gone: list[str] = []
        for replica, beat in beats.items():
            (live if int(beat) >= oldest else gone).append(_text(replica))
        if gone:
            await self.redis.hdel(self.keys.replicas, *gone)
            log.warning("ledger_replicas_expired", replicas=gone, expiry_s=self.expiry_s)
        return sorted(live)

    async def trim(self, *, force: bool = False) -> list[Trimmed] | None:
        """Trim every partition's stream if this replica holds this round's lease (or ``force``);
        None when another replica trims this round."""
        lease_ms = max(1, int(self.interval_s * 1000) - 50)
        if not force and not await self.redis.set(self.keys.trim_lease, self.replica, nx=True, px=lease_ms):
            return None
        live = await self.live_replicas()
        now = self.now_ms()
        done: list[Trimmed] = []
        for partition in sorted(self.partitions()):
            keys = [self.keys.ledger(partition), self.keys.mirrors(partition), self.keys.trimmed(partition)]
            reply = await self._trim(keys=keys, args=[now, int(self.expiry_s * 1000), self.grace_ms, *live])
            done.append(_trimmed(partition, reply))
        removed = sum(t.removed for t in done)
        self.removed += removed
        if removed:
            log.info("ledger_streams_trimmed", removed=removed, partitions=len(done))
        return done


def _trimmed(partition: str, reply: list[Any]) -> Trimmed:
    verdict = _text(reply[0])
    if verdict == "trimmed":
        return Trimmed(partition, verdict, int(reply[1]), _text(reply[2]), _text(reply[3]))
    if verdict == "wait":
        return Trimmed(partition, verdict, replica=_text(reply[1]))
    return Trimmed(partition, verdict)
