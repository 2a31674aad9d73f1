-- Takes a bridge's forward lease when nobody holds it (or it expired), or renews it for
-- its holder; Redis expires the key, so no node's clock is read.
-- KEYS: {p}fwdlease:{bridge} (string: the holder, with an expiry).
-- ARGV: holder, time to live in milliseconds.
-- Reply: 1 when the caller holds the lease now, 0 when another does (nothing written).
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
