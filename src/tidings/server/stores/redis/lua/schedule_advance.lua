-- Replaces a schedule only if it is still the one the caller read (its compare-and-set:
-- of several nodes firing one slot, one advances the schedule).
-- KEYS: {p}sched (hash: name -> msgpack body), {p}scheddue (names by next_run_at).
-- ARGV: name, SHA-1 (hex) of the body as read, new body, new next_run_at.
-- Reply: 1 when replaced, 0 when the stored body differs or is gone (nothing written).
local body = redis.call('HGET', KEYS[1], ARGV[1])
if not body or redis.sha1hex(body) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
