"""The learning store in Redis, shared by every replica (see ``learning/store.py``).

Keys (one hash tag, so a cluster keeps them in one slot and the script may touch them all):

- ``<prefix>:{learning}:fb:<request id>`` — hash: source → the feedback's JSON;
- ``<prefix>:{learning}:evidence`` — hash: ``task|bucket|model|n`` and ``…|s`` → float sums,
  moved with ``HINCRBYFLOAT`` by the difference a write makes, inside the script that writes it;
- ``<prefix>:{learning}:judge:<day>`` — the judge's spend that UTC day in nano-USD (expires after
  two days).
"""

from __future__ import annotations

from redis.asyncio import Redis

from costproxy.learning.estimates import Cell, Evidence, cell_field, parse_cell_field
from costproxy.learning.feedback import Feedback, feedback_from_stored
from costproxy.learning.store import contribution
from costproxy.store.outage import reachable

# KEYS: feedback hash, evidence hash.  ARGV: source, new JSON, new cell field ('' none), new n, new s.
# The replaced feedback's contribution is taken back from its own cell (read from its JSON).
PUT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if old then
  local f = cjson.decode(old)
  if f['model'] ~= cjson.null and f['task_type'] ~= cjson.null and f['bucket'] ~= cjson.null
     and f['weight'] > 0 then
    local cell = f['task_type'] .. '|' .. string.format('%d', f['bucket']) .. '|' .. f['model']
    redis.call('HINCRBYFLOAT', KEYS[2], cell .. '|n', tostring(-f['weight']))
    redis.call('HINCRBYFLOAT', KEYS[2], cell .. '|s', tostring(-f['weight'] * f['score']))
  end
end
if ARGV[3] ~= '' and tonumber(ARGV[4]) > 0 then
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3] .. '|n', ARGV[4])
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[3] .. '|s', ARGV[5])
end
return old
"""

# KEYS: the day's spend.  ARGV: nanos, cap, ttl seconds.  1: charged, 0: over the cap.
CHARGE = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[1])
if total > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], total, 'EX', ARGV[3])
return 1
"""


class RedisLearningStore:
    def __init__(self, redis: Redis, prefix: str, *, label: str = "redis") -> None:
        self.redis = redis
        self.base = f"{prefix}:{{learning}}"
        self.label = label
        self._put = redis.register_script(PUT)
        self._charge = redis.register_script(CHARGE)

    async def open(self) -> None:
        return None

    async def feedback_for(self, request_id: str) -> list[Feedback]:
        with reachable(self.label, "learning store", f"read the feedback on request {request_id}"):
            found = await self.redis.hgetall(f"{self.base}:fb:{request_id}")
        return sorted((feedback_from_stored(v) for v in found.values()), key=lambda f: f.source)

    async def put(self, feedback: Feedback) -> Feedback | None:
        n, successes = contribution(feedback)
        cell = feedback.cell
        with reachable(self.label, "learning store", "record the feedback"):
            old = await self._put(keys=[f"{self.base}:fb:{feedback.request_id}", f"{self.base}:evidence"],
                                  args=[feedback.source, feedback.stored(), "" if cell is None else cell_field(cell),
                                        repr(n), repr(successes)])
        return None if old is None else feedback_from_stored(old)

    async def evidence(self) -> dict[Cell, Evidence]:
        with reachable(self.label, "learning store", "read the learned estimates"):
            raw = await self.redis.hgetall(f"{self.base}:evidence")
        sums: dict[Cell, list[float]] = {}
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else str(key)
            head, _, which = name.rpartition("|")
            cell = parse_cell_field(head)
            if cell is None or which not in ("n", "s"):
                continue
            sums.setdefault(cell, [0.0, 0.0])[0 if which == "n" else 1] = float(value)
        return {cell: Evidence(n, s) for cell, (n, s) in sums.items()}

    async def charge(self, day: str, nanos: int, cap: int) -> bool:
        with reachable(self.label, "learning store", "charge the judge's daily budget"):
            return bool(await self._charge(keys=[f"{self.base}:judge:{day}"], args=[nanos, cap, 2 * 86_400]))

    async def spent(self, day: str) -> int:
        with reachable(self.label, "learning store", "read the judge's daily spend"):
            value = await self.redis.get(f"{self.base}:judge:{day}")
        return int(value or 0)
