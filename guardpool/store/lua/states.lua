-- states: ARGV = now, packed items (window keys from KEYS[5]). Answers packed counts.
steps.states = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  local wkeys = {}
  for k = 5, #KEYS do wkeys[#wkeys + 1] = KEYS[k] end
  local items = named(ARGV[2], wkeys)
  return cmsgpack.pack(read(items))
end
