-- Creates or replaces a schedule (stores/redis/schedules.py), refusing a new one past the cap.
-- KEYS: {p}sched (hash: name -> msgpack body), {p}scheddue (names by next_run_at),
--       {p}schednames (names, all scores 0: ordered by name).
-- ARGV: name, body, next_run_at, cap.
-- Reply: 1 when created, 0 when replaced, -1 when new and the cap is reached (nothing written).
local name = ARGV[1]
local known = redis.call('HEXISTS', KEYS[1], name) == 1
if not known and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  return -1
end
redis.call('HSET', KEYS[1], name, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], name)
redis.call('ZADD', KEYS[3], 0, name)
if known then
  return 0
end
return 1
