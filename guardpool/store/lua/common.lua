-- Prepended to every script of the Redis budget store (guardpool/store/redis.py).
--
-- KEYS (every key lives under one hash tag {prefix}, so one cluster slot):
--   KEYS[1]  P:counters   hash of lifetime counters: field 'u'..counter = used,
--                         'r'..counter = reserved (counter = key .. '\n' .. dimension)
--   KEYS[2]  P:deadlines  sorted set of live reservation ids, score = deadline ms
--   KEYS[3]  P:seq        a sequence that makes window members unique
--   KEYS[4]  P:res:<id>   this step's reservation record (reserve, settle, release)
--   then, per windowed item of the step, its charges (sorted set P:w:<counter>,
--   member 'seq:amount', score = ms) and their running sum (P:ws:<counter>).
-- Expiry and settle also touch the records and window keys of reservations made
-- earlier; those names were passed as KEYS when they were reserved and are kept
-- in the record.
--
-- ARGV[1] is "now" in ms from the caller's clock, or '' for the server's TIME
-- (the default: hosts with skewed clocks still agree on windows and deadlines).
--
-- Items arrive as msgpack maps with ReserveItem's field names, and answers leave
-- as maps with StoreAnswer's and CounterState's names: nothing is positional.
-- Amounts are Lua numbers (doubles): exact up to 2^53. The Python side refuses
-- any amount, headroom or limit above 10^15 before calling (store/base.py), and
-- no counter passes CAP = 2^52 here: a reservation that would take used +
-- reserved past it is refused, a charge that would take used past it is clamped
-- (capped() below, the twin of capped_charge()). CAP + 2 x 10^15 < 2^53, so
-- every sum computed on the way is exact, and '%d' never sees a value that wraps.

