-- reserve: ARGV = now, id, ttl_ms, packed items. Answers a packed [ok, counts, refused, expired].
steps.reserve = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local RECORD, id, ttl = KEYS[5], ARGV[2], tonumber(ARGV[3])
  -- A retried request gets the very bytes it got the first time, and nothing changes.
  local prev = redis.call('HGET', RECORD, 'a')
  if prev then return prev end
  local wkeys = {}
  for k = 6, #KEYS do wkeys[#wkeys + 1] = KEYS[k] end
  local items = named(ARGV[4], wkeys)
  local expired = expire()
  local counts = read(items)
  local refused = {}
  for i, it in ipairs(items) do
    if refuses(it, counts[2 * i - 1], counts[2 * i]) then refused[#refused + 1] = i - 1 end
  end
  local ok = #refused == 0
  if ok then
    -- Reserved values were just read: the new ones need no second read. (Two
    -- items may share a counter: `new` adds both amounts to it.)
    local new = {}
    for i, it in ipairs(items) do new[it[R]] = (new[it[R]] or counts[2 * i]) + it[AMOUNT] end
    write(new)
    for i, it in ipairs(items) do counts[2 * i] = new[it[R]] end
  end
  local reply = cmsgpack.pack({ok, counts, refused, expired})
  local deadline = now + ttl
  local record = {'s', ok and 'live' or 'refused', 'd', int(deadline), 'i', ARGV[4], 'a', reply}
  if #wkeys > 0 then
    record[#record + 1], record[#record + 2] = 'w', cmsgpack.pack(wkeys)
  end
  redis.call('HSET', RECORD, unpack(record))
  if ok then
    live(id, deadline)
  else
    redis.call('PEXPIRE', RECORD, ttl + KEEP_FINISHED_MS)
  end
  return reply
end
