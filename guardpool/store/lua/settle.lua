-- settle: ARGV = now, id, then dimension, actual, dimension, actual, ...
-- Answers a packed [ok, counts, refused, expired, items] (items: the bytes the
-- reserve received, so the caller can name the counts; '' when there is no record).
steps.settle = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local RECORD, id = KEYS[4], ARGV[2]
  local actual = {}
  for k = 3, #ARGV, 2 do actual[ARGV[k]] = tonumber(ARGV[k + 1]) end
  local state, items, deadline, packed = load(RECORD)
  if not state then
    due = tonumber(redis.call('HGET', C, 'due'))
    local expired = {}
    if overdue() then expired = expire() end
    return cmsgpack.pack({false, {}, {}, expired, ''})
  end
  -- One HMGET reads the counters and 'due'; only when something may be overdue
  -- is it charged first (maybe this very reservation: then it is too late) and
  -- the record and counters read again.
  local counts, cur = read(items, true)
  local expired = {}
  if overdue() then
    expired = expire()
    state = redis.call('HGET', RECORD, 's')
    counts, cur = read(items, true)
  end
  if state ~= 'live' then
    return cmsgpack.pack({false, counts, {}, expired, packed})
  end
  local a, n, win = items.a, items.n, items.win or {}
  -- The new hash values from the ones just read. Charges to one used field add
  -- up and are clamped once, at CAP (as apply() does for expiry).
  local new, used_by = {}, {}
  for i = 1, n do
    local b = base(n, i)
    local estimate = a[b + AMOUNT]
    local amount = actual[a[b + DIMENSION]] or estimate
    local r = a[2 * i]
    new[r] = (new[r] or cur[r]) - estimate
    if win[i] then
      window_charge(win[i], amount)
    else
      add(used_by, a[2 * i - 1], amount)
    end
  end
  for u, amount in pairs(used_by) do new[u] = cur[u] + capped(cur[u], amount) end
  write(new)
  finish(RECORD, id, 'settled', deadline)
  for i = 1, n do
    if win[i] then
      counts[2 * i - 1] = window_used(win[i])
    else
      counts[2 * i - 1] = new[a[2 * i - 1]]
    end
    counts[2 * i] = new[a[2 * i]]
  end
  return cmsgpack.pack({true, counts, {}, expired, packed})
end
