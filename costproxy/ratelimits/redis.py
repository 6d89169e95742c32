"""Rate limits shared by replicas through Redis (``store.url: redis://…``).

Layout (``P`` is ``budgets.key_prefix``)::

    P:{<org>}:rl:<scope type>:<scope id>:r   hash {f: fill, a: at ms}   a requests bucket (GCRA state)
    P:{<org>}:rl:<scope type>:<scope id>:t   hash {f: fill, a: at ms}   a tokens bucket
    P:{rldefs}:limits   hash   limit id -> the limit as JSON (API-managed limits)
    P:{rldefs}:scopes   hash   scope -> limit id (a scope has one limit)
    P:{rldefs}:owners   hash   limit id -> scope
    P:{rldefs}:version  counter bumped by every change; replicas reload when it moves

An admission is one Lua script (``ADMIT``) over every bucket of the request — all of one org, so
they share its hash tag (the one its budgets use) and live in one Redis Cluster slot: it reads
each bucket, drains it to now, and either charges all of them or none.  The time is Redis's own
(``TIME``), one clock for every replica (tests may pass theirs).  A bucket key expires once it
would have drained (an empty bucket equals no key), so nothing needs a cron.  The arithmetic is
``ratelimits.gcra``'s, in integers below 2**53 (exact in Lua's doubles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from costproxy.budgets.batch import script_sender
from costproxy.ratelimits.gcra import Meter, Reading, Verdict
from costproxy.ratelimits.model import RateLimit, limit_body, limit_from_body, scope_name
from costproxy.store.outage import reachable

STORE = "rate-limit store"
DOING = {"admit": "draw from the rate limits", "peek": "read the rate limits' buckets"}

_LEVEL = """
local SCALE = 60000
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function level(key, rate)
  local state = redis.call('HMGET', key, 'f', 'a')
  if not state[1] then return 0 end
  local held, at = tonumber(state[1]), tonumber(state[2])
  if now <= at then return held end
  local fill = held - (now - at) * rate
  if fill < 0 then return 0 end
  return fill
end
"""

# ARGV: mode (admit | peek), now ms ('' = Redis TIME), then per key: rate, burst, cost.
# Returns {admitted, wait ms, index of a meter that can never fit (0: none), fill per key...}.
ADMIT = _LEVEL + """
local n = #KEYS
local levels, fills = {}, {}
local wait, never = 0, 0
for i = 1, n do
  local rate = tonumber(ARGV[i * 3])
  local burst = tonumber(ARGV[i * 3 + 1])
  local cost = tonumber(ARGV[i * 3 + 2])
  levels[i] = level(KEYS[i], rate)
  fills[i] = levels[i] + cost * SCALE
  if cost > burst then
    if never == 0 then never = i end
  elseif fills[i] > burst * SCALE then
    local w = math.ceil((fills[i] - burst * SCALE) / rate)
    if w > wait then wait = w end
  end
end
local admitted = 1
if ARGV[1] == 'peek' or never > 0 or wait > 0 then
  admitted = 0
  fills = levels
else
  for i = 1, n do
    local rate = tonumber(ARGV[i * 3])
    redis.call('HSET', KEYS[i], 'f', string.format('%d', fills[i]), 'a', string.format('%d', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(fills[i] / rate) + 1000)
  end
end
local out = {admitted, wait, never}
for i = 1, n do out[3 + i] = string.format('%d', fills[i]) end
return out
"""

# ARGV: '', now ms ('' = Redis TIME), then per key: rate, units to add (negative: give back).
CORRECT = _LEVEL + """
for i = 1, #KEYS do
  local rate = tonumber(ARGV[i * 2 + 1])
  local fill = level(KEYS[i], rate) + tonumber(ARGV[i * 2 + 2]) * SCALE
  if fill <= 0 then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'f', string.format('%d', fill), 'a', string.format('%d', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil(fill / rate) + 1000)
  end
end
return 1
"""

# KEYS: limits, scopes, owners, version; ARGV: mode (create | update | delete), id, scope, body.
DEFINE = """
local mode, id, scope, body = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local held = redis.call('HGET', KEYS[3], id)
if mode == 'delete' then
  if not held then return 'missing' end
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[2], held)
  redis.call('INCR', KEYS[4])
  return 'ok'
