-- Lets go of a bridge's forward lease if the caller holds it.
-- KEYS: {p}fwdlease:{bridge}.  ARGV: holder.  Reply: 1 when released, 0 otherwise.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
