-- states: ARGV = now, packed items (window keys from KEYS[5]). Answers packed counts.
local wkeys = {}
for k = 5, #KEYS do wkeys[#wkeys + 1] = KEYS[k] end
local items = named(ARGV[2], wkeys)
return cmsgpack.pack(counts(items, read(items)))
