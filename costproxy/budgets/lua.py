"""Redis key layout and the Lua scripts that move budget money atomically across replicas.

Key layout (``P`` is ``budgets.key_prefix``, default ``cp``; ``{…}`` is the Redis Cluster hash tag)::

    P:{<org>}:b:<budget_id>:<period_key>  hash   spent, reserved (nano-USD), f<pct> (threshold fired at ms)
    P:{<org>}:r:<token>                   hash   one reservation: <counter key> -> amount, _exp -> ms,
                                                 _o -> owner, _e -> its ledger entry if the owner dies;
                                                 no TTL: only a settle or the reclaim of its lapse may
                                                 drop it, since they give its amount back to the counters
    P:{<org>}:rx                          zset   reservation tokens by expiry (ms)
    P:{<org>}:alive:<owner>               string a replica process that holds reservations is running
                                                 (expires one reservation TTL after its last sign)
    P:{<org>}:d:<token>                   string settled marker (makes settle idempotent on retry and on
                                                 outbox replay; for usage records the token is
                                                 derived from the idempotency key, kept 7 days,
                                                 holding the fingerprint of the record that claimed it)
    P:{<org>}:ledger                      stream the ledger: one entry per settle (field ``e``, JSON)
    P:{<org>}:dv                          string the definitions version this partition's reserves
                                                 check against (a copy of P:{defs}:version, see below)
    P:{<org>}:ledger:mirrors              hash   replica -> "<last mirrored id> <published at ms>"
    P:{<org>}:ledger:trimmed              string the stream id below which entries were trimmed
    P:replicas                            hash   replica -> last heartbeat (ms): who mirrors the ledger
    P:ledger-trim                         string lease of the replica trimming the streams this round
    P:partitions                          set    every <org> partition in use (for mirrors, reclaim)
    P:{defs}:budgets / :overrides          hash   definitions by id (JSON), P:{defs}:version (counter)
    P:{defs}:audit                        stream audit trail of definition changes

``<org>`` is a budget's partition: the org id of an org budget, the ``org`` of any other budget,
``_`` for budgets without one.  Every key of one organisation carries the same hash tag, so on a
Redis Cluster a chain (org → team → project → user → key of that org) lives in one slot and one
script can check and reserve all of it.  Give non-org budgets their ``org`` on a Cluster: a chain
that mixes partitions works on a single Redis but a Cluster refuses it (CROSSSLOT), which the
accounts report as ``StoreUnavailable`` naming the budgets.  Scripts also touch keys they read
from a reservation (counters to release): those share the reservation's tag, which Cluster allows.

Period roll-over needs no cron and no lock: the period key is part of the counter's name, so the
first reservation of a new period simply starts a new hash; each counter gets ``PEXPIREAT`` at
its period's end plus the ledger retention, so old periods disappear on their own.

Definitions versions: a reserve must never run against definitions older than a change whose admin
call already answered (a budget created, deleted, its limit or kind changed, an override granted or
revoked). ``DEFINE`` bumps ``P:{defs}:version``; before the admin call answers, the writer raises
every registered partition's ``dv`` copy to that version (``DEFS_RAISE``, one call per partition:
each copy lives in its partition's slot, so the reserve script reads it without leaving its own).
The reserve script takes the caller's loaded version and answers ``stale`` (reserving nothing) when
the copy is newer, or missing; the caller reloads and tries again. The check is per partition, not
per budget, so a budget the caller does not know exists yet (created for its scope) is covered too,
and a caller without any budget checks its own partition (a ``RESERVE`` of no counter, whose hash
only journals the call). Why a missing copy is enough: a partition that was not in ``P:partitions``
when a writer raised the copies was added later, by a replica that registers a partition before its
first script there; that replica, answered ``stale`` for the missing copy, reloads after it
registered, so with a version at least the writer's, and seeds the copy with that (``DEFS_RAISE``
only ever raises it).

Numbers: Redis integers are 64-bit and every ``HINCRBY`` here is exact (amounts travel as
strings); comparisons run in Lua doubles, exact up to 2**53 nano-USD (about $9M) per counter, so
the accounts refuse limits above ``MAX_EXACT_NANOS`` in Redis mode.
"""

from __future__ import annotations

from costproxy.records import frozen

MAX_EXACT_NANOS = 2**52  # limit + any single amount stays below 2**53: exact in Lua doubles
SHARED_PARTITION = "_"


