-- Prepended to every script of the Redis budget store (guardpool/store/redis.py).
--
-- KEYS (every key lives under one hash tag {prefix}, so one cluster slot):
--   KEYS[1]  P:counters   hash of lifetime counters: field 'u'..counter = used,
--                         'r'..counter = reserved (counter = key .. '\n' .. dimension)
--   KEYS[2]  P:deadlines  sorted set of live reservation ids, score = deadline ms
--   KEYS[3]  P:seq        a sequence that makes window members unique
--   KEYS[4]  P:due        the earliest deadline that may still be live (see expire())
--   KEYS[5]  P:res:<id>   this step's reservation record (reserve, settle, release)
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
-- Wire formats (the twins are the array_like Structs in store/redis.py): items
-- arrive as one msgpack array of [key, dimension, limit, amount, headroom,
-- window_ms, check] arrays, read here through the names below (it[AMOUNT]);
-- answers leave as one msgpack array [ok, counts, refused, expired(, items)]
-- where counts is used1, reserved1, used2, ... in item order. This is the hot
-- path: positional arrays unpack in about half the time of named maps, and
-- reading them in place allocates no second table per item.
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
local C, DEADLINES, SEQ, DUE, P, now
-- P:due as expire() left it (every step that reserves expires first).
local due = nil
local steps = {}

-- Finished reservations answer retries for this long past their deadline.
local KEEP_FINISHED_MS = 24 * 3600 * 1000
-- guardpool.policy.bounds.COUNTER_CAP
local CAP = 4503599627370496
-- Overdue reservations charged per call, at most: one call never blocks the server long.
local EXPIRE_BATCH = 1000
-- P:due when nothing is live (2^53: later than any deadline).
local NOTHING_DUE = '9007199254740992'

