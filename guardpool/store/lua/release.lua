-- release: ARGV = now, id. Answers 1 when a live reservation was returned, else 0.
steps.release = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local RECORD, id = KEYS[4], ARGV[2]
  local state, items, deadline = load(RECORD)
  if state ~= 'live' then return 0 end
  local a, n = items.a, items.n
  local deltas = {}
  for i = 1, n do add(deltas, a[2 * i], 0 - a[base(n, i) + AMOUNT]) end
  apply(deltas)
  finish(RECORD, id, 'released', deadline)
  return 1
end