@frozen
class RedisKeys:
    prefix: str = "cp"

    def tag(self, partition: str) -> str:
        return f"{self.prefix}:{{{partition or SHARED_PARTITION}}}"

    def counter(self, partition: str, budget_id: str, period_key: str) -> str:
        return f"{self.tag(partition)}:b:{budget_id}:{period_key}"

    def reservation_prefix(self, partition: str) -> str:
        return f"{self.tag(partition)}:r:"

    def expiries(self, partition: str) -> str:
        return f"{self.tag(partition)}:rx"

    def done(self, partition: str, token: str) -> str:
        return f"{self.tag(partition)}:d:{token}"

    def alive(self, partition: str, owner: str) -> str:
        return f"{self.tag(partition)}:alive:{owner}"

    def ledger(self, partition: str) -> str:
        return f"{self.tag(partition)}:ledger"

    def mirrors(self, partition: str) -> str:
        return f"{self.tag(partition)}:ledger:mirrors"

    def trimmed(self, partition: str) -> str:
        return f"{self.tag(partition)}:ledger:trimmed"

    @property
    def replicas(self) -> str:
        return f"{self.prefix}:replicas"

    @property
    def trim_lease(self) -> str:
        return f"{self.prefix}:ledger-trim"

    @property
    def partitions(self) -> str:
        return f"{self.prefix}:partitions"

    def defs(self, name: str) -> str:
        return f"{self.prefix}:{{defs}}:{name}"

    def defs_seen(self, partition: str) -> str:
        """The copy of the definitions version that reserves in ``partition`` check against."""
        return f"{self.tag(partition)}:dv"


# A lapsed reservation records its owner (``_o``, a replica process whose ``alive`` key it keeps
# fresh while it runs) and the ledger entry to append if that owner died (``_e``).  Seen lapsed
# while the owner's ``alive`` key still runs, the decision waits until that key would expire
# (``_seen`` keeps when, on Redis's own clock: a caller's ``now`` may be late or skewed).  Found
# alive with a later expiry, the owner outlived the lapse, so it ended the request itself and
# settles it (late, from its outbox): the reservation is released.  Found dead (SIGKILL, crash,
# lost host), its call may have been billed: the reservation's worst case is charged and the
# ``lapsed`` entry (priced at the amount held) appended, with the settled marker set so that a
# settlement the replica did save (its outbox, replayed after a restart) cannot charge twice.
# A lapsed charge's settled marker outlives any outbox replay of the real settlement (7 days): a
# replica back after a long outage must find it, or the call would be ledgered and charged twice.
LAPSE_MARKER_MS = 7 * 86_400_000

_RECLAIM_FN = f"""
local LAPSE_MARKER_MS = {LAPSE_MARKER_MS}
""" + """
local function lapse(zkey, rprefix, token)
  local tag = string.sub(rprefix, 1, #rprefix - 2)
  local rkey = rprefix .. token
  local held = redis.call('HGETALL', rkey)
  local owner, entry, seen = nil, nil, nil
  for j = 1, #held, 2 do
    if held[j] == '_o' then owner = held[j + 1]
    elseif held[j] == '_e' then entry = held[j + 1]
    elseif held[j] == '_seen' then seen = tonumber(held[j + 1]) end
  end
  local charge = false
  if owner and entry then
    local left = redis.call('PTTL', tag .. 'alive:' .. owner)
    if left > 0 then
      local clock = redis.call('TIME')
      local expires = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000) + left
      if not seen or expires <= seen then  -- the heartbeat seen before has not run out yet: look again then
        if not seen then redis.call('HSET', rkey, '_seen', expires) end
        redis.call('ZADD', zkey, expires + 1, token)
        return 0
      end
    else
      charge = redis.call('SET', tag .. 'd:' .. token, '1', 'PX', LAPSE_MARKER_MS, 'NX') ~= false
    end
  end
  for j = 1, #held, 2 do  -- a counter past its period's retention is gone: nothing to give back there
    if string.sub(held[j], 1, 1) ~= '_' and held[j + 1] ~= '0' and redis.call('EXISTS', held[j]) == 1 then
      redis.call('HINCRBY', held[j], 'reserved', '-' .. held[j + 1])
      if charge then redis.call('HINCRBY', held[j], 'spent', held[j + 1]) end
    end
  end
  if charge then redis.call('XADD', tag .. 'ledger', '*', 'e', entry) end
  redis.call('DEL', rkey)
  redis.call('ZREM', zkey, token)
  return 1
end

local function reclaim(zkey, rprefix, now, limit)
  local tokens = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, limit)
  local count = 0
  for _, token in ipairs(tokens) do
    count = count + lapse(zkey, rprefix, token)
  end
  return count
end
"""

