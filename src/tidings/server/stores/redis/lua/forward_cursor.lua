-- Sets one channel's forward cursor, only while the caller holds the bridge's lease (a
-- node that lost it cannot move a cursor), and refuses a new cursor past the cap.
-- KEYS: {p}fwdlease:{bridge}, {p}fwdcur:{bridge} (hash: channel -> message id).
-- ARGV: holder, channel, message id, cap.
-- Reply: 1 when written, 0 when the lease is another's or nobody's, -1 when full.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0
    and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
