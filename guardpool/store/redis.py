"""Counters in Redis: one budget shared by many hosts, exact under races.

Each operation of the protocol is one Lua script, so the whole multi-limit,
multi-dimension reservation is atomic on the server: no host can read "39 of
40" between another host's read and write. The scripts implement the same
algorithm as ``engine.py`` (the memory and SQLite backends), and the same
conformance suite runs against all three.

- Time comes from the server (``TIME``), never from a host's clock, so hosts
  with skewed clocks agree on rolling windows and reservation deadlines.
- Every key lives under one hash tag (``{prefix}``), so the scripts also run on
  Redis Cluster; the price is that one budget namespace lives in one slot.
- Reservation records are packed with cmsgpack, which keeps integers exact
  (cjson would print large amounts as ``1e+12``).
- Any connection error or timeout raises StoreUnavailable: the enforcer
  denies. A dropped connection is retried once at once (every script is
  idempotent by reservation id, so a reply lost in transit cannot count twice),
  a timeout never: the worst case is about 2 x connect_timeout_ms +
  op_timeout_ms. redis-py's connection pool reconnects by itself when the
  server returns; scripts flushed by a restart are loaded again on NOSCRIPT.
- Every script names one key (``P:seq``) in KEYS so that cluster-aware clients
  route it to the slot of the hash tag.

Keys (``P`` = ``{prefix}``, ``<counter>`` = key and dimension): ``P:counters``,
one hash of lifetime counters (fields ``u<counter>`` used, ``r<counter>``
reserved); per windowed counter a sorted set ``P:w:<counter>`` of charges
(member ``seq:amount``, score = server ms) and its running sum
``P:ws:<counter>``, both expiring one window after the newest charge;
``P:res:<id>`` reservation records; ``P:deadlines`` a sorted set of live
reservations by deadline; ``P:seq`` a sequence for unique charge members.
Amounts travel through Lua numbers (doubles): exact up to 2**53, i.e. $9
billion in micro-units.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import msgspec
import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from guardpool.store.base import (
    CounterState,
    Expired,
    ReserveItem,
    ReserveResult,
    SettleResult,
)
from guardpool.store.errors import StoreUnavailable

T = TypeVar("T")

# Finished reservations are kept this long after their deadline for idempotent retries.
_KEEP_FINISHED_MS = 24 * 3600 * 1000
# Overdue reservations charged per script call, at most.
_EXPIRE_BATCH = 1000

_LIB = r"""
local P = ARGV[1]
local C = P .. ':counters'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function field(it) return it[1] .. '\n' .. it[2] end
local function wkey(it) return P .. ':w:' .. field(it) end
local function skey(it) return P .. ':ws:' .. field(it) end
local function int(v) return string.format('%d', v) end

