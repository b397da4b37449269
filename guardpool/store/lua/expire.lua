-- expire: ARGV = now. Answers packed [id, charged] pairs.
steps.expire = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  return cmsgpack.pack(expire())
end