# stale(dv, known): dv is the partition's definitions version copy (a key the script declares),
# known the version the caller's chain was built from.  {'stale', copy} when the copy is newer
# (copy -1: missing, which counts as newer), else nil.
_STALE_FN = """
local function stale(dv, known)
  local seen = redis.call('GET', dv)
  if not seen then return {'stale', -1} end
  if tonumber(seen) > tonumber(known) then return {'stale', tonumber(seen)} end
  return nil
end
"""

# KEYS: counter_1..counter_n, reservation, expiries, definitions version copy of the home partition
# ARGV: now, ttl, amount, token, reservation prefix, reclaim batch, then per counter: limit
#       (-1: soft), gate (-1: none), expire-at ms (0: never, a total budget without end); then the
#       owner (this replica process, kept alive by this script, RENEW and the maintenance loop),
#       the ledger entry to append if the owner dies holding the reservation (both may be ''),
#       and the definitions version the chain was built from
# Returns {'ok', spent_1, reserved_1, ...} (before this reservation), {'over'|'gate', i, spent,
# reserved}, {'dup'} when this token is already reserved (a client retry after a lost reply), or
# {'stale', copy} when the definitions changed since the caller loaded them (nothing reserved).
RESERVE = _RECLAIM_FN + _STALE_FN + """
local n = #KEYS - 3
local now, ttl, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local res, zkey = KEYS[n + 1], KEYS[n + 2]
if redis.call('EXISTS', res) == 1 then return {'dup'} end
local changed = stale(KEYS[n + 3], ARGV[9 + 3 * n])
if changed then return changed end
reclaim(zkey, ARGV[5], now, tonumber(ARGV[6]))
local out = {'ok'}
for i = 1, n do
  local c = redis.call('HMGET', KEYS[i], 'spent', 'reserved')
  local spent, reserved = tonumber(c[1] or '0'), tonumber(c[2] or '0')
  local base = 6 + 3 * (i - 1)
  local limit, gate = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if gate >= 0 and spent >= gate then return {'gate', i, spent, reserved} end
  if limit >= 0 and spent + reserved + amount > limit then return {'over', i, spent, reserved} end
  out[#out + 1] = spent
  out[#out + 1] = reserved
end
local fields = {}  -- the reservation hash, written in one HSET
for i = 1, n do
  if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[i], 'reserved', ARGV[3]) end
  if ARGV[6 + 3 * i] ~= '0' then redis.call('PEXPIREAT', KEYS[i], ARGV[6 + 3 * i]) end
  fields[#fields + 1] = KEYS[i]
  fields[#fields + 1] = ARGV[3]
end
fields[#fields + 1] = '_exp'
fields[#fields + 1] = ARGV[1] + 0 + ttl
local owner, entry = ARGV[7 + 3 * n], ARGV[8 + 3 * n]
local owned = owner and owner ~= ''
if owned then
  fields[#fields + 1] = '_o'
  fields[#fields + 1] = owner
  if entry and entry ~= '' then
    fields[#fields + 1] = '_e'
    fields[#fields + 1] = entry
  end
end
redis.call('HSET', res, unpack(fields))
if owned then
  redis.call('SET', string.sub(ARGV[5], 1, #ARGV[5] - 2) .. 'alive:' .. owner, '1', 'PX', ttl)
end
redis.call('ZADD', zkey, now + ttl, ARGV[4])
return out
"""

