-- expire: ARGV = now. Answers packed Expired maps.
return cmsgpack.pack(expire())