-- A windowed counter is a sorted set of charges (member 'seq:amount', score = ms)
-- beside a running sum, so a read costs O(log n) plus the charges it prunes, each
-- pruned once: amortised O(log n) per charge, never a walk over the whole window.
local function window_used(it)
  local k, sk = wkey(it), skey(it)
  if redis.call('EXISTS', k) == 0 then
    redis.call('DEL', sk)
    return 0
  end
  local horizon = now - it[6]
  local sum = tonumber(redis.call('GET', sk) or '0')
  local old = redis.call('ZRANGEBYSCORE', k, '-inf', horizon)
  if #old > 0 then
    for _, m in ipairs(old) do
      sum = sum - tonumber(string.match(m, ':(%-?%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', k, '-inf', horizon)
    redis.call('SET', sk, int(sum), 'KEEPTTL')
  end
  return sum
end

local function window_charge(it, amount)
  local k, sk = wkey(it), skey(it)
  local seq = redis.call('INCR', P .. ':seq')
  redis.call('ZADD', k, now, seq .. ':' .. int(amount))
  redis.call('INCRBY', sk, int(amount))
  -- Window ms after its newest charge a counter holds nothing that still counts:
  -- both keys go together, which bounds memory to the charges inside one window.
  redis.call('PEXPIRE', k, it[6])
  redis.call('PEXPIRE', sk, it[6])
end

-- Lifetime counters are fields of one hash: 'u' .. field (used), 'r' .. field
-- (reserved). Every Lua-to-Redis call costs a few microseconds, so a step reads
-- all its fields in one HMGET and writes them in one HSET, whatever the number
-- of limits and dimensions.

-- (used, reserved) of every item, flat.
local function read(items)
  local fields = {}
  for _, it in ipairs(items) do
    fields[#fields + 1] = 'u' .. field(it)
    fields[#fields + 1] = 'r' .. field(it)
  end
  local vals = redis.call('HMGET', C, unpack(fields))
  local out = {}
  for i, it in ipairs(items) do
    if it[6] > 0 then
      out[2 * i - 1] = window_used(it)
    else
      out[2 * i - 1] = tonumber(vals[2 * i - 1] or 0)
    end
    out[2 * i] = tonumber(vals[2 * i] or 0)
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

-- Adds deltas (field -> amount); answers field -> new value.
local function apply(deltas)
  local fields = {}
  for f in pairs(deltas) do fields[#fields + 1] = f end
  if #fields == 0 then return {} end
  local vals = redis.call('HMGET', C, unpack(fields))
  local out = {}
  for i, f in ipairs(fields) do out[f] = tonumber(vals[i] or 0) + deltas[f] end
  write(out)
  return out
end

local function add(deltas, f, amount) deltas[f] = (deltas[f] or 0) + amount end

-- An item's reservation becomes a charge of `amount`.
local function charge(deltas, it, amount)
  add(deltas, 'r' .. field(it), 0 - it[4])
  if it[6] > 0 then
    window_charge(it, amount)
  else
    add(deltas, 'u' .. field(it), amount)
  end
end

local function load(id)
  local raw = redis.call('GET', P .. ':res:' .. id)
  if not raw then return nil end
  return cmsgpack.unpack(raw)
end

local function save(id, rec)
  local k = P .. ':res:' .. id
  redis.call('SET', k, cmsgpack.pack(rec))
  if rec.state == 'live' then
    redis.call('ZADD', P .. ':deadlines', rec.deadline, id)
  else
    redis.call('ZREM', P .. ':deadlines', id)
    redis.call('PEXPIRE', k, math.max(rec.deadline - now, 0) + KEEP_FINISHED_MS)
  end
end

-- Charges overdue reservations at their estimate; at most EXPIRE_BATCH per call
-- so that one script never blocks the server for long (the rest go next call).
local function expire()
  local out, deltas = {}, {}
  local due = redis.call('ZRANGEBYSCORE', P .. ':deadlines', '-inf', '(' .. now,
                         'LIMIT', 0, EXPIRE_BATCH)
  for _, id in ipairs(due) do
    local rec = load(id)
    if rec and rec.state == 'live' then
      local most, charged = {}, {}
      for _, it in ipairs(rec.items) do
        charge(deltas, it, it[4])
        -- Per dimension, the largest estimate charged (as engine.expire reports it).
        if most[it[2]] == nil or it[4] > most[it[2]] then most[it[2]] = it[4] end
      end
      for dim, amount in pairs(most) do
        charged[#charged + 1] = dim
        charged[#charged + 1] = amount
      end
      rec.state = 'expired'
      save(id, rec)
      out[#out + 1] = {id, charged}
    else
      redis.call('ZREM', P .. ':deadlines', id)
    end
  end
  apply(deltas)
  return out
end
"""

_RESERVE = r"""
local id, ttl = ARGV[2], tonumber(ARGV[3])
local items = cmsgpack.unpack(ARGV[4])
local prev = load(id)
if prev then return prev.reply end
local expired = expire()
local before = read(items)
local refused = {}
for i, it in ipairs(items) do
  local total = before[2 * i - 1] + before[2 * i]
  if it[7] == 1 and (total >= it[3] or total + it[4] + it[5] > it[3]) then
    refused[#refused + 1] = i - 1
  end
end
local reply
local rec = {items = items, deadline = now + ttl}
if #refused > 0 then
  reply = {0, before, refused, expired}
  rec.state = 'refused'
else
  -- Reserved values were just read: the new ones need no second read.
  local new = {}
  for i, it in ipairs(items) do
    local f = 'r' .. field(it)
    new[f] = (new[f] or before[2 * i]) + it[4]
  end
  write(new)
  local after = {}
  for i, it in ipairs(items) do
    after[2 * i - 1] = before[2 * i - 1]
    after[2 * i] = new['r' .. field(it)]
  end
  reply = {1, after, refused, expired}
  rec.state = 'live'
end
-- Stored packed: a retry answers these very bytes.
rec.reply = cmsgpack.pack(reply)
save(id, rec)
return rec.reply
"""

_SETTLE = r"""
local id = ARGV[2]
local actual = cmsgpack.unpack(ARGV[3])
expire()
local rec = load(id)
if not rec then return cmsgpack.pack({0, {}}) end
local function described(items, s)
  local out = {}
  for i, it in ipairs(items) do
    out[#out + 1] = it[1]
    out[#out + 1] = it[2]
    out[#out + 1] = it[3]
    out[#out + 1] = s[2 * i - 1]
    out[#out + 1] = s[2 * i]
  end
  return out
end
if rec.state ~= 'live' then
  return cmsgpack.pack({0, described(rec.items, read(rec.items))})
end
local deltas = {}
for _, it in ipairs(rec.items) do
  local amount = actual[it[2]]
  if amount == nil then amount = it[4] end
  charge(deltas, it, amount)
end
local new = apply(deltas)
rec.state = 'settled'
save(id, rec)
local s = {}
for i, it in ipairs(rec.items) do
  if it[6] > 0 then
    s[2 * i - 1] = window_used(it)
  else
    s[2 * i - 1] = new['u' .. field(it)]
  end
  s[2 * i] = new['r' .. field(it)]
end
return cmsgpack.pack({1, described(rec.items, s)})
"""

_RELEASE = r"""
local id = ARGV[2]
local rec = load(id)
if not rec or rec.state ~= 'live' then return 0 end
local deltas = {}
for _, it in ipairs(rec.items) do add(deltas, 'r' .. field(it), 0 - it[4]) end
apply(deltas)
rec.state = 'released'
save(id, rec)
return 1
"""

_STATES = r"""
return cmsgpack.pack(read(cmsgpack.unpack(ARGV[2])))
"""

_EXPIRE = r"""
return cmsgpack.pack(expire())
"""


class RedisSettings(Protocol):
    @property
    def url(self) -> str | None: ...
    @property
    def key_prefix(self) -> str: ...
    @property
    def connect_timeout_ms(self) -> int: ...
    @property
    def op_timeout_ms(self) -> int: ...


# Scripts answer one msgpack string (cmsgpack): redis-py would otherwise parse a
# nested reply element by element in Python, which cost more than the script.
_ExpiredReply = list[tuple[str, list[str | int]]]
_decode_reserve = msgspec.msgpack.Decoder(tuple[int, list[int], list[int], _ExpiredReply]).decode
_decode_settle = msgspec.msgpack.Decoder(tuple[int, list[str | int]]).decode
_decode_states = msgspec.msgpack.Decoder(list[int]).decode
_decode_expired = msgspec.msgpack.Decoder(_ExpiredReply).decode


def _pack_items(items: Sequence[ReserveItem]) -> bytes:
    return msgspec.msgpack.encode(
        [
            [i.key, i.dimension, i.limit, i.amount, i.headroom, i.window_ms, int(i.check)]
            for i in items
        ]
    )


class RedisStore:
    def __init__(self, config: RedisSettings) -> None:
        if not config.url:
            raise ValueError("the redis store needs a url")
        self._prefix = "{" + config.key_prefix + "}"
        self._client = redis.Redis.from_url(
            config.url,
            socket_connect_timeout=config.connect_timeout_ms / 1000,
            socket_timeout=config.op_timeout_ms / 1000,
            # redis-py's default retries three times with up to seconds of backoff,
            # which would hold a denied check far past op_timeout_ms.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        )
        self._keys = [self._prefix + ":seq"]
        lib = (
            f"local KEEP_FINISHED_MS = {_KEEP_FINISHED_MS}\n"
            f"local EXPIRE_BATCH = {_EXPIRE_BATCH}\n" + _LIB
        )
        self._reserve = self._client.register_script(lib + _RESERVE)
        self._settle = self._client.register_script(lib + _SETTLE)
        self._release = self._client.register_script(lib + _RELEASE)
        self._states = self._client.register_script(lib + _STATES)
        self._expire = self._client.register_script(lib + _EXPIRE)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise StoreUnavailable(f"budget store unavailable: redis: {exc}") from None
        except redis.exceptions.RedisError as exc:
            raise StoreUnavailable(f"budget store unavailable: redis error: {exc}") from None

    @staticmethod
    def _states_of(items: Sequence[ReserveItem], flat: Sequence[int]) -> tuple[CounterState, ...]:
        return tuple(
            CounterState(
                key=item.key,
                dimension=item.dimension,
                used=flat[2 * i],
                reserved=flat[2 * i + 1],
                limit=item.limit,
            )
            for i, item in enumerate(items)
        )

    @staticmethod
    def _expired(raw: _ExpiredReply) -> tuple[Expired, ...]:
        return tuple(
            Expired(
                reservation_id=rid,
                charged={
                    str(dim): int(amount) for dim, amount in zip(c[::2], c[1::2], strict=True)
                },
            )
            for rid, c in raw
        )

    def reserve(
        self, reservation_id: str, items: Sequence[ReserveItem], ttl_ms: int
    ) -> ReserveResult:
        raw = self._call(
            lambda: self._reserve(
                keys=self._keys, args=[self._prefix, reservation_id, ttl_ms, _pack_items(items)]
            )
        )
        granted, flat, refused, expired = _decode_reserve(raw)
        return ReserveResult(
            granted=bool(granted),
            states=self._states_of(items, flat),
            refused=tuple(refused),
            expired=self._expired(expired),
        )

    def settle(self, reservation_id: str, actual: Mapping[str, int]) -> SettleResult:
        raw = self._call(
            lambda: self._settle(
                keys=self._keys,
                args=[self._prefix, reservation_id, msgspec.msgpack.encode(dict(actual))],
            )
        )
        applied, flat = _decode_settle(raw)
        states = tuple(
            CounterState(
                key=str(flat[i]),
                dimension=str(flat[i + 1]),
                limit=int(flat[i + 2]),
                used=int(flat[i + 3]),
                reserved=int(flat[i + 4]),
            )
            for i in range(0, len(flat), 5)
        )
        return SettleResult(applied=bool(applied), states=states)

    def release(self, reservation_id: str) -> bool:
        return bool(
            self._call(lambda: self._release(keys=self._keys, args=[self._prefix, reservation_id]))
        )

    def states(self, items: Sequence[ReserveItem]) -> tuple[CounterState, ...]:
        raw = self._call(
            lambda: self._states(keys=self._keys, args=[self._prefix, _pack_items(items)])
        )
        return self._states_of(items, _decode_states(raw))

    def expire(self) -> tuple[Expired, ...]:
        raw = self._call(lambda: self._expire(keys=self._keys, args=[self._prefix]))
        return self._expired(_decode_expired(raw))

    def close(self) -> None:
        self._client.close()
