-- release: ARGV = now, id. Answers 1 when a live reservation was returned, else 0.
local RECORD, id = KEYS[4], ARGV[2]
local rec = load(RECORD)
if not rec or rec.state ~= 'live' then return 0 end
local deltas = {}
for _, it in ipairs(record_items(rec)) do add(deltas, 'r' .. counter(it), 0 - it.amount) end
apply(deltas)
rec.state = 'released'
save(RECORD, id, rec)
return 1
