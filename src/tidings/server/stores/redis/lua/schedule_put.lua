-- Creates or replaces a schedule (stores/redis/schedules.py) only if the stored one is
-- still the one the caller read (a compare-and-set), refusing a new one past the cap.
-- KEYS: {p}sched (hash: name -> msgpack body), {p}scheddue (names by next_run_at),
--       {p}schednames (names, all scores 0: ordered by name).
-- ARGV: name, body, next_run_at, cap, SHA-1 (hex) of the body read ('' : none was).
-- Reply: 1 when written, 0 when the stored body is not the one read, -1 when new and the
-- cap is reached (nothing written on 0 and -1).
local name = ARGV[1]
local stored = redis.call('HGET', KEYS[1], name)
if not stored then
  if ARGV[5] ~= '' then
    return 0
  end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
    return -1
  end
elseif ARGV[5] == '' or redis.sha1hex(stored) ~= ARGV[5] then
  return 0
end
redis.call('HSET', KEYS[1], name, ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], name)
redis.call('ZADD', KEYS[3], 0, name)
return 1