local C, DEADLINES, SEQ = KEYS[1], KEYS[2], KEYS[3]
local P = string.sub(C, 1, #C - #':counters')
-- Finished reservations answer retries for this long past their deadline.
local KEEP_FINISHED_MS = 24 * 3600 * 1000
-- guardpool.policy.bounds.COUNTER_CAP
local CAP = 4503599627370496
-- Overdue reservations charged per call, at most: one call never blocks the server long.
local EXPIRE_BATCH = 1000

local now = tonumber(ARGV[1])
if now == nil then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(v) return string.format('%d', v) end
local function counter(it) return it.key .. '\n' .. it.dimension end

-- Windowed items take their two keys from KEYS, in item order, from KEYS[first];
-- answers the items and those keys (kept in the reservation's record).
local function decode_items(packed, first)
  local items = cmsgpack.unpack(packed)
  local wkeys = {}
  local k = first
  for _, it in ipairs(items) do
    if it.window_ms > 0 then
      it.wkey, it.skey = KEYS[k], KEYS[k + 1]
      wkeys[#wkeys + 1], wkeys[#wkeys + 2] = KEYS[k], KEYS[k + 1]
      k = k + 2
    end
  end
  return items, wkeys
end

-- A record keeps its items as the bytes the reserve received (never packed
-- again) beside their window keys.
local function record_items(rec)
  local items = cmsgpack.unpack(rec.items)
  local k = 1
  for _, it in ipairs(items) do
    if it.window_ms > 0 then
      it.wkey, it.skey = rec.wkeys[k], rec.wkeys[k + 1]
      k = k + 2
    end
  end
  return items
end

-- The grant rule: the twin of refuses() in store/base.py (the conformance suite
-- holds both to the same answers).
local function refuses(it, used, reserved)
  local total = used + reserved
  if total + it.amount > CAP then return true end
  return it.check and (total >= it.limit or total + it.amount + it.headroom > it.limit)
end

-- What a charge of `amount` adds to a counter at `used`: never past CAP.
local function capped(used, amount)
  return math.max(0, math.min(amount, CAP - used))
end

-- A windowed counter is a sorted set of charges beside a running sum, so a read
-- costs O(log n) plus the charges it prunes, each pruned once.
local function window_used(it)
  if redis.call('EXISTS', it.wkey) == 0 then
    redis.call('DEL', it.skey)
    return 0
  end
  local horizon = now - it.window_ms
  local sum = tonumber(redis.call('GET', it.skey) or '0')
  local old = redis.call('ZRANGEBYSCORE', it.wkey, '-inf', horizon)
  if #old > 0 then
    for _, m in ipairs(old) do
      sum = sum - tonumber(string.match(m, ':(%-?%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', it.wkey, '-inf', horizon)
    redis.call('SET', it.skey, int(sum), 'KEEPTTL')
  end
  return sum
end

local function window_charge(it, amount)
  -- The sum after pruning: the clamp sees what engine.charge sees.
  amount = capped(window_used(it), amount)
  local seq = redis.call('INCR', SEQ)
  redis.call('ZADD', it.wkey, now, seq .. ':' .. int(amount))
  redis.call('INCRBY', it.skey, int(amount))
  -- A window after its newest charge a counter holds nothing that still counts:
  -- both keys go together, which bounds memory to the charges inside one window.
  redis.call('PEXPIRE', it.wkey, it.window_ms)
  redis.call('PEXPIRE', it.skey, it.window_ms)
end

-- used[i], reserved[i] of every item. Lifetime counters are fields of one hash,
-- read with one HMGET whatever the number of limits and dimensions.
local function read(items)
  local used, reserved = {}, {}
  if #items == 0 then return used, reserved end
  local fields = {}
  for _, it in ipairs(items) do
    fields[#fields + 1] = 'u' .. counter(it)
    fields[#fields + 1] = 'r' .. counter(it)
  end
  local vals = redis.call('HMGET', C, unpack(fields))
  for i, it in ipairs(items) do
    if it.window_ms > 0 then
      used[i] = window_used(it)
    else
      used[i] = tonumber(vals[2 * i - 1] or 0)
    end
    reserved[i] = tonumber(vals[2 * i] or 0)
  end
  return used, reserved
end

local function states_of(items, used, reserved)
  local out = {}
  for i, it in ipairs(items) do
    out[i] = {key = it.key, dimension = it.dimension, limit = it.limit,
              used = used[i], reserved = reserved[i]}
  end
  return out
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
    if string.sub(f, 1, 1) == 'u' then
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
  add(deltas, 'r' .. counter(it), 0 - it.amount)
  if it.window_ms > 0 then
    window_charge(it, amount)
  else
    add(deltas, 'u' .. counter(it), amount)
  end
end

local function record_key(id) return P .. ':res:' .. id end

local function load(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

local function save(key, id, rec)
  redis.call('SET', key, cmsgpack.pack(rec))
  if rec.state == 'live' then
    redis.call('ZADD', DEADLINES, rec.deadline, id)
  else
    redis.call('ZREM', DEADLINES, id)
    redis.call('PEXPIRE', key, math.max(rec.deadline - now, 0) + KEEP_FINISHED_MS)
  end
end

-- Charges overdue reservations at their estimate; answers Expired maps.
local function expire()
  local out, deltas = {}, {}
  local due = redis.call('ZRANGEBYSCORE', DEADLINES, '-inf', '(' .. now,
                         'LIMIT', 0, EXPIRE_BATCH)
  for _, id in ipairs(due) do
    local key = record_key(id)
    local rec = load(key)
    if rec and rec.state == 'live' then
      -- Per dimension, the largest estimate charged (as engine.expire reports it).
      local charged = {}
      for _, it in ipairs(record_items(rec)) do
        charge(deltas, it, it.amount)
        if charged[it.dimension] == nil or it.amount > charged[it.dimension] then
          charged[it.dimension] = it.amount
        end
      end
      rec.state = 'expired'
      save(key, id, rec)
      out[#out + 1] = {reservation_id = id, charged = charged}
    else
      redis.call('ZREM', DEADLINES, id)
    end
  end
  apply(deltas)
  return out
end
