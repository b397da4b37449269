-- reserve: ARGV = now, id, ttl_ms, packed items. Answers a packed [ok, counts, refused, expired].
steps.reserve = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local RECORD, id, ttl = KEYS[4], ARGV[2], tonumber(ARGV[3])
  -- A retried request gets the very bytes it got the first time, and nothing changes.
  local prev = redis.call('HGET', RECORD, 'a')
  if prev then return prev end
  local wkeys = {}
  for k = 5, #KEYS do wkeys[#wkeys + 1] = KEYS[k] end
  local items = items_of(ARGV[4], wkeys)
  local a, n = items.a, items.n
  -- One HMGET reads the counters and 'due'; only when something may be overdue
  -- is it charged first and the counters read again.
  local counts = read(items)
  local expired = {}
  if overdue() then
    expired = expire()
    counts = read(items)
  end
  local refused = {}
  for i = 1, n do
    if refuses(a, base(n, i), counts[2 * i - 1], counts[2 * i]) then
      refused[#refused + 1] = i - 1
    end
  end
  local ok = #refused == 0
  local deadline = now + ttl
  local deadline_s = int(deadline)
  if ok then
    -- Reserved values were just read: the new ones need no second read. (Two
    -- items may share a counter: `new` adds both amounts to it.)
    local new = {}
    for i = 1, n do
      local r = a[2 * i]
      new[r] = (new[r] or counts[2 * i]) + a[base(n, i) + AMOUNT]
    end
    for i = 1, n do counts[2 * i] = new[a[2 * i]] end
    -- This deadline may become the earliest live one: 'due' goes in the same HSET.
    if due == nil or deadline < due then
      due = deadline
      new.due = deadline
    end
    write(new)
    redis.call('ZADD', DEADLINES, deadline_s, id)
  end
  local reply = cmsgpack.pack({ok, counts, refused, expired})
  local record = {'s', ok and 'live' or 'refused', 'd', deadline_s, 'i', ARGV[4], 'a', reply}
  if #wkeys > 0 then
    record[#record + 1], record[#record + 2] = 'w', cmsgpack.pack(wkeys)
  end
  redis.call('HSET', RECORD, unpack(record))
  if not ok then
    redis.call('PEXPIRE', RECORD, int(ttl + KEEP_FINISHED_MS))
  end
  return reply
end