end
if mode == 'create' and held then return 'exists' end
if mode == 'update' and not held then return 'missing' end
local holder = redis.call('HGET', KEYS[2], scope)
if holder and holder ~= id then return 'scope:' .. holder end
if held and held ~= scope then redis.call('HDEL', KEYS[2], held) end
redis.call('HSET', KEYS[1], id, body)
redis.call('HSET', KEYS[2], scope, id)
redis.call('HSET', KEYS[3], id, scope)
redis.call('INCR', KEYS[4])
return 'ok'
"""


class RedisBuckets:
    """GCRA buckets in Redis (see the module docstring); ``clock``: tests only (else Redis TIME)."""

    def __init__(self, redis: Redis, prefix: str, *, label: str = "redis",
                 clock: Callable[[], float] | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.label = label
        self.clock = clock
        self._admit = redis.register_script(ADMIT)
        self._correct = redis.register_script(CORRECT)
        # admit and correct: one write per loop turn on a pipelined connection of their own, as the
        # budget scripts (budgets/batch.py): redis-py's per-command path cost ~200 µs of CPU per call
        self._scripts = script_sender(redis)

    def _key(self, partition: str, bucket: str) -> str:
        return f"{self.prefix}:{{{partition}}}:{bucket}"

    def _now(self) -> str:
        return "" if self.clock is None else str(int(self.clock() * 1000))

    async def _run(self, mode: str, partition: str, meters: Sequence[Meter]) -> Verdict:
        args: list[str | int] = [mode, self._now()]
        for meter in meters:
            args += [meter.rate, meter.burst, meter.cost]
        with reachable(self.label, STORE, DOING[mode]):
            out = await self._scripts.run(self._admit, [self._key(partition, m.bucket) for m in meters], args)
        fills = tuple(int(value) for value in out[3:])
        never = int(out[2]) - 1 if int(out[2]) else None
        return Verdict(bool(int(out[0])), fills, int(out[1]), never)

    async def admit(self, partition: str, meters: Sequence[Meter]) -> Verdict:
        return await self._run("admit", partition, meters)

    async def peek(self, partition: str, meters: Sequence[Meter]) -> tuple[Reading, ...]:
        return (await self._run("peek", partition, meters)).readings(meters)

    async def correct(self, partition: str, meters: Sequence[Meter], deltas: Sequence[int]) -> None:
        args: list[str | int] = ["", self._now()]
        for meter, delta in zip(meters, deltas, strict=True):
            args += [meter.rate, delta]
        with reachable(self.label, STORE, "give back or charge the tokens the provider billed"):
            await self._scripts.run(self._correct, [self._key(partition, m.bucket) for m in meters], args)

    async def close(self) -> None:
        self._scripts.close()  # its own connection; the Redis client is shared: its owner (store.backend) closes it


class RedisLimitDefinitions:
    """API-managed limits in Redis hashes; every change is one script that bumps the version."""

    def __init__(self, redis: Redis, prefix: str, *, label: str = "redis") -> None:
        self.redis = redis
        self.label = label
        base = f"{prefix}:{{rldefs}}"
        self.keys = [f"{base}:limits", f"{base}:scopes", f"{base}:owners", f"{base}:version"]
        self._define = redis.register_script(DEFINE)

    async def load(self) -> tuple[list[RateLimit], int]:
        with reachable(self.label, STORE, "load the rate limits"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys[0])
                pipe.get(self.keys[3])
                bodies, version = await pipe.execute()
        return [limit_from_body(body) for body in bodies.values()], int(version or 0)

    async def version(self) -> int:
        with reachable(self.label, STORE, "read the rate limits' version"):
            return int(await self.redis.get(self.keys[3]) or 0)

    async def put(self, limit: RateLimit, *, create: bool) -> str | None:
        return await self._apply("create" if create else "update", limit.id, scope_name(limit), limit_body(limit))

    async def delete(self, limit_id: str) -> bool:
        return await self._apply("delete", limit_id, "", "") is None

    async def _apply(self, mode: str, limit_id: str, scope: str, body: str) -> str | None:
        with reachable(self.label, STORE, f"{mode} the rate limit {limit_id!r}"):
            answer = await self._define(keys=self.keys, args=[mode, limit_id, scope, body])
        text = answer.decode() if isinstance(answer, bytes) else str(answer)
        if text == "ok":
            return None
        if text == "exists":
            return f"a rate limit with id {limit_id!r} already exists"
        if text.startswith("scope:"):
            return f"the scope already has rate limit {text[6:]!r}; a scope has one limit (update that one)"
        return f"no rate limit with id {limit_id!r}"
