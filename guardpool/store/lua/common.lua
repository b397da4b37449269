-- Prepended to every script of the Redis budget store (guardpool/store/redis.py).
--
-- KEYS (every key lives under one hash tag {prefix}, so one cluster slot):
--   KEYS[1]  P:counters   hash of lifetime counters: field 'u'..counter = used,
--                         'r'..counter = reserved (counter = key .. '\n' .. dimension),
--                         and field 'due': the earliest deadline that may still be
--                         live (see expire()), read in the same HMGET as the counters
--   KEYS[2]  P:deadlines  sorted set of live reservation ids, score = deadline ms
--   KEYS[3]  P:seq        a sequence that makes window members unique
--   KEYS[4]  P:rsv:<id>   this step's reservation record (reserve, settle, release)
--   then, per windowed item of the step, its charges (sorted set P:w:<counter>,
--   member 'seq:amount', score = ms) and their running sum (P:ws:<counter>).
-- Expiry and settle also touch the records and window keys of reservations made
-- earlier; those names were passed as KEYS when they were reserved and are kept
-- in the record.
--
-- ARGV[1] is "now" in ms from the caller's clock, or '' for the server's TIME
-- (the default: hosts with skewed clocks still agree on windows and deadlines).
--
-- Two ways to run: where the server has functions (Redis >= 7, Valkey) this file
-- and every step file are one FUNCTION library, loaded once, and a step is an
-- FCALL (this file's definitions are then made once, not on every call); else
-- this file + one step file is a script run by EVALSHA. Either way a step is a
-- function(KEYS, ARGV) in `steps` that starts with begin(KEYS, ARGV), which sets
-- the per-call state below.
--
-- Wire formats (the twins are in store/redis.py: pack_items() and the
-- array_like Structs): the n items of a step arrive as ONE flat msgpack array:
-- first their 2n hash fields, ready made by the client (u1, r1, u2, r2, ...:
-- one HMGET reads them as they lie, and no counter name is built here), then
-- six values per item: dimension, limit, amount, headroom, window_ms, check,
-- read through the offsets below (a[b + AMOUNT], b = base(n, i)). Answers leave
-- as one msgpack array [ok, counts, refused, expired(, items)] where counts is
-- used1, reserved1, used2, ... in item order. This is the hot path: a flat
-- array unpacks in about half the time of one array per item, and the field
-- names the client sends save three string concatenations per item per step.
--
-- A reservation record is a hash: s = state, d = deadline, i = the items bytes
-- as the reserve received them (never packed again), w = packed window keys
-- (only when some item is windowed), a = the reserve's answer (for a retry).
--
-- Amounts are Lua numbers (doubles): exact up to 2^53. The Python side refuses
-- any amount, headroom or limit above 10^15 before calling (store/base.py), and
-- no counter passes CAP = 2^52 here: a reservation that would take used +
-- reserved past it is refused, a charge that would take used past it is clamped
-- (capped() below, the twin of capped_charge()). CAP + 2 x 10^15 < 2^53, so
-- every sum computed on the way is exact, and '%d' never sees a value that wraps.

-- Per-call state, set by begin().
local C, DEADLINES, SEQ, P, now
-- The counters hash's 'due' field as this step last read or wrote it.
local due = nil
local steps = {}

-- Finished reservations answer retries for this long past their deadline.
local KEEP_FINISHED_MS = 24 * 3600 * 1000
-- guardpool.policy.bounds.COUNTER_CAP
local CAP = 4503599627370496
-- Overdue reservations charged per call, at most: one call never blocks the server long.
local EXPIRE_BATCH = 1000
-- 'due' when nothing is live (2^53: later than any deadline).
local NOTHING_DUE = '9007199254740992'

local function begin(keys, argv)
  C, DEADLINES, SEQ = keys[1], keys[2], keys[3]
  P = nil  -- the prefix, made from C when expiry needs a record key
  due = nil
  now = tonumber(argv[1])
  if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
end

local function int(v) return string.format('%d', v) end

-- The six values of item i (1-based) of n start after a[base(n, i)].
local DIMENSION, LIMIT, AMOUNT, HEADROOM, WINDOW_MS, CHECK = 1, 2, 3, 4, 5, 6
local function base(n, i) return 2 * n + 6 * (i - 1) end

-- The items of the wire: {a = the flat array, n = count, win = {[i] = window}}
-- where a windowed item's window is {zset key, sum key, window_ms}, its two
-- keys taken from `wkeys` in item order (from KEYS at reserve, from the record later).
local function items_of(packed, wkeys)
  local a = cmsgpack.unpack(packed)
  local n = #a / 8
  local win = nil
  local k = 1
  for i = 1, n do
    local w = a[base(n, i) + WINDOW_MS]
    if w > 0 then
      win = win or {}
      win[i] = {wkeys[k], wkeys[k + 1], w}
      k = k + 2
    end
  end
  return {a = a, n = n, win = win}
end

-- The grant rule: the twin of refused_items() in store/base.py (the conformance suite
-- holds both to the same answers). b = base(n, i) of the item.
local function refuses(a, b, used, reserved)
  local total = used + reserved
  local amount = a[b + AMOUNT]
  if total + amount > CAP then return true end
  local limit = a[b + LIMIT]
  return a[b + CHECK] and (total >= limit or total + amount + a[b + HEADROOM] > limit)
end

-- What a charge of `amount` adds to a counter at `used`: never past CAP.
local function capped(used, amount)
  return math.max(0, math.min(amount, CAP - used))
end

-- A windowed counter is a sorted set of charges beside a running sum, so a read
-- costs O(log n) plus the charges it prunes, each pruned once.
local function window_used(w)
  local wkey, skey = w[1], w[2]
  if redis.call('EXISTS', wkey) == 0 then
    redis.call('DEL', skey)
    return 0
  end
  local horizon = now - w[3]
  local sum = tonumber(redis.call('GET', skey) or '0')
  local old = redis.call('ZRANGEBYSCORE', wkey, '-inf', horizon)
  if #old > 0 then
    for _, m in ipairs(old) do
      sum = sum - tonumber(string.match(m, ':(%-?%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', wkey, '-inf', horizon)
    redis.call('SET', skey, int(sum), 'KEEPTTL')
  end
  return sum
end

local function window_charge(w, amount)
  -- The sum after pruning: the clamp sees what engine.charge sees.
  amount = capped(window_used(w), amount)
  local seq = redis.call('INCR', SEQ)
  redis.call('ZADD', w[1], now, seq .. ':' .. int(amount))
  redis.call('INCRBY', w[2], int(amount))
  -- A window after its newest charge a counter holds nothing that still counts:
  -- both keys go together, which bounds memory to the charges inside one window.
  redis.call('PEXPIRE', w[1], w[3])
  redis.call('PEXPIRE', w[2], w[3])
end

-- 'due' and every item's two hash fields in one HMGET. Answers the counts as
-- the answer carries them (used1, reserved1, ...: a windowed item's used is its
-- window sum) and, when `by_field`, the hash values by field name; sets `due`.
local function read(items, by_field)
  local a, n = items.a, items.n
  local vals = redis.call('HMGET', C, 'due', unpack(a, 1, 2 * n))
  due = tonumber(vals[1])
  local counts, cur = {}, nil
  for j = 1, 2 * n do counts[j] = tonumber(vals[j + 1]) or 0 end
  if by_field then
    cur = {}
    for j = 1, 2 * n do cur[a[j]] = counts[j] end
  end
  if items.win then
    for i, w in pairs(items.win) do counts[2 * i - 1] = window_used(w) end
  end
  return counts, cur
end

-- May a live deadline have passed? 'due' never lies late: every live deadline
-- is >= it (a reserve lowers it; a settle may leave it lower than needed, which
-- costs one empty scan). A missing field (never set, or lost) only means one
-- scan, which sets it again.
local function overdue() return due == nil or due < now end

local function write(values)
  local args = {}
  for f, v in pairs(values) do
    args[#args + 1] = f
    args[#args + 1] = int(v)
  end
  if #args > 0 then redis.call('HSET', C, unpack(args)) end
end

-- Adds deltas (field -> amount) in one HMGET and one HSET (expiry, release).
local function apply(deltas)
  local fields = {}
  for f in pairs(deltas) do fields[#fields + 1] = f end
  if #fields == 0 then return end
  local vals = redis.call('HMGET', C, unpack(fields))
  local out = {}
  for i, f in ipairs(fields) do
    local old = tonumber(vals[i]) or 0
    if string.byte(f) == 117 then  -- 'u': a used counter never passes CAP
      out[f] = old + capped(old, deltas[f])
    else
      out[f] = old + deltas[f]
    end
  end
  write(out)
end

local function add(deltas, f, amount) deltas[f] = (deltas[f] or 0) + amount end

local function record_key(id)
  P = P or string.sub(C, 1, #C - #':counters')
  return P .. ':rsv:' .. id
end

-- state, items, deadline and the items' bytes of a record (nil when there is none).
local function load(key)
  local v = redis.call('HMGET', key, 's', 'i', 'd', 'w')
  if not v[1] then return nil end
  local wkeys = {}
  if v[4] then wkeys = cmsgpack.unpack(v[4]) end
  return v[1], items_of(v[2], wkeys), tonumber(v[3]), v[2]
end

-- A reservation leaves the live set: its record answers retries for a while.
local function finish(key, id, state, deadline)
  redis.call('HSET', key, 's', state)
  redis.call('ZREM', DEADLINES, id)
  redis.call('PEXPIRE', key, int(math.max(deadline - now, 0) + KEEP_FINISHED_MS))
end

-- Charges overdue reservations at their estimate; answers [id, charged] pairs,
-- charged being dimension, amount, dimension, amount, ... Callers run it only
-- when overdue() (the usual step skips the range query).
local function expire()
  local out, deltas = {}, {}
  local ids = redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', '(' .. now,
                         'LIMIT', 0, EXPIRE_BATCH)
  for _, id in ipairs(ids) do
    local key = record_key(id)
    local state, items, deadline = load(key)
    if state == 'live' then
      -- Per dimension, the largest estimate charged (as engine.expire reports it).
      local a, n = items.a, items.n
      local charged, order = {}, {}
      for i = 1, n do
        local b = base(n, i)
        local d, amount = a[b + DIMENSION], a[b + AMOUNT]
        add(deltas, a[2 * i], 0 - amount)
        if items.win and items.win[i] then
          window_charge(items.win[i], amount)
        else
          add(deltas, a[2 * i - 1], amount)
        end
        if charged[d] == nil then order[#order + 1] = d end
        if charged[d] == nil or amount > charged[d] then charged[d] = amount end
      end
      local flat = {}
      for _, d in ipairs(order) do
        flat[#flat + 1], flat[#flat + 2] = d, charged[d]
      end
      finish(key, id, 'expired', deadline)
      out[#out + 1] = {id, flat}
    else
      redis.call('ZREM', DEADLINES, id)
    end
  end
  apply(deltas)
  -- The next earliest deadline (past the batch when more were overdue).
  local first = redis.call('ZRANGE', DEADLINES, 0, 0, 'WITHSCORES')
  due = tonumber(first[2] or NOTHING_DUE)
  redis.call('HSET', C, 'due', first[2] or NOTHING_DUE)
  return out
end
