-- expire: ARGV = now. Answers packed [id, charged] pairs.
return cmsgpack.pack(expire())
