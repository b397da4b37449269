-- reserve: ARGV = now, id, ttl_ms, packed items. Answers a packed StoreAnswer.
local RECORD, id, ttl = KEYS[4], ARGV[2], tonumber(ARGV[3])
local prev = load(RECORD)
-- A retried request gets the very bytes it got the first time, and nothing changes.
if prev then return prev.reply end
local items, wkeys = decode_items(ARGV[4], 5)
local expired = expire()
local used, reserved = read(items)
local refused = {}
for i, it in ipairs(items) do
  if refuses(it, used[i], reserved[i]) then refused[#refused + 1] = i - 1 end
end
local ok = #refused == 0
if ok then
  -- Reserved values were just read: the new ones need no second read.
  local new = {}
  for i, it in ipairs(items) do
    local f = 'r' .. counter(it)
    new[f] = (new[f] or reserved[i]) + it.amount
  end
  write(new)
  for i, it in ipairs(items) do reserved[i] = new['r' .. counter(it)] end
end
local reply = cmsgpack.pack({ok = ok, states = states_of(items, used, reserved),
                             refused = refused, expired = expired})
local state = 'refused'
if ok then state = 'live' end
save(RECORD, id, {items = ARGV[4], wkeys = wkeys, deadline = now + ttl, state = state,
                  reply = reply})
return reply