# KEYS: counter_1..counter_n, reservation, expiries, done marker, ledger stream
# ARGV: now, token, cost, entry JSON ('' for none), unused, done TTL ms, then per counter:
#       expire-at ms, thresholds "pct:amount,..." (amount: nano-USD that reaches pct);
#       then, for a usage record with an idempotency key only: its fingerprint, its refusal entry JSON
# ARGV[5] once carried a time-based MINID; the stream is now trimmed only once every replica has
# mirrored it (ledger/trim.py).  The slot stays so outbox items saved by older versions replay as is.
# The fingerprint is the done marker's value (so it lives exactly as long as the claim); a marker
# set without one holds '1' (a settle, or a claim from before fingerprints): always a plain 'dup'.
# Returns {'dup'} if already settled (by the same record), {'reused'} if the marker holds another
# fingerprint (the refusal entry is appended to the ledger instead), else {'ok', spent_1,
# reserved_1, fired_1, ...} after it.
SETTLE = """
local n = #KEYS - 4
local res, zkey, done, stream = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3], KEYS[n + 4]
local fingerprint, refused = ARGV[7 + 2 * n], ARGV[8 + 2 * n]
if not redis.call('SET', done, fingerprint or '1', 'PX', ARGV[6], 'NX') then
  local first = fingerprint and redis.call('GET', done)
  if first and first ~= '1' and first ~= fingerprint then
    redis.call('XADD', stream, '*', 'e', refused)
    return {'reused'}
  end
  return {'dup'}
end
local held = redis.call('HGETALL', res)
local left = {}  -- counter -> its reserved amount once this reservation is dropped
for j = 1, #held, 2 do  -- a counter past its retention is gone: nothing to give back, nothing to recreate
  if string.sub(held[j], 1, 1) ~= '_' and held[j + 1] ~= '0' and redis.call('EXISTS', held[j]) == 1 then
    left[held[j]] = redis.call('HINCRBY', held[j], 'reserved', '-' .. held[j + 1])
  end
end
redis.call('DEL', res)
redis.call('ZREM', zkey, ARGV[2])
local out = {'ok'}
for i = 1, n do
  local base = 6 + 2 * (i - 1)
  local spent
  if ARGV[3] ~= '0' then
    spent = redis.call('HINCRBY', KEYS[i], 'spent', ARGV[3])
    if ARGV[base + 1] ~= '0' then redis.call('PEXPIREAT', KEYS[i], ARGV[base + 1]) end
  else
    spent = tonumber(redis.call('HGET', KEYS[i], 'spent') or '0')
  end
  local fired = ''
  for pct, amt in string.gmatch(ARGV[base + 2], '(%d+):(%d+)') do
    if spent >= tonumber(amt) and redis.call('HSETNX', KEYS[i], 'f' .. pct, ARGV[1]) == 1 then
      fired = fired .. pct .. ','
    end
  end
  out[#out + 1] = spent
  out[#out + 1] = left[KEYS[i]] or tonumber(redis.call('HGET', KEYS[i], 'reserved') or '0')
  out[#out + 1] = fired
end
if ARGV[4] ~= '' then
  redis.call('XADD', stream, '*', 'e', ARGV[4])
end
return out
"""

# KEYS: reservation, expiries; ARGV: token, now, lease ms.  Extends a lease: 1, or 0 when the
# reservation is gone (reclaimed after its lease lapsed, or settled), so the request must end.
RENEW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local owner = redis.call('HGET', KEYS[1], '_o')
redis.call('HDEL', KEYS[1], '_seen')
if owner then
  redis.call('SET', string.sub(KEYS[1], 1, #KEYS[1] - #ARGV[1] - 2) .. 'alive:' .. owner, '1', 'PX', ARGV[3])
end
local expires = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], '_exp', expires)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
return 1
"""

# KEYS: expiries; ARGV: reservation prefix, now, batch.  Returns how many were reclaimed.
RECLAIM = _RECLAIM_FN + """
return reclaim(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
"""

# KEYS: P:{defs}:version.  The definitions version, sent as a script so that it travels with the
# reserve and settle calls (and within a request's time for the store: store/wait.py).
DEFS_VERSION = """
return tonumber(redis.call('GET', KEYS[1]) or '0')
"""

# KEYS: definitions version copy of a partition; ARGV: a version.  Raises the copy to it (never
# lowers it); returns the copy's value after.
DEFS_RAISE = """
local seen = tonumber(redis.call('GET', KEYS[1]) or '-1')
if seen >= tonumber(ARGV[1]) then return seen end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(ARGV[1])
"""

# KEYS: definitions hash, version, audit stream; ARGV: mode (create|update|delete|put), id, body,
# audit JSON.  Returns the new version if applied, 0 if create found the id or update/delete did not.
DEFINE = """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1
if ARGV[1] == 'create' and exists then return 0 end
if (ARGV[1] == 'update' or ARGV[1] == 'delete') and not exists then return 0 end
if ARGV[1] == 'delete' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
local version = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'a', ARGV[4])
return version
"""
