-- states: ARGV = now, packed items (window keys from KEYS[4]). Answers packed CounterStates.
local items = decode_items(ARGV[2], 4)
local used, reserved = read(items)
return cmsgpack.pack(states_of(items, used, reserved))
