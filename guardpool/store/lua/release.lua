-- release: ARGV = now, id. Answers 1 when a live reservation was returned, else 0.
steps.release = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local RECORD, id = KEYS[5], ARGV[2]
  local state, items, deadline = load(RECORD)
  if state ~= 'live' then return 0 end
  local deltas = {}
  for _, it in ipairs(items) do add(deltas, it[R], 0 - it[AMOUNT]) end
  apply(deltas)
  finish(RECORD, id, 'released', deadline)
  return 1
end
