-- settle: ARGV = now, id, then dimension, actual, dimension, actual, ...
-- Answers a packed [ok, counts, refused, expired, items] (items: the bytes the
-- reserve received, so the caller can name the counts; '' when there is no record).
steps.settle = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local RECORD, id = KEYS[5], ARGV[2]
  local actual = {}
  for k = 3, #ARGV, 2 do actual[ARGV[k]] = tonumber(ARGV[k + 1]) end
  local expired = expire()  -- may expire this very reservation: then it is too late
  local state, items, deadline, packed = load(RECORD)
  if not state then return cmsgpack.pack({false, {}, {}, expired, ''}) end
  if state ~= 'live' then
    return cmsgpack.pack({false, read(items), {}, expired, packed})
  end
  local deltas = {}
  for _, it in ipairs(items) do
    local amount = actual[it[DIMENSION]]
    if amount == nil then amount = it[AMOUNT] end
    charge(deltas, it, amount)
  end
  local new = apply(deltas)
  finish(RECORD, id, 'settled', deadline)
  local counts = {}
  for i, it in ipairs(items) do
    if it[WINDOW_MS] > 0 then
      counts[2 * i - 1] = window_used(it)
    else
      counts[2 * i - 1] = new[it[U]]
    end
    counts[2 * i] = new[it[R]]
  end
  return cmsgpack.pack({true, counts, {}, expired, packed})
end
