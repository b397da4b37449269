-- settle: ARGV = now, id, packed {dimension: actual}. Answers a packed StoreAnswer.
local RECORD, id = KEYS[4], ARGV[2]
local actual = cmsgpack.unpack(ARGV[3])
local expired = expire()  -- may expire this very reservation: then it is too late
local rec = load(RECORD)
if not rec then
  return cmsgpack.pack({ok = false, states = {}, refused = {}, expired = expired})
end
local items = record_items(rec)
if rec.state ~= 'live' then
  local used, reserved = read(items)
  return cmsgpack.pack({ok = false, states = states_of(items, used, reserved),
                        refused = {}, expired = expired})
end
local deltas = {}
for _, it in ipairs(items) do
  local amount = actual[it.dimension]
  if amount == nil then amount = it.amount end
  charge(deltas, it, amount)
end
local new = apply(deltas)
rec.state = 'settled'
save(RECORD, id, rec)
local used, reserved = {}, {}
for i, it in ipairs(items) do
  if it.window_ms > 0 then
    used[i] = window_used(it)
  else
    used[i] = new['u' .. counter(it)]
  end
  reserved[i] = new['r' .. counter(it)]
end
return cmsgpack.pack({ok = true, states = states_of(items, used, reserved),
                      refused = {}, expired = expired})
