-- states: ARGV = now, packed items (window keys from KEYS[4]). Answers packed counts.
steps.states = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local wkeys = {}
  for k = 4, #KEYS do wkeys[#wkeys + 1] = KEYS[k] end
  local counts = read(items_of(ARGV[2], wkeys))
  return cmsgpack.pack(counts)
end
