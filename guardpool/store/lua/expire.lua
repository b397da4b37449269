-- expire: ARGV = now. Answers packed [id, charged] pairs.
steps.expire = function(KEYS, ARGV)
  begin(KEYS, ARGV)
  due = tonumber(redis.call('HGET', C, 'due'))
  if not overdue() then return cmsgpack.pack({}) end
  return cmsgpack.pack(expire())
end