local function begin(keys, argv)
  C, DEADLINES, SEQ, DUE = keys[1], keys[2], keys[3], keys[4]
  P = string.sub(C, 1, #C - #':counters')
  due = nil
  now = tonumber(argv[1])
  if now == nil then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
end

local function int(v) return string.format('%d', v) end

-- An item's fields: the wire's seven, then what named() adds: its two hash
-- fields (used, reserved) and, when windowed, its two window keys.
local KEY, DIMENSION, LIMIT, AMOUNT, HEADROOM, WINDOW_MS, CHECK = 1, 2, 3, 4, 5, 6, 7
local U, R, WKEY, SKEY = 8, 9, 10, 11

-- The items of the wire, ready to use. Windowed items take their two keys from
-- `wkeys` (in item order), which come from KEYS at reserve and from the record later.
local function named(packed, wkeys)
  local items = cmsgpack.unpack(packed)
  local k = 1
  for _, it in ipairs(items) do
    local counter = it[KEY] .. '\n' .. it[DIMENSION]
    it[U], it[R] = 'u' .. counter, 'r' .. counter
    if it[WINDOW_MS] > 0 then
      it[WKEY], it[SKEY] = wkeys[k], wkeys[k + 1]
      k = k + 2
    end
  end
  return items
end

-- The grant rule: the twin of refuses() in store/base.py (the conformance suite
-- holds both to the same answers).
local function refuses(it, used, reserved)
  local total = used + reserved
  if total + it[AMOUNT] > CAP then return true end
  return it[CHECK] and (total >= it[LIMIT] or total + it[AMOUNT] + it[HEADROOM] > it[LIMIT])
end

-- What a charge of `amount` adds to a counter at `used`: never past CAP.
local function capped(used, amount)
  return math.max(0, math.min(amount, CAP - used))
end

-- A windowed counter is a sorted set of charges beside a running sum, so a read
-- costs O(log n) plus the charges it prunes, each pruned once.
local function window_used(it)
  if redis.call('EXISTS', it[WKEY]) == 0 then
    redis.call('DEL', it[SKEY])
    return 0
  end
  local horizon = now - it[WINDOW_MS]
  local sum = tonumber(redis.call('GET', it[SKEY]) or '0')
  local old = redis.call('ZRANGEBYSCORE', it[WKEY], '-inf', horizon)
  if #old > 0 then
    for _, m in ipairs(old) do
      sum = sum - tonumber(string.match(m, ':(%-?%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', it[WKEY], '-inf', horizon)
    redis.call('SET', it[SKEY], int(sum), 'KEEPTTL')
  end
  return sum
end

local function window_charge(it, amount)
  -- The sum after pruning: the clamp sees what engine.charge sees.
  amount = capped(window_used(it), amount)
  local seq = redis.call('INCR', SEQ)
  redis.call('ZADD', it[WKEY], now, seq .. ':' .. int(amount))
  redis.call('INCRBY', it[SKEY], int(amount))
  -- A window after its newest charge a counter holds nothing that still counts:
  -- both keys go together, which bounds memory to the charges inside one window.
  redis.call('PEXPIRE', it[WKEY], it[WINDOW_MS])
  redis.call('PEXPIRE', it[SKEY], it[WINDOW_MS])
end

-- The items' counts as the answer carries them: used1, reserved1, used2, ...
-- Lifetime counters are fields of one hash, read with one HMGET whatever the
-- number of limits and dimensions (its reply table becomes the counts).
local function read(items)
  if #items == 0 then return {} end
  local fields = {}
  for i, it in ipairs(items) do
    fields[2 * i - 1], fields[2 * i] = it[U], it[R]
  end
  local counts = redis.call('HMGET', C, unpack(fields))
  for i, it in ipairs(items) do
    if it[WINDOW_MS] > 0 then
      counts[2 * i - 1] = window_used(it)
    else
      counts[2 * i - 1] = tonumber(counts[2 * i - 1] or 0)
    end
    counts[2 * i] = tonumber(counts[2 * i] or 0)
  end
  return counts
end

local function write(values)
  local args = {}
  for f, v in pairs(values) do
    args[#args + 1] = f
    args[#args + 1] = int(v)
  end
  if #args > 0 then redis.call('HSET', C, unpack(args)) end
end

-- Adds deltas (field -> amount) in one HMGET and one HSET; answers field -> new value.
local function apply(deltas)
  local fields = {}
  for f in pairs(deltas) do fields[#fields + 1] = f end
  if #fields == 0 then return {} end
  local vals = redis.call('HMGET', C, unpack(fields))
  local out = {}
  for i, f in ipairs(fields) do
    local old = tonumber(vals[i] or 0)
    if string.byte(f) == 117 then  -- 'u': a used counter never passes CAP
      out[f] = old + capped(old, deltas[f])
    else
      out[f] = old + deltas[f]
    end
  end
  write(out)
  return out
end

local function add(deltas, f, amount) deltas[f] = (deltas[f] or 0) + amount end

-- An item's reservation becomes a charge of `amount`.
local function charge(deltas, it, amount)
  add(deltas, it[R], 0 - it[AMOUNT])
  if it[WINDOW_MS] > 0 then
    window_charge(it, amount)
  else
    add(deltas, it[U], amount)
  end
end

local function record_key(id) return P .. ':res:' .. id end

-- state, items, deadline and the items' bytes of a record (nil when there is none).
local function load(key)
  local v = redis.call('HMGET', key, 's', 'i', 'd', 'w')
  if not v[1] then return nil end
  local wkeys = {}
  if v[4] then wkeys = cmsgpack.unpack(v[4]) end
  return v[1], named(v[2], wkeys), tonumber(v[3]), v[2]
end

-- A live reservation's deadline may become the earliest one.
local function live(id, deadline)
  redis.call('ZADD', DEADLINES, deadline, id)
  if due == nil or deadline < due then
    due = deadline
    redis.call('SET', DUE, int(deadline))
  end
end

-- A reservation leaves the live set: its record answers retries for a while.
local function finish(key, id, state, deadline)
  redis.call('HSET', key, 's', state)
  redis.call('ZREM', DEADLINES, id)
  redis.call('PEXPIRE', key, math.max(deadline - now, 0) + KEEP_FINISHED_MS)
end

-- Charges overdue reservations at their estimate; answers [id, charged] pairs,
-- charged being dimension, amount, dimension, amount, ...
--
-- P:due never lies late: every live deadline is >= it (live() lowers it; a
-- settle may leave it lower than needed, which costs one empty scan). So while
-- it is not in the past nothing can be overdue and the scan is skipped: one GET
-- instead of a sorted-set range on every step. A missing P:due (never set, or
-- lost) only means one scan, which sets it again.
local function expire()
  due = tonumber(redis.call('GET', DUE))
  if due ~= nil and due >= now then return {} end
  local out, deltas = {}, {}
  local ids = redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', '(' .. now,
                         'LIMIT', 0, EXPIRE_BATCH)
  for _, id in ipairs(ids) do
    local key = record_key(id)
    local state, items, deadline = load(key)
    if state == 'live' then
      -- Per dimension, the largest estimate charged (as engine.expire reports it).
      local charged, order = {}, {}
      for _, it in ipairs(items) do
        charge(deltas, it, it[AMOUNT])
        if charged[it[DIMENSION]] == nil then order[#order + 1] = it[DIMENSION] end
        if charged[it[DIMENSION]] == nil or it[AMOUNT] > charged[it[DIMENSION]] then
          charged[it[DIMENSION]] = it[AMOUNT]
        end
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
  redis.call('SET', DUE, first[2] or NOTHING_DUE)
  return out
end
